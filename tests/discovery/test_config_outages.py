"""The config centre while its etcd is killed, stopped and restarted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from fournines import Backoff
from fournines.discovery import ConfigUnavailableError, ConfigWatcher, put_config
from fournines.instrumentation import PrometheusListener

from .._servers import EtcdServer
from ._helpers import eventually
from .test_config import Limits, limits

KEY = "payment/limits"
FAST = Backoff(initial=0.05, cap=0.2)


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> EtcdServer:
    """A private etcd: these tests kill, pause and restart it."""
    return etcd_server


async def test_the_snapshot_is_used_when_etcd_is_down_at_start(
    etcd: EtcdServer, tmp_path: Path,
) -> None:
    snapshot = tmp_path / "limits.json"
    revision = await put_config(etcd.url, KEY, limits(5))
    async with ConfigWatcher(etcd.url, KEY, Limits, snapshot=snapshot):
        await eventually(snapshot.exists)
    etcd.kill()

    async with ConfigWatcher(etcd.url, KEY, Limits, snapshot=snapshot, default=limits(1),
                             timeout=0.5, backoff=FAST) as watcher:
        assert (watcher.current, watcher.source, watcher.revision) == (
            limits(5), "snapshot", revision)
        assert not watcher.in_sync

        etcd.start()
        changed = await put_config(etcd.url, KEY, limits(6))

        await asyncio.wait_for(watcher.wait_for_revision(changed), 20)
        assert (watcher.current, watcher.source) == (limits(6), "etcd")


async def test_etcd_down_at_start_without_snapshot_or_default_fails_clearly(
    etcd: EtcdServer,
) -> None:
    etcd.kill()

    with pytest.raises(ConfigUnavailableError, match="cannot be reached"):
        async with ConfigWatcher(etcd.url, KEY, Limits, timeout=0.5):
            pass


async def test_etcd_down_at_start_with_a_default_follows_etcd_once_it_is_back(
    etcd: EtcdServer,
) -> None:
    await put_config(etcd.url, KEY, limits(7))
    etcd.kill()
    async with ConfigWatcher(etcd.url, KEY, Limits, default=limits(1), timeout=0.5,
                             backoff=FAST) as watcher:
        assert watcher.source == "default"

        etcd.start()

        await eventually(lambda: watcher.source == "etcd")
        assert watcher.current == limits(7)


async def test_the_watcher_resumes_after_etcd_is_killed_and_restarted(
    etcd: EtcdServer,
) -> None:
    await put_config(etcd.url, KEY, limits(1))
    got: list[int] = []
    async with ConfigWatcher(etcd.url, KEY, Limits, timeout=0.5, backoff=FAST,
                             probe_interval=0.3) as watcher:
        watcher.subscribe(lambda event: got.append(event.revision))
        etcd.kill()
        await eventually(lambda: not watcher.in_sync)
        assert watcher.current == limits(1)  # the last good value stays in force

        etcd.start()
        revision = await put_config(etcd.url, KEY, limits(2))

        await asyncio.wait_for(watcher.wait_for_revision(revision), 20)
        assert watcher.in_sync
    assert got == [revision]


async def test_a_stopped_etcd_is_noticed_and_the_value_kept(etcd: EtcdServer) -> None:
    await put_config(etcd.url, KEY, limits(1))
    async with ConfigWatcher(etcd.url, KEY, Limits, timeout=0.5, backoff=FAST,
                             probe_interval=0.3) as watcher:
        etcd.pause()
        try:
            await eventually(lambda: not watcher.in_sync)
            assert watcher.current == limits(1)
        finally:
            etcd.resume()
        await eventually(lambda: watcher.in_sync)
        revision = await put_config(etcd.url, KEY, limits(3))

        assert await asyncio.wait_for(watcher.wait_for_revision(revision), 20) == limits(3)


async def test_the_snapshot_gives_way_to_etcd_when_etcd_returns_with_the_same_value(
    etcd: EtcdServer, tmp_path: Path,
) -> None:
    snapshot = tmp_path / "limits.json"
    revision = await put_config(etcd.url, KEY, limits(5))
    async with ConfigWatcher(etcd.url, KEY, Limits, snapshot=snapshot):
        await eventually(snapshot.exists)
    etcd.kill()
    registry = CollectorRegistry()

    async with ConfigWatcher(etcd.url, KEY, Limits, snapshot=snapshot, timeout=0.5,
                             backoff=FAST, listeners=[PrometheusListener(registry)]) as watcher:
        assert watcher.source == "snapshot"
        etcd.start()  # nothing written meanwhile: etcd holds the snapshot's revision

        await eventually(lambda: watcher.source == "etcd")
        assert (watcher.current, watcher.revision) == (limits(5), revision)
    source = registry.get_sample_value("fournines_config_source",
                                       {"key": KEY, "source": "etcd"})
    assert source == 1


async def test_a_prefix_config_runs_on_its_snapshot_and_follows_etcd_once_it_is_back(
    etcd: EtcdServer, tmp_path: Path,
) -> None:
    snapshot = tmp_path / "limits.json"
    await put_config(etcd.url, KEY, limits(5), prefix=True)
    async with ConfigWatcher(etcd.url, KEY, Limits, snapshot=snapshot, prefix=True):
        await eventually(snapshot.exists)
    etcd.kill()

    async with ConfigWatcher(etcd.url, KEY, Limits, snapshot=snapshot, prefix=True,
                             timeout=0.5, backoff=FAST) as watcher:
        assert (watcher.current, watcher.source) == (limits(5), "snapshot")
        etcd.start()

        await eventually(lambda: watcher.source == "etcd")
        assert watcher.current == limits(5)
        changed = await put_config(etcd.url, KEY, limits(6), prefix=True)
        assert await asyncio.wait_for(watcher.wait_for_revision(changed), 20) == limits(6)
