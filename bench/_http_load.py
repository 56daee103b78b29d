"""A small closed-loop HTTP/1.1 load generator with per-status latencies.

wrk reports one latency distribution for all responses; the overload claim needs
the latency of *successful* responses apart from the 503s, and whether any
request timed out. This client keeps ``connections`` keep-alive connections,
each sending GET requests back to back for ``duration`` seconds, parses just
enough HTTP/1.1 (status line, headers, Content-Length body), and records
(status, latency) for every response. A connection closed by the server is
reopened and counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    """Everything one run observed."""

    duration: float
    latencies: dict[int, list[float]] = field(default_factory=dict)
    timeouts: int = 0
    errors: int = 0
    reconnects: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    def count(self, status: int) -> int:
        return self.statuses[status]

    def rate(self, status: int) -> float:
        return self.statuses[status] / self.duration

    def percentile(self, status: int, q: float) -> float | None:
        values = sorted(self.latencies.get(status, ()))
        if not values:
            return None
        index = min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))
        return values[index]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    close = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    if length:
        await reader.readexactly(length)
    return status, close


async def _worker(host: str, port: int, request: bytes, end: float, timeout: float,
                  result: LoadResult) -> None:
    reader = writer = None
    while time.monotonic() < end:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            sent = time.monotonic()
            writer.write(request)
            status, close = await asyncio.wait_for(_read_response(reader), timeout)
            latency = time.monotonic() - sent
            result.statuses[status] += 1
            result.latencies.setdefault(status, []).append(latency)
            if close:
                writer.close()
                writer = None
                result.reconnects += 1
        except TimeoutError:
            result.timeouts += 1
            if writer is not None:
                writer.close()
            writer = None
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
            result.errors += 1
            if writer is not None:
                writer.close()
            writer = None
            result.reconnects += 1
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def run_load(url_path: str, *, host: str = "127.0.0.1", port: int, connections: int,
                   duration: float, timeout: float = 10.0,
                   headers: dict[str, str] | None = None) -> LoadResult:
    """Drive ``connections`` connections against ``url_path`` for ``duration`` seconds."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET {url_path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
    result = LoadResult(duration=duration)
    end = time.monotonic() + duration
    await asyncio.gather(*(_worker(host, port, request, end, timeout, result)
                           for _ in range(connections)))
    return result
