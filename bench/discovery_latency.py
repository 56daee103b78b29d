"""Discovery: endpoint change -> client view latency, and the keepalive's CPU per instance.

A private etcd on loopback; one process, one event loop.

1. Latency: ``BENCH_CHANGES`` (200) endpoint changes, alternately an instance's record
   put and deleted (what a registration and a deregistration write). A change's latency
   is from just before the write to the moment :class:`EtcdEndpoints` has the new set
   (its ``EndpointsChanged`` listener runs: record parsed, set diffed, tuple replaced),
   measured together with a bare aetcd prefix watch on the same prefix (its iterator
   yields the event: the floor). Both follow every change, interleaved by construction.
2. Keepalive CPU: this process's CPU time (``time.process_time``) over ``BENCH_SECONDS``
   (20) with ``BENCH_INSTANCES`` (50) instances registered by :class:`EtcdRegistry`
   (TTL 10 s: a lease refresh and a read-back every 3.3 s each), against the same number
   of leases refreshed by a bare aetcd loop at the same interval (no read-back: the
   floor), and an idle window; the windows alternate, ``BENCH_ROUNDS`` (3) rounds.

    PYTHONPATH=src python bench/discovery_latency.py
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import aetcd

from config_latency import pct, start_etcd
from fournines.discovery import EndpointsChanged, EtcdEndpoints, EtcdRegistry, Instance

CHANGES = int(os.environ.get("BENCH_CHANGES", "200"))
INSTANCES = int(os.environ.get("BENCH_INSTANCES", "50"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PREFIX = "bench/services"
TTL = 10.0


def client(url: str) -> Any:
    host, port = url.removeprefix("http://").split(":")
    return aetcd.Client(host=host, port=int(port))


async def latency(url: str) -> tuple[list[float], list[float]]:
    writer, reader = client(url), client(url)
    await writer.connect()
    await reader.connect()
    ours: list[float] = []
    bare: list[float] = []
    sent: list[float] = []
    arrived = asyncio.Event()
    listed = False

    def listener(event: object) -> None:
        # Each change here is one write: the n-th change seen is the n-th write.
        if isinstance(event, EndpointsChanged) and listed:
            ours.append(time.perf_counter())
            arrived.set()

    steady = Instance(service="payment", id="steady", address="http://127.0.0.1:9000")
    await writer.put(steady.key(PREFIX).encode(), steady.to_json().encode())
    watch = await reader.watch_prefix(f"/{PREFIX}/payment/".encode())

    async def follow_bare() -> None:
        async for _ in watch:
            bare.append(time.perf_counter())
            arrived.set()

    task = asyncio.create_task(follow_bare())
    moving = Instance(service="payment", id="moving", address="http://127.0.0.1:9001")
    key = moving.key(PREFIX).encode()
    async with EtcdEndpoints(url, "payment", prefix=PREFIX, probe_interval=5,
                             listeners=[listener]):
        listed = True
        for n in range(CHANGES):
            sent.append(time.perf_counter())
            if n % 2 == 0:
                await writer.put(key, moving.to_json().encode())
            else:
                await writer.delete(key)
            while len(ours) <= n or len(bare) <= n:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 10)
            await asyncio.sleep(0.005)  # let the loop settle between changes
    await watch.cancel()
    task.cancel()
    await writer.close()
    await reader.close()
    return ([(o - t) * 1e3 for o, t in zip(ours, sent, strict=True)],
            [(b - t) * 1e3 for b, t in zip(bare, sent, strict=True)])


async def cpu_window(seconds: float) -> float:
    before = time.process_time()
    await asyncio.sleep(seconds)
    return time.process_time() - before


async def keepalive_cpu(url: str) -> dict[str, list[float]]:
    windows: dict[str, list[float]] = {"idle": [], "EtcdRegistry": [], "bare aetcd": []}
    for _ in range(ROUNDS):
        windows["idle"].append(await cpu_window(SECONDS))

        registry = EtcdRegistry(url, ttl=TTL, prefix=PREFIX)
        for n in range(INSTANCES):
            await registry.register(Instance(service="cpu", id=f"i{n}",
                                             address=f"http://127.0.0.1:{10000 + n}"))
        windows["EtcdRegistry"].append(await cpu_window(SECONDS))
        await registry.aclose()

        bare = client(url)
        await bare.connect()
        leases = [await bare.lease(int(TTL)) for _ in range(INSTANCES)]

        async def refresh(lease: Any, offset: float) -> None:
            await asyncio.sleep(offset)
            while True:
                await lease.refresh()
                await asyncio.sleep(TTL / 3)

        tasks = [asyncio.create_task(refresh(lease, i * TTL / 3 / INSTANCES))
                 for i, lease in enumerate(leases)]
        windows["bare aetcd"].append(await cpu_window(SECONDS))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lease in leases:
            await lease.revoke()
        await bare.close()
    return windows


def main() -> None:
    directory = tempfile.mkdtemp(prefix="fournines-bench-discovery-")
    proc, url = start_etcd(directory)
    try:
        ours, bare = asyncio.run(latency(url))
        cpu = asyncio.run(keepalive_cpu(url))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
    print(f"# endpoint change -> client view latency, {CHANGES} changes, etcd on loopback "
          f"(python {sys.version.split()[0]}; shared, noisy machine)")
    print(f"{'':30} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in (("EtcdEndpoints (view replaced)", ours),
                         ("bare aetcd watch (floor)", bare)):
        print(f"{name:30} {pct(values, 0.5):8.2f} {pct(values, 0.99):8.2f} {max(values):8.2f}")
    ratios = [o / b for o, b in zip(ours, bare, strict=True) if b > 0]
    print(f"ratio ours/bare (median of paired ratios): {statistics.median(ratios):.2f}x")
    idle = statistics.median(cpu["idle"])
    print(f"\n# keepalive CPU, {INSTANCES} instances, TTL {TTL:g} s, {ROUNDS} rounds of "
          f"{SECONDS:g} s windows (process CPU, idle window subtracted)")
    print(f"{'':14} {'CPU ms/s':>9} {'per instance µs/s':>18} {'% of a core':>12}")
    for name in ("idle", "EtcdRegistry", "bare aetcd"):
        total = statistics.median(cpu[name]) / SECONDS
        extra = max(0.0, total - idle / SECONDS) if name != "idle" else total
        per = extra / INSTANCES * 1e6 if name != "idle" else float("nan")
        print(f"{name:14} {total * 1e3:9.2f} {per:18.1f} {extra * 100:12.3f}")
    print("rounds (CPU s per window):", {k: [round(v, 3) for v in vs] for k, vs in cpu.items()})


if __name__ == "__main__":
    main()
