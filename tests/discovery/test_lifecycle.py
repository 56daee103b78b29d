"""Registration follows the service's life: a real uvicorn process, protect(hooks=), real etcd.

The instance is registered only once it is ready, withdrawn first thing on
SIGTERM (before its readiness fails, while it still accepts), and a SIGKILLed
one disappears when its lease expires. Times are measured and printed, never
asserted beyond generous bounds (the machine is shared).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fournines.discovery import EndpointsChanged, EtcdEndpoints, Instance

from .._servers import EtcdServer, free_port
from ..asgi._uvicorn import ROOT, ServedModule
from ._helpers import etcd_client

APP = "tests.discovery.apps.registered_app"


def served(etcd: EtcdServer, prefix: str, **env: str) -> ServedModule:
    return ServedModule(APP, env={"ETCD_URL": etcd.url, "PREFIX": prefix, "TTL": "2", **env})


class Sightings:
    """When (monotonic) each change of the watched endpoints was seen."""

    def __init__(self) -> None:
        self.added: dict[str, float] = {}
        self.removed: dict[str, float] = {}

    def __call__(self, event: object) -> None:
        if isinstance(event, EndpointsChanged):
            now = time.monotonic()
            for url in event.added:
                self.added.setdefault(url, now)
            for url in event.removed:
                self.removed.setdefault(url, now)


async def next_set(watcher: EtcdEndpoints, condition: object) -> tuple[Instance, ...]:
    async def wait() -> tuple[Instance, ...]:
        async for instances in watcher.changes():
            if condition(instances):  # type: ignore[operator]
                return instances
        raise AssertionError("unreachable")

    return await asyncio.wait_for(wait(), 30)


async def test_a_protected_service_is_registered_only_once_it_is_ready(
    etcd: EtcdServer, prefix: str,
) -> None:
    server = served(etcd, prefix, STARTUP_DELAY="1")
    async with EtcdEndpoints(etcd.url, "payment", prefix=prefix, probe_interval=0.3) as watcher:
        started = asyncio.create_task(asyncio.to_thread(server.start))
        try:
            await next_set(watcher, bool)
            # Seen the moment it was registered: it already listens and is ready (its
            # one-second startup would refuse this connection had it registered early).
            async with httpx.AsyncClient() as client:
                ready = await client.get(server.url + "/readyz")
            assert ready.status_code == 200
            assert watcher.endpoints() == (server.url,)
        finally:
            await started
            server.stop()


async def test_a_drained_service_leaves_discovery_before_its_readiness_fails(
    etcd: EtcdServer, prefix: str,
) -> None:
    sightings = Sightings()
    server = served(etcd, prefix, STARTUP_DELAY="0", DRAIN_DELAY="1")
    async with EtcdEndpoints(etcd.url, "payment", prefix=prefix, probe_interval=0.3,
                             listeners=[sightings]) as watcher:
        await asyncio.to_thread(server.start)
        try:
            await next_set(watcher, bool)
            key = Instance(service="payment", id="p1", address=server.url).key(prefix).encode()
            async with httpx.AsyncClient() as client, etcd_client(etcd.url) as etcd_direct:
                signalled = time.monotonic()
                server.signal(signal.SIGTERM)
                while (probe := await client.get(server.url + "/readyz")).status_code == 200:
                    pass
                readiness_failed = time.monotonic()
                # Deregistered before readiness failed: etcd no longer has the record.
                assert await etcd_direct.get(key) is None
                await next_set(watcher, lambda instances: not instances)
                # And the server still accepts while clients have already been told to go.
                assert (await client.get(server.url + "/")).text == "paid"
            assert probe.status_code == 503
            assert await asyncio.to_thread(server.wait, 20) == 0
        finally:
            server.stop()
    removed = sightings.removed[server.url] - signalled
    print(f"\nwatcher saw the removal {removed * 1000:.1f} ms after SIGTERM; readiness "
          f"failed {(readiness_failed - signalled) * 1000:.1f} ms after SIGTERM")
    assert 0 < removed < 5  # the issue asks for 100 ms; this machine is shared


async def test_a_sigkilled_service_leaves_discovery_when_its_lease_expires(
    etcd: EtcdServer, prefix: str,
) -> None:
    sightings = [Sightings(), Sightings()]
    server = served(etcd, prefix, STARTUP_DELAY="0")
    async with EtcdEndpoints(etcd.url, "payment", prefix=prefix, probe_interval=0.3,
                             listeners=[sightings[0]]) as one, \
            EtcdEndpoints(etcd.url, "payment", prefix=prefix, probe_interval=0.3,
                          listeners=[sightings[1]]) as other:
        await asyncio.to_thread(server.start)
        try:
            for watcher in (one, other):
                await next_set(watcher, bool)
            killed = time.monotonic()
            server.signal(signal.SIGKILL)
            for watcher in (one, other):
                await next_set(watcher, lambda instances: not instances)
        finally:
            server.stop()
    gone = [seen.removed[server.url] - killed for seen in sightings]
    print(f"\nwatchers saw the SIGKILLed instance gone {gone[0]:.2f} s and {gone[1]:.2f} s "
          "after the kill (TTL 2 s)")
    assert all(0 < g < 2 + 10 for g in gone)  # TTL + 1 s asked; generous on a shared machine


async def test_a_worker_of_fournines_serve_deregisters_first_thing_on_sigterm(
    etcd: EtcdServer, prefix: str, tmp_path: Path,
) -> None:
    sightings = Sightings()
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}", "PORT": str(port),
           "ETCD_URL": etcd.url, "PREFIX": prefix, "TTL": "2", "STARTUP_DELAY": "0"}
    log = (tmp_path / "serve.log").open("wb")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "fournines", "serve", f"{APP}:app", "--workers", "1",
         "--bind", f"127.0.0.1:{port}", "--drain-delay", "1", "--no-access-log"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with EtcdEndpoints(etcd.url, "payment", prefix=prefix, probe_interval=0.3,
                                 listeners=[sightings]) as watcher:
            await next_set(watcher, bool)
            signalled = time.monotonic()
            supervisor.send_signal(signal.SIGTERM)
            await next_set(watcher, lambda instances: not instances)
            async with httpx.AsyncClient() as client:
                # Gone from discovery while the worker still serves (its drain delay).
                assert (await client.get(address + "/")).text == "paid"
            assert await asyncio.to_thread(supervisor.wait, 30) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(5)
        log.close()
    removed = sightings.removed[address] - signalled
    print(f"\nfournines serve: watcher saw the removal {removed * 1000:.1f} ms after SIGTERM "
          "to the supervisor")
    assert 0 < removed < 5
