"""Local rate limiters: token bucket, GCRA, sliding window (counter and log), per key.

All limiters share one contract:

- ``try_acquire(cost=1)`` decides at once: it returns, or raises
  :class:`~fournines.RateLimitedError` whose ``retry_after`` says when ``cost``
  units will be available;
- ``acquire(cost=1, max_wait=...)`` / ``await aacquire(...)`` wait up to
  ``max_wait`` seconds (and never past the current deadline) for room;
- ``call(fn, ...)`` / ``await acall(fn, ...)`` make them policies for a
  ``Pipeline``; they wait up to the limiter's own ``max_wait`` (0 by default:
  reject at once).

Every limiter is thread-safe (one lock per decision) and reads time from its
clock. ``KeyedLimiter`` keeps one limiter (or, for token buckets and GCRA, one
float) per key with bounded memory.
"""

from __future__ import annotations

import inspect
import math
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, runtime_checkable

from .._clock import Clock, system_clock
from .._deadline import current_deadline
from .._errors import ConfigurationError, RateLimitedError, check_number, new_rejection
from .._events import CallRejected, KeysEvicted, Listener, dispatch, global_listeners
from ._shell import Decorates

__all__ = ["Gcra", "KeyedLimiter", "RateLimiter", "SlidingWindow", "TokenBucket"]

P = ParamSpec("P")
T = TypeVar("T")

# Added to every retry_after: float rounding must never make a caller who waited exactly
# the advertised time be rejected again. 0.1 us is far above the rounding of any
# monotonic reading of the next centuries and far below any meaningful wait.
_MARGIN = 1e-7


@runtime_checkable
class RateLimiter(Protocol):
    """What every fournines rate limiter offers (local or Redis-backed)."""

    @property
    def name(self) -> str:
        """The limiter's name, shown in errors, events and metrics."""

    def try_acquire(self, cost: int = 1) -> None:
        """Take ``cost`` units now or raise ``RateLimitedError``."""


class _Limiter(Decorates, ABC):
    """Shared shells; subclasses implement ``_take(cost) -> wait`` (0.0 means taken)."""

    __slots__ = ("_clock", "_listeners", "_lock", "_max_wait", "_name", "_now")

    _kind = "rate_limit"

    def __init__(
        self, name: str, clock: Clock, listeners: Sequence[Listener], max_wait: float
    ) -> None:
        check_number(type(self).__name__, "max_wait", max_wait, minimum=0)
        self._name = name
        self._max_wait = float(max_wait)
        self._clock = clock
        self._now = clock.monotonic
        self._listeners = tuple(listeners)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """Shown in errors, events and metrics."""
        return self._name

    @property
    def max_wait(self) -> float:
        """Seconds ``call``/``acall`` (and ``acquire`` by default) wait for room."""
        return self._max_wait

    @property
    def clock(self) -> Clock:
        """Where the limiter reads time."""
        return self._clock

    @abstractmethod
    def _take(self, cost: int) -> float:
        """Take ``cost`` units now and return 0.0, or return the seconds to wait."""

    def _check_cost(self, cost: int, capacity: float) -> None:
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise ConfigurationError(
                f"{type(self).__name__}.cost must be an int >= 1, got {cost!r}"
            )
        if cost > capacity:
            raise ConfigurationError(
                f"{type(self).__name__}.cost {cost} exceeds the capacity {capacity:g}; "
                "it could never be granted"
            )

    def _reject(self, wait: float, reason: str = "rate_limited") -> RateLimitedError:
        if self._listeners or global_listeners():
            dispatch(
                self._listeners,
                CallRejected(policy=self._kind, name=self._name, reason=reason,
                             retry_after=wait),
            )
        return new_rejection(RateLimitedError, self._name, wait)

    def try_acquire(self, cost: int = 1) -> None:
        """Take ``cost`` units now, or raise ``RateLimitedError`` with ``retry_after``."""
        wait = self._take(cost)
        if wait:
            raise self._reject(wait)

    def _budget(self, max_wait: float | None) -> float:
        limit = self._max_wait if max_wait is None else max_wait
        deadline = current_deadline()
        if deadline is not None:
            limit = min(limit, deadline.remaining())
        return limit

    def acquire(self, cost: int = 1, *, max_wait: float | None = None) -> None:
        """Wait (blocking the thread) up to ``max_wait`` seconds for ``cost`` units.

        ``max_wait=None`` uses the limiter's own ``max_wait``. The wait never
        goes past the current deadline; when it would, ``RateLimitedError`` is
        raised at once instead of sleeping in vain.
        """
        budget = self._budget(max_wait)
        start = self._now()
        while True:
            wait = self._take(cost)
            if not wait:
                return
            left = budget - (self._now() - start)
            if wait > left:
                raise self._reject(wait)
            self._clock.sleep(wait)

    async def aacquire(self, cost: int = 1, *, max_wait: float | None = None) -> None:
        """Like :meth:`acquire`, suspending the task instead of blocking the thread."""
        budget = self._budget(max_wait)
        start = self._now()
        while True:
            wait = self._take(cost)
            if not wait:
                return
            left = budget - (self._now() - start)
            if wait > left:
                raise self._reject(wait)
            await self._clock.asleep(wait)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` once one unit is available (waiting up to ``max_wait``)."""
        if self._take(1):
            self.acquire(1)
        return fn(*args, **kwargs)

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn`` once one unit is available (waiting up to ``max_wait``)."""
        if self._take(1):
            await self.aacquire(1)
        return await fn(*args, **kwargs)


class TokenBucket(_Limiter):
    """A bucket of ``capacity`` tokens refilled at ``rate`` tokens per second.

    Bursts up to ``capacity`` pass at once; the long-run rate is ``rate``. The
    bucket starts full and never holds fewer than zero tokens.
    """

    __slots__ = ("_capacity", "_last", "_rate", "_tokens")

    def __init__(
        self,
        *,
        rate: float,
        capacity: float | None = None,
        name: str = "token_bucket",
        max_wait: float = 0.0,
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
    ) -> None:
        check_number("TokenBucket", "rate", rate, minimum=0, exclusive_minimum=True)
        capacity = max(float(rate), 1.0) if capacity is None else capacity
        check_number("TokenBucket", "capacity", capacity, minimum=1)
        super().__init__(name, clock, listeners, max_wait)
        self._rate = float(rate)
        self._capacity = float(capacity)
        self._tokens = self._capacity
        self._last = self._now()

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    @property
    def capacity(self) -> float:
        """The most tokens the bucket holds: the largest burst."""
        return self._capacity

    @property
    def tokens(self) -> float:
        """Tokens available now (refilled up to the present)."""
        self._lock.acquire()
        try:
            now = self._now()
            return min(self._capacity, self._tokens + (now - self._last) * self._rate)
        finally:
            self._lock.release()

    def reconfigure(self, *, rate: float | None = None, capacity: float | None = None,
                    check_only: bool = False) -> None:
        """Change ``rate`` and/or ``capacity`` at run time, atomically (``None``: keep it).

        Both are checked before anything changes. Tokens earned at the old rate up
        to now are kept (cut to the new capacity if it is smaller), so no permit is
        lost or invented by the change; a call never sees half of it. With
        ``check_only`` the settings are only checked (raising as a change would).
        """
        new_rate = self._rate if rate is None else rate
        new_capacity = self._capacity if capacity is None else capacity
        check_number("TokenBucket", "rate", new_rate, minimum=0, exclusive_minimum=True)
        check_number("TokenBucket", "capacity", new_capacity, minimum=1)
        if check_only:
            return
        self._lock.acquire()
        try:
            now = self._now()
            tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
            self._last = now
            self._rate = float(new_rate)
            self._capacity = float(new_capacity)
            self._tokens = min(tokens, self._capacity)
        finally:
            self._lock.release()

    def _take(self, cost: int) -> float:
        if cost != 1:
            self._check_cost(cost, self._capacity)
        self._lock.acquire()
        try:
            now = self._now()
            tokens = self._tokens + (now - self._last) * self._rate
            if tokens > self._capacity:
                tokens = self._capacity
            self._last = now
            if tokens >= cost:
                self._tokens = tokens - cost
                return 0.0
            self._tokens = tokens
        finally:
            self._lock.release()
        return (cost - tokens) / self._rate + _MARGIN

    def try_acquire(self, cost: int = 1) -> None:
        """Take ``cost`` tokens now, or raise ``RateLimitedError`` with ``retry_after``."""
        # Inlined _take: this is the hot path of every rate-limited call.
        if cost != 1:
            self._check_cost(cost, self._capacity)
        self._lock.acquire()
        try:
            now = self._now()
            tokens = self._tokens + (now - self._last) * self._rate
            if tokens > self._capacity:
                tokens = self._capacity
            self._last = now
            if tokens >= cost:
                self._tokens = tokens - cost
                return
            self._tokens = tokens
        finally:
            self._lock.release()
        raise self._reject((cost - tokens) / self._rate + _MARGIN)

    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]:
        """A closure that calls ``fn`` once a token is available."""
        take, acquire = self._take, self.acquire

        def limited(*args: Any, **kwargs: Any) -> Any:
            if take(1):
                acquire(1)
            return fn(*args, **kwargs)

        return limited

    def awrap(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """A coroutine function that awaits ``fn`` once a token is available."""
        take, aacquire = self._take, self.aacquire

        async def limited(*args: Any, **kwargs: Any) -> Any:
            if take(1):
                await aacquire(1)
            return await fn(*args, **kwargs)

        return limited

    def __repr__(self) -> str:
        return (f"TokenBucket(name={self._name!r}, rate={self._rate!r}, "
                f"capacity={self._capacity!r})")


class Gcra(_Limiter):
    """The generic cell rate algorithm: ``rate`` per second with bursts up to ``burst``.

    It admits exactly what a full token bucket of ``burst`` tokens refilled at
    ``rate`` would, but keeps a single number (the theoretical arrival time),
    which is what makes it a good fit for one atomic Redis script.
    """

    __slots__ = ("_burst", "_interval", "_rate", "_tat", "_tolerance")

    def __init__(
        self,
        *,
        rate: float,
        burst: int = 1,
        name: str = "gcra",
        max_wait: float = 0.0,
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
    ) -> None:
        check_number("Gcra", "rate", rate, minimum=0, exclusive_minimum=True)
        check_number("Gcra", "burst", burst, minimum=1, integer=True)
        super().__init__(name, clock, listeners, max_wait)
        self._rate = float(rate)
        self._burst = burst
        self._interval = 1.0 / self._rate
        self._tolerance = burst * self._interval
        self._tat = -math.inf

    @property
    def rate(self) -> float:
        """Admissions per second in the long run."""
        return self._rate

    @property
    def burst(self) -> int:
        """The most admissions at once after an idle period."""
        return self._burst

    def reconfigure(self, *, rate: float | None = None, burst: int | None = None,
                    check_only: bool = False) -> None:
        """Change ``rate`` and/or ``burst`` at run time, atomically (``None``: keep it).

        Both are checked before anything changes. The admissions already granted
        stay granted: the backlog they left is re-expressed at the new rate (the
        same number of admissions still to drain), so no permit is lost or invented.
        With ``check_only`` the settings are only checked.
        """
        new_rate = self._rate if rate is None else rate
        new_burst = self._burst if burst is None else burst
        check_number("Gcra", "rate", new_rate, minimum=0, exclusive_minimum=True)
        check_number("Gcra", "burst", new_burst, minimum=1, integer=True)
        if check_only:
            return
        self._lock.acquire()
        try:
            now = self._now()
            interval = 1.0 / float(new_rate)
            if self._tat > now:
                self._tat = now + (self._tat - now) / self._interval * interval
            self._rate = float(new_rate)
            self._burst = new_burst
            self._interval = interval
            self._tolerance = new_burst * interval
        finally:
            self._lock.release()

    def _take(self, cost: int) -> float:
        if cost != 1:
            self._check_cost(cost, self._burst)
        self._lock.acquire()
        try:
            now = self._now()
            tat = self._tat if self._tat > now else now
            # Compare the backlog (tat - now) with the room left, rather than computing
            # an "allowed at" instant: the latter rounds past ``now`` for a fresh limiter.
            room = self._tolerance - cost * self._interval
            backlog = tat - now
            if backlog <= room:
                self._tat = tat + cost * self._interval
                return 0.0
        finally:
            self._lock.release()
        return backlog - room + _MARGIN

    def __repr__(self) -> str:
        return f"Gcra(name={self._name!r}, rate={self._rate!r}, burst={self._burst!r})"


class SlidingWindow(_Limiter):
    """At most ``limit`` units per ``window`` seconds, over a window that slides.

    ``mode="counter"`` (the default) keeps two counters and weights the previous
    fixed window by how much of it still overlaps the sliding one (Cloudflare's
    approximation: constant memory, slightly permissive at window edges).
    ``mode="log"`` keeps one timestamp per unit: exact, memory grows with
    ``limit``.
    """

    __slots__ = ("_cur", "_cur_start", "_limit", "_log", "_mode", "_prev", "_window")

    def __init__(
        self,
        *,
        limit: int,
        window: float,
        mode: Literal["counter", "log"] = "counter",
        name: str = "sliding_window",
        max_wait: float = 0.0,
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
    ) -> None:
        check_number("SlidingWindow", "limit", limit, minimum=1, integer=True)
        check_number("SlidingWindow", "window", window, minimum=0, exclusive_minimum=True)
        if mode not in ("counter", "log"):
            raise ConfigurationError(
                f"SlidingWindow.mode must be 'counter' or 'log', got {mode!r}"
            )
        super().__init__(name, clock, listeners, max_wait)
        self._limit = limit
        self._window = float(window)
        self._mode = mode
        self._log: deque[float] = deque()
        self._prev = 0
        self._cur = 0
        self._cur_start = math.floor(self._now() / self._window) * self._window

    @property
    def limit(self) -> int:
        """The most units per window."""
        return self._limit

    @property
    def window(self) -> float:
        """The window's length in seconds."""
        return self._window

    @property
    def mode(self) -> Literal["counter", "log"]:
        """``"counter"`` (approximate, constant memory) or ``"log"`` (exact)."""
        return self._mode

    def _take(self, cost: int) -> float:
        if cost != 1:
            self._check_cost(cost, self._limit)
        if self._mode == "log":
            return self._take_log(cost)
        return self._take_counter(cost)

    def _take_log(self, cost: int) -> float:
        self._lock.acquire()
        try:
            now = self._now()
            log = self._log
            horizon = now - self._window
            while log and log[0] <= horizon:
                log.popleft()
            if len(log) + cost <= self._limit:
                log.extend([now] * cost)
                return 0.0
            # The oldest entries must expire until cost more fit.
            return log[len(log) + cost - self._limit - 1] + self._window - now + _MARGIN
        finally:
            self._lock.release()

    def _take_counter(self, cost: int) -> float:
        self._lock.acquire()
        try:
            now = self._now()
            w = self._window
            limit = self._limit
            start = self._cur_start
            if now >= start + w:
                windows = math.floor((now - start) / w)
                self._prev = self._cur if windows == 1 else 0
                self._cur = 0
                start = self._cur_start = start + windows * w
            elapsed = now - start
            estimate = self._prev * (w - elapsed) / w + self._cur
            if estimate + cost <= limit:
                self._cur += cost
                return 0.0
            free = limit - self._cur - cost
            if free >= 0 and self._prev:
                # prev * (w - e) / w <= free  <=>  e >= w * (1 - free / prev)
                return max(w * (1 - free / self._prev) - elapsed, 0.0) + _MARGIN
            # Not within this window: wait for the next one, where cur becomes prev.
            rest = w - elapsed
            free_next = limit - cost
            needed = w * (1 - free_next / self._cur) if self._cur > free_next else 0.0
            return rest + max(needed, 0.0) + _MARGIN
        finally:
            self._lock.release()

    def __repr__(self) -> str:
        return (
            f"SlidingWindow(name={self._name!r}, limit={self._limit!r}, "
            f"window={self._window!r}, mode={self._mode!r})"
        )


def _takes_arguments(factory: Callable[..., Any]) -> bool:
    """Whether ``factory()`` fails for want of arguments (not a TypeError from its body)."""
    try:
        inspect.signature(factory).bind()
    except TypeError:
        return True
    except ValueError:  # no signature to read (some builtins): cannot tell
        return False
    return False


# How many stored states a new key may look at, at max_keys, for a full one to drop.
_SWEEP = 8


class _KeySlot(_Limiter):
    """The limiter of one key of a table-backed ``KeyedLimiter``: a view on its state.

    Built by ``KeyedLimiter.limiter(key)``; it holds no state of its own, so any
    number of them (and calls through the ``KeyedLimiter`` itself) agree.
    """

    __slots__ = ("_key_id", "_keyed")

    def __init__(self, keyed: KeyedLimiter, key: Hashable, template: _Limiter) -> None:
        # No super().__init__: every setting is the template's, already checked.
        self._keyed = keyed
        self._key_id = key
        self._name = template._name
        self._max_wait = template._max_wait
        self._clock = template._clock
        self._now = template._now
        self._listeners = template._listeners
        self._lock = template._lock

    def _take(self, cost: int) -> float:
        return self._keyed._take_key(self._key_id, cost)

    @property
    def rate(self) -> float:
        """Units per second in the long run (the template's)."""
        return 1.0 / self._keyed._interval

    @property
    def capacity(self) -> float:
        """The largest burst (a TokenBucket's ``capacity``, a Gcra's ``burst``)."""
        return self._keyed._largest

    @property
    def tokens(self) -> float:
        """Units available now."""
        return self._keyed._available(self._key_id)

    def __repr__(self) -> str:
        return f"KeyedLimiter.limiter({self._key_id!r}) of {self._keyed!r}"


class KeyedLimiter(Decorates):
    """One limiter per key (client, route, tenant), with bounded memory.

    ``factory`` builds the limiter for a new key (``lambda: TokenBucket(rate=10)``).
    It is called twice at construction, to check what it returns: a local
    limiter, and a new one each time (a factory that returns one shared limiter
    would give every key the same bucket).

    For a ``TokenBucket`` or ``Gcra`` factory the first limiter it returns is
    only the template of settings: each key keeps a single float in a table
    (its GCRA theoretical arrival time; a token bucket of ``capacity`` tokens
    refilled at ``rate`` admits exactly what a GCRA of ``rate`` with tolerance
    ``capacity / rate`` does, ITU-T I.371 / ATM Forum TM 4.0), about 130 bytes
    per key with its key string. A key idle for ``capacity / rate`` seconds is
    full, so it is the same as an absent key and is forgotten: keys live in two
    generations swapped every ``capacity / rate`` seconds, and the older one is
    dropped whole (each key touched since moves to the newer one). At
    ``max_keys`` a new key takes the place of a full one found in a bounded
    sweep (``_SWEEP`` stored keys); when none is full, the new key's call is
    refused with ``RateLimitedError`` (reason ``"max_keys"``) and no active
    key's state is ever dropped: a flood of new keys cannot reset the bucket
    of a key in use. Forgotten and refused keys are counted in
    :attr:`evictions` and sent as :class:`~fournines.KeysEvicted` events.

    Other factories (``SlidingWindow``, custom limiters) keep one limiter per
    key, at most ``max_keys``, the least recently used forgotten first (a
    forgotten key starts afresh).

    ``key`` makes it a policy: ``key(*args, **kwargs)`` returns the key of a call,
    and ``call``/``acall`` (and so a ``Pipeline`` or ``@keyed``) take one unit
    from that key's limiter, waiting up to its ``max_wait``. Without ``key``
    only the explicit methods (``try_acquire(key)``, ...) work.
    """

    __slots__ = (
        "_counts",
        "_expire_at",
        "_factory",
        "_interval",
        "_key",
        "_largest",
        "_limiters",
        "_listeners",
        "_lock",
        "_max_keys",
        "_name",
        "_now",
        "_old",
        "_pending",
        "_template",
        "_tolerance",
        "_young",
    )

    def __init__(
        self,
        factory: Callable[[], _Limiter],
        *,
        key: Callable[..., Hashable] | None = None,
        max_keys: int = 10_000,
        name: str = "keyed",
    ) -> None:
        check_number("KeyedLimiter", "max_keys", max_keys, minimum=1, integer=True)
        if isinstance(factory, _Limiter) or not callable(factory):
            shown = (f"{type(factory).__name__}(...)" if isinstance(factory, _Limiter)
                     else repr(factory))
            raise ConfigurationError(
                "KeyedLimiter.factory must be a callable returning a new limiter for each "
                f"key, such as lambda: TokenBucket(...), got {shown}"
            )
        if not isinstance(factory, type) and (callable(getattr(factory, "call", None))
                                              or callable(getattr(factory, "try_acquire", None))):
            # A policy decorates when called, so it is callable, but it is no factory.
            raise ConfigurationError(
                "KeyedLimiter.factory must be a callable returning a new limiter for each "
                f"key, such as lambda: TokenBucket(...), got {type(factory).__name__}(...)"
            )
        try:
            first, second = factory(), factory()
        except TypeError as exc:
            if _takes_arguments(factory):
                raise ConfigurationError(
                    "KeyedLimiter.factory must be callable with no arguments, such as "
                    f"lambda: TokenBucket(...), got {factory!r} ({exc})"
                ) from exc
            raise
        if not isinstance(first, _Limiter):
            raise ConfigurationError(
                "KeyedLimiter.factory must return a local rate limiter (TokenBucket, Gcra, "
                f"SlidingWindow), returned {first!r}"
            )
        if first is second:
            raise ConfigurationError(
                f"KeyedLimiter.factory returned the same limiter twice ({first!r}): every "
                "key would share it; build a new one per call, or use the limiter alone"
            )
        if key is not None and not callable(key):
            raise ConfigurationError(
                f"KeyedLimiter.key must be a callable returning the key of a call, got {key!r}"
            )
        self._factory = factory
        self._key = key
        self._max_keys = max_keys
        self._name = name
        self._limiters: OrderedDict[Hashable, _Limiter] = OrderedDict()
        self._lock = threading.Lock()
        self._counts = {"idle": 0, "pressure": 0, "refused": 0}
        self._pending: list[KeysEvicted] = []
        self._young: dict[Hashable, float] = {}
        self._old: dict[Hashable, float] = {}
        template: _Limiter | None = first if type(first) in (TokenBucket, Gcra) else None
        self._template = template
        # The largest cost, kept as given: tolerance / interval may round below it.
        if isinstance(template, TokenBucket):
            self._largest = template._capacity
            self._interval = 1.0 / template._rate
            self._tolerance = template._capacity * self._interval
        elif isinstance(template, Gcra):
            self._largest = float(template._burst)
            self._interval = template._interval
            self._tolerance = template._tolerance
        else:
            self._largest = self._interval = self._tolerance = 0.0
        if template is not None:
            self._now = template._now
            self._listeners = template._listeners
            self._expire_at = self._now() + self._tolerance
        else:
            self._now = system_clock.monotonic
            self._listeners = ()
            self._expire_at = math.inf

    @property
    def factory(self) -> Callable[[], _Limiter]:
        """Builds the limiter of a new key."""
        return self._factory

    @property
    def key(self) -> Callable[..., Hashable] | None:
        """Returns the key of a call made through ``call``/``acall`` (``None``: not set)."""
        return self._key

    @property
    def max_keys(self) -> int:
        """The most keys kept at once."""
        return self._max_keys

    @property
    def name(self) -> str:
        """Shown in reprs and by the ASGI limits."""
        return self._name

    @property
    def evictions(self) -> dict[str, int]:
        """Keys forgotten or refused so far, by kind.

        ``idle``: full, forgotten by time; ``pressure``: full, dropped early at
        ``max_keys``; ``refused``: new keys refused at ``max_keys``.
        """
        self._lock.acquire()
        try:
            return dict(self._counts)
        finally:
            self._lock.release()

    def __repr__(self) -> str:
        return f"KeyedLimiter(name={self._name!r}, keys={len(self)})"

    def _count(self, kind: str, count: int) -> None:
        # Under the lock; the event is sent by _take_key once the lock is released, so a
        # listener may use this limiter.
        self._counts[kind] += count
        if self._listeners or global_listeners():
            self._pending.append(KeysEvicted(policy="keyed_limiter", name=self._name,
                                             kind=kind, count=count))

    def _rotate(self, now: float) -> None:
        # Every stored state was written at most ``tolerance`` before it is full
        # (an admission leaves the backlog within the tolerance; a rejection writes
        # nothing), and ``old`` holds only states written before it was sealed, at
        # least ``tolerance`` ago: all of them are full, so dropping them is exact.
        dropped = len(self._old)
        if now >= self._expire_at + self._tolerance:
            # No call for two generations: the young ones are full as well.
            dropped += len(self._young)
            self._old = {}
        else:
            self._old = self._young
        self._young = {}
        self._expire_at = now + self._tolerance
        if dropped:
            self._count("idle", dropped)

    def _make_room(self, now: float) -> float:
        """Drop one full state (0.0), or return when the soonest one seen is full."""
        soonest = math.inf
        for _ in range(_SWEEP):
            old = self._old
            if not old:
                if not self._young:
                    break
                # Sealing the young generation early is safe: nothing older is held.
                old = self._old = self._young
                self._young = {}
                self._expire_at = now + self._tolerance
            # popitem (the newest entry) is O(1); scanning from the front of a dict
            # that only shrinks is not (CPython skips the deleted slots one by one).
            stored, tat = old.popitem()
            if tat <= now:
                self._count("pressure", 1)
                return 0.0
            # Still active: kept, in the young generation, so the next sweep moves on.
            self._young[stored] = tat
            soonest = min(soonest, tat - now)
        return soonest if soonest < math.inf else self._interval

    def _take_key(self, key: Hashable, cost: int) -> float:
        """GCRA for ``key`` on the table: 0.0 (taken) or the seconds to wait."""
        template = self._template
        assert template is not None
        if cost != 1:
            template._check_cost(cost, self._largest)
        refused = 0.0
        pending: list[KeysEvicted] = []
        self._lock.acquire()
        try:
            now = self._now()
            if now >= self._expire_at:
                self._rotate(now)
            young = self._young
            tat = young.get(key)
            if tat is None:
                tat = self._old.pop(key, None)
                if tat is None:
                    if len(young) + len(self._old) >= self._max_keys:
                        refused = self._make_room(now)
                        young = self._young
                        if refused:
                            self._count("refused", 1)
                    tat = now
                else:
                    young[key] = tat  # touched: it moves to the young generation
            if not refused:
                # As Gcra._take: compare the backlog with the room left.
                if tat < now:
                    tat = now
                room = self._tolerance - cost * self._interval
                backlog = tat - now
                if backlog <= room:
                    young[key] = tat + cost * self._interval
                    return 0.0
        finally:
            if self._pending:
                pending, self._pending = self._pending, []
            self._lock.release()
            for event in pending:
                dispatch(self._listeners, event)
        if refused:
            raise template._reject(refused, "max_keys")
        return backlog - room + _MARGIN

    def _available(self, key: Hashable) -> float:
        self._lock.acquire()
        try:
            tat = self._young.get(key)
            if tat is None:
                tat = self._old.get(key)
            backlog = 0.0 if tat is None else max(0.0, tat - self._now())
            return (self._tolerance - backlog) / self._interval
        finally:
            self._lock.release()

    def limiter(self, key: Hashable) -> _Limiter:
        """The limiter for ``key``, created on first use.

        With a TokenBucket or Gcra factory it is a view on the key's stored state
        (a new object each time, all of them agreeing).
        """
        template = self._template
        if template is not None:
            return _KeySlot(self, key, template)
        self._lock.acquire()
        try:
            limiters = self._limiters
            found = limiters.get(key)
            if found is not None:
                limiters.move_to_end(key)
                return found
            made = limiters[key] = self._factory()
            if len(limiters) > self._max_keys:
                limiters.popitem(last=False)
            return made
        finally:
            self._lock.release()

    def __len__(self) -> int:
        if self._template is not None:
            return len(self._young) + len(self._old)
        return len(self._limiters)

    def try_acquire(self, key: Hashable, cost: int = 1) -> None:
        """Take ``cost`` units from ``key``'s limiter now, or raise ``RateLimitedError``."""
        template = self._template
        if template is None:
            self.limiter(key).try_acquire(cost)
            return
        if cost != 1:
            template._check_cost(cost, self._largest)
        # Inlined _take_key for its common case (a kept key with room): the hot path.
        with self._lock:
            now = self._now()
            if now < self._expire_at:
                young = self._young
                tat = young.get(key)
                if tat is not None:
                    if tat < now:
                        tat = now
                    step = cost * self._interval
                    if tat - now <= self._tolerance - step:
                        young[key] = tat + step
                        return
        wait = self._take_key(key, cost)
        if wait:
            raise template._reject(wait)

    def acquire(self, key: Hashable, cost: int = 1, *, max_wait: float | None = None) -> None:
        """Wait up to ``max_wait`` for ``cost`` units of ``key``'s limiter."""
        self.limiter(key).acquire(cost, max_wait=max_wait)

    async def aacquire(
        self, key: Hashable, cost: int = 1, *, max_wait: float | None = None
    ) -> None:
        """Async :meth:`acquire`."""
        await self.limiter(key).aacquire(cost, max_wait=max_wait)

    def _key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        key = self._key
        if key is None:
            raise self._unkeyed()
        return key(*args, **kwargs)

    def _unkeyed(self) -> ConfigurationError:
        return ConfigurationError(
            "KeyedLimiter.key is not set: pass key=lambda *args, **kwargs: ... (the key "
            "of a call) to use a KeyedLimiter as a policy (call, acall, Pipeline, @)"
        )

    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]:
        """A closure that runs ``fn`` under its key's limiter; refused without ``key``."""
        if self._key is None:  # every call would raise: say so when decorating
            raise self._unkeyed()
        return super().wrap(fn)

    def awrap(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """A coroutine function awaiting ``fn`` under its key's limiter; refused without ``key``."""
        if self._key is None:
            raise self._unkeyed()
        return super().awrap(fn)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` once its key's limiter has a unit (waiting up to its ``max_wait``)."""
        key = self._key_of(args, kwargs)
        template = self._template
        if template is None:
            return self.limiter(key).call(fn, *args, **kwargs)
        if self._take_key(key, 1):
            _KeySlot(self, key, template).acquire(1)
        return fn(*args, **kwargs)

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn`` once its key's limiter has a unit (waiting up to its ``max_wait``)."""
        key = self._key_of(args, kwargs)
        template = self._template
        if template is None:
            return await self.limiter(key).acall(fn, *args, **kwargs)
        if self._take_key(key, 1):
            await _KeySlot(self, key, template).aacquire(1)
        return await fn(*args, **kwargs)
