"""Fallbacks: answer something useful when the call fails, and say that it was degraded.

- :class:`Fallback` answers with a fixed ``value`` or with ``fn(exc)``.
- :class:`StaleCache` remembers the last good result per key and serves it,
  up to ``max_age`` seconds old, when the call fails (the payment status from
  the cache, up to five minutes old).

A degraded answer looks like a normal one to the caller, so both send a
:class:`~fournines.FallbackUsed` event and mark the current
:func:`track_degradation` scope, which is how a request handler learns that
what it returns is partial::

    with track_degradation() as degradation:
        page = render_order(...)
    if degradation.degraded:
        ...
"""

from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .._clock import Clock, system_clock
from .._errors import ConfigurationError, check_number
from .._events import FallbackUsed, Listener, dispatch
from ._classify import ExceptionFilter, exception_predicate
from ._shell import Decorates

__all__ = ["Degradation", "Fallback", "StaleCache", "track_degradation"]

P = ParamSpec("P")
T = TypeVar("T")
if TYPE_CHECKING:  # PEP 696: a bare `StaleCache(...)` is StaleCache[Any], no annotation needed
    from typing_extensions import TypeVar as _TypeVar

    R = _TypeVar("R", default=Any)
else:
    R = TypeVar("R")


class Degradation:
    """What fallbacks answered within one :func:`track_degradation` scope."""

    __slots__ = ("_lock", "sources")

    def __init__(self) -> None:
        self.sources: list[str] = []
        self._lock = threading.Lock()

    @property
    def degraded(self) -> bool:
        """Whether any fallback answered in this scope."""
        return bool(self.sources)

    def mark(self, source: str) -> None:
        """Record that ``source`` (a policy name) answered in place of the real call."""
        self._lock.acquire()
        try:
            self.sources.append(source)
        finally:
            self._lock.release()

    def __repr__(self) -> str:
        return f"Degradation(sources={self.sources!r})"


_scope: ContextVar[Degradation | None] = ContextVar("fournines_degradation", default=None)


@contextmanager
def track_degradation() -> Iterator[Degradation]:
    """Collect the fallbacks used inside the block (child tasks included)."""
    degradation = Degradation()
    token = _scope.set(degradation)
    try:
        yield degradation
    finally:
        _scope.reset(token)


def _degraded(listeners: Sequence[Listener], name: str, exc: BaseException,
              stale_age: float | None) -> None:
    scope = _scope.get()
    if scope is not None:
        scope.mark(name)
    dispatch(listeners, FallbackUsed(policy="fallback", name=name, error=exc, stale_age=stale_age))


_MISSING: Any = object()


class Fallback(Decorates):
    """On a matching error, answer ``value`` or ``fn(exc)`` instead.

    ``fn`` may be a coroutine function when used with ``acall``. ``on`` picks the
    errors (default: every ``Exception``; rejections such as ``CircuitOpenError``
    are exceptions too).
    """

    __slots__ = ("_fn", "_listeners", "_on", "_value", "name")

    def __init__(
        self,
        *,
        value: Any = _MISSING,
        fn: Callable[[Exception], Any] | None = None,
        on: ExceptionFilter = Exception,
        name: str = "fallback",
        listeners: Sequence[Listener] = (),
    ) -> None:
        if (value is _MISSING) == (fn is None):
            raise ConfigurationError("Fallback needs exactly one of value= or fn=")
        if fn is not None and not callable(fn):
            raise ConfigurationError(f"Fallback.fn must be callable, got {fn!r}")
        self._value = value
        self._fn = fn
        self._on = exception_predicate("Fallback", "on", on)
        self.name = name
        self._listeners = tuple(listeners)

    def __repr__(self) -> str:
        what = f"fn={self._fn!r}" if self._fn is not None else f"value={self._value!r}"
        return f"Fallback(name={self.name!r}, {what})"

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn``; on a matching error return the fallback."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not self._on(exc):
                raise
            _degraded(self._listeners, self.name, exc, None)
            if self._fn is None:
                return self._value  # type: ignore[no-any-return]
            answer = self._fn(exc)
            if inspect.isawaitable(answer):
                raise ConfigurationError(
                    f"Fallback {self.name!r}: fn is async; use acall for async calls"
                ) from exc
            return answer  # type: ignore[no-any-return]

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn``; on a matching error return (or await) the fallback."""
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if not self._on(exc):
                raise
            _degraded(self._listeners, self.name, exc, None)
            if self._fn is None:
                return self._value  # type: ignore[no-any-return]
            answer = self._fn(exc)
            if inspect.isawaitable(answer):
                answer = await answer
            return answer  # type: ignore[no-any-return]



def _default_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    return (args, tuple(sorted(kwargs.items()))) if kwargs else args


class StaleCache(Decorates, Generic[R]):
    """Serve the last good result for a key, up to ``max_age`` seconds old, on failure.

    The key is the call's arguments by default, or ``key(*args, **kwargs)``. Use
    one cache per kind of call (one for payment statuses, say), since the
    function itself is not part of the default key. At most ``max_keys`` results
    are kept, least recently refreshed dropped first.
    """

    __slots__ = ("_entries", "_key", "_listeners", "_lock", "_now", "_on", "max_age", "max_keys",
                 "name")

    def __init__(
        self,
        *,
        max_age: float = 300.0,
        max_keys: int = 10_000,
        key: Callable[..., Hashable] | None = None,
        on: ExceptionFilter = Exception,
        name: str = "stale_cache",
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
    ) -> None:
        check_number("StaleCache", "max_age", max_age, minimum=0)
        check_number("StaleCache", "max_keys", max_keys, minimum=1, integer=True)
        if key is not None and not callable(key):
            raise ConfigurationError(f"StaleCache.key must be callable, got {key!r}")
        self.max_age = float(max_age)
        self.max_keys = max_keys
        self._key = key
        self._on = exception_predicate("StaleCache", "on", on)
        self.name = name
        self._now = clock.monotonic
        self._listeners = tuple(listeners)
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"StaleCache(name={self.name!r}, max_age={self.max_age!r}, size={len(self)})"

    def _key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        return self._key(*args, **kwargs) if self._key is not None else _default_key(args, kwargs)

    def _store(self, key: Hashable, value: Any) -> None:
        self._lock.acquire()
        try:
            entries = self._entries
            entries[key] = (self._now(), value)
            entries.move_to_end(key)
            if len(entries) > self.max_keys:
                entries.popitem(last=False)
        finally:
            self._lock.release()

    def _stale(self, key: Hashable, exc: Exception) -> Any:
        self._lock.acquire()
        try:
            entry = self._entries.get(key)
        finally:
            self._lock.release()
        if entry is None:
            raise exc
        age = self._now() - entry[0]
        if age > self.max_age:
            raise exc
        _degraded(self._listeners, self.name, exc, age)
        return entry[1]

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn``; remember a success, answer a failure from the cache if fresh enough."""
        key = self._key_of(args, kwargs)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if not self._on(exc):
                raise
            return self._stale(key, exc)  # type: ignore[no-any-return]
        self._store(key, result)
        return result

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Async :meth:`call`."""
        key = self._key_of(args, kwargs)
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            if not self._on(exc):
                raise
            return self._stale(key, exc)  # type: ignore[no-any-return]
        self._store(key, result)
        return result

