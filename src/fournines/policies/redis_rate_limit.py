"""Distributed rate limiters backed by Redis: GCRA and sliding window (counter and log).

Every process that points at the same Redis and uses the same key shares one
budget. Each decision is one atomic Lua script, sent with ``EVALSHA`` (the
script is loaded once with ``SCRIPT LOAD``; when Redis answers ``NOSCRIPT``,
e.g. after a restart or ``SCRIPT FLUSH``, the decision is made with ``EVAL``,
which caches the script again). The script reads the time from the Redis
server (``TIME``), so clients on machines with skewed clocks still agree, and
sets an expiry on its key so that idle keys vanish.

:class:`RedisGcra` and :class:`RedisSlidingWindow` take a ``redis.asyncio``
client and are awaited; :class:`SyncRedisGcra` and
:class:`SyncRedisSlidingWindow` take a blocking ``redis.Redis``. They share the
contract of the local limiters in :mod:`fournines.policies.rate_limit`:
``try_acquire(cost, key=...)`` decides at once or raises
:class:`~fournines.RateLimitedError` with ``retry_after``; ``acquire(...)``
waits up to ``max_wait`` seconds (never past the current deadline);
``acall``/``call`` make them policies.

When Redis fails (unreachable, timed out, read-only, out of memory...), the
limiter does what ``on_redis_error`` says, and nothing else:

- ``"local"`` (the default): decide with a local rescue limiter, by default a
  local :class:`~fournines.policies.rate_limit.Gcra` (or ``SlidingWindow``) per
  key with the rate divided by ``instances``, the number of processes you run;
- ``"fail_open"``: let every call pass;
- ``"fail_closed"``: reject every call (``retry_after=None``).

After a failure the limiter keeps deciding locally for ``reconnect_after``
seconds before it asks Redis again, so that a dead Redis does not cost a
connection attempt per call. Failures are logged on the ``"fournines"``
logger, at most once every 10 seconds per limiter.

Configure the client for this: a short ``socket_timeout`` and
``socket_connect_timeout`` (tens of milliseconds on a LAN: a rate limit that
waits a second for Redis is worse than none) and few or no retries, e.g.
``redis.asyncio.Redis(..., socket_timeout=0.05, socket_connect_timeout=0.05,
retry=Retry(NoBackoff(), 1))``. redis-py's default retries with backoff can
hold a call for seconds when Redis is down. Size the connection pool for your
concurrency, or use a ``BlockingConnectionPool``: a full pool raises
``MaxConnectionsError``, which counts as a Redis error for that call.

Every limiter sharing a key must use the same settings: the state in Redis is
read with the settings of whoever reads it.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, ParamSpec, Protocol, TypeVar

import redis.exceptions
from redis.exceptions import NoScriptError, RedisError

from .._clock import Clock, system_clock
from .._deadline import current_deadline
from .._errors import ConfigurationError, RateLimitedError, check_number
from .._events import CallRejected, Listener, dispatch, global_listeners
from .rate_limit import Gcra, KeyedLimiter, RateLimiter, SlidingWindow, _Limiter

__all__ = [
    "DEFAULT_PREFIX",
    "RedisGcra",
    "RedisSlidingWindow",
    "SyncRedisGcra",
    "SyncRedisSlidingWindow",
]

P = ParamSpec("P")
T = TypeVar("T")

OnRedisError = Literal["fail_open", "fail_closed", "local"]

DEFAULT_PREFIX = "fournines:rl:"
"""The default prefix of every Redis key the limiters write."""

_log = logging.getLogger("fournines")

# A Redis outage would otherwise log once per call, i.e. thousands of lines a second.
_WARN_EVERY = 10.0

# Server time is counted in microseconds from this instant (2023-11-14), not from
# 1970: smaller numbers leave more of a double's 53 bits for the fractions of
# microseconds that the GCRA adds up.
_EPOCH = 1_700_000_000

# A full client connection pool says nothing about Redis itself: that call is decided
# without Redis, but the next ones still ask it (redis-py >= 5.1 has the class).
_POOL_FULL: tuple[type[Exception], ...] = tuple(
    cls for cls in (getattr(redis.exceptions, "MaxConnectionsError", None),)
    if isinstance(cls, type)
)

_NOW = f"""
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = (tonumber(t[1]) - {_EPOCH}) * 1000000 + tonumber(t[2])
"""

# GCRA as described by Brandur Leach ("Rate limiting, cells, and GCRA", 2015, and
# his redis-cell module) after the ATM Forum's virtual scheduling algorithm (ITU-T
# I.371): one number per key, the theoretical arrival time (TAT) of the next
# request. A request of cost c is admitted when TAT + c*T - burst*T <= now.
_GCRA_SOURCE = (
    """-- fournines GCRA. KEYS[1]: key. ARGV: interval (us), burst, cost.
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])"""
    + _NOW
    + """local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - burst * interval
-- The TAT is a sum of fractional intervals: without this sliver of slack, rounding
-- could refuse the last unit of a burst requested within one microsecond.
if allow_at - now <= math.min(1, interval / 2) then
  redis.call('SET', KEYS[1], string.format('%.17g', new_tat),
             'PX', math.ceil((new_tat - now) / 1000))
  return {1, 0}
end
return {0, math.max(1, math.ceil(allow_at - now))}
"""
)

# Cloudflare's sliding window counter ("How we built rate limiting capable of
# scaling to millions of domains", 2017), the same approximation as the local
# SlidingWindow(mode="counter"): the previous fixed window counts in proportion to
# how much of it the sliding window still covers. One hash per key: w (index of
# the current fixed window), c (its count), p (the previous window's count).
_COUNTER_SOURCE = (
    """-- fournines sliding window counter. KEYS[1]: key. ARGV: window (us), limit, cost.
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])"""
    + _NOW
    + """local index = math.floor(now / window)
local start = index * window
local state = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local at = tonumber(state[1])
local cur = tonumber(state[2]) or 0
local prev = tonumber(state[3]) or 0
if at ~= index then
  if at == index - 1 then prev = cur else prev = 0 end
  cur = 0
end
local elapsed = now - start
if prev * (window - elapsed) / window + cur + cost <= limit then
  redis.call('HSET', KEYS[1], 'w', string.format('%.0f', index), 'c', cur + cost, 'p', prev)
  -- The current count still matters as the previous one during the next window.
  redis.call('PEXPIRE', KEYS[1], math.ceil((start + 2 * window - now) / 1000))
  return {1, 0}
end
local wait
local free = limit - cur - cost
if free >= 0 and prev > 0 then
  -- prev * (window - e) / window <= free  <=>  e >= window * (1 - free / prev)
  wait = window * (1 - free / prev) - elapsed
else
  -- Not within this window: in the next one the current count becomes prev.
  local free_next = limit - cost
  local needed = 0
  if cur > free_next then needed = window * (1 - free_next / cur) end
  wait = window - elapsed + needed
end
return {0, math.max(1, math.ceil(wait))}
"""
)

# The exact sliding log: one sorted-set member per unit, scored by its time.
# Members carry a per-call nonce so that two calls in the same microsecond do not
# collapse into one member.
_LOG_SOURCE = (
    """-- fournines sliding window log. KEYS[1]: key. ARGV: window (us), limit, cost, nonce.
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])"""
    + _NOW
    + """redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
local count = redis.call('ZCARD', KEYS[1])
if count + cost <= limit then
  local stamp = string.format('%.0f', now)
  for i = 1, cost do
    redis.call('ZADD', KEYS[1], stamp, stamp .. ':' .. ARGV[4] .. ':' .. i)
  end
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return {1, 0}
end
-- The oldest entries must expire until cost more fit.
local nth = count + cost - limit - 1
local oldest = redis.call('ZRANGE', KEYS[1], nth, nth, 'WITHSCORES')
return {0, math.max(1, math.ceil(tonumber(oldest[2]) + window - now))}
"""
)


class _Script:
    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


_GCRA = _Script(_GCRA_SOURCE)
_COUNTER = _Script(_COUNTER_SOURCE)
_LOG = _Script(_LOG_SOURCE)


class _AsyncClient(Protocol):
    """What the async limiters need of a client (``redis.asyncio.Redis`` has it)."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Send one command and return its parsed reply."""


class _SyncClient(Protocol):
    """What the blocking limiters need of a client (``redis.Redis`` has it)."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Send one command and return its parsed reply."""


class _Algorithm(ABC):
    """The sans-I/O part of one algorithm: its script, arguments and local rescue."""

    __slots__ = ("capacity", "script")

    script: _Script
    capacity: int

    @abstractmethod
    def argv(self, cost: int) -> tuple[object, ...]:
        """The script's ARGV for a decision of ``cost`` units."""

    @abstractmethod
    def rescue(self, instances: int, name: str) -> KeyedLimiter:
        """The local limiter that decides while Redis is unreachable."""


class _GcraAlgorithm(_Algorithm):
    __slots__ = ("_interval", "burst", "rate")

    def __init__(self, owner: str, rate: float, burst: int) -> None:
        check_number(owner, "rate", rate, minimum=0, exclusive_minimum=True)
        check_number(owner, "burst", burst, minimum=1, integer=True)
        self.script = _GCRA
        self.rate = float(rate)
        self.burst = burst
        self.capacity = burst
        self._interval = repr(1e6 / self.rate)

    def argv(self, cost: int) -> tuple[object, ...]:
        return (self._interval, self.burst, cost)

    def rescue(self, instances: int, name: str) -> KeyedLimiter:
        rate = self.rate / instances
        burst = max(1, self.burst // instances)
        return KeyedLimiter(lambda: Gcra(rate=rate, burst=burst, name=name), name=name)


class _WindowAlgorithm(_Algorithm):
    __slots__ = ("_window_us", "limit", "mode", "window")

    def __init__(self, owner: str, limit: int, window: float, mode: str) -> None:
        check_number(owner, "limit", limit, minimum=1, integer=True)
        # PEXPIRE counts milliseconds: shorter windows could not expire correctly.
        check_number(owner, "window", window, minimum=0.001)
        if mode not in ("counter", "log"):
            raise ConfigurationError(f"{owner}.mode must be 'counter' or 'log', got {mode!r}")
        self.script = _LOG if mode == "log" else _COUNTER
        self.limit = limit
        self.window = float(window)
        self.mode: Literal["counter", "log"] = "log" if mode == "log" else "counter"
        self.capacity = limit
        self._window_us = round(self.window * 1e6)

    def argv(self, cost: int) -> tuple[object, ...]:
        if self.mode == "log":
            return (self._window_us, self.limit, cost, os.urandom(6).hex())
        return (self._window_us, self.limit, cost)

    def rescue(self, instances: int, name: str) -> KeyedLimiter:
        limit = max(1, self.limit // instances)
        window, mode = self.window, self.mode
        return KeyedLimiter(
            lambda: SlidingWindow(limit=limit, window=window, mode=mode, name=name), name=name
        )


class _RedisLimiter:
    """State and decisions shared by the async and blocking shells (no I/O here)."""

    __slots__ = (
        "_algorithm",
        "_clock",
        "_down_until",
        "_failing",
        "_last_warning",
        "_listeners",
        "_loaded",
        "_owner",
        "_rescue",
        "instances",
        "key",
        "max_wait",
        "name",
        "on_redis_error",
        "prefix",
        "reconnect_after",
    )

    _kind = "rate_limit"

    def __init__(
        self,
        owner: str,
        algorithm: _Algorithm,
        client: object,
        *,
        is_async: bool,
        key: str,
        prefix: str,
        name: str,
        max_wait: float,
        on_redis_error: OnRedisError,
        rescue: RateLimiter | KeyedLimiter | None,
        instances: int,
        reconnect_after: float,
        clock: Clock,
        listeners: Sequence[Listener],
    ) -> None:
        command = getattr(client, "execute_command", None)
        if command is None or inspect.iscoroutinefunction(command) != is_async:
            wanted, other = (
                ("a redis.asyncio client", "Sync" + owner)
                if is_async
                else ("a blocking redis client", owner.removeprefix("Sync"))
            )
            raise ConfigurationError(
                f"{owner}.client must be {wanted} (see {other} for the other kind), "
                f"got {client!r}"
            )
        for field, text in (("key", key), ("prefix", prefix), ("name", name)):
            if not isinstance(text, str):
                raise ConfigurationError(f"{owner}.{field} must be a str, got {text!r}")
        check_number(owner, "max_wait", max_wait, minimum=0)
        check_number(owner, "instances", instances, minimum=1, integer=True)
        check_number(owner, "reconnect_after", reconnect_after, minimum=0)
        if on_redis_error not in ("fail_open", "fail_closed", "local"):
            raise ConfigurationError(
                f"{owner}.on_redis_error must be 'fail_open', 'fail_closed' or 'local', "
                f"got {on_redis_error!r}"
            )
        if rescue is not None:
            if on_redis_error != "local":
                raise ConfigurationError(
                    f"{owner}.rescue is only used with on_redis_error='local', "
                    f"not {on_redis_error!r}"
                )
            if not isinstance(rescue, KeyedLimiter | RateLimiter):
                raise ConfigurationError(
                    f"{owner}.rescue must be a local rate limiter or a KeyedLimiter, "
                    f"got {rescue!r}"
                )
        self._owner = owner
        self._algorithm = algorithm
        self.key = key
        self.prefix = prefix
        self.name = name
        self.max_wait = float(max_wait)
        self.on_redis_error: OnRedisError = on_redis_error
        self.instances = instances
        self.reconnect_after = float(reconnect_after)
        self._rescue: RateLimiter | KeyedLimiter | None = (
            rescue
            if rescue is not None or on_redis_error != "local"
            else algorithm.rescue(instances, f"{name}.rescue")
        )
        self._clock = clock
        self._listeners = tuple(listeners)
        # Several first callers may each load the script: harmless, and cheaper
        # than a lock that would tie the limiter to one event loop.
        self._loaded = False
        self._down_until = -float("inf")
        self._failing = False
        self._last_warning = -float("inf")

    def _prepare(self, cost: int, key: str | None) -> tuple[str, tuple[object, ...]]:
        """Check ``cost`` and return the Redis key and the script's arguments."""
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise ConfigurationError(f"{self._owner}.cost must be an int >= 1, got {cost!r}")
        if cost > self._algorithm.capacity:
            raise ConfigurationError(
                f"{self._owner}.cost {cost} exceeds the capacity "
                f"{self._algorithm.capacity}; it could never be granted"
            )
        return self.prefix + (self.key if key is None else key), self._algorithm.argv(cost)

    def _redis_up(self) -> bool:
        return self._clock.monotonic() >= self._down_until

    def _decided(self, reply: Any) -> float:
        """Seconds to wait according to the script's reply (0.0: admitted)."""
        if self._failing:
            self._failing = False
            _log.info("fournines %s %r: Redis answers again", self._owner, self.name)
        allowed, wait_us = reply
        return 0.0 if int(allowed) else int(wait_us) / 1e6

    def _failed(self, error: Exception | None, key: str | None, cost: int) -> float | None:
        """Decide without Redis: 0.0 to admit, seconds to wait, None when unknown."""
        if error is not None:
            now = self._clock.monotonic()
            if not isinstance(error, _POOL_FULL):
                self._down_until = now + self.reconnect_after
            self._failing = True
            if now - self._last_warning >= _WARN_EVERY:
                self._last_warning = now
                _log.warning(
                    "fournines %s %r: Redis failed (%s: %s); deciding with on_redis_error=%r",
                    self._owner, self.name, type(error).__name__, error, self.on_redis_error,
                )
        if self.on_redis_error == "fail_open":
            return 0.0
        rescue = self._rescue
        if rescue is None:  # fail_closed
            return None
        if isinstance(rescue, KeyedLimiter):
            limiter: RateLimiter = rescue.limiter(self.key if key is None else key)
        else:
            limiter = rescue
        try:
            if isinstance(limiter, _Limiter):
                # _take, not try_acquire: the rejection event is ours to send, once.
                return limiter._take(cost)
            limiter.try_acquire(cost)
        except RateLimitedError as exc:
            return exc.retry_after
        except ConfigurationError:
            # cost fits the shared budget but not this instance's share of it.
            return None
        return 0.0

    def _reject(self, wait: float | None) -> RateLimitedError:
        if self._listeners or global_listeners():
            dispatch(
                self._listeners,
                CallRejected(
                    policy=self._kind,
                    name=self.name,
                    reason="rate_limited" if wait is not None else "redis_unavailable",
                    retry_after=wait,
                ),
            )
        return RateLimitedError(self.name, wait)

    def _budget(self, max_wait: float | None) -> float:
        limit = self.max_wait if max_wait is None else max_wait
        deadline = current_deadline()
        if deadline is not None:
            limit = min(limit, deadline.remaining())
        return limit

    def __repr__(self) -> str:
        algorithm = self._algorithm
        if isinstance(algorithm, _GcraAlgorithm):
            config = f"rate={algorithm.rate!r}, burst={algorithm.burst!r}"
        else:
            assert isinstance(algorithm, _WindowAlgorithm)
            config = (
                f"limit={algorithm.limit!r}, window={algorithm.window!r}, "
                f"mode={algorithm.mode!r}"
            )
        return (
            f"{self._owner}(name={self.name!r}, {config}, key={self.key!r}, "
            f"prefix={self.prefix!r}, on_redis_error={self.on_redis_error!r})"
        )


class _AsyncRedisLimiter(_RedisLimiter):
    """The awaitable shell: decisions are made by awaiting the Redis client."""

    __slots__ = ("client",)

    client: _AsyncClient

    async def _take(self, cost: int, key: str | None) -> float | None:
        redis_key, argv = self._prepare(cost, key)
        if not self._redis_up():
            return self._failed(None, key, cost)
        script = self._algorithm.script
        client = self.client
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

        ``key=None`` uses the limiter's own ``key``. ``retry_after`` on the
        error says when ``cost`` units will be available (``None`` when Redis
        failed and ``on_redis_error="fail_closed"``).
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
        """Await ``fn`` once one unit of the limiter's key is available (up to ``max_wait``)."""
        await self.acquire(1)
        return await fn(*args, **kwargs)


class _SyncRedisLimiter(_RedisLimiter):
    """The blocking shell: decisions are made by calling the Redis client."""

    __slots__ = ("client",)

    client: _SyncClient

    def _take(self, cost: int, key: str | None) -> float | None:
        redis_key, argv = self._prepare(cost, key)
        if not self._redis_up():
            return self._failed(None, key, cost)
        script = self._algorithm.script
        client = self.client
        try:
            if not self._loaded:
                client.execute_command("SCRIPT LOAD", script.source)
                self._loaded = True
            try:
                reply = client.execute_command("EVALSHA", script.sha, 1, redis_key, *argv)
            except NoScriptError:
                reply = client.execute_command("EVAL", script.source, 1, redis_key, *argv)
        except (RedisError, OSError) as exc:
            return self._failed(exc, key, cost)
        return self._decided(reply)

    def try_acquire(self, cost: int = 1, *, key: str | None = None) -> None:
        """Take ``cost`` units of ``key`` now, or raise ``RateLimitedError``.

        ``key=None`` uses the limiter's own ``key``. ``retry_after`` on the
        error says when ``cost`` units will be available (``None`` when Redis
        failed and ``on_redis_error="fail_closed"``).
        """
        wait = self._take(cost, key)
        if wait != 0.0:
            raise self._reject(wait)

    def acquire(
        self, cost: int = 1, *, key: str | None = None, max_wait: float | None = None
    ) -> None:
        """Wait (blocking the thread) up to ``max_wait`` seconds for ``cost`` units of ``key``.

        ``max_wait=None`` uses the limiter's own ``max_wait``. The wait never
        goes past the current deadline; when it would, ``RateLimitedError`` is
        raised at once instead of sleeping in vain.
        """
        budget = self._budget(max_wait)
        now = self._clock.monotonic
        start = now()
        while True:
            wait = self._take(cost, key)
            if wait == 0.0:
                return
            if wait is None or wait > budget - (now() - start):
                raise self._reject(wait)
            self._clock.sleep(wait)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` once one unit of the limiter's key is available (up to ``max_wait``)."""
        self.acquire(1)
        return fn(*args, **kwargs)


class RedisGcra(_AsyncRedisLimiter):
    """A distributed GCRA: ``rate`` per second per key, bursts up to ``burst``, shared via Redis.

    It admits what a full token bucket of ``burst`` tokens refilled at
    ``rate`` would, for all processes together, keeping one number per key in
    Redis. ``client`` is a ``redis.asyncio.Redis`` (give it short socket
    timeouts: see the module documentation). ``key`` is the default key;
    every method takes ``key=`` to limit another one (a user, a tenant...).

    ``on_redis_error`` says what happens when Redis fails: ``"local"`` decides
    with ``rescue`` (by default one local ``Gcra`` per key with ``rate`` and
    ``burst`` divided by ``instances``), ``"fail_open"`` admits,
    ``"fail_closed"`` rejects. Redis is asked again ``reconnect_after``
    seconds after a failure.

    >>> limiter = RedisGcra(redis.asyncio.Redis(), rate=10, burst=20)  # doctest: +SKIP
    >>> await limiter.try_acquire(key="user:42")  # doctest: +SKIP
    """

    __slots__ = ("burst", "rate")

    def __init__(
        self,
        client: _AsyncClient,
        *,
        rate: float,
        burst: int = 1,
        key: str = "default",
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
        owner = type(self).__name__
        algorithm = _GcraAlgorithm(owner, rate, burst)
        super().__init__(
            owner, algorithm, client, is_async=True, key=key, prefix=prefix, name=name,
            max_wait=max_wait, on_redis_error=on_redis_error, rescue=rescue,
            instances=instances, reconnect_after=reconnect_after, clock=clock,
            listeners=listeners,
        )
        self.client = client
        self.rate = algorithm.rate
        self.burst = algorithm.burst


class SyncRedisGcra(_SyncRedisLimiter):
    """:class:`RedisGcra` for a blocking ``redis.Redis`` client (same settings, same keys).

    A ``SyncRedisGcra`` and a ``RedisGcra`` with the same settings, prefix and
    key share one budget.
    """

    __slots__ = ("burst", "rate")

    def __init__(
        self,
        client: _SyncClient,
        *,
        rate: float,
        burst: int = 1,
        key: str = "default",
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
        owner = type(self).__name__
        algorithm = _GcraAlgorithm(owner, rate, burst)
        super().__init__(
            owner, algorithm, client, is_async=False, key=key, prefix=prefix, name=name,
            max_wait=max_wait, on_redis_error=on_redis_error, rescue=rescue,
            instances=instances, reconnect_after=reconnect_after, clock=clock,
            listeners=listeners,
        )
        self.client = client
        self.rate = algorithm.rate
        self.burst = algorithm.burst


class RedisSlidingWindow(_AsyncRedisLimiter):
    """A distributed sliding window: at most ``limit`` units per ``window`` seconds per key.

    ``mode="counter"`` (the default) keeps two counters per key in a Redis
    hash and weights the previous fixed window by how much of it the sliding
    window still covers, like the local ``SlidingWindow(mode="counter")``:
    constant memory, slightly permissive at window edges. ``mode="log"`` keeps
    one sorted-set member per unit: exact, memory grows with ``limit``.

    ``client``, ``key``, ``on_redis_error``, ``rescue`` (by default one local
    ``SlidingWindow`` per key with ``limit`` divided by ``instances``) and
    ``reconnect_after`` work as in :class:`RedisGcra`.
    """

    __slots__ = ("limit", "mode", "window")

    def __init__(
        self,
        client: _AsyncClient,
        *,
        limit: int,
        window: float,
        mode: Literal["counter", "log"] = "counter",
        key: str = "default",
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
        owner = type(self).__name__
        algorithm = _WindowAlgorithm(owner, limit, window, mode)
        super().__init__(
            owner, algorithm, client, is_async=True, key=key, prefix=prefix, name=name,
            max_wait=max_wait, on_redis_error=on_redis_error, rescue=rescue,
            instances=instances, reconnect_after=reconnect_after, clock=clock,
            listeners=listeners,
        )
        self.client = client
        self.limit = algorithm.limit
        self.window = algorithm.window
        self.mode = algorithm.mode


class SyncRedisSlidingWindow(_SyncRedisLimiter):
    """:class:`RedisSlidingWindow` for a blocking ``redis.Redis`` client (same keys and budget)."""

    __slots__ = ("limit", "mode", "window")

    def __init__(
        self,
        client: _SyncClient,
        *,
        limit: int,
        window: float,
        mode: Literal["counter", "log"] = "counter",
        key: str = "default",
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
        owner = type(self).__name__
        algorithm = _WindowAlgorithm(owner, limit, window, mode)
        super().__init__(
            owner, algorithm, client, is_async=False, key=key, prefix=prefix, name=name,
            max_wait=max_wait, on_redis_error=on_redis_error, rescue=rescue,
            instances=instances, reconnect_after=reconnect_after, clock=clock,
            listeners=listeners,
        )
        self.client = client
        self.limit = algorithm.limit
        self.window = algorithm.window
        self.mode = algorithm.mode
