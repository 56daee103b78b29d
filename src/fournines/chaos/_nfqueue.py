"""The NFQUEUE delay shim: holds queued packets in userspace, then lets them go.

Used by :func:`fournines.chaos.network.add_delay` on kernels without ``tc netem``.
An nftables rule sends matching packets to a netfilter queue (with ``bypass``, so
traffic flows undelayed if this process dies); this process receives only their
metadata (``COPY_META``), and gives each an ``accept`` verdict once its delay has
passed. Packets stay in the kernel meanwhile, so nothing is copied or reinjected.

Run as ``python -m fournines.chaos._nfqueue --fault NAME --delay S [...]``: it binds
a free queue number, prints it on one line of stdout, and serves until SIGTERM or
SIGINT, when it releases every held packet at once and exits.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import select
import signal
import sys
import time
import warnings
from typing import Any

__all__ = ["DelayModel", "main"]

# Packets held at once; the kernel's default (1024) would drop packets as soon as
# 100 ms of delay meets more than 10 000 packets a second.
_MAX_HELD = 65535
# Queue numbers the shim picks from; low numbers are left to hand-written rules.
_QUEUE_RANGE = (20000, 65000)


class DelayModel:
    """Per-packet delays: ``delay`` plus uniform jitter, optionally correlated.

    Each packet waits ``delay + jitter * u`` seconds (never less than zero), where
    ``u`` lies in [-1, 1]. Without correlation ``u`` is uniform, as in ``tc netem``
    without a distribution table. With ``correlation`` c, ``u`` follows netem's
    documented recurrence ``u_n = (1 - c) * fresh_n + c * u_(n-1)``: consecutive
    delays have lag-1 correlation c (an AR(1) process), the mean stays ``delay``,
    and the spread narrows (standard deviation times sqrt((1 - c) / (1 + c))).
    The kernel's own netem applies a modulo after this mix that largely undoes the
    correlation for uniform jitter (sch_netem.c, ``tabledist``); the shim does what
    the documentation says instead.
    """

    __slots__ = ("_last", "_rng", "correlation", "delay", "jitter")

    def __init__(
        self,
        *,
        delay: float,
        jitter: float = 0.0,
        correlation: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.delay = delay
        self.jitter = jitter
        self.correlation = correlation
        self._rng = rng if rng is not None else random.Random()
        self._last = 0.0

    def next(self) -> float:
        """The delay in seconds for the next packet."""
        if self.jitter == 0.0:
            return self.delay
        fresh = self._rng.uniform(-1.0, 1.0)
        self._last = (1.0 - self.correlation) * fresh + self.correlation * self._last
        return max(0.0, self.delay + self.jitter * self._last)


def _bind(queue: Any, callback: Any, rng: random.Random) -> int:
    """Bind the first free queue number of a random sample; return it."""
    low, high = _QUEUE_RANGE
    for number in rng.sample(range(low, high), 200):
        try:
            with warnings.catch_warnings():
                # The library warns when the kernel caps its receive buffer; harmless here.
                warnings.simplefilter("ignore")
                queue.bind(number, callback, max_len=_MAX_HELD, mode=_copy_meta())
        except OSError:
            continue
        return number
    raise OSError("no free netfilter queue number among 200 tries")


def _copy_meta() -> int:
    import netfilterqueue  # noqa: PLC0415  (only the shim process needs the C library)

    return int(netfilterqueue.COPY_META)


def serve(model: DelayModel, *, rng: random.Random) -> int:
    """Bind a queue, announce its number on stdout, and delay packets until a signal."""
    from netfilterqueue import NetfilterQueue  # noqa: PLC0415

    held: list[tuple[float, int, Any]] = []
    order = itertools.count()

    def on_packet(packet: Any) -> None:
        # Ties keep arrival order; with jitter packets may overtake, as with netem.
        heapq.heappush(held, (time.monotonic() + model.next(), next(order), packet))

    stopping: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        # Only flag it: raising here could unwind through the C callback of the queue.
        stopping.append(signum)

    queue = NetfilterQueue()
    number = _bind(queue, on_packet, rng)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sys.stdout.write(f"{number}\n")
    sys.stdout.flush()
    fd = queue.get_fd()
    try:
        while not stopping:
            timeout = None if not held else max(0.0, held[0][0] - time.monotonic())
            readable, _, _ = select.select([fd, wake_r], [], [], timeout)
            if fd in readable:
                queue.run(block=False)
            now = time.monotonic()
            while held and held[0][0] <= now:
                heapq.heappop(held)[2].accept()
    finally:
        # Let held packets go rather than leave them to the kernel's queue teardown.
        for _, _, packet in held:
            try:
                packet.accept()
            except (OSError, RuntimeError):
                break
        queue.unbind()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line of the shim (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m fournines.chaos._nfqueue")
    parser.add_argument("--fault", required=True, help="table name, to find this process again")
    parser.add_argument("--delay", type=float, required=True, help="seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="seconds")
    parser.add_argument("--correlation", type=float, default=0.0, help="0 to 1")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    model = DelayModel(
        delay=args.delay, jitter=args.jitter, correlation=args.correlation, rng=rng
    )
    try:
        return serve(model, rng=random.Random(os.getpid() ^ time.monotonic_ns()))
    except OSError as exc:
        sys.stderr.write(f"fournines nfqueue shim: {exc}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
