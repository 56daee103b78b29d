"""EtcdRegistry and EtcdEndpoints while their etcd is killed, stopped and restarted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fournines import Backoff
from fournines.discovery import (
    DiscoveryInterrupted,
    DiscoveryResumed,
    EtcdEndpoints,
    EtcdRegistry,
)
from fournines.testing import RecordingListener

from .._servers import EtcdServer
from ._helpers import etcd_client, eventually, kinds, payment
from .conftest import TTL


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> EtcdServer:
    """A private etcd: these tests kill, pause and restart it."""
    return etcd_server


async def test_the_registration_comes_back_after_etcd_is_killed_and_restarted(
    registry: EtcdRegistry, discovery: EtcdEndpoints, etcd: EtcdServer, prefix: str,
) -> None:
    await registry.register(payment(1))
    await eventually(lambda: len(discovery.endpoints()) == 1)

    etcd.kill()
    await eventually(lambda: not discovery.in_sync)
    await asyncio.sleep(TTL)  # down for a whole TTL: the lease is at risk
    etcd.start()

    await eventually(lambda: registry.is_registered and discovery.in_sync)
    async with etcd_client(etcd.url) as client:
        assert await client.get(payment(1).key(prefix).encode()) is not None
    await registry.register(payment(2))
    await eventually(lambda: len(discovery.endpoints()) == 2)


async def test_while_etcd_is_down_discovery_keeps_the_last_known_endpoints(
    registry: EtcdRegistry, discovery: EtcdEndpoints, etcd: EtcdServer,
) -> None:
    await registry.register(payment(1))
    await registry.register(payment(2))
    await eventually(lambda: len(discovery.endpoints()) == 2)
    known = discovery.endpoints()

    etcd.kill()
    await eventually(lambda: not discovery.in_sync)
    await asyncio.sleep(TTL)

    assert discovery.endpoints() is known
    assert discovery.stale_seconds > 0


async def test_a_stopped_etcd_is_noticed_and_the_endpoints_kept(
    registry: EtcdRegistry, discovery: EtcdEndpoints, etcd: EtcdServer,
) -> None:
    await registry.register(payment(1))
    await eventually(lambda: len(discovery.endpoints()) == 1)

    etcd.pause()
    try:
        # The stream stays open and silent: only the probe can tell.
        await eventually(lambda: not discovery.in_sync)
        assert discovery.endpoints() == ("http://127.0.0.1:8001",)
    finally:
        etcd.resume()
    await eventually(lambda: discovery.in_sync)


async def test_a_snapshot_lets_a_process_started_during_an_outage_find_its_peers(
    etcd: EtcdServer, registry: EtcdRegistry, tmp_path: Path, prefix: str,
) -> None:
    snapshot = tmp_path / "payment.json"
    await registry.register(payment(1))
    async with EtcdEndpoints(etcd.url, "payment", prefix=prefix, snapshot=snapshot) as first:
        await eventually(lambda: len(first.endpoints()) == 1)
        await eventually(snapshot.exists)
    etcd.kill()

    async with EtcdEndpoints(etcd.url, "payment", prefix=prefix, snapshot=snapshot,
                             timeout=0.5) as restarted:
        assert restarted.endpoints() == ("http://127.0.0.1:8001",)
        assert not restarted.in_sync
        assert 0 < restarted.stale_seconds < float("inf")


async def test_an_outage_is_reported_once_however_many_reconnections_fail(
    etcd: EtcdServer, registry: EtcdRegistry, prefix: str,
) -> None:
    seen = RecordingListener()
    await registry.register(payment(1))
    async with EtcdEndpoints(etcd.url, "payment", prefix=prefix, listeners=[seen],
                             backoff=Backoff(initial=0.05, cap=0.1)) as watcher:
        etcd.kill()
        await eventually(lambda: not watcher.in_sync)
        await asyncio.sleep(1)  # several failed reconnections
        etcd.start()
        await eventually(lambda: watcher.in_sync)

    assert len(seen.of(DiscoveryInterrupted)) == 1
    assert len(seen.of(DiscoveryResumed)) == 1
    assert seen.of(DiscoveryResumed)[0].stale > 0


async def test_an_instance_registered_while_etcd_is_down_is_registered_once_it_is_back(
    etcd: EtcdServer, recorder: RecordingListener, prefix: str,
) -> None:
    etcd.kill()
    async with EtcdRegistry(etcd.url, prefix=prefix, ttl=TTL, timeout=0.5,
                            listeners=[recorder]) as registry:
        assert not await registry.register(payment(1))
        assert not registry.is_registered

        etcd.start()

        await eventually(lambda: registry.is_registered)
    assert kinds(recorder)[0] == "registered"


async def test_discovery_started_while_etcd_is_down_finds_the_instances_once_it_is_back(
    etcd: EtcdServer, registry: EtcdRegistry, prefix: str,
) -> None:
    await registry.register(payment(1))
    etcd.kill()
    async with EtcdEndpoints(etcd.url, "payment", prefix=prefix, timeout=0.5) as watcher:
        assert watcher.endpoints() == ()
        assert watcher.stale_seconds == float("inf")

        etcd.start()

        await eventually(lambda: watcher.endpoints() == ("http://127.0.0.1:8001",))
