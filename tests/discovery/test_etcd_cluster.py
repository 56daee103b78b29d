"""Registration and discovery on a three-member etcd cluster whose leader dies."""

from __future__ import annotations

import asyncio
from typing import Any

import aetcd

from fournines.discovery import EndpointsChanged, EtcdEndpoints, EtcdRegistry, Instance
from fournines.testing import RecordingListener

from .._servers import EtcdCluster
from ._helpers import etcd_client, eventually


async def read(url: str, key: str) -> Any:
    """The key's value, read again while the new leader settles ("leader changed")."""
    for _ in range(50):
        try:
            async with etcd_client(url) as client:
                return await client.get(key.encode())
        except aetcd.ClientError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"could not read {key} from {url}")


async def test_killing_the_leader_keeps_the_registration_and_removes_nothing(
    etcd_cluster: EtcdCluster,
) -> None:
    instance = Instance(service="payment", id="p1", address="http://127.0.0.1:8001")
    seen = RecordingListener()
    # The leader first in both lists: the clients are talking to it when it dies.
    leader = etcd_cluster.leader()
    urls = [leader.url, *(m.url for m in etcd_cluster.members if m is not leader)]
    async with EtcdRegistry(urls, ttl=2) as registry, \
            EtcdEndpoints(urls, "payment", probe_interval=0.3, listeners=[seen]) as watcher:
        assert await registry.register(instance)
        await eventually(lambda: watcher.endpoints() == (instance.address,))

        leader.kill()
        await eventually(lambda: watcher.in_sync and registry.is_registered, timeout=30)

        assert await read(urls[1], instance.key()) is not None
        assert watcher.endpoints() == (instance.address,)
        assert all(not e.removed for e in seen.of(EndpointsChanged))

        other = Instance(service="payment", id="p2", address="http://127.0.0.1:8002")
        await registry.register(other)
        await eventually(lambda: len(watcher.endpoints()) == 2)
