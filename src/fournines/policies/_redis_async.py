"""Redis limiters on a ``redis.asyncio.Redis`` client: ``RedisGcra``, ``RedisSlidingWindow``.

:mod:`._redis_sync` is generated from :mod:`._redis_async` by ``scripts/unasync.py``:
edit the async module, then run the script. What the two share beyond these
shells (scripts, settings, decisions) is in :mod:`._redis_core`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, ParamSpec, Protocol, TypeVar

from redis.exceptions import NoScriptError, RedisError

from .._clock import Clock, system_clock
from .._events import Listener
from ._redis_core import (
    DEFAULT_PREFIX,
    Coro,
    KeyFunc,
    OnRedisError,
    _GcraAlgorithm,
    _RedisLimiter,
    _WindowAlgorithm,
)
from .rate_limit import KeyedLimiter, RateLimiter

__all__ = ["RedisGcra", "RedisSlidingWindow"]

P = ParamSpec("P")
T = TypeVar("T")


class _AsyncClient(Protocol):
    """What these limiters need of a client (``redis.asyncio.Redis`` has it)."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Send one command and return its parsed reply."""


class _AsyncRedisLimiter(_RedisLimiter):
    """The shell that asks Redis through a ``redis.asyncio.Redis`` client."""

    __slots__ = ("_client",)

    _client: _AsyncClient

    @property
    def client(self) -> _AsyncClient:
        """The ``redis.asyncio.Redis`` client every decision goes through."""
        return self._client

    async def _take(self, cost: int, key: str | None) -> float | None:
        key, argv = self._prepare(cost, key)
        if not self._redis_up():
            return self._failed(None, key, cost)
        script = self._algorithm.script
        client = self._client
        redis_key = self._prefix + key
        try:
            if not self._loaded:
                await client.execute_command("SCRIPT LOAD", script.source)
                self._loaded = True
            try:
                reply = await client.execute_command("EVALSHA", script.sha, 1, redis_key, *argv)
            except NoScriptError:
                reply = await client.execute_command("EVAL", script.source, 1, redis_key, *argv)
        except (RedisError, OSError) as exc:
            return self._failed(exc, key, cost)
        return self._decided(reply)

    async def try_acquire(self, cost: int = 1, *, key: str | None = None) -> None:
        """Take ``cost`` units of ``key`` now, or raise ``RateLimitedError``.

        ``key=None`` uses the limiter's own ``key`` (required when that is a
        function of a call's arguments). ``retry_after`` on the error says when
        ``cost`` units will be available (``None`` when Redis failed and
        ``on_redis_error="fail_closed"``).
        """
        wait = await self._take(cost, key)
        if wait != 0.0:
            raise self._reject(wait)

    async def acquire(
        self, cost: int = 1, *, key: str | None = None, max_wait: float | None = None
    ) -> None:
        """Wait up to ``max_wait`` seconds for ``cost`` units of ``key``.

        ``max_wait=None`` uses the limiter's own ``max_wait``. The wait never
        goes past the current deadline; when it would, ``RateLimitedError`` is
        raised at once instead of sleeping in vain.
        """
        budget = self._budget(max_wait)
        now = self._clock.monotonic
        start = now()
        while True:
            wait = await self._take(cost, key)
            if wait == 0.0:
                return
            if wait is None or wait > budget - (now() - start):
                raise self._reject(wait)
            await self._clock.asleep(wait)

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn`` once one unit of its key is available (waiting up to ``max_wait``).

        The key is the limiter's ``key``, or ``key(*args, **kwargs)`` when that
        is a function.
        """
        key_fn = self._key_fn
        await self.acquire(1, key=None if key_fn is None else self._call_key(key_fn, args, kwargs))
        return await fn(*args, **kwargs)

    def awrap(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coro[T]]:
        """``fn`` under the limiter: what a ``Pipeline`` and the decorator build on."""
        acall = self.acall

        async def through_limiter(*args: P.args, **kwargs: P.kwargs) -> T:
            return await acall(fn, *args, **kwargs)

        return through_limiter


class RedisGcra(_AsyncRedisLimiter):
    """A distributed GCRA: ``rate`` per second per key, bursts up to ``burst``, shared via Redis.

    It admits what a full token bucket of ``burst`` tokens refilled at
    ``rate`` would, for all processes together, keeping one number per key in
    Redis. ``client`` is a ``redis.asyncio.Redis`` (give it short socket
    timeouts: see :mod:`fournines.policies.redis_rate_limit`).

    It decides with that client only: ``await try_acquire()``, ``await acquire()``
    and ``await acall()``, so a ``Pipeline`` holding it runs through ``acall``
    and decorates ``async def`` functions. Its other shell raises ``TypeError``
    (at decoration, for a decorator or a ``Pipeline``) pointing to
    :class:`SyncRedisGcra`, the same limiter on the other kind of client: with
    the same settings, prefix and key the two share one budget.

    ``key`` is the default key, or a function ``key(*args, **kwargs) -> str``
    of the protected call's arguments (then ``try_acquire`` and ``acquire``
    need ``key=``); every method takes ``key=`` to limit another one (a user,
    a tenant...).

    ``on_redis_error`` says what happens when Redis fails: ``"local"`` decides
    with ``rescue`` (by default one local ``Gcra`` per key with ``rate`` and
    ``burst`` divided by ``instances``), ``"fail_open"`` admits,
    ``"fail_closed"`` rejects. Redis is asked again ``reconnect_after``
    seconds after a failure. Settings are read-only.
    """

    __slots__ = ()

    _algorithm: _GcraAlgorithm

    def __init__(
        self,
        client: _AsyncClient,
        *,
        rate: float,
        burst: int = 1,
        key: str | KeyFunc = "default",
        prefix: str = DEFAULT_PREFIX,
        name: str = "redis_gcra",
        max_wait: float = 0.0,
        on_redis_error: OnRedisError = "local",
        rescue: RateLimiter | KeyedLimiter | None = None,
        instances: int = 1,
        reconnect_after: float = 1.0,
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
    ) -> None:
        super().__init__(
            _GcraAlgorithm(type(self).__name__, rate, burst), client, key=key, prefix=prefix,
            name=name, max_wait=max_wait, on_redis_error=on_redis_error, rescue=rescue,
            instances=instances, reconnect_after=reconnect_after, clock=clock,
            listeners=listeners,
        )
        self._client = client

    @property
    def rate(self) -> float:
        """Units per second per key, for all processes together."""
        return self._algorithm.rate

    @property
    def burst(self) -> int:
        """Units a key may take at once after being idle."""
        return self._algorithm.burst


class RedisSlidingWindow(_AsyncRedisLimiter):
    """A distributed sliding window: at most ``limit`` units per ``window`` seconds per key.

    ``mode="counter"`` (the default) keeps two counters per key in a Redis
    hash and weights the previous fixed window by how much of it the sliding
    window still covers, like the local ``SlidingWindow(mode="counter")``:
    constant memory, slightly permissive at window edges. ``mode="log"`` keeps
    one sorted-set member per unit: exact, memory grows with ``limit``.

    ``client``, its one kind of shell (the twin is
    :class:`SyncRedisSlidingWindow`), ``key``, ``on_redis_error``, ``rescue``
    (by default one local ``SlidingWindow`` per key with ``limit`` divided by
    ``instances``) and ``reconnect_after`` work as in :class:`RedisGcra`.
    Settings are read-only.
    """

    __slots__ = ()

    _algorithm: _WindowAlgorithm

    def __init__(
        self,
        client: _AsyncClient,
        *,
        limit: int,
        window: float,
        mode: Literal["counter", "log"] = "counter",
        key: str | KeyFunc = "default",
        prefix: str = DEFAULT_PREFIX,
        name: str = "redis_sliding_window",
        max_wait: float = 0.0,
        on_redis_error: OnRedisError = "local",
        rescue: RateLimiter | KeyedLimiter | None = None,
        instances: int = 1,
        reconnect_after: float = 1.0,
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
    ) -> None:
        super().__init__(
            _WindowAlgorithm(type(self).__name__, limit, window, mode), client, key=key,
            prefix=prefix, name=name, max_wait=max_wait, on_redis_error=on_redis_error,
            rescue=rescue, instances=instances, reconnect_after=reconnect_after, clock=clock,
            listeners=listeners,
        )
        self._client = client

    @property
    def limit(self) -> int:
        """Units per window per key, for all processes together."""
        return self._algorithm.limit

    @property
    def window(self) -> float:
        """The window's length in seconds."""
        return self._algorithm.window

    @property
    def mode(self) -> Literal["counter", "log"]:
        """``"counter"`` (approximate, constant memory) or ``"log"`` (exact)."""
        return self._algorithm.mode
