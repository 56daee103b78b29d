"""Claim: a call through ResilientTransport costs about the same at 10, 1,000 and 10,000 hosts.

Requests go round robin over N origins through ``ResilientTransport`` (default
``max_hosts=1000``) into an in-process transport that answers 200 at once, so
what is timed is the transport's own work per call: looking up (or making room
for) the host's policies, the breaker permit, the budget, the headers. Each row
prints µs per call; "bare" is the same loop on the in-process transport alone.

At 10,000 hosts every call is to a host outside the kept set: an idle closed
host is evicted and the new one's policies built (the thrashing
``http_client_host_evictions_total{kind="evicted"}`` counts); with ``host_key``
grouping those hosts (here 10 groups) the policies are found again.

Usage: .venv/bin/python bench/client_hosts.py [--calls 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from fournines.client import HostEvicted, ResilientTransport
from fournines.client.transport import ClientPolicy


class Answer(httpx.BaseTransport):
    """Answers every request with an empty 200, in process."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"")


def requests(hosts: int, calls: int) -> list[httpx.Request]:
    return [httpx.Request("GET", f"http://h{i % hosts}.example:8000/x") for i in range(calls)]


def measure(transport: httpx.BaseTransport, batch: list[httpx.Request]) -> float:
    """µs per call of ``transport`` over ``batch``."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for request in batch:
            transport.handle_request(request).close()
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed / len(batch) / 1000


def evictions(hosts: int, calls: int) -> dict[str, int]:
    counts = {"evicted": 0, "overflow": 0}

    def count(event: object) -> None:
        if isinstance(event, HostEvicted):
            counts[event.kind] += 1

    transport = ResilientTransport(Answer(), config=ClientPolicy(), listeners=[count])
    for request in requests(hosts, calls):
        transport.handle_request(request).close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for hosts in (10, 1_000, 10_000):
            batch = requests(hosts, args.calls)
            rows.setdefault(f"bare, {hosts:,} hosts", []).append(measure(Answer(), batch))
            transport = ResilientTransport(Answer(), config=ClientPolicy())
            measure(transport, batch)  # warm: every host seen once
            rows.setdefault(f"resilient, {hosts:,} hosts", []).append(
                measure(transport, batch))
        batch = requests(10_000, args.calls)
        grouped = ResilientTransport(
            Answer(), config=ClientPolicy(),
            host_key=lambda request: f"group{int(request.url.host[1:-8]) % 10}")
        measure(grouped, batch)
        rows.setdefault("resilient, 10,000 hosts in 10 host_key groups", []).append(
            measure(grouped, batch))
    print(f"{'variant':<48} {'µs/call':>8}")
    for name, values in rows.items():
        print(f"{name:<48} {statistics.median(values):8.2f}")
    for hosts in (1_000, 10_000):
        counts = evictions(hosts, args.calls)
        print(f"{hosts:,} hosts, {args.calls:,} calls: {counts['evicted']:,} evicted, "
              f"{counts['overflow']:,} overflow")


if __name__ == "__main__":
    main()
