"""Claim: fournines' ASGI protection keeps most of bare Starlette's throughput.

Targets (issue 3): metrics + health + deadlines + shedding + a never-reached rate
limit at >= 0.7x the req/s of bare Starlette; the same with one OpenTelemetry
span per request at >= 2x the req/s of OpenTelemetry's own ASGI middleware.
Every variant serves the same handler under uvicorn (1 worker, uvloop,
httptools) pinned to core 0, with wrk (1 thread, 32 connections) on core 1.
Variants are interleaved over rounds; the median req/s per variant is
reported, and ratios are medians of per-round ratios.

Usage: .venv/bin/python bench/asgi_throughput.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._servers import Server, wrk

VARIANTS = ["bare", "fournines", "fournines_traced", "exporter", "otel", "usual"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    rps: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_no in range(args.rounds):
        order = VARIANTS[round_no % len(VARIANTS):] + VARIANTS[:round_no % len(VARIANTS)]
        for variant in order:
            with Server(variant) as server:
                wrk(server.port, server.path, seconds=1)  # warm up
                rps[variant].append(wrk(server.port, server.path, seconds=args.seconds))
            print(f"round {round_no + 1}: {variant:<17} {rps[variant][-1]:>9.0f} req/s",
                  flush=True)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rps[a], rps[b], strict=True))

    print("\n| variant | req/s (median) | x bare Starlette |")
    print("|---|---:|---:|")
    for variant in VARIANTS:
        print(f"| {variant} | {statistics.median(rps[variant]):.0f} | "
              f"{ratio(variant, 'bare'):.2f}x |")
    protected = ratio("fournines", "bare")
    traced = ratio("fournines_traced", "otel")
    print(f"\n- fournines stack vs bare Starlette: {protected:.2f}x (target >= 0.7x): "
          f"{'MET' if protected >= 0.7 else 'MISSED'}")
    print(f"- fournines + tracing vs OpenTelemetry ASGI middleware alone: {traced:.2f}x "
          f"(target >= 2x): {'MET' if traced >= 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
