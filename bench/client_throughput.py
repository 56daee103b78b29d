"""Claim: AsyncResilientTransport keeps >= 0.9x the req/s of a plain httpx.AsyncClient.

Both clients hit the same local uvicorn server (bare Starlette from
bench/asgi_apps.py, uvloop + httptools, pinned to core 0); the client runs in
this process pinned to core 1, with 16 concurrent tasks. The resilient client
has every policy on and nothing failing: per-host breaker, retries with a
per-host budget, attempt timeout, bulkhead, a deadline in context (so each
request carries x-request-timeout-ms and x-request-attempt). Variants are
interleaved over rounds; the ratio is the median of per-round ratios.

Usage: .venv/bin/python bench/client_throughput.py [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from bench._servers import Server

from fournines import deadline_after
from fournines.client.transport import AsyncResilientTransport, ClientPolicy

CONCURRENCY = 16
VARIANTS = ["plain", "resilient"]


def make_client(variant: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=CONCURRENCY)
    if variant == "plain":
        return httpx.AsyncClient(limits=limits)
    transport = AsyncResilientTransport(
        httpx.AsyncHTTPTransport(limits=limits),
        config=ClientPolicy(attempt_timeout=5.0, max_concurrent=64),
    )
    return httpx.AsyncClient(transport=transport)


async def measure(variant: str, url: str, seconds: float) -> float:
    async with make_client(variant) as client:
        done = 0

        async def worker(end: float) -> None:
            nonlocal done
            async with deadline_after(60.0):
                while time.perf_counter() < end:
                    response = await client.get(url)
                    if response.status_code != 200:
                        raise RuntimeError(f"{variant}: status {response.status_code}")
                    done += 1

        warm = time.perf_counter() + 0.5
        await asyncio.gather(*(worker(warm) for _ in range(CONCURRENCY)))
        done = 0
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + seconds) for _ in range(CONCURRENCY)))
        return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    rps: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with Server("bare", core=0) as server:
        url = f"http://127.0.0.1:{server.port}{server.path}"
        for round_no in range(args.rounds):
            order = VARIANTS if round_no % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                rps[variant].append(asyncio.run(measure(variant, url, args.seconds)))
                print(f"round {round_no + 1}: {variant:<10} {rps[variant][-1]:>8.0f} req/s",
                      flush=True)
    ratio = statistics.median(
        r / p for r, p in zip(rps["resilient"], rps["plain"], strict=True)
    )
    print("\n| client | req/s (median) | x plain httpx |")
    print("|---|---:|---:|")
    print(f"| plain httpx.AsyncClient | {statistics.median(rps['plain']):.0f} | 1.00x |")
    print(f"| httpx.AsyncClient + AsyncResilientTransport | "
          f"{statistics.median(rps['resilient']):.0f} | {ratio:.2f}x |")
    print(f"\n- resilient vs plain: {ratio:.2f}x (target >= 0.9x): "
          f"{'MET' if ratio >= 0.9 else 'MISSED'}")


if __name__ == "__main__":
    main()
