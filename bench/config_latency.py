"""Config change -> subscriber latency: ConfigWatcher against a bare aetcd watch.

A private etcd on loopback; one process, one event loop; both watch the same key at
once (so every change is measured on both, interleaved by construction). Each of
``BENCH_CHANGES`` (200) changes is a put of a new valid value; a change's latency is
from just before the put to the moment the subscriber runs (ConfigWatcher: parsed,
validated into a frozen dataclass, snapshot written with fsync, then subscribers), or
the bare watch's iterator yields the event (no parsing at all: the floor).

    PYTHONPATH=src python bench/config_latency.py
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aetcd

from fournines.discovery import ConfigChanged, ConfigWatcher, put_config

CHANGES = int(os.environ.get("BENCH_CHANGES", "200"))
KEY = "bench/payment/limits"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    per_second: float = 10.0
    burst: int = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    rate: Rate = field(default_factory=Rate)
    retry_attempts: int = 3
    breaker_threshold: int = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_etcd(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("etcd") or "/usr/sbin/etcd"
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    proc = subprocess.Popen(
        [binary, "--name", "b1", "--data-dir", os.path.join(directory, "b1"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"b1=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 15
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=0.5) as r:
                if b'"true"' in r.read():
                    return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("etcd did not start")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(url: str, directory: str) -> tuple[list[float], list[float]]:
    host, port = url.removeprefix("http://").split(":")
    writer = aetcd.Client(host=host, port=int(port))
    reader = aetcd.Client(host=host, port=int(port))
    await writer.connect()
    await reader.connect()
    await put_config(url, KEY, Limits())
    ours: dict[int, float] = {}
    bare: dict[int, float] = {}
    sent: dict[int, float] = {}
    arrived = asyncio.Event()

    def subscriber(event: ConfigChanged) -> None:
        ours[event.revision] = time.perf_counter()
        arrived.set()

    watch = await reader.watch(KEY.encode())

    async def follow_bare() -> None:
        async for event in watch:
            bare[event.kv.mod_revision] = time.perf_counter()
            arrived.set()

    task = asyncio.create_task(follow_bare())
    async with ConfigWatcher(url, KEY, Limits, snapshot=Path(directory) / "limits.json",
                             probe_interval=5) as watcher:
        watcher.subscribe(subscriber)
        for n in range(CHANGES):
            value = f'{{"rate": {{"per_second": {n + 1}.5}}, "retry_attempts": {n % 7 + 1}}}'
            start = time.perf_counter()
            revision = (await writer.put(KEY.encode(), value.encode())).header.revision
            sent[revision] = start
            while revision not in ours or revision not in bare:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 10)
            await asyncio.sleep(0.005)  # let the loop settle between changes
    await watch.cancel()
    task.cancel()
    await writer.close()
    await reader.close()
    return ([(ours[r] - t) * 1e3 for r, t in sent.items()],
            [(bare[r] - t) * 1e3 for r, t in sent.items()])


def main() -> None:
    directory = tempfile.mkdtemp(prefix="fournines-bench-etcd-")
    proc, url = start_etcd(directory)
    try:
        ours, bare = asyncio.run(measure(url, directory))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
    print(f"# config change -> subscriber latency, {CHANGES} changes, etcd on loopback "
          f"(python {sys.version.split()[0]}; shared, noisy machine)")
    print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in (("ConfigWatcher subscriber", ours), ("bare aetcd watch (floor)", bare)):
        print(f"{name:28} {pct(values, 0.5):8.2f} {pct(values, 0.99):8.2f} {max(values):8.2f}")
    ratios: list[Any] = [o / b for o, b in zip(ours, bare, strict=True) if b > 0]
    print(f"ratio ours/bare (median of paired ratios): {statistics.median(ratios):.2f}x; "
          f"p50 {pct(ours, 0.5) / pct(bare, 0.5):.2f}x, p99 {pct(ours, 0.99) / pct(bare, 0.99):.2f}x")


if __name__ == "__main__":
    main()
