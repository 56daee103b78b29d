"""Claim: under 3x overload, fournines keeps successful latency low and goodput high.

The handler does ~5 ms of await and ~1 ms of CPU (capacity about 900 req/s on
one core here). 256 keep-alive connections drive it closed-loop for a while,
first unprotected, then behind fournines' load shedder. Reported per variant:
capacity (2xx/s), p50/p99 of successful responses, 503s and their p99, timeouts
and reconnects. Targets (issue 3): with fournines, p99 of successful responses
under 200 ms, goodput >= 85 % of the capacity measured unprotected, every
excess request answered 503 quickly (no timeouts).

Usage: .venv/bin/python bench/asgi_overload.py [--seconds 15] [--connections 256]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._http_load import LoadResult, run_load
from bench._servers import Server


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def describe(name: str, result: LoadResult) -> str:
    return (f"| {name} | {result.rate(200):.0f} | {ms(result.percentile(200, 50))} | "
            f"{ms(result.percentile(200, 99))} | {result.count(503)} | "
            f"{ms(result.percentile(503, 99))} | {result.timeouts} | {result.errors} | "
            f"{result.reconnects} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=256)
    args = parser.parse_args()
    results: dict[str, LoadResult] = {}
    with Server("overload_bare", path="/work") as server:
        # Capacity: enough connections to keep the one core busy, not enough to queue much.
        asyncio.run(run_load("/work", port=server.port, connections=16, duration=1))
        capacity = asyncio.run(run_load("/work", port=server.port, connections=16,
                                        duration=5)).rate(200)
    print(f"capacity (16 connections, unprotected): {capacity:.0f} req/s", flush=True)
    for variant in ("overload_bare", "overload_fournines_asgi", "overload_fournines"):
        with Server(variant, path="/work") as server:
            asyncio.run(run_load("/work", port=server.port, connections=8, duration=1))
            results[variant] = asyncio.run(run_load(
                "/work", port=server.port, connections=args.connections,
                duration=args.seconds, timeout=30))
            print(f"{variant}: done", flush=True)
    print("\n| variant | 2xx/s | p50 2xx | p99 2xx | 503s | p99 503 | timeouts | errors | "
          "reconnects |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        print(describe(name, result))
    ours = results["overload_fournines"]
    p99 = ours.percentile(200, 99)
    goodput = ours.rate(200) / max(capacity, 1e-9)
    print(f"\n- p99 of successful responses with fournines: {ms(p99)} (target < 200 ms): "
          f"{'MET' if p99 is not None and p99 < 0.2 else 'MISSED'}")
    print(f"- goodput with fournines: {goodput:.0%} of the capacity "
          f"of {capacity:.0f} req/s (target >= 85 %): {'MET' if goodput >= 0.85 else 'MISSED'}")
    print(f"- timeouts with fournines: {ours.timeouts} (target 0): "
          f"{'MET' if ours.timeouts == 0 else 'MISSED'}")


if __name__ == "__main__":
    main()
