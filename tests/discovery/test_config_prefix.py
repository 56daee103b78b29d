"""Configuration spread over the keys of an etcd prefix: one key per field, applied whole."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fournines import ConfigurationError, TokenBucket
from fournines.discovery import (
    ConfigChanged,
    ConfigRejected,
    ConfigUnavailableError,
    ConfigWatcher,
    bind,
    get_config,
    put_config,
)
from fournines.testing import RecordingListener

from .._servers import EtcdServer
from ._helpers import etcd_client, eventually
from .test_config import Limits, Rate


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    low: int = 1
    high: int = 5

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ConfigurationError(f"Window.low must be <= high ({self.high}), got {self.low}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool:
    window: Window = field(default_factory=Window)
    name: str = "pool"


@pytest.fixture
def prefix() -> str:
    """A prefix of this test alone (tests share one etcd)."""
    return f"test-{uuid.uuid4().hex[:12]}/payment/limits"


async def put(url: str, *pairs: tuple[str, str]) -> int:
    """Raw puts, as an operator's etcdctl would (no check); the last revision."""
    revision = 0
    async with etcd_client(url) as client:
        for key, value in pairs:
            revision = (await client.put(key.encode(), value.encode())).header.revision
    return int(revision)


async def test_each_key_under_the_prefix_is_one_field_and_sub_prefixes_nest(
    etcd: EtcdServer, prefix: str,
) -> None:
    revision = await put(etcd.url, (f"{prefix}/rate/per_second", "5"),
                         (f"{prefix}/retry_attempts", "4"))

    async with ConfigWatcher(etcd.url, prefix, Limits, prefix=True) as watcher:
        assert watcher.current == Limits(rate=Rate(per_second=5), retry_attempts=4)
        assert (watcher.key, watcher.source) == (f"{prefix}/", "etcd")
        assert watcher.revision >= revision


async def test_a_key_may_hold_a_whole_sub_structure_as_json_or_yaml(
    etcd: EtcdServer, prefix: str,
) -> None:
    await put(etcd.url, (f"{prefix}/rate", "per_second: 2\ncapacity: 4\n"),
              (f"{prefix}/retry_attempts", "6"))

    async with ConfigWatcher(etcd.url, prefix, Limits, prefix=True) as watcher:
        assert watcher.current == Limits(rate=Rate(per_second=2, capacity=4), retry_attempts=6)


async def test_a_change_to_one_key_revalidates_the_whole_configuration(
    etcd: EtcdServer, prefix: str,
) -> None:
    await put_config(etcd.url, prefix, Pool(window=Window(low=2, high=5)), prefix=True)
    seen = RecordingListener()
    async with ConfigWatcher(etcd.url, prefix, Pool, prefix=True, listeners=[seen]) as watcher:
        bad = await put(etcd.url, (f"{prefix}/window/high", "1"))  # now below low
        await asyncio.wait_for(watcher.wait_for_revision(bad), 10)

        assert watcher.current == Pool(window=Window(low=2, high=5))
    rejected = seen.of(ConfigRejected)
    assert [(r.key, r.revision, r.field) for r in rejected] == [(f"{prefix}/", bad, "window.low")]
    assert rejected[0].problem == "must be <= high (1), got 2"


async def test_a_transaction_changing_several_keys_is_applied_once_never_half(
    etcd: EtcdServer, prefix: str,
) -> None:
    await put_config(etcd.url, prefix, Pool(window=Window(low=1, high=5)), prefix=True)
    seen = RecordingListener()
    async with ConfigWatcher(etcd.url, prefix, Pool, prefix=True, listeners=[seen]) as watcher:
        # low=10 with the old high=5 alone would be refused; both at once are fine.
        revision = await put_config(etcd.url, prefix, Pool(window=Window(low=10, high=20)),
                                    prefix=True)

        await asyncio.wait_for(watcher.wait_for_revision(revision), 10)
        assert watcher.current == Pool(window=Window(low=10, high=20))
    assert [e.revision for e in seen.of(ConfigChanged)][1:] == [revision]
    assert seen.of(ConfigRejected) == []


async def test_put_config_with_a_prefix_writes_one_key_per_field_and_drops_the_others(
    etcd: EtcdServer, prefix: str,
) -> None:
    await put(etcd.url, (f"{prefix}/stale", "1"))

    await put_config(etcd.url, prefix, Pool(window=Window(low=3, high=4), name="a b"),
                     schema=Pool, prefix=True)

    async with etcd_client(etcd.url) as client:
        listing = await client.get_prefix(f"{prefix}/".encode())
    stored = {kv.key.decode(): kv.value.decode() for kv in listing}
    assert stored == {f"{prefix}/window/low": "3", f"{prefix}/window/high": "4",
                      f"{prefix}/name": '"a b"'}


async def test_a_bad_value_in_one_key_is_refused_naming_its_field(
    etcd: EtcdServer, prefix: str,
) -> None:
    await put(etcd.url, (f"{prefix}/rate/per_second", "5"))
    seen = RecordingListener()
    async with ConfigWatcher(etcd.url, prefix, Limits, prefix=True, listeners=[seen]) as watcher:
        wrong_type = await put(etcd.url, (f"{prefix}/rate/per_second", '"fast"'))
        broken = await put(etcd.url, (f"{prefix}/retry_attempts", "[1,"))
        await asyncio.wait_for(watcher.wait_for_revision(broken), 10)

        assert watcher.current == Limits(rate=Rate(per_second=5))
    assert [(r.revision, r.field) for r in seen.of(ConfigRejected)] == [
        (wrong_type, "rate.per_second"), (broken, "retry_attempts")]


async def test_a_deleted_key_takes_its_default_and_an_empty_prefix_is_refused(
    etcd: EtcdServer, prefix: str,
) -> None:
    await put(etcd.url, (f"{prefix}/rate/per_second", "5"), (f"{prefix}/retry_attempts", "7"))
    seen = RecordingListener()
    async with ConfigWatcher(etcd.url, prefix, Limits, prefix=True, listeners=[seen]) as watcher:
        async with etcd_client(etcd.url) as client:
            await client.delete(f"{prefix}/retry_attempts".encode())
            await eventually(lambda: watcher.current.retry_attempts == 3)
            await client.delete_prefix(f"{prefix}/".encode())
        await eventually(lambda: bool(seen.of(ConfigRejected)))

        assert watcher.current == Limits(rate=Rate(per_second=5))
    assert "every key under the prefix was deleted" in seen.of(ConfigRejected)[0].problem


async def test_a_value_and_keys_under_it_at_once_are_refused(
    etcd: EtcdServer, prefix: str,
) -> None:
    await put(etcd.url, (f"{prefix}/rate", '{"per_second": 2}'), (f"{prefix}/rate/capacity", "3"))

    with pytest.raises(ConfigurationError, match="'rate': has both a value of its own"):
        async with ConfigWatcher(etcd.url, prefix, Limits, prefix=True):
            pass


async def test_an_empty_prefix_at_start_falls_back_like_an_absent_key(
    etcd: EtcdServer, prefix: str,
) -> None:
    with pytest.raises(ConfigUnavailableError, match="etcd has no value"):
        async with ConfigWatcher(etcd.url, prefix, Limits, prefix=True):
            pass
    async with ConfigWatcher(etcd.url, prefix, Limits, prefix=True,
                             default=Limits()) as watcher:
        revision = await put(etcd.url, (f"{prefix}/retry_attempts", "2"))

        assert (await asyncio.wait_for(watcher.wait_for_revision(revision), 10)
                == Limits(retry_attempts=2))


async def test_the_snapshot_of_a_prefix_is_used_when_etcd_holds_no_valid_value(
    etcd: EtcdServer, prefix: str, tmp_path: Path,
) -> None:
    snapshot = tmp_path / "limits.json"
    await put(etcd.url, (f"{prefix}/rate/per_second", "5"))
    async with ConfigWatcher(etcd.url, prefix, Limits, prefix=True, snapshot=snapshot):
        await eventually(snapshot.exists)
    await put(etcd.url, (f"{prefix}/rate/per_second", "-1"))

    async with ConfigWatcher(etcd.url, prefix, Limits, prefix=True,
                             snapshot=snapshot) as watcher:
        assert (watcher.current, watcher.source) == (Limits(rate=Rate(per_second=5)),
                                                     "snapshot")


async def test_get_config_with_a_prefix_puts_the_fields_together(
    etcd: EtcdServer, prefix: str,
) -> None:
    written = await put_config(etcd.url, prefix, Pool(window=Window(low=2, high=3)),
                               prefix=True)

    value, revision = await get_config(etcd.url, prefix, schema=Pool, prefix=True)

    assert value == Pool(window=Window(low=2, high=3))
    assert revision >= written


async def test_revisions_compacted_while_a_subscriber_held_the_watcher_are_skipped(
    etcd: EtcdServer, prefix: str, caplog: pytest.LogCaptureFixture,
) -> None:
    await put(etcd.url, (f"{prefix}/retry_attempts", "1"))
    entered, release = asyncio.Event(), asyncio.Event()
    got: list[int] = []

    async def slow(event: ConfigChanged) -> None:
        got.append(event.revision)
        entered.set()
        await release.wait()

    async with ConfigWatcher(etcd.url, prefix, Limits, prefix=True) as watcher:
        watcher.subscribe(slow)
        first = await put(etcd.url, (f"{prefix}/retry_attempts", "2"))
        await asyncio.wait_for(entered.wait(), 10)
        await put(etcd.url, (f"{prefix}/retry_attempts", "3"))
        last = await put(etcd.url, (f"{prefix}/retry_attempts", "4"))
        async with etcd_client(etcd.url) as client:
            await client.compact(last, physical=True)

        with caplog.at_level(logging.WARNING, logger="fournines.config"):
            release.set()
            assert (await asyncio.wait_for(watcher.wait_for_revision(last), 10)
                    == Limits(retry_attempts=4))

    assert got[0] == first and got[-1] >= last and len(got) == 2
    assert not [r for r in caplog.records if "lost its watch" in r.getMessage()]


async def test_a_policy_bound_to_a_prefix_follows_a_change_of_one_key(
    etcd: EtcdServer, prefix: str,
) -> None:
    await put(etcd.url, (f"{prefix}/rate/per_second", "5"))
    bucket = TokenBucket(rate=100)
    async with ConfigWatcher(etcd.url, prefix, Limits, prefix=True) as watcher:
        bind(watcher, bucket, lambda cfg: {"rate": cfg.rate.per_second})
        revision = await put(etcd.url, (f"{prefix}/rate/per_second", "9"))

        await asyncio.wait_for(watcher.wait_for_revision(revision), 10)
        assert bucket.rate == 9.0
