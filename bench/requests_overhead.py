"""Claim: ResilientAdapter adds little to a requests call; ResilientMiddleware little to aiohttp's.

A subprocess on loopback answers every read with a fixed ``200 ok`` (no parsing, so
the server costs next to nothing and the client's work dominates). In one process,
interleaved round by round, the same GETs go through:

- a ``requests.Session`` with a plain ``HTTPAdapter`` and one with ``ResilientAdapter``
  (breaker, budget, retry planner, deadline header; every call succeeds first time);
- an ``aiohttp.ClientSession`` without and with ``ResilientMiddleware``.

Prints µs per call (median of the rounds) and the ratio protected / plain
(1.00 = free; throughput ratio = 1 / that).

Usage: .venv/bin/python bench/requests_overhead.py [--calls 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import aiohttp
import requests
from bench._servers import free_port
from requests.adapters import HTTPAdapter

from fournines import deadline_after
from fournines.client import ClientPolicy, ResilientAdapter, ResilientMiddleware

_RESPONDER = """
import asyncio, sys
ANSWER = b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\ncontent-type: text/plain\\r\\n\\r\\nok"
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, data): self.t.write(ANSWER * data.count(b"\\r\\n\\r\\n"))
async def main():
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    async with s: await s.serve_forever()
asyncio.run(main())
"""


def session(adapter: HTTPAdapter) -> requests.Session:
    made = requests.Session()
    made.mount("http://", adapter)
    return made


def time_requests(client: requests.Session, url: str, calls: int, deadline: bool) -> float:
    start = time.perf_counter()
    if deadline:
        with deadline_after(30.0):
            for _ in range(calls):
                client.get(url).content  # noqa: B018 - the body is read, as callers do
    else:
        for _ in range(calls):
            client.get(url).content  # noqa: B018
    return (time.perf_counter() - start) / calls * 1e6


async def time_aiohttp(client: aiohttp.ClientSession, url: str, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        async with client.get(url) as response:
            await response.read()
    return (time.perf_counter() - start) / calls * 1e6


async def aiohttp_rounds(url: str, calls: int, rounds: int) -> tuple[list[float], list[float]]:
    plain_t: list[float] = []
    guarded_t: list[float] = []
    async with aiohttp.ClientSession() as plain, aiohttp.ClientSession(
            middlewares=[ResilientMiddleware(ClientPolicy())]) as guarded:
        await time_aiohttp(plain, url, 200)  # warm the pools
        await time_aiohttp(guarded, url, 200)
        for _ in range(rounds):
            plain_t.append(await time_aiohttp(plain, url, calls))
            guarded_t.append(await time_aiohttp(guarded, url, calls))
    return plain_t, guarded_t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", _RESPONDER, str(port)])
    try:
        url = f"http://127.0.0.1:{port}/x"
        for _ in range(100):
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        plain, guarded = session(HTTPAdapter()), session(ResilientAdapter(ClientPolicy()))
        rows: dict[str, list[float]] = {"requests HTTPAdapter": [],
                                        "requests ResilientAdapter": [],
                                        "requests ResilientAdapter + deadline": []}
        for client in (plain, guarded):
            time_requests(client, url, 200, False)  # warm the pools
        for _ in range(args.rounds):
            rows["requests HTTPAdapter"].append(time_requests(plain, url, args.calls, False))
            rows["requests ResilientAdapter"].append(
                time_requests(guarded, url, args.calls, False))
            rows["requests ResilientAdapter + deadline"].append(
                time_requests(guarded, url, args.calls, True))
        a_plain, a_guarded = asyncio.run(aiohttp_rounds(url, args.calls, args.rounds))
        rows["aiohttp ClientSession"] = a_plain
        rows["aiohttp + ResilientMiddleware"] = a_guarded
    finally:
        server.terminate()
        server.wait()
    median = {name: statistics.median(values) for name, values in rows.items()}
    print(f"{'client':40} {'µs/call':>9} {'ratio':>7}")
    for name, value in median.items():
        base = median["aiohttp ClientSession" if name.startswith("aiohttp")
                      else "requests HTTPAdapter"]
        print(f"{name:40} {value:9.1f} {value / base:7.2f}")


if __name__ == "__main__":
    main()
