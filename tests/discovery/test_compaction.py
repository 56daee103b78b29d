"""Compaction forced during a live watch (``etcdctl compact`` after many writes), for
discovery and the config centre: the view ends equal to a fresh read, subscribers get
no change twice and miss none after it.

The watch is made to start from a revision that etcd has compacted, as it happens
when a compaction lands between a watcher's listing and its watch (or its resume):
the writes and the compaction run while the watcher is held inside the handling of
its listing. etcd then cancels the freshly created watch with ``ErrCompacted``,
which the tests check was hit.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import pytest

from fournines.discovery import (
    ConfigChanged,
    ConfigWatcher,
    DiscoveryInterrupted,
    EndpointsChanged,
    EtcdEndpoints,
    get_config,
    put_config,
)
from fournines.testing import RecordingListener

from .._servers import EtcdServer
from ._helpers import etcd_client, etcdctl, etcdctl_revision, eventually, payment


def url(n: int) -> str:
    return f"http://127.0.0.1:{8000 + n}"


def write_many_and_compact(etcd: EtcdServer, prefix: str) -> int:
    """With etcdctl, as an operator would: add p3..p12, drop the even ones and p1, compact."""
    for n in range(3, 13):
        etcdctl(etcd.url, "put", payment(n).key(prefix), payment(n).to_json())
    for n in (*range(4, 13, 2), 1):
        etcdctl(etcd.url, "del", payment(n).key(prefix))
    revision = etcdctl_revision(etcd.url)
    etcdctl(etcd.url, "compact", str(revision))
    return revision


async def test_discovery_whose_watch_meets_a_compaction_relists_and_sends_only_the_difference(
    etcd: EtcdServer, prefix: str,
) -> None:
    async with etcd_client(etcd.url) as client:
        for n in (1, 2):
            await client.put(payment(n).key(prefix).encode(), payment(n).to_json().encode())
    recorder = RecordingListener()
    compacted: list[int] = []

    def compact_before_the_watch(event: object) -> None:
        # Called (synchronously) while the watcher publishes its first listing, before
        # it creates its watch: that watch then starts from a compacted revision.
        if isinstance(event, EndpointsChanged) and not compacted:
            compacted.append(write_many_and_compact(etcd, prefix))

    sets: list[tuple[str, ...]] = []
    async with EtcdEndpoints(etcd.url, "payment", prefix=prefix, probe_interval=0.3,
                             listeners=[recorder, compact_before_the_watch]) as watcher:

        async def subscriber() -> None:
            async for instances in watcher.changes():
                sets.append(tuple(sorted(i.address for i in instances)))

        following = asyncio.create_task(subscriber())
        expected = tuple(url(n) for n in (2, 3, 5, 7, 9, 11))
        await eventually(lambda: watcher.endpoints() == expected and watcher.in_sync)
        async with etcd_client(etcd.url) as client:
            listing = await client.get_prefix(f"/{prefix}/payment/".encode())
            fresh = tuple(sorted(json.loads(kv.value)["address"] for kv in listing))
            assert watcher.endpoints() == fresh
            assert watcher.revision >= compacted[0]

            # After the resume, a change is delivered once, on its own.
            await client.put(payment(20).key(prefix).encode(), payment(20).to_json().encode())
            await eventually(lambda: url(20) in watcher.endpoints())
        with_20 = tuple(sorted((*fresh, url(20))))
        await eventually(lambda: sets[-1:] == [with_20])
        following.cancel()

    interruptions = recorder.of(DiscoveryInterrupted)
    assert [e.reason for e in interruptions] == ["compacted"]
    assert type(interruptions[0].error).__name__ == "RevisionCompactedError"
    changes = [(set(e.added), set(e.removed)) for e in recorder.of(EndpointsChanged)]
    assert changes == [
        ({url(1), url(2)}, set()),
        ({url(n) for n in (3, 5, 7, 9, 11)}, {url(1)}),
        ({url(20)}, set()),
    ]
    # The subscriber may have started before or after the re-listing; either way it saw
    # each set once, and every set it saw was one etcd really had.
    assert sets[-2:] == [fresh, with_20]
    assert sets[0] in ((url(1), url(2)), fresh) and len(set(sets)) == len(sets)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The config of these tests."""

    per_second: float = 1.0


async def test_a_config_watch_that_meets_a_compaction_relists_and_skips_no_later_change(
    etcd: EtcdServer, prefix: str, caplog: pytest.LogCaptureFixture,
) -> None:
    key = f"/{prefix}/limits"
    first = await put_config(etcd.url, key, Limits(per_second=1))
    entered, release = asyncio.Event(), asyncio.Event()
    got: list[tuple[int, float]] = []

    async def hold_the_first(event: ConfigChanged) -> None:
        # The watcher awaits its subscribers before it watches: holding the first
        # change keeps it between its listing and its watch while etcd moves on.
        got.append((event.revision, event.new.per_second))
        if not entered.is_set():
            entered.set()
            await release.wait()

    watcher = ConfigWatcher(etcd.url, key, Limits, probe_interval=0.3)
    watcher.subscribe(hold_the_first)
    with caplog.at_level(logging.WARNING, logger="fournines.config"):
        starting = asyncio.create_task(watcher.start())
        try:
            await asyncio.wait_for(entered.wait(), 20)

            def many_writes() -> int:
                for n in range(2, 32):
                    etcdctl(etcd.url, "put", key, json.dumps({"per_second": n}))
                revision = etcdctl_revision(etcd.url)
                etcdctl(etcd.url, "compact", str(revision))
                return revision

            compacted = await asyncio.to_thread(many_writes)
            release.set()
            await asyncio.wait_for(starting, 20)
            await asyncio.wait_for(watcher.wait_for_revision(compacted), 20)
            fresh, revision = await get_config(etcd.url, key, schema=Limits)
            assert (watcher.current, watcher.revision) == (fresh, revision) == (
                Limits(per_second=31), compacted)

            later = [await put_config(etcd.url, key, Limits(per_second=100 + n))
                     for n in range(3)]
            await asyncio.wait_for(watcher.wait_for_revision(later[-1]), 20)
        finally:
            await watcher.aclose()

    assert any("lost its watch (compacted" in r.getMessage() for r in caplog.records)
    assert got == [(first, 1.0), (compacted, 31.0),
                   *((revision, 100.0 + n) for n, revision in enumerate(later))]
