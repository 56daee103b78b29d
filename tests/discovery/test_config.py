"""The config centre against a real etcd shared by the module: load, hot reload, refusals,
subscribers, compaction, policies following config, put/get/history."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fournines import (
    CircuitBreaker,
    ConfigurationError,
    ConsecutiveFailures,
    RateLimitedError,
    Retry,
    TokenBucket,
)
from fournines.discovery import (
    ConfigChanged,
    ConfigRejected,
    ConfigUnavailableError,
    ConfigValidationError,
    ConfigWatcher,
    bind,
    config_history,
    get_config,
    put_config,
)
from fournines.testing import FakeClock, RecordingListener

from .._servers import EtcdServer
from ._helpers import Relay, etcd_client, eventually


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    per_second: float = 10.0
    capacity: int = 10

    def __post_init__(self) -> None:
        if self.per_second <= 0:
            raise ConfigurationError(f"Rate.per_second must be > 0, got {self.per_second!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    rate: Rate = field(default_factory=Rate)
    retry_attempts: int = 3
    breaker_threshold: int = 5


@pytest.fixture
def key() -> str:
    """A key of this test alone (tests share one etcd)."""
    return f"test-{uuid.uuid4().hex[:12]}/payment/limits"


def limits(per_second: float = 10.0, attempts: int = 3, threshold: int = 5) -> Limits:
    return Limits(rate=Rate(per_second=per_second), retry_attempts=attempts,
                  breaker_threshold=threshold)


async def test_the_watcher_starts_with_the_value_in_etcd(etcd: EtcdServer, key: str) -> None:
    revision = await put_config(etcd.url, key, limits(5))

    async with ConfigWatcher(etcd.url, key, Limits) as watcher:
        assert watcher.current == limits(5)
        assert (watcher.revision, watcher.source) == (revision, "etcd")


async def test_a_new_value_is_applied_without_a_restart(etcd: EtcdServer, key: str) -> None:
    await put_config(etcd.url, key, limits(5))
    seen = RecordingListener()
    async with ConfigWatcher(etcd.url, key, Limits, listeners=[seen]) as watcher:
        revision = await put_config(etcd.url, key, '{"rate": {"per_second": 7}}')

        assert await asyncio.wait_for(watcher.wait_for_revision(revision), 10) == limits(7)
    changed = seen.of(ConfigChanged)[-1]
    assert (changed.key, changed.revision, changed.old, changed.new) == (
        key, revision, limits(5), limits(7))


@pytest.mark.parametrize(("value", "field_path", "problem"), [
    ('{"rate": {"per_second": "fast"}}', "rate.per_second", "expected float, got str 'fast'"),
    ('{"rate": {"per_second": -3}}', "rate.per_second", "must be > 0, got -3"),
    ('{"retry_attempts": 2, "rate": {"per_second": 5,}}', "", "invalid JSON at line 1"),
    ("rate:\n  per_second: 5\n bad: [\n", "", "invalid YAML at line"),
    ('{"rate": {"per_second": 5}, "retyr_attempts": 9}', "retyr_attempts", "unknown field"),
], ids=["wrong-type", "out-of-range", "invalid-json", "invalid-yaml", "unknown-field"])
async def test_a_bad_value_is_refused_and_the_previous_one_kept(
    etcd: EtcdServer, key: str, value: str, field_path: str, problem: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = await put_config(etcd.url, key, limits(5))
    seen = RecordingListener()
    async with ConfigWatcher(etcd.url, key, Limits, listeners=[seen]) as watcher:
        async with etcd_client(etcd.url) as client:  # an operator's etcdctl put: no check
            bad = (await client.put(key.encode(), value.encode())).header.revision

        with caplog.at_level(logging.WARNING, logger="fournines.config"):
            await asyncio.wait_for(watcher.wait_for_revision(bad), 10)

        assert (watcher.current, watcher.revision) == (limits(5), good)
    rejected = seen.of(ConfigRejected)
    assert [(r.key, r.revision, r.field) for r in rejected] == [(key, bad, field_path)]
    assert problem in rejected[0].problem
    logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(logged) == 1
    assert key in logged[0] and str(bad) in logged[0] and problem in logged[0]
    if field_path:
        assert f"field '{field_path}'" in logged[0]


async def test_a_good_value_after_a_refused_one_is_applied(etcd: EtcdServer, key: str) -> None:
    await put_config(etcd.url, key, limits(5))
    async with ConfigWatcher(etcd.url, key, Limits) as watcher, etcd_client(etcd.url) as client:
        await client.put(key.encode(), b'{"rate": "no"}')
        revision = await put_config(etcd.url, key, limits(9))

        assert await asyncio.wait_for(watcher.wait_for_revision(revision), 10) == limits(9)


async def test_subscribers_get_the_changes_in_revision_order(etcd: EtcdServer, key: str) -> None:
    await put_config(etcd.url, key, limits(1))
    got: list[int] = []
    slow: list[int] = []

    async def slow_subscriber(event: ConfigChanged) -> None:
        await asyncio.sleep(0.01)  # later changes wait: order is kept
        slow.append(event.revision)

    async with ConfigWatcher(etcd.url, key, Limits) as watcher:
        watcher.subscribe(lambda event: got.append(event.revision))
        watcher.subscribe(slow_subscriber)
        written = [await put_config(etcd.url, key, limits(n)) for n in range(2, 32)]
        await asyncio.wait_for(watcher.wait_for_revision(written[-1]), 20)

    assert got == written
    assert slow == written


async def test_a_failing_subscriber_never_breaks_the_others(etcd: EtcdServer, key: str) -> None:
    await put_config(etcd.url, key, limits(1))
    got: list[float] = []

    def broken(event: ConfigChanged) -> None:
        raise RuntimeError("subscriber bug")

    async with ConfigWatcher(etcd.url, key, Limits) as watcher:
        watcher.subscribe(broken)
        watcher.subscribe(lambda event: got.append(watcher.current.rate.per_second))
        await put_config(etcd.url, key, limits(2))
        revision = await put_config(etcd.url, key, limits(3))
        await asyncio.wait_for(watcher.wait_for_revision(revision), 10)

    assert got == [2.0, 3.0]


async def test_an_unsubscribed_callback_is_not_called(etcd: EtcdServer, key: str) -> None:
    await put_config(etcd.url, key, limits(1))
    got: list[int] = []
    async with ConfigWatcher(etcd.url, key, Limits) as watcher:
        unsubscribe = watcher.subscribe(lambda event: got.append(event.revision))
        unsubscribe()
        revision = await put_config(etcd.url, key, limits(2))
        await asyncio.wait_for(watcher.wait_for_revision(revision), 10)

    assert got == []


async def test_without_a_value_in_etcd_the_default_is_used_until_one_is_put(
    etcd: EtcdServer, key: str,
) -> None:
    async with ConfigWatcher(etcd.url, key, Limits, default=limits(4)) as watcher:
        assert (watcher.current, watcher.source, watcher.revision) == (limits(4), "default", 0)

        revision = await put_config(etcd.url, key, limits(6))

        await asyncio.wait_for(watcher.wait_for_revision(revision), 10)
        assert (watcher.current, watcher.source) == (limits(6), "etcd")


async def test_without_a_value_and_a_default_start_fails_clearly(
    etcd: EtcdServer, key: str,
) -> None:
    with pytest.raises(ConfigUnavailableError, match="has no value"):
        async with ConfigWatcher(etcd.url, key, Limits):
            pass


async def test_an_invalid_value_at_start_without_fallback_fails_naming_the_field(
    etcd: EtcdServer, key: str,
) -> None:
    async with etcd_client(etcd.url) as client:
        await client.put(key.encode(), b'{"retry_attempts": "many"}')

    with pytest.raises(ConfigValidationError) as info:
        async with ConfigWatcher(etcd.url, key, Limits):
            pass
    assert (info.value.key, info.value.field) == (key, "retry_attempts")


async def test_a_deleted_key_keeps_the_last_good_value(etcd: EtcdServer, key: str) -> None:
    await put_config(etcd.url, key, limits(5))
    seen = RecordingListener()
    async with ConfigWatcher(etcd.url, key, Limits, listeners=[seen]) as watcher:
        async with etcd_client(etcd.url) as client:
            await client.delete(key.encode())
        await eventually(lambda: seen.of(ConfigRejected))

        assert watcher.current == limits(5)
    assert seen.of(ConfigRejected)[0].problem == "the key was deleted"


async def test_each_good_value_is_written_to_the_snapshot(
    etcd: EtcdServer, key: str, tmp_path: Path,
) -> None:
    snapshot = tmp_path / "limits.json"
    await put_config(etcd.url, key, limits(5))
    async with ConfigWatcher(etcd.url, key, Limits, snapshot=snapshot) as watcher:
        revision = await put_config(etcd.url, key, limits(8))
        await asyncio.wait_for(watcher.wait_for_revision(revision), 10)

    saved = json.loads(snapshot.read_text())
    assert (saved["key"], saved["revision"]) == (key, revision)
    assert json.loads(saved["value"])["rate"]["per_second"] == 8.0
    assert [p.name for p in tmp_path.iterdir()] == ["limits.json"]  # no temporary left


async def test_after_a_compaction_the_watcher_holds_the_newest_value_without_duplicates(
    etcd: EtcdServer, key: str,
) -> None:
    relay = Relay(etcd.client_port)
    await relay.start()
    got: list[int] = []
    try:
        await put_config(etcd.url, key, limits(1))
        async with ConfigWatcher(relay.url, key, Limits, probe_interval=0.3) as watcher:
            watcher.subscribe(lambda event: got.append(event.revision))
            first = await put_config(etcd.url, key, limits(2))
            await asyncio.wait_for(watcher.wait_for_revision(first), 10)
            relay.cut()
            await eventually(lambda: not watcher.in_sync)

            written = [await put_config(etcd.url, key, limits(n)) for n in range(3, 23)]
            async with etcd_client(etcd.url) as client:
                await client.compact(written[-1])
            relay.restore()

            await asyncio.wait_for(watcher.wait_for_revision(written[-1]), 20)
            fresh, revision = await get_config(etcd.url, key, schema=Limits)
            assert (watcher.current, watcher.revision) == (fresh, revision)
    finally:
        await relay.aclose()
    assert got == [first, written[-1]]


async def test_a_compaction_while_watching_loses_no_later_change(
    etcd: EtcdServer, key: str,
) -> None:
    await put_config(etcd.url, key, limits(1))
    got: list[int] = []
    async with ConfigWatcher(etcd.url, key, Limits) as watcher:
        watcher.subscribe(lambda event: got.append(event.revision))
        written = [await put_config(etcd.url, key, limits(n)) for n in range(2, 42)]
        async with etcd_client(etcd.url) as client:
            await client.compact(written[-1])
        after = await put_config(etcd.url, key, limits(99))

        await asyncio.wait_for(watcher.wait_for_revision(after), 20)
        fresh, revision = await get_config(etcd.url, key, schema=Limits)
        assert (watcher.current, watcher.revision) == (fresh, revision)
    assert got == sorted(set(got))  # increasing, no duplicate
    assert got[-1] == after


async def test_a_pydantic_model_is_followed_and_validated_too(
    etcd: EtcdServer, key: str,
) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Model(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
        per_second: float

    seen = RecordingListener()
    await put_config(etcd.url, key, '{"per_second": 2}')
    async with ConfigWatcher(etcd.url, key, Model, listeners=[seen]) as watcher:
        async with etcd_client(etcd.url) as client:
            bad = (await client.put(key.encode(), b'{"per_second": "x"}')).header.revision
        await asyncio.wait_for(watcher.wait_for_revision(bad), 10)
        good = await put_config(etcd.url, key, Model(per_second=4), schema=Model)
        await asyncio.wait_for(watcher.wait_for_revision(good), 10)

        assert watcher.current == Model(per_second=4)
    assert [r.field for r in seen.of(ConfigRejected)] == ["per_second"]


# -- policies following config ----------------------------------------------------------


async def test_a_rate_limit_changes_at_run_time_without_losing_permits(
    etcd: EtcdServer, key: str,
) -> None:
    clock = FakeClock()  # no refill during the test: every token is accounted for
    await put_config(etcd.url, key, limits(1))
    bucket = TokenBucket(rate=100, capacity=10, clock=clock)
    for _ in range(4):
        bucket.try_acquire()
    async with ConfigWatcher(etcd.url, key, Limits) as watcher:
        bind(watcher, bucket, lambda cfg: {"rate": cfg.rate.per_second,
                                           "capacity": cfg.rate.capacity})
        assert bucket.rate == 1.0

        revision = await put_config(etcd.url, key, limits(50))
        await asyncio.wait_for(watcher.wait_for_revision(revision), 10)

    assert bucket.rate == 50.0
    for _ in range(6):  # the 6 tokens left before the changes
        bucket.try_acquire()
    with pytest.raises(RateLimitedError):
        bucket.try_acquire()


async def test_retry_attempts_change_at_run_time(etcd: EtcdServer, key: str) -> None:
    await put_config(etcd.url, key, limits(attempts=2))
    retry = Retry(attempts=9, clock=FakeClock())
    calls = 0

    def flaky() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError

    async with ConfigWatcher(etcd.url, key, Limits) as watcher:
        bind(watcher, retry, lambda cfg: {"attempts": cfg.retry_attempts})
        revision = await put_config(etcd.url, key, limits(attempts=4))
        await asyncio.wait_for(watcher.wait_for_revision(revision), 10)

    with pytest.raises(ConnectionError):
        retry.call(flaky)
    assert calls == 4


async def test_a_breaker_threshold_changes_at_run_time(etcd: EtcdServer, key: str) -> None:
    await put_config(etcd.url, key, limits(threshold=100))
    breaker = CircuitBreaker(clock=FakeClock())

    def failing() -> None:
        raise ConnectionError

    async with ConfigWatcher(etcd.url, key, Limits) as watcher:
        bind(watcher, breaker,
             lambda cfg: {"trip": ConsecutiveFailures(threshold=cfg.breaker_threshold)})
        for _ in range(2):
            with pytest.raises(ConnectionError):
                breaker.call(failing)
        revision = await put_config(etcd.url, key, limits(threshold=3))
        await asyncio.wait_for(watcher.wait_for_revision(revision), 10)

        with pytest.raises(ConnectionError):
            breaker.call(failing)
    assert breaker.state.value == "open"


async def test_a_value_a_bound_policy_would_refuse_is_refused_as_a_whole(
    etcd: EtcdServer, key: str,
) -> None:
    await put_config(etcd.url, key, limits(7, attempts=2))
    retry, bucket = Retry(attempts=2), TokenBucket(rate=1)
    seen = RecordingListener()
    async with ConfigWatcher(etcd.url, key, Limits, listeners=[seen]) as watcher:
        bind(watcher, bucket, lambda cfg: {"rate": cfg.rate.per_second})
        bind(watcher, retry, lambda cfg: {"attempts": cfg.retry_attempts})
        # The schema allows 0 attempts; Retry does not: nothing of it is applied.
        revision = await put_config(etcd.url, key, limits(9, attempts=0))
        await asyncio.wait_for(watcher.wait_for_revision(revision), 10)

        assert watcher.current == limits(7, attempts=2)
    assert (retry.attempts, bucket.rate) == (2, 7.0)
    rejected = seen.of(ConfigRejected)
    assert [r.revision for r in rejected] == [revision]
    assert "Retry.attempts must be >= 1" in rejected[0].problem


async def test_an_unbound_policy_no_longer_follows(etcd: EtcdServer, key: str) -> None:
    await put_config(etcd.url, key, limits(attempts=2))
    retry = Retry(attempts=9)
    async with ConfigWatcher(etcd.url, key, Limits) as watcher:
        unbind = bind(watcher, retry, lambda cfg: {"attempts": cfg.retry_attempts})
        unbind()
        revision = await put_config(etcd.url, key, limits(attempts=0))
        await asyncio.wait_for(watcher.wait_for_revision(revision), 10)

        assert watcher.current.retry_attempts == 0
    assert retry.attempts == 2


# -- put / get / history ----------------------------------------------------------------


async def test_put_config_refuses_an_invalid_value_and_writes_nothing(
    etcd: EtcdServer, key: str,
) -> None:
    revision = await put_config(etcd.url, key, limits(5))

    with pytest.raises(ConfigValidationError, match=r"field 'rate\.per_second'"):
        await put_config(etcd.url, key, '{"rate": {"per_second": "fast"}}', schema=Limits)

    assert await get_config(etcd.url, key, schema=Limits) == (limits(5), revision)
    assert [p.revision for p in await config_history(etcd.url, key)] == [revision]


async def test_history_lists_the_past_values_newest_first(etcd: EtcdServer, key: str) -> None:
    written = [await put_config(etcd.url, key, limits(n)) for n in (1, 2, 3)]

    past = await config_history(etcd.url, key)

    assert [p.revision for p in past] == written[::-1]
    assert [json.loads(p.value)["rate"]["per_second"] for p in past] == [3.0, 2.0, 1.0]


async def test_history_stops_at_the_last_compaction(etcd: EtcdServer, key: str) -> None:
    written = [await put_config(etcd.url, key, limits(n)) for n in (1, 2, 3)]
    async with etcd_client(etcd.url) as client:
        await client.compact(written[1])

    assert [p.revision for p in await config_history(etcd.url, key)] == written[:0:-1]


async def test_get_config_of_a_missing_key_says_so(etcd: EtcdServer, key: str) -> None:
    with pytest.raises(ConfigUnavailableError, match="no value in etcd"):
        await get_config(etcd.url, key)
