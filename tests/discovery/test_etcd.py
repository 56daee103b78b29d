"""EtcdRegistry and EtcdEndpoints against a real etcd shared by the module (never stopped):
registration, re-registration, expiry, compaction, records."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from fournines.client import EndpointSource
from fournines.discovery import (
    EndpointsChanged,
    EtcdEndpoints,
    EtcdRegistry,
    Instance,
    RegistrationChanged,
    ServiceRegistry,
)
from fournines.testing import RecordingListener

from .._servers import EtcdServer
from ._helpers import Relay, etcd_client, eventually, kinds, payment
from .conftest import TTL


async def test_a_registered_instance_is_visible_to_discovery(
    registry: EtcdRegistry, discovery: EtcdEndpoints, recorder: RecordingListener,
) -> None:
    assert await registry.register(payment(1))

    await eventually(lambda: discovery.endpoints() == ("http://127.0.0.1:8001",))
    assert registry.is_registered
    assert kinds(recorder) == ["registered"]
    assert discovery.instances == (payment(1),)
    assert isinstance(discovery, EndpointSource)


async def test_the_record_is_the_documented_json_under_the_documented_key(
    etcd: EtcdServer,
) -> None:
    async with EtcdRegistry(etcd.url, ttl=TTL) as registry:  # the default prefix
        await registry.register(payment(1))

        async with etcd_client(etcd.url) as client:
            got = await client.get(b"/fournines/services/payment/p1")
    assert json.loads(got.value) == {
        "service": "payment", "id": "p1", "address": "http://127.0.0.1:8001",
        "metadata": {}, "version": None}
    assert got.lease != 0


async def test_a_deregistered_instance_leaves_discovery_at_once(
    etcd: EtcdServer, discovery: EtcdEndpoints, recorder: RecordingListener, prefix: str,
) -> None:
    # A TTL far longer than the wait: only the revoke can remove the key in time.
    async with EtcdRegistry(etcd.url, prefix=prefix, ttl=60, listeners=[recorder]) as registry:
        await registry.register(payment(1))
        await registry.register(payment(2))
        await eventually(lambda: len(discovery.endpoints()) == 2)

        await registry.deregister(payment(1))

        await eventually(lambda: discovery.endpoints() == ("http://127.0.0.1:8002",),
                         timeout=20)
    assert "deregistered" in kinds(recorder)


async def test_a_key_deleted_by_someone_else_is_registered_again(
    registry: EtcdRegistry, etcd: EtcdServer, recorder: RecordingListener, prefix: str,
) -> None:
    await registry.register(payment(1))

    async with etcd_client(etcd.url) as client:
        await client.delete(payment(1).key(prefix).encode())
        await eventually(lambda: "re-registered" in kinds(recorder))
        assert await client.get(payment(1).key(prefix).encode()) is not None
    lost = [e for e in recorder.of(RegistrationChanged) if e.kind == "lost"]
    assert lost[0].reason == "key deleted"
    assert registry.is_registered


async def test_a_lost_lease_is_granted_again(
    registry: EtcdRegistry, etcd: EtcdServer, recorder: RecordingListener, prefix: str,
) -> None:
    await registry.register(payment(1))
    async with etcd_client(etcd.url) as client:
        got = await client.get(payment(1).key(prefix).encode())
        await client.revoke_lease(got.lease)

        await eventually(lambda: "re-registered" in kinds(recorder))
        again = await client.get(payment(1).key(prefix).encode())
    assert again is not None and again.lease != got.lease


async def test_an_instance_whose_keepalive_stopped_leaves_discovery_when_its_lease_expires(
    etcd: EtcdServer, discovery: EtcdEndpoints, prefix: str,
) -> None:
    crashed = EtcdRegistry(etcd.url, prefix=prefix, ttl=TTL)
    await crashed.register(payment(1))
    await eventually(lambda: len(discovery.endpoints()) == 1)

    await crashed.aclose(deregister=False)  # what a SIGKILLed process leaves behind

    await eventually(lambda: discovery.endpoints() == ())


async def test_after_a_compaction_while_disconnected_the_view_equals_a_fresh_listing(
    etcd: EtcdServer, registry: EtcdRegistry, prefix: str,
) -> None:
    relay = Relay(etcd.client_port)
    await relay.start()
    recorder = RecordingListener()
    try:
        await registry.register(payment(1))
        await registry.register(payment(2))
        async with EtcdEndpoints(relay.url, "payment", prefix=prefix, probe_interval=0.3,
                                 listeners=[recorder]) as watcher:
            await eventually(lambda: len(watcher.endpoints()) == 2)
            relay.cut()
            await eventually(lambda: not watcher.in_sync)

            async with etcd_client(etcd.url) as client:
                for n in range(3, 13):
                    await registry.register(payment(n))
                for n in range(4, 13, 2):
                    await registry.deregister(payment(n))
                await registry.deregister(payment(1))
                status = await client.get(payment(2).key(prefix).encode())
                await client.compact(status.header.revision)
                listing = await client.get_prefix(f"/{prefix}/payment/".encode())
                fresh = tuple(sorted(json.loads(kv.value)["address"] for kv in listing))
            relay.restore()

            await eventually(lambda: watcher.in_sync and watcher.endpoints() == fresh)
    finally:
        await relay.aclose()
    assert fresh == tuple(f"http://127.0.0.1:{8000 + n}" for n in (2, 3, 5, 7, 9, 11))
    changes = recorder.of(EndpointsChanged)
    assert [set(c.removed) for c in changes[1:]] == [{"http://127.0.0.1:8001"}]


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
    etcd: EtcdServer, registry: EtcdRegistry, discovery: EtcdEndpoints, prefix: str,
) -> None:
    async with etcd_client(etcd.url) as client:
        await client.put(f"/{prefix}/payment/bad".encode(), b"not json")
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


REGISTER_AND_HANG = """
import asyncio, sys
from fournines.discovery import EtcdRegistry, Instance

async def main() -> None:
    registry = EtcdRegistry(sys.argv[1], ttl=2, prefix=sys.argv[2])
    await registry.register(Instance(service="payment", id="p9", address="http://127.0.0.1:8009"))
    print("registered", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_sigkilled_instance_leaves_every_watcher_within_its_ttl(
    etcd: EtcdServer, discovery: EtcdEndpoints, tmp_path: Path, prefix: str,
) -> None:
    script = tmp_path / "instance.py"
    script.write_text(REGISTER_AND_HANG)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), etcd.url, prefix, env=env,
        stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"registered\n"
        await eventually(lambda: discovery.endpoints() == ("http://127.0.0.1:8009",))
    finally:
        proc.kill()
        await proc.wait()

    await eventually(lambda: discovery.endpoints() == ())


async def test_registering_an_instance_again_updates_its_record_without_removing_it(
    registry: EtcdRegistry, etcd: EtcdServer, prefix: str,
) -> None:
    seen = RecordingListener()
    await registry.register(payment(1))
    async with EtcdEndpoints(etcd.url, "payment", prefix=prefix, listeners=[seen]) as watcher:
        await registry.register(Instance(service="payment", id="p1",
                                         address="http://127.0.0.1:8001", version="2"))
        await eventually(lambda: watcher.instances[0].version == "2")

    assert [e.removed for e in seen.of(EndpointsChanged)] == [()]
    assert registry.is_registered
