"""EtcdRegistry and EtcdEndpoints against a real etcd: registration that never gives up,
discovery that keeps the last known endpoints."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fournines import Backoff
from fournines.discovery import (
    DiscoveryInterrupted,
    DiscoveryResumed,
    EndpointsChanged,
    EtcdEndpoints,
    EtcdRegistry,
    Instance,
    RegistrationChanged,
    ServiceRegistry,
)
from fournines.testing import RecordingListener

from .._servers import EtcdServer
from ._helpers import Relay, etcd_client, eventually

TTL = 2.0


def payment(n: int) -> Instance:
    return Instance(service="payment", id=f"p{n}", address=f"http://127.0.0.1:{8000 + n}")


def kinds(recorder: RecordingListener) -> list[str]:
    return [e.kind for e in recorder.of(RegistrationChanged)]


@pytest.fixture
async def registry(etcd_server: EtcdServer,
                   recorder: RecordingListener) -> AsyncIterator[EtcdRegistry]:
    async with EtcdRegistry(etcd_server.url, ttl=TTL, listeners=[recorder]) as reg:
        yield reg


@pytest.fixture
async def discovery(etcd_server: EtcdServer) -> AsyncIterator[EtcdEndpoints]:
    async with EtcdEndpoints(etcd_server.url, "payment", probe_interval=0.3) as source:
        yield source


async def test_a_registered_instance_is_visible_to_discovery(
    registry: EtcdRegistry, discovery: EtcdEndpoints, recorder: RecordingListener,
) -> None:
    assert await registry.register(payment(1))

    await eventually(lambda: discovery.endpoints() == ("http://127.0.0.1:8001",))
    assert registry.is_registered
    assert kinds(recorder) == ["registered"]
    assert discovery.instances == (payment(1),)


async def test_the_record_is_the_documented_json_under_the_documented_key(
    registry: EtcdRegistry, etcd_server: EtcdServer,
) -> None:
    await registry.register(payment(1))

    async with etcd_client(etcd_server.url) as client:
        got = await client.get(b"/fournines/services/payment/p1")
    assert json.loads(got.value)["address"] == "http://127.0.0.1:8001"
    assert got.lease != 0


async def test_a_deregistered_instance_leaves_discovery_at_once(
    etcd_server: EtcdServer, discovery: EtcdEndpoints, recorder: RecordingListener,
) -> None:
    # A TTL far longer than the wait: only the revoke can remove the key in time.
    async with EtcdRegistry(etcd_server.url, ttl=60, listeners=[recorder]) as registry:
        await registry.register(payment(1))
        await registry.register(payment(2))
        await eventually(lambda: len(discovery.endpoints()) == 2)

        await registry.deregister(payment(1))

        await eventually(lambda: discovery.endpoints() == ("http://127.0.0.1:8002",),
                         timeout=20)
    assert "deregistered" in kinds(recorder)


async def test_a_key_deleted_by_someone_else_is_registered_again(
    registry: EtcdRegistry, etcd_server: EtcdServer, recorder: RecordingListener,
) -> None:
    await registry.register(payment(1))

    async with etcd_client(etcd_server.url) as client:
        await client.delete(b"/fournines/services/payment/p1")
        await eventually(lambda: "re-registered" in kinds(recorder))
        assert await client.get(b"/fournines/services/payment/p1") is not None
    lost = [e for e in recorder.of(RegistrationChanged) if e.kind == "lost"]
    assert lost[0].reason == "key deleted"
    assert registry.is_registered


async def test_the_registration_comes_back_after_etcd_is_killed_and_restarted(
    registry: EtcdRegistry, discovery: EtcdEndpoints, etcd_server: EtcdServer,
) -> None:
    await registry.register(payment(1))
    await eventually(lambda: len(discovery.endpoints()) == 1)

    etcd_server.kill()
    await eventually(lambda: not discovery.in_sync)
    await asyncio.sleep(TTL)  # down for a whole TTL: the lease is at risk
    etcd_server.start()

    await eventually(lambda: registry.is_registered and discovery.in_sync)
    async with etcd_client(etcd_server.url) as client:
        assert await client.get(b"/fournines/services/payment/p1") is not None
    await registry.register(payment(2))
    await eventually(lambda: len(discovery.endpoints()) == 2)


async def test_a_lost_lease_is_granted_again(
    registry: EtcdRegistry, etcd_server: EtcdServer, recorder: RecordingListener,
) -> None:
    await registry.register(payment(1))
    async with etcd_client(etcd_server.url) as client:
        got = await client.get(b"/fournines/services/payment/p1")
        await client.revoke_lease(got.lease)

        await eventually(lambda: "re-registered" in kinds(recorder))
        again = await client.get(b"/fournines/services/payment/p1")
    assert again is not None and again.lease != got.lease


async def test_while_etcd_is_down_discovery_keeps_the_last_known_endpoints(
    registry: EtcdRegistry, discovery: EtcdEndpoints, etcd_server: EtcdServer,
) -> None:
    await registry.register(payment(1))
    await registry.register(payment(2))
    await eventually(lambda: len(discovery.endpoints()) == 2)
    known = discovery.endpoints()

    etcd_server.kill()
    await eventually(lambda: not discovery.in_sync)
    await asyncio.sleep(TTL)

    assert discovery.endpoints() is known
    assert discovery.stale_seconds > 0


async def test_a_stopped_etcd_is_noticed_and_the_endpoints_kept(
    registry: EtcdRegistry, discovery: EtcdEndpoints, etcd_server: EtcdServer,
) -> None:
    await registry.register(payment(1))
    await eventually(lambda: len(discovery.endpoints()) == 1)

    etcd_server.pause()
    try:
        # The stream stays open and silent: only the probe can tell.
        await eventually(lambda: not discovery.in_sync)
        assert discovery.endpoints() == ("http://127.0.0.1:8001",)
    finally:
        etcd_server.resume()
    await eventually(lambda: discovery.in_sync)


async def test_an_instance_whose_keepalive_stopped_leaves_discovery_when_its_lease_expires(
    etcd_server: EtcdServer, discovery: EtcdEndpoints,
) -> None:
    crashed = EtcdRegistry(etcd_server.url, ttl=TTL)
    await crashed.register(payment(1))
    await eventually(lambda: len(discovery.endpoints()) == 1)

    await crashed.aclose(deregister=False)  # what a SIGKILLed process leaves behind

    await eventually(lambda: discovery.endpoints() == ())


async def test_after_a_compaction_while_disconnected_the_view_equals_a_fresh_listing(
    etcd_server: EtcdServer, registry: EtcdRegistry,
) -> None:
    relay = Relay(etcd_server.client_port)
    await relay.start()
    recorder = RecordingListener()
    try:
        await registry.register(payment(1))
        await registry.register(payment(2))
        async with EtcdEndpoints(relay.url, "payment", probe_interval=0.3,
                                 listeners=[recorder]) as watcher:
            await eventually(lambda: len(watcher.endpoints()) == 2)
            relay.cut()
            await eventually(lambda: not watcher.in_sync)

            async with etcd_client(etcd_server.url) as client:
                for n in range(3, 13):
                    await registry.register(payment(n))
                for n in range(4, 13, 2):
                    await registry.deregister(payment(n))
                await registry.deregister(payment(1))
                status = await client.get(b"/fournines/services/payment/p2")
                await client.compact(status.header.revision)
                listing = await client.get_prefix(b"/fournines/services/payment/")
                fresh = tuple(sorted(json.loads(kv.value)["address"] for kv in listing))
            relay.restore()

            await eventually(lambda: watcher.in_sync and watcher.endpoints() == fresh)
    finally:
        await relay.aclose()
    assert fresh == tuple(f"http://127.0.0.1:{8000 + n}" for n in (2, 3, 5, 7, 9, 11))
    changes = recorder.of(EndpointsChanged)
    assert [set(c.removed) for c in changes[1:]] == [{"http://127.0.0.1:8001"}]


async def test_a_snapshot_lets_a_process_started_during_an_outage_find_its_peers(
    etcd_server: EtcdServer, registry: EtcdRegistry, tmp_path: Path,
) -> None:
    snapshot = tmp_path / "payment.json"
    await registry.register(payment(1))
    async with EtcdEndpoints(etcd_server.url, "payment", snapshot=snapshot) as first:
        await eventually(lambda: len(first.endpoints()) == 1)
        await eventually(snapshot.exists)
    etcd_server.kill()

    async with EtcdEndpoints(etcd_server.url, "payment", snapshot=snapshot,
                             timeout=0.5) as restarted:
        assert restarted.endpoints() == ("http://127.0.0.1:8001",)
        assert not restarted.in_sync
        assert 0 < restarted.stale_seconds < float("inf")


async def test_the_endpoints_are_one_cached_tuple_until_the_set_changes(
    registry: EtcdRegistry, discovery: EtcdEndpoints,
) -> None:
    await registry.register(payment(1))
    await eventually(lambda: len(discovery.endpoints()) == 1)
    first = discovery.endpoints()

    await registry.register(Instance(service="payment", id="p1",
                                     address="http://127.0.0.1:8001", version="2"))
    await eventually(lambda: discovery.instances[0].version == "2")

    assert discovery.endpoints() is first


async def test_a_malformed_record_is_skipped_not_served(
    etcd_server: EtcdServer, registry: EtcdRegistry, discovery: EtcdEndpoints,
) -> None:
    async with etcd_client(etcd_server.url) as client:
        await client.put(b"/fournines/services/payment/bad", b"not json")
    await registry.register(payment(1))

    await eventually(lambda: len(discovery.endpoints()) == 1)
    assert discovery.endpoints() == ("http://127.0.0.1:8001",)


async def test_the_etcd_registry_watch_yields_each_changed_set(
    registry: EtcdRegistry,
) -> None:
    assert isinstance(registry, ServiceRegistry)
    seen: list[tuple[str, ...]] = []

    async def follow() -> None:
        async for instances in registry.watch("payment"):
            seen.append(tuple(i.id for i in instances))
            if instances and len(instances) == 2:
                return

    task = asyncio.create_task(follow())
    await eventually(lambda: seen == [()])
    await registry.register(payment(1))
    await registry.register(payment(2))
    await asyncio.wait_for(task, 10)
    assert seen[-1] == ("p1", "p2")


async def test_an_outage_is_reported_once_however_many_reconnections_fail(
    etcd_server: EtcdServer, registry: EtcdRegistry,
) -> None:
    seen = RecordingListener()
    await registry.register(payment(1))
    async with EtcdEndpoints(etcd_server.url, "payment", listeners=[seen],
                             backoff=Backoff(initial=0.05, cap=0.1)) as watcher:
        etcd_server.kill()
        await eventually(lambda: not watcher.in_sync)
        await asyncio.sleep(1)  # several failed reconnections
        etcd_server.start()
        await eventually(lambda: watcher.in_sync)

    assert len(seen.of(DiscoveryInterrupted)) == 1
    assert len(seen.of(DiscoveryResumed)) == 1
    assert seen.of(DiscoveryResumed)[0].stale > 0


REGISTER_AND_HANG = """
import asyncio, sys
from fournines.discovery import EtcdRegistry, Instance

async def main() -> None:
    registry = EtcdRegistry(sys.argv[1], ttl=2)
    await registry.register(Instance(service="payment", id="p9", address="http://127.0.0.1:8009"))
    print("registered", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_sigkilled_instance_leaves_every_watcher_within_its_ttl(
    etcd_server: EtcdServer, discovery: EtcdEndpoints, tmp_path: Path,
) -> None:
    script = tmp_path / "instance.py"
    script.write_text(REGISTER_AND_HANG)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), etcd_server.url, env=env, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"registered\n"
        await eventually(lambda: discovery.endpoints() == ("http://127.0.0.1:8009",))
    finally:
        proc.kill()
        await proc.wait()

    await eventually(lambda: discovery.endpoints() == ())


async def test_an_instance_registered_while_etcd_is_down_is_registered_once_it_is_back(
    etcd_server: EtcdServer, recorder: RecordingListener,
) -> None:
    etcd_server.kill()
    async with EtcdRegistry(etcd_server.url, ttl=TTL, timeout=0.5,
                            listeners=[recorder]) as registry:
        assert not await registry.register(payment(1))
        assert not registry.is_registered

        etcd_server.start()

        await eventually(lambda: registry.is_registered)
    assert kinds(recorder)[0] == "registered"


async def test_discovery_started_while_etcd_is_down_finds_the_instances_once_it_is_back(
    etcd_server: EtcdServer, registry: EtcdRegistry,
) -> None:
    await registry.register(payment(1))
    etcd_server.kill()
    async with EtcdEndpoints(etcd_server.url, "payment", timeout=0.5) as watcher:
        assert watcher.endpoints() == ()
        assert watcher.stale_seconds == float("inf")

        etcd_server.start()

        await eventually(lambda: watcher.endpoints() == ("http://127.0.0.1:8001",))


async def test_registering_an_instance_again_updates_its_record_without_removing_it(
    registry: EtcdRegistry, etcd_server: EtcdServer,
) -> None:
    seen = RecordingListener()
    await registry.register(payment(1))
    async with EtcdEndpoints(etcd_server.url, "payment", listeners=[seen]) as watcher:
        await registry.register(Instance(service="payment", id="p1",
                                         address="http://127.0.0.1:8001", version="2"))
        await eventually(lambda: watcher.instances[0].version == "2")

    assert [e.removed for e in seen.of(EndpointsChanged)] == [()]
    assert registry.is_registered
