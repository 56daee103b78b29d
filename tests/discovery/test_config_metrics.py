"""The config centre's Prometheus metrics, from a real watcher on a real etcd."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from fournines.discovery import ConfigApplied, ConfigWatcher, put_config
from fournines.instrumentation import PrometheusListener
from fournines.testing import RecordingListener

from .._servers import EtcdServer
from ._helpers import etcd_client, eventually
from .test_config import Limits, limits


@pytest.fixture
def key() -> str:
    """A key of this test alone (tests share one etcd)."""
    return f"test-{uuid.uuid4().hex[:12]}/payment/limits"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(f"fournines_config_{name}", labels)


def sources(registry: CollectorRegistry, key: str) -> dict[str, float | None]:
    return {source: sample(registry, "source", key=key, source=source)
            for source in ("etcd", "snapshot", "default")}


async def test_the_revision_gauge_and_the_changes_counter_follow_each_new_value(
    etcd: EtcdServer, key: str, registry: CollectorRegistry,
) -> None:
    await put_config(etcd.url, key, limits(5))
    async with ConfigWatcher(etcd.url, key, Limits,
                             listeners=[PrometheusListener(registry)]) as watcher:
        revision = await put_config(etcd.url, key, limits(6))
        await asyncio.wait_for(watcher.wait_for_revision(revision), 10)

    assert sample(registry, "revision", key=key) == revision
    assert sample(registry, "changes_total", key=key) == 2  # the value at start, then one
    assert sample(registry, "rejections_total", key=key) == 0
    assert sources(registry, key) == {"etcd": 1, "snapshot": 0, "default": 0}


async def test_a_refused_value_is_counted_and_the_revision_gauge_keeps_the_good_one(
    etcd: EtcdServer, key: str, registry: CollectorRegistry,
) -> None:
    good = await put_config(etcd.url, key, limits(5))
    async with ConfigWatcher(etcd.url, key, Limits,
                             listeners=[PrometheusListener(registry)]) as watcher:
        async with etcd_client(etcd.url) as client:  # an operator's etcdctl put: no check
            bad = (await client.put(key.encode(), b'{"rate": "fast"}')).header.revision
        await asyncio.wait_for(watcher.wait_for_revision(bad), 10)

    assert sample(registry, "rejections_total", key=key) == 1
    assert sample(registry, "revision", key=key) == good
    assert sample(registry, "changes_total", key=key) == 1


async def test_an_invalid_value_at_start_falls_back_to_the_snapshot_in_the_metrics(
    etcd: EtcdServer, key: str, registry: CollectorRegistry, tmp_path: Path,
) -> None:
    snapshot = tmp_path / "limits.json"
    saved = await put_config(etcd.url, key, limits(5))
    async with ConfigWatcher(etcd.url, key, Limits, snapshot=snapshot):
        await eventually(snapshot.exists)
    async with etcd_client(etcd.url) as client:
        await client.put(key.encode(), b'{"retry_attempts": "many"}')

    async with ConfigWatcher(etcd.url, key, Limits, snapshot=snapshot,
                             listeners=[PrometheusListener(registry)]) as watcher:
        assert watcher.source == "snapshot"

    assert sources(registry, key) == {"etcd": 0, "snapshot": 1, "default": 0}
    assert sample(registry, "revision", key=key) == saved
    assert sample(registry, "rejections_total", key=key) == 1


async def test_a_value_equal_to_the_default_appearing_in_etcd_moves_the_source_to_etcd(
    etcd: EtcdServer, key: str, registry: CollectorRegistry,
) -> None:
    seen = RecordingListener()
    async with ConfigWatcher(etcd.url, key, Limits, default=limits(1),
                             listeners=[PrometheusListener(registry), seen]) as watcher:
        assert sources(registry, key) == {"etcd": 0, "snapshot": 0, "default": 1}
        assert sample(registry, "revision", key=key) == 0

        revision = await put_config(etcd.url, key, limits(1))
        await asyncio.wait_for(watcher.wait_for_revision(revision), 10)

    assert sources(registry, key) == {"etcd": 1, "snapshot": 0, "default": 0}
    assert sample(registry, "revision", key=key) == revision
    assert sample(registry, "changes_total", key=key) == 1  # the value itself never changed
    assert [(e.revision, e.source) for e in seen.of(ConfigApplied)] == [
        (0, "default"), (revision, "etcd")]


async def test_two_keys_are_counted_apart(
    etcd: EtcdServer, key: str, registry: CollectorRegistry,
) -> None:
    other = f"{key}-other"
    first = await put_config(etcd.url, key, limits(5))
    second = await put_config(etcd.url, other, limits(6))
    listener = PrometheusListener(registry)

    async with (ConfigWatcher(etcd.url, key, Limits, listeners=[listener]),
                ConfigWatcher(etcd.url, other, Limits, listeners=[listener])):
        pass

    assert sample(registry, "revision", key=key) == first
    assert sample(registry, "revision", key=other) == second
