"""Redis-backed rate limiters against a real redis-server (no mocks).

Every behaviour is one test body run on both shells: the hand-written async
limiters (``RedisGcra``, ``RedisSlidingWindow`` on a ``redis.asyncio`` client)
and the generated sync ones (``SyncRedisGcra``, ``SyncRedisSlidingWindow`` on a
blocking ``redis.Redis``). Rates are chosen so that real waits stay well under
a second in total; the tests assert admit/reject outcomes, never durations.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

import fournines
from fournines._deadline import deadline_after
from fournines._errors import ConfigurationError, RateLimitedError
from fournines._events import CallRejected
from fournines.policies.bulkhead import Bulkhead
from fournines.policies.pipeline import Pipeline
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


def async_client(server: RedisServer, **pool: Any) -> aredis.Redis:
    # No retries: a dead server must fail the call at once, not after backoff.
    return aredis.Redis.from_url(
        server.url, retry=AsyncRetry(NoBackoff(), 0), socket_timeout=2,
        socket_connect_timeout=2, **pool,
    )


def sync_client(server: RedisServer, **pool: Any) -> redis.Redis:
    return redis.Redis.from_url(
        server.url, retry=Retry(NoBackoff(), 0), socket_timeout=2, socket_connect_timeout=2,
        **pool,
    )


class Shell:
    """One kind of limiter (async or sync): its classes, clients, and how to call them."""

    def __init__(self, kind: str, server: RedisServer) -> None:
        self.kind = kind
        self.is_async = kind == "async"
        self.server = server
        self.gcra_class: type[Any] = RedisGcra if self.is_async else SyncRedisGcra
        self.window_class: type[Any] = (
            RedisSlidingWindow if self.is_async else SyncRedisSlidingWindow
        )
        self.twin_gcra: type[Any] = SyncRedisGcra if self.is_async else RedisGcra
        self._clients: list[Any] = []
        self._pools: list[Any] = []

    def client(self, **pool: Any) -> Any:
        make = async_client if self.is_async else sync_client
        client = make(self.server, **pool)
        self._clients.append(client)
        return client

    def pooled_client(self, max_connections: int) -> Any:
        """A client whose callers queue for one of ``max_connections`` connections."""
        module = aredis if self.is_async else redis
        pool = module.BlockingConnectionPool.from_url(
            self.server.url, max_connections=max_connections
        )
        client = module.Redis(connection_pool=pool)
        self._clients.append(client)
        self._pools.append(pool)
        return client

    def other_client(self) -> Any:
        """A client of the other kind (which this shell's limiters refuse)."""
        client = (sync_client if self.is_async else async_client)(self.server)
        self._clients.append(client)
        return client

    def gcra(self, **kwargs: Any) -> Any:
        return self.gcra_class(self.client(), **kwargs)

    def window(self, **kwargs: Any) -> Any:
        return self.window_class(self.client(), **kwargs)

    async def run(self, result: Any) -> Any:
        return await result if inspect.isawaitable(result) else result

    async def try_acquire(self, limiter: Any, **kwargs: Any) -> None:
        await self.run(limiter.try_acquire(**kwargs))

    async def acquire(self, limiter: Any, **kwargs: Any) -> None:
        await self.run(limiter.acquire(**kwargs))

    async def admitted(self, limiter: Any, attempts: int, **kwargs: Any) -> int:
        count = 0
        for _ in range(attempts):
            try:
                await self.try_acquire(limiter, **kwargs)
                count += 1
            except RateLimitedError:
                pass
        return count

    def function(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` as this shell's kind of function (a coroutine function when async)."""
        if not self.is_async:
            return fn

        async def afn(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return afn

    async def call(self, policy: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` through ``policy``'s shell of this kind (``acall`` or ``call``)."""
        if self.is_async:
            return await policy.acall(self.function(fn), *args, **kwargs)
        return policy.call(fn, *args, **kwargs)

    async def wrong_call(self, policy: Any, fn: Callable[..., Any]) -> Any:
        """Run ``fn`` through ``policy``'s shell of the other kind."""
        if self.is_async:
            return policy.call(fn)
        return await policy.acall(self.function(fn))

    @property
    def right_method(self) -> str:
        return "acall" if self.is_async else "call"

    @property
    def wrong_method(self) -> str:
        return "call" if self.is_async else "acall"

    async def concurrently(self, fn: Callable[[], Any], n: int) -> list[Any]:
        """``n`` calls of ``fn`` at once: tasks when async, threads when sync."""
        if self.is_async:
            return list(await asyncio.gather(*(fn() for _ in range(n))))
        with ThreadPoolExecutor(max_workers=20) as pool:
            return list(pool.map(lambda _: fn(), range(n)))

    async def close(self) -> None:
        for client in self._clients:
            await self.run(client.aclose() if hasattr(client, "aclose") else client.close())
        for pool in self._pools:
            await self.run(pool.disconnect())


@pytest.fixture(params=["async", "sync"])
async def shell(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Shell]:
    s = Shell(request.param, redis_server)
    yield s
    await s.close()


@pytest.fixture(params=["async", "sync"])
async def private_shell(
    request: pytest.FixtureRequest, private_redis: RedisServer
) -> AsyncIterator[Shell]:
    s = Shell(request.param, private_redis)
    yield s
    await s.close()


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aredis.Redis]:
    """An async client to look at what the limiters wrote."""
    c = async_client(redis_server)
    yield c
    await c.aclose()


@pytest.fixture
async def private_client(private_redis: RedisServer) -> AsyncIterator[aredis.Redis]:
    c = async_client(private_redis)
    yield c
    await c.aclose()


# --- GCRA -------------------------------------------------------------------------------


async def test_gcra_admits_exactly_burst_then_rejects_with_retry_after(shell, prefix):
    limiter = shell.gcra(rate=0.5, burst=5, prefix=prefix)
    for _ in range(5):
        await shell.try_acquire(limiter)
    with pytest.raises(RateLimitedError) as info:
        await shell.try_acquire(limiter)
    assert info.value.name == "redis_gcra"
    assert 0 < info.value.retry_after <= 2.0  # at most one emission interval


async def test_gcra_retry_after_for_a_cost_covers_the_whole_cost(shell, prefix):
    limiter = shell.gcra(rate=0.5, burst=3, prefix=prefix)
    await shell.try_acquire(limiter, cost=3)
    with pytest.raises(RateLimitedError) as info:
        await shell.try_acquire(limiter, cost=2)
    assert 2.0 < info.value.retry_after <= 4.0


async def test_two_clients_share_one_gcra_budget(shell, prefix):
    first = shell.gcra(rate=SLOW, burst=4, prefix=prefix)
    second = shell.gcra(rate=SLOW, burst=4, prefix=prefix)
    counts = [await shell.admitted(lim, 1) for _ in range(4) for lim in (first, second)]
    assert sum(counts) == 4
    assert counts[:4] == [1, 1, 1, 1]


async def test_sync_and_async_limiters_share_one_budget(redis_server, prefix):
    a, s = async_client(redis_server), sync_client(redis_server)
    try:
        async_limiter = RedisGcra(a, rate=SLOW, burst=3, prefix=prefix)
        sync_limiter = SyncRedisGcra(s, rate=SLOW, burst=3, prefix=prefix)
        sync_limiter.try_acquire()
        sync_limiter.try_acquire()
        await async_limiter.try_acquire()
        with pytest.raises(RateLimitedError):
            sync_limiter.try_acquire()
        with pytest.raises(RateLimitedError):
            await async_limiter.try_acquire()
    finally:
        await a.aclose()
        s.close()


async def test_gcra_call_after_waiting_retry_after_passes(shell, prefix):
    limiter = shell.gcra(rate=20, burst=1, prefix=prefix)
    await shell.try_acquire(limiter)
    with pytest.raises(RateLimitedError) as info:
        await shell.try_acquire(limiter)
    await asyncio.sleep(info.value.retry_after)
    await shell.try_acquire(limiter)


async def test_keys_have_separate_budgets(shell, prefix):
    limiter = shell.gcra(rate=SLOW, burst=2, prefix=prefix)
    assert await shell.admitted(limiter, 3, key="alice") == 2
    assert await shell.admitted(limiter, 3, key="bob") == 2
    assert await shell.admitted(limiter, 3) == 2  # the limiter's own key, "default"


async def test_keys_are_prefix_plus_key(shell, client, prefix):
    limiter = shell.gcra(rate=SLOW, burst=2, prefix=prefix, key="api")
    await shell.try_acquire(limiter)
    await shell.try_acquire(limiter, key="user:7")
    assert sorted(await client.keys(prefix + "*")) == [
        f"{prefix}api".encode(), f"{prefix}user:7".encode()
    ]


async def test_keys_use_the_default_prefix_unless_told(shell, client):
    key = f"test:{uuid.uuid4().hex}"
    await shell.try_acquire(shell.gcra(rate=SLOW, key=key))
    assert await client.exists(f"fournines:rl:{key}") == 1
    assert DEFAULT_PREFIX == "fournines:rl:"


async def test_concurrent_callers_admit_exactly_burst(shell, prefix):
    # A blocking pool queues the callers instead of failing those beyond its size.
    limiter = shell.gcra_class(shell.pooled_client(20), rate=SLOW, burst=50, prefix=prefix)

    async def one_async() -> bool:
        try:
            await limiter.try_acquire()
        except RateLimitedError:
            return False
        return True

    def one_sync() -> bool:
        try:
            limiter.try_acquire()
        except RateLimitedError:
            return False
        return True

    results = await shell.concurrently(one_async if shell.is_async else one_sync, 200)
    assert results.count(True) == 50


# --- acquire / call / acall -------------------------------------------------------------


async def test_acquire_waits_until_room(shell, prefix):
    limiter = shell.gcra(rate=20, burst=1, prefix=prefix)
    for _ in range(3):
        await shell.acquire(limiter, max_wait=1.0)


async def test_acquire_rejects_at_once_when_the_wait_exceeds_max_wait(shell, prefix):
    limiter = shell.gcra(rate=1, burst=1, prefix=prefix)
    await shell.acquire(limiter)
    with pytest.raises(RateLimitedError):
        await shell.acquire(limiter, max_wait=0.01)


async def test_acquire_never_waits_past_the_deadline(shell, prefix):
    limiter = shell.gcra(rate=1, burst=1, prefix=prefix, max_wait=30)
    await shell.acquire(limiter)
    with deadline_after(0.01), pytest.raises(RateLimitedError):
        await shell.acquire(limiter)


async def test_the_policy_shell_runs_the_function_when_admitted_and_not_otherwise(
    shell, prefix
):
    limiter = shell.gcra(rate=SLOW, burst=1, prefix=prefix)
    ran: list[int] = []

    def work(x: int) -> int:
        ran.append(x)
        return x * 2

    assert await shell.call(limiter, work, 21) == 42
    with pytest.raises(RateLimitedError):
        await shell.call(limiter, work, 1)
    assert ran == [21]


async def test_rejection_is_sent_to_listeners(shell, prefix):
    recorder = RecordingListener()
    limiter = shell.gcra(rate=SLOW, burst=1, prefix=prefix, name="api", listeners=[recorder])
    await shell.try_acquire(limiter)
    with pytest.raises(RateLimitedError):
        await shell.try_acquire(limiter)
    [event] = recorder.of(CallRejected)
    assert (event.policy, event.name, event.reason) == ("rate_limit", "api", "rate_limited")
    assert event.retry_after is not None and event.retry_after > 0


# --- in a Pipeline, as a decorator, keyed by the call's arguments -----------------------


async def test_a_pipeline_holding_a_redis_limiter_admits_then_rejects(shell, prefix):
    limiter = shell.gcra(rate=SLOW, burst=2, prefix=prefix)
    pipeline = Pipeline(Bulkhead(max_concurrent=4), limiter)
    assert await shell.call(pipeline, lambda x: x + 1, 1) == 2
    assert await shell.call(pipeline, lambda x: x + 1, 2) == 3
    with pytest.raises(RateLimitedError):
        await shell.call(pipeline, lambda x: x + 1, 3)


async def test_the_limiter_decorates_functions_of_its_kind(shell, prefix):
    limiter = shell.gcra(rate=SLOW, burst=1, prefix=prefix)
    double = limiter(shell.function(lambda x: x * 2))
    assert await shell.run(double(4)) == 8
    with pytest.raises(RateLimitedError):
        await shell.run(double(4))


async def test_a_key_function_gives_each_callers_key_its_own_budget(shell, client, prefix):
    limiter = shell.gcra(rate=SLOW, burst=1, prefix=prefix,
                         key=lambda user, **kwargs: f"user:{user}")
    pipeline = Pipeline(limiter)

    def greet(user: str, *, loud: bool = False) -> str:
        return user.upper() if loud else user

    assert await shell.call(pipeline, greet, "alice") == "alice"
    assert await shell.call(pipeline, greet, "bob", loud=True) == "BOB"
    with pytest.raises(RateLimitedError):
        await shell.call(pipeline, greet, "alice")
    assert sorted(await client.keys(prefix + "*")) == [
        f"{prefix}user:alice".encode(), f"{prefix}user:bob".encode()
    ]


async def test_a_key_function_needs_an_explicit_key_outside_a_call(shell, prefix):
    limiter = shell.gcra(rate=SLOW, burst=1, prefix=prefix, key=lambda user: user)
    name = shell.gcra_class.__name__
    with pytest.raises(TypeError, match=rf"{name}\.try_acquire and \.acquire need key="):
        await shell.try_acquire(limiter)
    await shell.try_acquire(limiter, key="carol")  # an explicit key is fine


async def test_a_key_function_must_return_a_str(shell, prefix):
    limiter = shell.gcra(rate=SLOW, burst=1, prefix=prefix, key=lambda user: 42)
    with pytest.raises(TypeError, match=rf"{shell.gcra_class.__name__}\.key must return a str"):
        await shell.call(limiter, lambda user: user, "dave")


async def test_an_explicit_key_must_be_a_str(shell, prefix):
    # try_acquire(key=42) failed deep inside with "can only concatenate str (not int)".
    limiter = shell.gcra(rate=SLOW, burst=1, prefix=prefix)
    owner = shell.gcra_class.__name__
    with pytest.raises(TypeError, match=rf"{owner}\.try_acquire/acquire key= must be a str"):
        await shell.try_acquire(limiter, key=42)


# --- the other shell --------------------------------------------------------------------


@pytest.mark.parametrize("make", ["gcra", "window"])
async def test_the_other_shell_raises_a_type_error_naming_the_twin(shell, prefix, make):
    limiter = (shell.gcra(rate=SLOW, prefix=prefix) if make == "gcra"
               else shell.window(limit=1, window=60, prefix=prefix))
    name = type(limiter).__name__
    twin = name.removeprefix("Sync") if name.startswith("Sync") else "Sync" + name
    ran: list[int] = []
    with pytest.raises(TypeError) as info:
        await shell.wrong_call(limiter, lambda: ran.append(1))
    message = str(info.value)
    assert message.startswith(f"{name}.{shell.wrong_method} ")
    assert f"{name}.{shell.right_method}" in message
    assert f"use {twin}(" in message
    assert ran == []


async def test_a_pipeline_of_the_other_kind_refuses_before_running_anything(shell, prefix):
    limiter = shell.gcra(rate=SLOW, prefix=prefix)
    ran: list[int] = []
    with pytest.raises(TypeError, match=rf"{type(limiter).__name__}\.(wrap|awrap) "):
        await shell.wrong_call(Pipeline(limiter), lambda: ran.append(1))
    assert ran == []


async def test_decorating_a_function_of_the_other_kind_fails_at_decoration(shell, prefix):
    limiter = shell.gcra(rate=SLOW, prefix=prefix)

    def plain() -> None: ...

    async def coroutine() -> None: ...

    with pytest.raises(TypeError, match=rf"{type(limiter).__name__}\."):
        limiter(plain if shell.is_async else coroutine)


# --- sliding window ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["counter", "log"])
async def test_sliding_window_counts_across_clients(shell, prefix, mode):
    first = shell.window(limit=5, window=60, mode=mode, prefix=prefix)
    second = shell.window(limit=5, window=60, mode=mode, prefix=prefix)
    counts = [await shell.admitted(lim, 1) for _ in range(4) for lim in (first, second)]
    assert sum(counts) == 5


@pytest.mark.parametrize("mode", ["counter", "log"])
async def test_sliding_window_counts_costs(shell, prefix, mode):
    limiter = shell.window(limit=5, window=60, mode=mode, prefix=prefix)
    await shell.try_acquire(limiter, cost=3)
    with pytest.raises(RateLimitedError):
        await shell.try_acquire(limiter, cost=3)
    await shell.try_acquire(limiter, cost=2)
    with pytest.raises(RateLimitedError):
        await shell.try_acquire(limiter)


@pytest.mark.parametrize("mode", ["counter", "log"])
async def test_sliding_window_call_after_waiting_retry_after_passes(shell, prefix, mode):
    limiter = shell.window(limit=2, window=0.1, mode=mode, prefix=prefix)
    await shell.try_acquire(limiter)
    await shell.try_acquire(limiter)
    with pytest.raises(RateLimitedError) as info:
        await shell.try_acquire(limiter)
    assert 0 < info.value.retry_after <= 0.2
    await asyncio.sleep(info.value.retry_after)
    await shell.try_acquire(limiter)


# --- scripts: EVALSHA, NOSCRIPT ---------------------------------------------------------


async def commandstats(c: aredis.Redis) -> dict[str, int]:
    stats = await c.info("commandstats")
    return {name: value["calls"] for name, value in stats.items()}


async def test_decisions_use_evalsha_after_one_script_load(private_shell, private_client, prefix):
    limiter = private_shell.gcra(rate=SLOW, burst=5, prefix=prefix)
    await private_client.config_resetstat()
    await private_shell.admitted(limiter, 10)
    stats = await commandstats(private_client)
    assert stats["cmdstat_evalsha"] == 10
    assert stats["cmdstat_script|load"] == 1
    assert "cmdstat_eval" not in stats


@pytest.mark.parametrize(
    "make",
    [
        lambda s, p: s.gcra(rate=SLOW, burst=3, prefix=p),
        lambda s, p: s.window(limit=3, window=60, prefix=p),
        lambda s, p: s.window(limit=3, window=60, mode="log", prefix=p),
    ],
    ids=["gcra", "counter", "log"],
)
async def test_script_flush_is_recovered_without_losing_count(
    private_shell, private_client, prefix, make
):
    limiter = make(private_shell, prefix)
    await private_shell.try_acquire(limiter)
    await private_client.script_flush()
    assert await private_shell.admitted(limiter, 5) == 2
    await private_client.config_resetstat()
    await private_shell.admitted(limiter, 2)
    assert "cmdstat_eval" not in await commandstats(private_client)


# --- Redis failures ---------------------------------------------------------------------


async def test_fail_open_admits_while_redis_is_down(private_redis, private_shell, prefix):
    limiter = private_shell.gcra(rate=SLOW, burst=1, prefix=prefix, on_redis_error="fail_open")
    await private_shell.try_acquire(limiter)
    private_redis.kill()
    assert await private_shell.admitted(limiter, 10) == 10


async def test_fail_closed_rejects_while_redis_is_down(private_redis, private_shell, prefix):
    recorder = RecordingListener()
    limiter = private_shell.gcra(rate=SLOW, burst=100, prefix=prefix,
                                 on_redis_error="fail_closed", listeners=[recorder])
    await private_shell.try_acquire(limiter)
    private_redis.kill()
    with pytest.raises(RateLimitedError) as info:
        await private_shell.try_acquire(limiter)
    assert info.value.retry_after is None
    with pytest.raises(RateLimitedError):
        await private_shell.acquire(limiter, max_wait=10)
    assert [e.reason for e in recorder.of(CallRejected)] == ["redis_unavailable"] * 2


async def test_local_mode_decides_with_the_rescue_limiter(private_redis, private_shell, prefix):
    limiter = private_shell.gcra(rate=SLOW, burst=100, prefix=prefix,
                                 rescue=Gcra(rate=SLOW, burst=3))
    await private_shell.try_acquire(limiter)
    private_redis.kill()
    assert await private_shell.admitted(limiter, 10) == 3


async def test_default_rescue_divides_the_budget_by_instances(
    private_redis, private_shell, prefix
):
    limiter = private_shell.gcra(rate=SLOW, burst=12, prefix=prefix, instances=4)
    private_redis.kill()
    assert await private_shell.admitted(limiter, 10, key="a") == 3
    assert await private_shell.admitted(limiter, 10, key="b") == 3  # one rescue per key


async def test_default_sliding_window_rescue_divides_the_limit(
    private_redis, private_shell, prefix
):
    limiter = private_shell.window(limit=10, window=60, prefix=prefix, instances=2)
    private_redis.kill()
    assert await private_shell.admitted(limiter, 10) == 5


async def test_keyed_rescue_limits_each_key(private_redis, private_shell, prefix):
    rescue = KeyedLimiter(lambda: Gcra(rate=SLOW, burst=2))
    limiter = private_shell.gcra(rate=SLOW, burst=100, prefix=prefix, rescue=rescue)
    private_redis.kill()
    assert await private_shell.admitted(limiter, 5, key="a") == 2
    assert await private_shell.admitted(limiter, 5, key="b") == 2


async def test_back_to_redis_after_restart(private_redis, private_shell, private_client, prefix):
    limiter = private_shell.gcra(rate=SLOW, burst=5, prefix=prefix,
                                 rescue=Gcra(rate=SLOW, burst=1), reconnect_after=0)
    private_redis.kill()
    assert await private_shell.admitted(limiter, 3) == 1
    private_redis.start()
    # A fresh server: the budget is Redis's (5), not the exhausted rescue's.
    assert await private_shell.admitted(limiter, 10) == 5
    assert await private_client.exists(prefix + "default") == 1


async def test_redis_is_not_asked_again_before_reconnect_after(
    private_redis, private_shell, private_client, prefix
):
    limiter = private_shell.gcra(rate=SLOW, burst=5, prefix=prefix,
                                 rescue=Gcra(rate=SLOW, burst=1), reconnect_after=3600)
    private_redis.kill()
    assert await private_shell.admitted(limiter, 3) == 1
    private_redis.start()
    assert await private_shell.admitted(limiter, 3) == 0
    assert await private_client.exists(prefix + "default") == 0


async def test_redis_failures_are_logged_once_per_interval(
    private_redis, private_shell, prefix, caplog
):
    limiter = private_shell.gcra(rate=SLOW, burst=5, prefix=prefix,
                                 on_redis_error="fail_open", reconnect_after=0)
    private_redis.kill()
    with caplog.at_level(logging.WARNING, logger="fournines"):
        await private_shell.admitted(limiter, 5)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "redis_gcra" in warnings[0].getMessage()


async def test_a_full_connection_pool_does_not_pause_redis(redis_server, client, prefix):
    # Async only: one connection and three tasks in flight are what fills the pool.
    pool = aredis.ConnectionPool.from_url(redis_server.url, max_connections=1)
    small = aredis.Redis(connection_pool=pool)
    limiter = RedisGcra(small, rate=SLOW, burst=5, prefix=prefix,
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
        await small.aclose()
        await pool.disconnect()


# --- expiry -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda s, p: s.gcra(rate=1, burst=10, prefix=p),
        lambda s, p: s.window(limit=3, window=10, prefix=p),
        lambda s, p: s.window(limit=3, window=10, mode="log", prefix=p),
    ],
    ids=["gcra", "counter", "log"],
)
async def test_keys_expire(shell, client, prefix, make):
    await shell.try_acquire(make(shell, prefix))
    ttl = await client.pttl(prefix + "default")
    assert 0 < ttl <= 20_000


# --- settings ---------------------------------------------------------------------------


async def test_gcra_settings_are_read_only(shell, prefix):
    limiter = shell.gcra(rate=2, burst=3, prefix=prefix, name="api", max_wait=0.5,
                         instances=2, reconnect_after=4)
    settings = {"rate": 2.0, "burst": 3, "key": "default", "prefix": prefix, "name": "api",
                "max_wait": 0.5, "on_redis_error": "local", "instances": 2,
                "reconnect_after": 4.0}
    assert {field: getattr(limiter, field) for field in settings} == settings
    for field in [*settings, "client", "rescue"]:
        with pytest.raises(AttributeError):
            setattr(limiter, field, getattr(limiter, field))


async def test_sliding_window_settings_are_read_only(shell, prefix):
    limiter = shell.window(limit=4, window=2, mode="log", prefix=prefix)
    assert (limiter.limit, limiter.window, limiter.mode) == (4, 2.0, "log")
    for field in ("limit", "window", "mode", "key"):
        with pytest.raises(AttributeError):
            setattr(limiter, field, getattr(limiter, field))


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
        # instances only divides the default rescue: it can never act otherwise
        ({"on_redis_error": "fail_closed", "instances": 4}, "instances"),
        ({"rescue": Gcra(rate=1), "instances": 4}, "instances"),
        ({"rescue": "gcra"}, "rescue"),
        ({"prefix": 1}, "prefix"),
        ({"key": None}, "key"),
        ({"key": 42}, "key"),
    ],
)
async def test_bad_gcra_config_names_the_field(shell, kwargs, field):
    config = {"rate": 1.0, **kwargs}
    with pytest.raises(ConfigurationError, match=rf"^{shell.gcra_class.__name__}\.{field}\b"):
        shell.gcra(**config)


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
async def test_bad_sliding_window_config_names_the_field(shell, kwargs, field):
    config = {"limit": 10, "window": 1.0, **kwargs}
    with pytest.raises(ConfigurationError, match=rf"^{shell.window_class.__name__}\.{field}\b"):
        shell.window(**config)


async def test_a_client_of_the_other_kind_is_refused_naming_the_twin(shell):
    name, twin = shell.gcra_class.__name__, shell.twin_gcra.__name__
    with pytest.raises(ConfigurationError, match=rf"^{name}\.client .*see {twin} "):
        shell.gcra_class(shell.other_client(), rate=1)


@pytest.mark.parametrize("cost", [0, -1, 1.0, True, 4])
async def test_bad_cost_names_the_field(shell, prefix, cost):
    limiter = shell.gcra(rate=1, burst=3, prefix=prefix)
    with pytest.raises(ConfigurationError, match=rf"^{shell.gcra_class.__name__}\.cost"):
        await shell.try_acquire(limiter, cost=cost)


def test_the_top_level_package_exports_the_redis_limiters_lazily():
    assert (fournines.RedisGcra, fournines.RedisSlidingWindow) == (RedisGcra, RedisSlidingWindow)
    assert fournines.SyncRedisGcra is SyncRedisGcra
    assert fournines.SyncRedisSlidingWindow is SyncRedisSlidingWindow
