"""What the async and sync Redis limiters share: Lua scripts, algorithms, settings, decisions.

Nothing here does I/O. The shells that ask Redis live in :mod:`._redis_async`
(hand-written) and :mod:`._redis_sync` (generated from it by
``scripts/unasync.py``); the public module is :mod:`.redis_rate_limit`.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Literal, ParamSpec, TypeVar

import redis.exceptions

from .._clock import Clock
from .._deadline import current_deadline
from .._errors import ConfigurationError, RateLimitedError, check_number
from .._events import CallRejected, Listener, dispatch, global_listeners
from ._shell import Decorates
from .rate_limit import Gcra, KeyedLimiter, RateLimiter, SlidingWindow, _Limiter

P = ParamSpec("P")
T = TypeVar("T")
# A coroutine function's result, spelled so that scripts/unasync.py turns it into T.
Coro = Coroutine[Any, Any, T]

OnRedisError = Literal["fail_open", "fail_closed", "local"]

KeyFunc = Callable[..., str]
"""A limiter key computed from the arguments of the protected call."""

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


class _RedisLimiter(Decorates, ABC):
    """State, settings and decisions shared by the async and sync shells (no I/O here).

    A shell is async when its ``_take`` is a coroutine function. It overrides the
    methods of its own kind (``acall``/``awrap`` or ``call``/``wrap``); the other
    kind falls through to the ones here, which raise ``TypeError`` saying what
    to use instead: a limiter never blocks an event loop on a blocking client,
    nor hides a blocking call in a thread.
    """

    __slots__ = (
        "_algorithm",
        "_clock",
        "_down_until",
        "_failing",
        "_instances",
        "_key",
        "_key_fn",
        "_last_warning",
        "_listeners",
        "_loaded",
        "_max_wait",
        "_name",
        "_on_redis_error",
        "_owner",
        "_prefix",
        "_reconnect_after",
        "_rescue",
    )

    _kind = "rate_limit"

    def __init__(
        self,
        algorithm: _Algorithm,
        client: object,
        *,
        key: str | KeyFunc,
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
        owner = self._owner = type(self).__name__
        is_async = inspect.iscoroutinefunction(self._take)
        command = getattr(client, "execute_command", None)
        if command is None or inspect.iscoroutinefunction(command) != is_async:
            wanted = "a redis.asyncio client" if is_async else "a blocking redis client"
            raise ConfigurationError(
                f"{owner}.client must be {wanted} (see {self._twin()} for the other kind), "
                f"got {client!r}"
            )
        if isinstance(key, str):
            self._key: str | None = key
            self._key_fn: KeyFunc | None = None
        elif callable(key):
            self._key, self._key_fn = None, key
        else:
            raise ConfigurationError(
                f"{owner}.key must be a str or a function (*args, **kwargs) -> str of the "
                f"protected call's arguments, got {key!r}"
            )
        for field, text in (("prefix", prefix), ("name", name)):
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
        if instances != 1 and (rescue is not None or on_redis_error != "local"):
            raise ConfigurationError(
                f"{owner}.instances ({instances}) only divides the default rescue limiter "
                "(on_redis_error='local' without rescue=): here it could never act"
            )
        self._algorithm = algorithm
        self._prefix = prefix
        self._name = name
        self._max_wait = float(max_wait)
        self._on_redis_error: OnRedisError = on_redis_error
        self._instances = instances
        self._reconnect_after = float(reconnect_after)
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

    # --- settings (read-only: the state in Redis is read with them) ----------------------

    @property
    def key(self) -> str | KeyFunc:
        """The default key, or the function of a protected call's arguments naming it."""
        if self._key_fn is not None:
            return self._key_fn
        assert self._key is not None  # one of the two is always set
        return self._key

    @property
    def prefix(self) -> str:
        """Prepended to every key in Redis."""
        return self._prefix

    @property
    def name(self) -> str:
        """The limiter's name in errors, events and logs."""
        return self._name

    @property
    def max_wait(self) -> float:
        """Seconds ``acquire`` and the policy shells wait for room (0: reject at once)."""
        return self._max_wait

    @property
    def on_redis_error(self) -> OnRedisError:
        """What decides while Redis fails: ``"local"``, ``"fail_open"`` or ``"fail_closed"``."""
        return self._on_redis_error

    @property
    def instances(self) -> int:
        """How many processes share the limit (the default rescue's divisor)."""
        return self._instances

    @property
    def reconnect_after(self) -> float:
        """Seconds after a Redis failure before Redis is asked again."""
        return self._reconnect_after

    @property
    def rescue(self) -> RateLimiter | KeyedLimiter | None:
        """The local limiter deciding while Redis fails (``None`` unless ``"local"``)."""
        return self._rescue

    # --- the wrong shell ----------------------------------------------------------------

    @abstractmethod
    def _take(self, cost: int, key: str | None) -> Any:
        """Each shell's decision: 0.0 when taken, else seconds to wait (None: unknown)."""

    def _twin(self) -> str:
        owner = self._owner
        return owner.removeprefix("Sync") if owner.startswith("Sync") else "Sync" + owner

    def _wrong_shell(self, method: str) -> TypeError:
        owner, twin = self._owner, self._twin()
        if method in ("call", "wrap"):
            return TypeError(
                f"{owner}.{method} cannot decide in sync code: {owner} was built on a "
                f"redis.asyncio client, which only an event loop can await. In async code "
                f"use {owner}.acall (a Pipeline's acall, a decorated async def); in sync "
                f"code use {twin}(redis.Redis(...), ...) with the same settings, which "
                f"shares this budget"
            )
        return TypeError(
            f"{owner}.{method} would block the event loop: {owner} was built on a blocking "
            f"redis.Redis client. In sync code use {owner}.call (a Pipeline's call, a "
            f"decorated def); in async code use {twin}(redis.asyncio.Redis(...), ...) with "
            f"the same settings, which shares this budget"
        )

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` once one unit is available (only on a blocking client)."""
        raise self._wrong_shell("call")

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn`` once one unit is available (only on a ``redis.asyncio`` client)."""
        raise self._wrong_shell("acall")

    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]:
        """A closure running ``fn`` under the limiter (only on a blocking client)."""
        raise self._wrong_shell("wrap")

    def awrap(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """A coroutine function awaiting ``fn`` (only on a ``redis.asyncio`` client)."""
        raise self._wrong_shell("awrap")

    # --- decisions ----------------------------------------------------------------------

    def _call_key(self, key_fn: KeyFunc, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        key = key_fn(*args, **kwargs)
        if not isinstance(key, str):
            raise TypeError(f"{self._owner}.key must return a str, returned {key!r}")
        return key

    def _prepare(self, cost: int, key: str | None) -> tuple[str, tuple[object, ...]]:
        """Check ``cost`` and return the key to limit and the script's arguments."""
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise ConfigurationError(f"{self._owner}.cost must be an int >= 1, got {cost!r}")
        if cost > self._algorithm.capacity:
            raise ConfigurationError(
                f"{self._owner}.cost {cost} exceeds the capacity "
                f"{self._algorithm.capacity}; it could never be granted"
            )
        if key is None:
            key = self._key
            if key is None:
                raise TypeError(
                    f"{self._owner}.try_acquire and .acquire need key=...: the limiter's "
                    f"key={self._key_fn!r} is a function of a protected call's arguments, "
                    "which only the policy shells (a Pipeline, a decorator) pass it"
                )
        elif type(key) is not str and not isinstance(key, str):
            raise TypeError(f"{self._owner}.try_acquire/acquire key= must be a str, got {key!r}")
        return key, self._algorithm.argv(cost)

    def _redis_up(self) -> bool:
        return self._clock.monotonic() >= self._down_until

    def _decided(self, reply: Any) -> float:
        """Seconds to wait according to the script's reply (0.0: admitted)."""
        if self._failing:
            self._failing = False
            _log.info("fournines %s %r: Redis answers again", self._owner, self._name)
        allowed, wait_us = reply
        return 0.0 if int(allowed) else int(wait_us) / 1e6

    def _failed(self, error: Exception | None, key: str, cost: int) -> float | None:
        """Decide without Redis: 0.0 to admit, seconds to wait, None when unknown."""
        if error is not None:
            now = self._clock.monotonic()
            if not isinstance(error, _POOL_FULL):
                self._down_until = now + self._reconnect_after
            self._failing = True
            if now - self._last_warning >= _WARN_EVERY:
                self._last_warning = now
                _log.warning(
                    "fournines %s %r: Redis failed (%s: %s); deciding with on_redis_error=%r",
                    self._owner, self._name, type(error).__name__, error,
                    self._on_redis_error,
                )
        if self._on_redis_error == "fail_open":
            return 0.0
        rescue = self._rescue
        if rescue is None:  # fail_closed
            return None
        limiter: RateLimiter = rescue.limiter(key) if isinstance(rescue, KeyedLimiter) else rescue
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
                    name=self._name,
                    reason="rate_limited" if wait is not None else "redis_unavailable",
                    retry_after=wait,
                ),
            )
        return RateLimitedError(self._name, wait)

    def _budget(self, max_wait: float | None) -> float:
        limit = self._max_wait if max_wait is None else max_wait
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
            f"{self._owner}(name={self._name!r}, {config}, key={self.key!r}, "
            f"prefix={self._prefix!r}, on_redis_error={self._on_redis_error!r})"
        )
