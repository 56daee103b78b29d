"""Redis-backed rate limiters against a real redis-server (no mocks).

Rates are chosen so that real waits stay well under a second in total; the
tests assert admit/reject outcomes, never durations.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from fournines._deadline import deadline_after
from fournines._errors import ConfigurationError, RateLimitedError
from fournines._events import CallRejected
from fournines.policies.rate_limit import Gcra, KeyedLimiter
from fournines.policies.redis_rate_limit import (
    DEFAULT_PREFIX,
    RedisGcra,
    RedisSlidingWindow,
    SyncRedisGcra,
    SyncRedisSlidingWindow,
)
from fournines.testing import RecordingListener

from .._servers import RedisServer

SLOW = 0.001  # units per second: nothing refills during a test


def async_client(server: RedisServer) -> aredis.Redis:
    # No retries: a dead server must fail the call at once, not after backoff.
    return aredis.Redis.from_url(
        server.url, retry=AsyncRetry(NoBackoff(), 0), socket_timeout=2, socket_connect_timeout=2
    )


def sync_client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(
        server.url, retry=Retry(NoBackoff(), 0), socket_timeout=2, socket_connect_timeout=2
    )


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aredis.Redis]:
    c = async_client(redis_server)
    yield c
    await c.aclose()


@pytest.fixture
async def other_client(redis_server: RedisServer) -> AsyncIterator[aredis.Redis]:
    c = async_client(redis_server)
    yield c
    await c.aclose()


@pytest.fixture
def blocking_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = sync_client(redis_server)
    yield c
    c.close()


@pytest.fixture
async def private_client(private_redis: RedisServer) -> AsyncIterator[aredis.Redis]:
    c = async_client(private_redis)
    yield c
    await c.aclose()


async def admitted(limiter: Any, attempts: int, **kwargs: Any) -> int:
    count = 0
    for _ in range(attempts):
        try:
            await limiter.try_acquire(**kwargs)
            count += 1
        except RateLimitedError:
            pass
    return count


# --- GCRA -------------------------------------------------------------------------------


async def test_gcra_admits_exactly_burst_then_rejects_with_retry_after(client, prefix):
    limiter = RedisGcra(client, rate=0.5, burst=5, prefix=prefix)
    for _ in range(5):
        await limiter.try_acquire()
    with pytest.raises(RateLimitedError) as info:
        await limiter.try_acquire()
    assert info.value.name == "redis_gcra"
    assert 0 < info.value.retry_after <= 2.0  # at most one emission interval


async def test_gcra_retry_after_for_a_cost_covers_the_whole_cost(client, prefix):
    limiter = RedisGcra(client, rate=0.5, burst=3, prefix=prefix)
    await limiter.try_acquire(cost=3)
    with pytest.raises(RateLimitedError) as info:
        await limiter.try_acquire(cost=2)
    assert 2.0 < info.value.retry_after <= 4.0


async def test_two_clients_share_one_gcra_budget(client, other_client, prefix):
    first = RedisGcra(client, rate=SLOW, burst=4, prefix=prefix)
    second = RedisGcra(other_client, rate=SLOW, burst=4, prefix=prefix)
    counts = [await admitted(limiter, 1) for _ in range(4) for limiter in (first, second)]
    assert sum(counts) == 4
    assert counts[:4] == [1, 1, 1, 1]


async def test_gcra_call_after_waiting_retry_after_passes(client, prefix):
    limiter = RedisGcra(client, rate=20, burst=1, prefix=prefix)
    await limiter.try_acquire()
    with pytest.raises(RateLimitedError) as info:
        await limiter.try_acquire()
    await asyncio.sleep(info.value.retry_after)
    await limiter.try_acquire()


async def test_keys_have_separate_budgets(client, prefix):
    limiter = RedisGcra(client, rate=SLOW, burst=2, prefix=prefix)
    assert await admitted(limiter, 3, key="alice") == 2
    assert await admitted(limiter, 3, key="bob") == 2
    assert await admitted(limiter, 3) == 2  # the limiter's own key, "default"


async def test_keys_are_prefix_plus_key(client, prefix):
    limiter = RedisGcra(client, rate=SLOW, burst=2, prefix=prefix, key="api")
    await limiter.try_acquire()
    await limiter.try_acquire(key="user:7")
    assert sorted(await client.keys(prefix + "*")) == [
        f"{prefix}api".encode(), f"{prefix}user:7".encode()
    ]


async def test_keys_use_the_default_prefix_unless_told(client):
    key = f"test:{uuid.uuid4().hex}"
    await RedisGcra(client, rate=SLOW, key=key).try_acquire()
    assert await client.exists(f"fournines:rl:{key}") == 1
    assert DEFAULT_PREFIX == "fournines:rl:"


async def test_concurrent_tasks_admit_exactly_burst(redis_server, prefix):
    # A blocking pool queues the 200 tasks instead of failing those beyond its size.
    pool = aredis.BlockingConnectionPool.from_url(redis_server.url, max_connections=20)
    client = aredis.Redis(connection_pool=pool)
    limiter = RedisGcra(client, rate=SLOW, burst=50, prefix=prefix)

    async def one() -> bool:
        try:
            await limiter.try_acquire()
        except RateLimitedError:
            return False
        return True

    try:
        results = await asyncio.gather(*(one() for _ in range(200)))
    finally:
        await client.aclose()
        await pool.disconnect()
    assert results.count(True) == 50


# --- acquire / acall --------------------------------------------------------------------


async def test_acquire_waits_until_room(client, prefix):
    limiter = RedisGcra(client, rate=20, burst=1, prefix=prefix)
    await limiter.acquire(max_wait=1.0)
    await limiter.acquire(max_wait=1.0)
    await limiter.acquire(max_wait=1.0)


async def test_acquire_rejects_at_once_when_the_wait_exceeds_max_wait(client, prefix):
    limiter = RedisGcra(client, rate=1, burst=1, prefix=prefix)
    await limiter.acquire()
    with pytest.raises(RateLimitedError):
        await limiter.acquire(max_wait=0.01)


async def test_acquire_never_waits_past_the_deadline(client, prefix):
    limiter = RedisGcra(client, rate=1, burst=1, prefix=prefix, max_wait=30)
    await limiter.acquire()
    async with deadline_after(0.01):
        with pytest.raises(RateLimitedError):
            await limiter.acquire()


async def test_acall_runs_the_function_when_admitted_and_not_otherwise(client, prefix):
    limiter = RedisGcra(client, rate=SLOW, burst=1, prefix=prefix)
    ran: list[int] = []

    async def work(x: int) -> int:
        ran.append(x)
        return x * 2

    assert await limiter.acall(work, 21) == 42
    with pytest.raises(RateLimitedError):
        await limiter.acall(work, 1)
    assert ran == [21]


async def test_rejection_is_sent_to_listeners(client, prefix):
    recorder = RecordingListener()
    limiter = RedisGcra(client, rate=SLOW, burst=1, prefix=prefix, name="api",
                        listeners=[recorder])
    await limiter.try_acquire()
    with pytest.raises(RateLimitedError):
        await limiter.try_acquire()
    [event] = recorder.of(CallRejected)
    assert (event.policy, event.name, event.reason) == ("rate_limit", "api", "rate_limited")
    assert event.retry_after is not None and event.retry_after > 0


# --- sliding window ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["counter", "log"])
async def test_sliding_window_counts_across_clients(client, other_client, prefix, mode):
    first = RedisSlidingWindow(client, limit=5, window=60, mode=mode, prefix=prefix)
    second = RedisSlidingWindow(other_client, limit=5, window=60, mode=mode, prefix=prefix)
    counts = [await admitted(limiter, 1) for _ in range(4) for limiter in (first, second)]
    assert sum(counts) == 5


@pytest.mark.parametrize("mode", ["counter", "log"])
async def test_sliding_window_counts_costs(client, prefix, mode):
    limiter = RedisSlidingWindow(client, limit=5, window=60, mode=mode, prefix=prefix)
    await limiter.try_acquire(cost=3)
    with pytest.raises(RateLimitedError):
        await limiter.try_acquire(cost=3)
    await limiter.try_acquire(cost=2)
    with pytest.raises(RateLimitedError):
        await limiter.try_acquire()


@pytest.mark.parametrize("mode", ["counter", "log"])
async def test_sliding_window_call_after_waiting_retry_after_passes(client, prefix, mode):
    limiter = RedisSlidingWindow(client, limit=2, window=0.1, mode=mode, prefix=prefix)
    await limiter.try_acquire()
    await limiter.try_acquire()
    with pytest.raises(RateLimitedError) as info:
        await limiter.try_acquire()
    assert 0 < info.value.retry_after <= 0.2
    await asyncio.sleep(info.value.retry_after)
    await limiter.try_acquire()


# --- scripts: EVALSHA, NOSCRIPT ---------------------------------------------------------


async def commandstats(c: aredis.Redis) -> dict[str, int]:
    stats = await c.info("commandstats")
    return {name: value["calls"] for name, value in stats.items()}


async def test_decisions_use_evalsha_after_one_script_load(private_client, prefix):
    limiter = RedisGcra(private_client, rate=SLOW, burst=5, prefix=prefix)
    await private_client.config_resetstat()
    await admitted(limiter, 10)
    stats = await commandstats(private_client)
    assert stats["cmdstat_evalsha"] == 10
    assert stats["cmdstat_script|load"] == 1
    assert "cmdstat_eval" not in stats


@pytest.mark.parametrize(
    "make",
    [
        lambda c, p: RedisGcra(c, rate=SLOW, burst=3, prefix=p),
        lambda c, p: RedisSlidingWindow(c, limit=3, window=60, prefix=p),
        lambda c, p: RedisSlidingWindow(c, limit=3, window=60, mode="log", prefix=p),
    ],
    ids=["gcra", "counter", "log"],
)
async def test_script_flush_is_recovered_without_losing_count(private_client, prefix, make):
    limiter = make(private_client, prefix)
    await limiter.try_acquire()
    await private_client.script_flush()
    assert await admitted(limiter, 5) == 2
    await private_client.config_resetstat()
    await admitted(limiter, 2)
    assert "cmdstat_eval" not in await commandstats(private_client)


# --- Redis failures ---------------------------------------------------------------------


async def test_fail_open_admits_while_redis_is_down(private_redis, private_client, prefix):
    limiter = RedisGcra(private_client, rate=SLOW, burst=1, prefix=prefix,
                        on_redis_error="fail_open")
    await limiter.try_acquire()
    private_redis.kill()
    assert await admitted(limiter, 10) == 10


async def test_fail_closed_rejects_while_redis_is_down(private_redis, private_client, prefix):
    recorder = RecordingListener()
    limiter = RedisGcra(private_client, rate=SLOW, burst=100, prefix=prefix,
                        on_redis_error="fail_closed", listeners=[recorder])
    await limiter.try_acquire()
    private_redis.kill()
    with pytest.raises(RateLimitedError) as info:
        await limiter.try_acquire()
    assert info.value.retry_after is None
    with pytest.raises(RateLimitedError):
        await limiter.acquire(max_wait=10)
    assert [e.reason for e in recorder.of(CallRejected)] == ["redis_unavailable"] * 2


async def test_local_mode_decides_with_the_rescue_limiter(private_redis, private_client, prefix):
    limiter = RedisGcra(private_client, rate=SLOW, burst=100, prefix=prefix,
                        rescue=Gcra(rate=SLOW, burst=3))
    await limiter.try_acquire()
    private_redis.kill()
    assert await admitted(limiter, 10) == 3


async def test_default_rescue_divides_the_budget_by_instances(
    private_redis, private_client, prefix
):
    limiter = RedisGcra(private_client, rate=SLOW, burst=12, prefix=prefix, instances=4)
    private_redis.kill()
    assert await admitted(limiter, 10, key="a") == 3
    assert await admitted(limiter, 10, key="b") == 3  # one rescue limiter per key


async def test_default_sliding_window_rescue_divides_the_limit(
    private_redis, private_client, prefix
):
    limiter = RedisSlidingWindow(private_client, limit=10, window=60, prefix=prefix,
                                 instances=2)
    private_redis.kill()
    assert await admitted(limiter, 10) == 5


async def test_keyed_rescue_limits_each_key(private_redis, private_client, prefix):
    rescue = KeyedLimiter(lambda: Gcra(rate=SLOW, burst=2))
    limiter = RedisGcra(private_client, rate=SLOW, burst=100, prefix=prefix, rescue=rescue)
    private_redis.kill()
    assert await admitted(limiter, 5, key="a") == 2
    assert await admitted(limiter, 5, key="b") == 2


async def test_back_to_redis_after_restart(private_redis, private_client, prefix):
    limiter = RedisGcra(private_client, rate=SLOW, burst=5, prefix=prefix,
                        rescue=Gcra(rate=SLOW, burst=1), reconnect_after=0)
    private_redis.kill()
    assert await admitted(limiter, 3) == 1
    private_redis.start()
    # A fresh server: the budget is Redis's (5), not the exhausted rescue's.
    assert await admitted(limiter, 10) == 5
    assert await private_client.exists(prefix + "default") == 1


async def test_redis_is_not_asked_again_before_reconnect_after(
    private_redis, private_client, prefix
):
    limiter = RedisGcra(private_client, rate=SLOW, burst=5, prefix=prefix,
                        rescue=Gcra(rate=SLOW, burst=1), reconnect_after=3600)
    private_redis.kill()
    assert await admitted(limiter, 3) == 1
    private_redis.start()
    assert await admitted(limiter, 3) == 0
    assert await private_client.exists(prefix + "default") == 0


async def test_redis_failures_are_logged_once_per_interval(
    private_redis, private_client, prefix, caplog
):
    limiter = RedisGcra(private_client, rate=SLOW, burst=5, prefix=prefix,
                        on_redis_error="fail_open", reconnect_after=0)
    private_redis.kill()
    with caplog.at_level(logging.WARNING, logger="fournines"):
        await admitted(limiter, 5)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "redis_gcra" in warnings[0].getMessage()


# --- expiry -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda c, p: RedisGcra(c, rate=1, burst=10, prefix=p),
        lambda c, p: RedisSlidingWindow(c, limit=3, window=10, prefix=p),
        lambda c, p: RedisSlidingWindow(c, limit=3, window=10, mode="log", prefix=p),
    ],
    ids=["gcra", "counter", "log"],
)
async def test_keys_expire(client, prefix, make):
    limiter = make(client, prefix)
    await limiter.try_acquire()
    ttl = await client.pttl(prefix + "default")
    assert 0 < ttl <= 20_000


# --- sync variants ----------------------------------------------------------------------


def test_sync_gcra_admits_exactly_burst(blocking_client, prefix):
    limiter = SyncRedisGcra(blocking_client, rate=0.5, burst=3, prefix=prefix)
    for _ in range(3):
        limiter.try_acquire()
    with pytest.raises(RateLimitedError) as info:
        limiter.try_acquire()
    assert 0 < info.value.retry_after <= 2.0


async def test_sync_and_async_limiters_share_one_budget(client, blocking_client, prefix):
    async_limiter = RedisGcra(client, rate=SLOW, burst=3, prefix=prefix)
    sync_limiter = SyncRedisGcra(blocking_client, rate=SLOW, burst=3, prefix=prefix)
    sync_limiter.try_acquire()
    sync_limiter.try_acquire()
    await async_limiter.try_acquire()
    with pytest.raises(RateLimitedError):
        sync_limiter.try_acquire()


@pytest.mark.parametrize("mode", ["counter", "log"])
def test_sync_sliding_window_call_and_acquire(blocking_client, prefix, mode):
    limiter = SyncRedisSlidingWindow(blocking_client, limit=2, window=0.1, mode=mode,
                                     prefix=prefix)
    assert limiter.call(lambda x: x + 1, 1) == 2
    limiter.try_acquire()
    with pytest.raises(RateLimitedError):
        limiter.call(lambda: None)
    limiter.acquire(max_wait=1.0)


def test_sync_local_mode_uses_the_rescue(private_redis, prefix):
    c = sync_client(private_redis)
    try:
        limiter = SyncRedisGcra(c, rate=SLOW, burst=100, prefix=prefix,
                                rescue=Gcra(rate=SLOW, burst=2))
        private_redis.kill()
        count = 0
        for _ in range(5):
            try:
                limiter.try_acquire()
                count += 1
            except RateLimitedError:
                pass
        assert count == 2
    finally:
        c.close()


# --- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": -1}, "rate"),
        ({"rate": float("nan")}, "rate"),
        ({"burst": 0}, "burst"),
        ({"burst": 1.5}, "burst"),
        ({"max_wait": -1}, "max_wait"),
        ({"instances": 0}, "instances"),
        ({"reconnect_after": -1}, "reconnect_after"),
        ({"on_redis_error": "maybe"}, "on_redis_error"),
        ({"on_redis_error": "fail_open", "rescue": Gcra(rate=1)}, "rescue"),
        ({"rescue": "gcra"}, "rescue"),
        ({"prefix": 1}, "prefix"),
        ({"key": None}, "key"),
    ],
)
async def test_bad_gcra_config_names_the_field(client, kwargs, field):
    config = {"rate": 1.0, **kwargs}
    with pytest.raises(ConfigurationError, match=rf"RedisGcra\.{field}\b"):
        RedisGcra(client, **config)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"window": 0}, "window"),
        ({"window": "1s"}, "window"),
        ({"mode": "exact"}, "mode"),
    ],
)
async def test_bad_sliding_window_config_names_the_field(client, kwargs, field):
    config = {"limit": 10, "window": 1.0, **kwargs}
    with pytest.raises(ConfigurationError, match=rf"RedisSlidingWindow\.{field}\b"):
        RedisSlidingWindow(client, **config)


async def test_a_blocking_client_is_refused_by_the_async_limiter(blocking_client):
    with pytest.raises(ConfigurationError, match=r"RedisGcra\.client.*SyncRedisGcra"):
        RedisGcra(blocking_client, rate=1)


async def test_an_async_client_is_refused_by_the_blocking_limiter(client):
    with pytest.raises(ConfigurationError, match=r"SyncRedisSlidingWindow\.client"):
        SyncRedisSlidingWindow(client, limit=1, window=1)


@pytest.mark.parametrize("cost", [0, -1, 1.0, True, 4])
async def test_bad_cost_names_the_field(client, prefix, cost):
    limiter = RedisGcra(client, rate=1, burst=3, prefix=prefix)
    with pytest.raises(ConfigurationError, match=r"RedisGcra\.cost"):
        await limiter.try_acquire(cost=cost)


async def test_a_full_connection_pool_does_not_pause_redis(redis_server, prefix):
    pool = aredis.ConnectionPool.from_url(redis_server.url, max_connections=1)
    client = aredis.Redis(connection_pool=pool)
    limiter = RedisGcra(client, rate=SLOW, burst=5, prefix=prefix,
                        on_redis_error="fail_closed", reconnect_after=3600)

    async def one() -> float | None:
        try:
            await limiter.try_acquire()
        except RateLimitedError as exc:
            return exc.retry_after
        return 0.0

    try:
        results = await asyncio.gather(*(one() for _ in range(3)))
        assert results.count(None) >= 1  # decided without Redis: the pool was full
        await limiter.try_acquire()  # ... but Redis is asked again at once
        assert await client.exists(prefix + "default") == 1
    finally:
        await client.aclose()
        await pool.disconnect()
