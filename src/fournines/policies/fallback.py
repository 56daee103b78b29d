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

import functools
import inspect
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from types import CellType
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

    __slots__ = ("_fn", "_listeners", "_name", "_on", "_value")

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
        self._name = name
        self._listeners = tuple(listeners)

    @property
    def name(self) -> str:
        """Shown in events and in :attr:`Degradation.sources`."""
        return self._name

    def __repr__(self) -> str:
        what = f"fn={self._fn!r}" if self._fn is not None else f"value={self._value!r}"
        return f"Fallback(name={self._name!r}, {what})"

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
                if inspect.iscoroutine(answer):
                    answer.close()  # never awaited: close it rather than leave a warning
                raise ConfigurationError(
                    f"Fallback {self.name!r}: fn is async; use acall for async calls"
                ) from exc
            return answer  # type: ignore[no-any-return]

    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]:
        """A closure that calls ``fn`` with the fallback; refused when ``fn=`` is async."""
        if self._fn is not None and inspect.iscoroutinefunction(self._fn):
            # A sync call cannot await the fallback: every fallback would fail.
            raise ConfigurationError(
                f"Fallback.fn ({self._fn!r}) is a coroutine function, which a sync function "
                f"cannot await: decorate an async def, or give a sync fn"
            )
        return super().wrap(fn)

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



_Identity = tuple[Hashable, ...]
_Cells = tuple[CellType, ...] | None


def _identity(fn: Callable[..., Any]) -> tuple[_Identity, _Cells]:
    """What tells one function from another in a default cache key, and its captures.

    The module, qualified name and code of the user's function: decorators that
    set ``__wrapped__`` (``functools.wraps``, every fournines policy) are seen
    through, and a ``functools.partial`` adds its bound arguments. Names and
    code, not the function object, so that a key outlives a re-created closure.
    The code tells apart functions of one name (every lambda is ``<lambda>``).
    What a closure captures is not here: it may be rebound between calls, so
    :func:`_captured` reads the returned cells at each call.
    """
    fn = inspect.unwrap(fn)
    if isinstance(fn, functools.partial):
        ident, cells = _identity(fn.func)
        return (*ident, fn.args, tuple(sorted(fn.keywords.items()))), cells
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    ident = (getattr(fn, "__module__", None), qualname, getattr(fn, "__code__", None))
    return ident, getattr(fn, "__closure__", None) or None


def _captured(fn: Callable[..., Any], cells: tuple[CellType, ...]) -> Hashable:
    """What a closure captures now: ``lambda: fetch(order)`` answers per ``order``.

    A capture that cannot be hashed (a dict, an unset cell) makes the function
    object itself the key: never another function's answer, at the price of no
    answer for a re-created closure.
    """
    try:
        values = tuple([cell.cell_contents for cell in cells])
        hash(values)
    except (TypeError, ValueError):
        return fn
    return values


class StaleCache(Decorates, Generic[R]):
    """Serve the last good result for a key, up to ``max_age`` seconds old, on failure.

    The default key is the function (its module, qualified name and code, seen
    through decorators), what it captures (read at each call, so
    ``cache.call(lambda: fetch(order))`` answers per ``order``) and the call's
    arguments, so one cache may serve several functions: ``user_email(1)`` never
    gets ``user_name(1)``'s answer. A closure over something unhashable (a dict)
    is keyed by the function object instead. Bound methods of different
    instances share a name; tell them apart with ``key``.
    ``key(*args, **kwargs)`` replaces the whole default key: the function is then
    not part of it, so functions that return the same resource may share answers
    on purpose. At most ``max_keys`` results are kept, least recently refreshed
    dropped first.

    Code that runs the call itself (the httpx transports) uses :meth:`store` and
    :meth:`serve_stale` with a key of its own.
    """

    __slots__ = ("_entries", "_key", "_last", "_listeners", "_lock", "_max_age", "_max_keys",
                 "_name", "_now", "_on")

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
        # max_age=0 would serve only an answer stored in the same clock tick: never, in effect.
        check_number("StaleCache", "max_age", max_age, minimum=0, exclusive_minimum=True)
        check_number("StaleCache", "max_keys", max_keys, minimum=1, integer=True)
        if key is not None and not callable(key):
            raise ConfigurationError(f"StaleCache.key must be callable, got {key!r}")
        self._max_age = float(max_age)
        self._max_keys = max_keys
        self._key = key
        self._on = exception_predicate("StaleCache", "on", on)
        self._name = name
        self._now = clock.monotonic
        self._listeners = tuple(listeners)
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        # The identity of the function last passed to call()/acall(), reused while the
        # same function is called again (one entry: throwaway lambdas cannot grow it).
        self._last: tuple[object, tuple[_Identity, _Cells]] = (None, ((), None))

    @property
    def max_age(self) -> float:
        """How old, in seconds, an answer may be and still be served."""
        return self._max_age

    @property
    def max_keys(self) -> int:
        """The most answers kept at once."""
        return self._max_keys

    @property
    def name(self) -> str:
        """Shown in events and in :attr:`Degradation.sources`."""
        return self._name

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"StaleCache(name={self._name!r}, max_age={self._max_age!r}, size={len(self)})"

    def _key_of(self, fn: Callable[..., Any], ident: tuple[_Identity, _Cells],
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        if self._key is not None:
            return self._key(*args, **kwargs)
        name, cells = ident
        if cells is not None:
            name = (*name, _captured(fn, cells))
        return (name, args, tuple(sorted(kwargs.items()))) if kwargs else (name, args)

    def _identity_of(self, fn: Callable[..., Any]) -> tuple[_Identity, _Cells]:
        last_fn, ident = self._last
        if last_fn is not fn:
            ident = _identity(fn)
            self._last = (fn, ident)
        return ident

    def store(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` as the last good answer for ``key``."""
        self._lock.acquire()
        try:
            entries = self._entries
            entries[key] = (self._now(), value)
            entries.move_to_end(key)
            if len(entries) > self._max_keys:
                entries.popitem(last=False)
        finally:
            self._lock.release()

    def serve_stale(self, key: Hashable, error: Exception) -> Any:
        """The answer kept for ``key`` if fresh enough (a degraded answer), else raise ``error``.

        ``error`` is raised as well when ``on`` does not select it.
        Serving sends :class:`~fournines.FallbackUsed` and marks the current
        :func:`track_degradation` scope.
        """
        if not self._on(error):
            raise error
        return self._serve(key, error)

    def _serve(self, key: Hashable, error: Exception) -> Any:
        self._lock.acquire()
        try:
            entry = self._entries.get(key)
        finally:
            self._lock.release()
        if entry is None:
            raise error
        age = self._now() - entry[0]
        if age > self._max_age:
            raise error
        _degraded(self._listeners, self._name, error, age)
        return entry[1]

    def _run(self, fn: Callable[..., Any], ident: tuple[_Identity, _Cells],
             args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = self._key_of(fn, ident, args, kwargs)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if not self._on(exc):
                raise
            return self._serve(key, exc)
        self.store(key, result)
        return result

    async def _arun(self, fn: Callable[..., Awaitable[Any]], ident: tuple[_Identity, _Cells],
                    args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = self._key_of(fn, ident, args, kwargs)
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            if not self._on(exc):
                raise
            return self._serve(key, exc)
        self.store(key, result)
        return result

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn``; remember a success, answer a failure from the cache if fresh enough."""
        return self._run(fn, self._identity_of(fn), args, kwargs)  # type: ignore[no-any-return]

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Async :meth:`call`."""
        return await self._arun(fn, self._identity_of(fn), args, kwargs)  # type: ignore[no-any-return]

    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]:
        """A closure that calls ``fn`` through the cache (its identity taken once, here)."""
        run, ident = self._run, _identity(fn)

        def through_cache(*args: Any, **kwargs: Any) -> Any:
            return run(fn, ident, args, kwargs)

        return through_cache

    def awrap(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """A coroutine function that awaits ``fn`` through the cache."""
        arun, ident = self._arun, _identity(fn)

        async def through_cache(*args: Any, **kwargs: Any) -> Any:
            return await arun(fn, ident, args, kwargs)

        return through_cache
