"""An open-loop HTTP/1.1 load generator, run in its own process.

Closed-loop clients slow down when the server does, which hides overload: real
arrivals do not wait for earlier answers. This generator sends requests at fixed
arrival times whatever the server does (wrk2's constant-throughput idea; latency is
measured from each request's *intended* arrival time, so a generator that falls
behind does not hide the wait — "coordinated omission", Gil Tene). An arrival takes
an idle keep-alive connection or opens a new one (at most ``--max-connections``;
beyond that the arrival is counted as ``dropped``). Timers here have millisecond
granularity, so arrivals due in the same millisecond are sent together; the send
lag (actual send time minus intended time) is reported so a run whose generator
could not keep up says so.

Usage (bench/asgi_overload.py runs it): python bench/_open_loop.py --port P --path /work
  --phases 2700:30,450:5 --out result.json

The result is JSON: ``start_monotonic`` (time.monotonic() of the first arrival, to
align the server's CPU samples), and per request [phase, intended time, status, latency, send lag, new
connection (1) or kept-alive (0)];
status 0 = no answer by the end (timeout), -1 = connection error, -2 = dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque

try:
    import uvloop
except ImportError:  # pragma: no cover - the bench extra installs it
    uvloop = None  # type: ignore[assignment]


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[tuple[int, bool]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = self.buffer[:end].lower()
        length = 0
        at = head.find(b"content-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at)
            length = int(head[at + 15:stop if stop >= 0 else None])
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        self.buffer = self.buffer[total:]
        status = int(head[9:12])
        close = b"connection: close" in head
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((status, close))


async def _run(host: str, port: int, path: str, phases: list[tuple[float, float]],
               max_connections: int, grace: float) -> tuple[float, list[list[float]]]:
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    idle: deque[_Connection] = deque()
    records: list[list[float]] = []
    pending: set[asyncio.Task[None]] = set()
    opened = 0

    async def one(phase: int, intended: float, start: float) -> None:
        nonlocal opened
        lag = loop.time() - intended
        record = [phase, intended - start, 0, 0.0, lag, 0]
        records.append(record)
        conn = None
        while idle:
            candidate = idle.pop()
            if not candidate.lost:
                conn = candidate
                break
            opened -= 1
        try:
            if conn is None:
                if opened >= max_connections:
                    record[2] = -2
                    return
                opened += 1
                record[5] = 1
                _, conn = await loop.create_connection(_Connection, host, port)
            conn.waiter = loop.create_future()
            assert conn.transport is not None
            conn.transport.write(request)
            status, close = await conn.waiter
        except (OSError, ConnectionError):
            record[2] = -1
            record[3] = loop.time() - intended
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            opened -= 1
            return
        record[2] = status
        record[3] = loop.time() - intended
        if close or conn.lost:
            assert conn.transport is not None
            conn.transport.close()
            opened -= 1
        else:
            idle.append(conn)

    start = loop.time() + 0.05
    # The loop's clock may not be time.monotonic() (uvloop's is libuv's): the caller
    # aligns its CPU samples with this.
    start_monotonic = time.monotonic() + (start - loop.time())
    at = start
    for index, (rate, seconds) in enumerate(phases):
        interval = 1.0 / rate
        count = round(rate * seconds)
        first = at
        for i in range(count):
            intended = first + i * interval
            delay = intended - loop.time()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            task = loop.create_task(one(index, intended, start))
            pending.add(task)
            task.add_done_callback(pending.discard)
        at = first + count * interval
    if pending:
        await asyncio.wait(pending, timeout=grace)
    for task in pending:
        task.cancel()
    for conn in idle:
        if conn.transport is not None:
            conn.transport.close()
    return start_monotonic, records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/work")
    parser.add_argument("--phases", required=True, help="rate:seconds,rate:seconds,...")
    parser.add_argument("--max-connections", type=int, default=4096)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    phases = [(float(r), float(s)) for r, s in
              (item.split(":") for item in args.phases.split(","))]
    if uvloop is not None:
        uvloop.install()
    began = time.monotonic()
    start_monotonic, records = asyncio.run(_run(args.host, args.port, args.path, phases,
                               args.max_connections, args.grace))
    with open(args.out, "w") as f:
        json.dump({"phases": phases, "records": records, "start_monotonic": start_monotonic,
                   "wall": time.monotonic() - began}, f)


if __name__ == "__main__":
    main()
