"""An open-loop load generator: requests leave on a fixed schedule, whatever the answers do.

The schedule is computed up front (:func:`arrivals`): a constant arrival rate,
raised during overload windows, each arrival with the order and user it asks
for. :func:`run_load` sends each request at its intended time and measures its
latency FROM THAT INTENDED TIME, not from when it actually left: a generator
that falls behind (or a closed loop that waits for answers) would otherwise
hide the very queueing it should measure ("coordinated omission", Gil Tene).
How late requests actually left is recorded too (``send_lag``), so a generator
that cannot keep up is visible in the report instead of silently flattering it.

The HTTP client is a minimal HTTP/1.1 keep-alive client on asyncio streams:
httpx costs several times more CPU per request, and on a 2-core machine the
generator shares the CPU with the fleet it measures.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .scenario import Scenario

__all__ = ["OUT_OF_FILES", "Arrival", "Outcome", "arrivals", "run_load"]

FAILED_TO_CONNECT = 0
"""The status recorded when no answer came (connection refused, reset or timed out)."""

OUT_OF_FILES = "EMFILE: the load generator ran out of file descriptors"
"""The ``error`` of a request the generator itself could not send (no descriptor left):
a failure of the lab, not of the fleet."""


@dataclass(frozen=True, slots=True)
class Arrival:
    """One scheduled request: ``at`` seconds after the start, for ``order`` and ``user``."""

    at: float
    order: int
    user: int


@dataclass(slots=True)
class Outcome:
    """What happened to one request.

    ``status`` 0 means no HTTP answer, and ``error`` says why (otherwise it is the
    gateway's ``x-lab-error``); ``sources`` names the fallbacks of a degraded answer.
    """

    at: float
    status: int
    latency: float
    degraded: bool
    send_lag: float
    error: str = ""
    sources: str = ""

    @property
    def ok(self) -> bool:
        """Whether the request was served (in full or degraded)."""
        return 200 <= self.status < 300


def arrivals(scenario: Scenario, rate: float, capacity: float, seed: int) -> list[Arrival]:
    """The arrival schedule: ``rate`` per second, ``factor x capacity`` in overload windows.

    The first ``scenario.orders`` arrivals visit every order once (so caches
    are warm before the first fault); after that orders and users are drawn
    from ``random.Random(seed)``. The same inputs give the same schedule.
    """
    for name, value in (("rate", rate), ("capacity", capacity)):
        if not value > 0 or math.isinf(value):  # NaN fails `> 0` too
            raise ValueError(f"the load's {name} must be > 0 requests per second, got {value}")
    rng = random.Random(seed)
    bursts = [(f.at, f.end, f.factor * capacity) for f in scenario.faults
              if f.kind == "overload"]
    # Piecewise constant rate: each segment's times are start + k / rate, computed, not
    # accumulated, so float error cannot add or drop an arrival at a boundary.
    edges = sorted({0.0, scenario.duration,
                    *(t for start, end, _ in bursts for t in (start, end)
                      if 0 < t < scenario.duration)})
    times: list[float] = []
    for start, end in itertools.pairwise(edges):
        current = max([rate, *(b for s, e, b in bursts if s <= start < e)])
        k = 0
        while (t := start + k / current) < end - 1e-9:
            times.append(t)
            k += 1
    out: list[Arrival] = []
    n = scenario.orders
    for i, t in enumerate(times):
        order = i if i < n else rng.randrange(n)
        user = i if i < n else rng.randrange(n)
        out.append(Arrival(at=t, order=order, user=user))
    return out


class _Pool:
    """Idle keep-alive connections to one host; a new one is opened when none is idle."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, fresh: bool = False) -> tuple[
            asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """A connection, and whether it was reused (``fresh``: always a new one)."""
        while self.idle and not fresh:
            reader, writer = self.idle.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return reader, writer, False

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def _get(pool: _Pool, path: str) -> tuple[int, str, str]:
    """``GET path``: (status, x-lab-degraded, x-lab-error). Raises on connection trouble.

    A reused keep-alive connection that the server closed before answering is
    not a failure of the request: it is sent again once, on a new connection.
    """
    reader, writer, reused = await pool.get()
    request = f"GET {path} HTTP/1.1\r\nhost: lab\r\n\r\n".encode()
    try:
        writer.write(request)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise
            writer.close()
            reader, writer, reused = await pool.get(fresh=True)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length: int | None = None
        chunked = False
        degraded = ""
        keep = True
        error = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "x-lab-degraded":
                degraded = value.strip()
            elif name == "x-lab-error":
                error = value.strip()
            elif name == "connection" and value.strip().lower() == "close":
                keep = False
        # The body is read whole whatever its framing: left unread, it would be taken
        # for the next answer on this keep-alive connection and fail another request.
        if chunked:
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await reader.readexactly(size + 2)
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields
        elif length is not None:
            await reader.readexactly(length)
        elif status >= 200 and status not in (204, 304):
            await reader.read()  # no length: the body ends when the connection closes
            keep = False
    except BaseException:
        writer.close()
        raise
    if keep:
        pool.idle.append((reader, writer))
    else:
        writer.close()
    return status, degraded, error


async def run_load(
    base_url: str,
    schedule: Sequence[Arrival],
    *,
    timeout: float,
    start: float | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Send ``schedule`` to the gateway at ``base_url``; one :class:`Outcome` per arrival.

    Requests still unanswered ``timeout`` seconds after their intended time are
    abandoned (status 0, ``error="timeout"``), their connection closed. ``start``
    is the ``time.perf_counter()`` value that schedule times count from (default:
    now, plus 50 ms to settle).
    """
    host, _, port = base_url.removeprefix("http://").rstrip("/").partition(":")
    pool = _Pool(host, int(port or 80))
    loop = asyncio.get_running_loop()
    outcomes: list[Outcome] = []
    clock = time.perf_counter
    start = clock() + 0.05 if start is None else start

    async def one(arrival: Arrival) -> None:
        intended = start + arrival.at
        lag = clock() - intended
        error = sources = ""
        try:
            async with asyncio.timeout(max(timeout - lag, 0.001)):
                status, sources, error = await _get(
                    pool, f"/page/{arrival.order}?user={arrival.user}")
        except TimeoutError:
            status, error = FAILED_TO_CONNECT, "timeout"
        except Exception as exc:  # any way a request fails is a failure:
            # an exception that escaped here would drop the request from the record
            status, error = FAILED_TO_CONNECT, type(exc).__name__
            if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                error = OUT_OF_FILES
        outcome = Outcome(at=arrival.at, status=status, latency=clock() - intended,
                          degraded=bool(sources), send_lag=lag, error=error,
                          sources=sources)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    tasks: set[asyncio.Task[None]] = set()
    i = 0
    n = len(schedule)
    while i < n:
        now = clock() - start
        while i < n and schedule[i].at <= now:
            task = loop.create_task(one(schedule[i]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i < n:
            await asyncio.sleep(max(schedule[i].at - (clock() - start), 0.0))
    if tasks:
        await asyncio.wait(tasks)
    pool.close()
    if len(outcomes) != n:  # never silently: a missing request would flatter the variant
        raise RuntimeError(f"the load generator recorded {len(outcomes)} of {n} requests")
    outcomes.sort(key=lambda o: o.at)
    return outcomes
