"""Pipeline: several policies around one call, the first outermost (Polly's rule).

``Pipeline(Timeout(2), Retry(), breaker, limiter, bulkhead)`` runs a call as
``timeout(retry(breaker(limiter(bulkhead(fn)))))``: the timeout bounds all
attempts together, each attempt passes the breaker, and so on. Any object with
``call(fn, *args, **kwargs)`` and ``async acall(fn, *args, **kwargs)`` is a
policy, including user-written ones and other pipelines.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar, overload, runtime_checkable

from .._errors import ConfigurationError
from ._shell import awrap_with, named_after, wrap_with

__all__ = ["Pipeline", "Policy"]

P = ParamSpec("P")
T = TypeVar("T")


@runtime_checkable
class Policy(Protocol):
    """The one strategy contract: run a call, sync or async, under the policy."""

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` under the policy."""

    async def acall(
        self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any
    ) -> Any:
        """Await ``fn(*args, **kwargs)`` under the policy."""


def _never(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - placeholder, never run
    raise AssertionError("unreachable")


def _awaiting(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    # An empty pipeline around a function that returns an awaitable without being a
    # coroutine function still hands back a coroutine function, as awrap promises.
    async def awaiting(*args: P.args, **kwargs: P.kwargs) -> T:
        return await fn(*args, **kwargs)

    return awaiting


class Pipeline:
    """Compose policies; the first given is the outermost."""

    __slots__ = ("_last_async", "_last_sync", "_policies")

    def __init__(self, *policies: Policy) -> None:
        for i, policy in enumerate(policies):
            if not (callable(getattr(policy, "call", None))
                    and callable(getattr(policy, "acall", None))):
                raise ConfigurationError(
                    f"Pipeline.policies[{i}] must have call() and acall(), got {policy!r}"
                )
        self._policies = policies
        # The chain built for the last function called, reused while the same function
        # is called again (the usual case). One entry only, so a stream of throwaway
        # lambdas cannot grow it.
        self._last_sync: tuple[object, Callable[..., Any]] = (None, _never)
        self._last_async: tuple[object, Callable[..., Any]] = (None, _never)

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The policies, outermost first (read-only: the chains built from them are reused)."""
        return self._policies

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self._policies))})"

    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]:
        """``fn`` wrapped in every policy's closure, from the inside out.

        Each closure carries ``fn``'s name, module, docstring and ``__wrapped__``.
        """
        chain = fn
        for policy in reversed(self._policies):
            chain = wrap_with(policy, chain)
        return chain

    def awrap(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Coroutine function ``fn`` wrapped in every policy's async closure."""
        if not self._policies:
            if inspect.iscoroutinefunction(fn):
                return fn
            return named_after(_awaiting(fn), fn)
        chain: Callable[P, Awaitable[T]] = fn
        for policy in reversed(self._policies):
            chain = awrap_with(policy, chain)
        return chain  # type: ignore[return-value]

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` through every policy."""
        last_fn, chain = self._last_sync
        if last_fn is not fn:
            chain = self.wrap(fn)
            self._last_sync = (fn, chain)
        return chain(*args, **kwargs)  # type: ignore[no-any-return]

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(*args, **kwargs)`` through every policy."""
        last_fn, chain = self._last_async
        if last_fn is not fn:
            chain = self.awrap(fn)
            self._last_async = (fn, chain)
        return await chain(*args, **kwargs)  # type: ignore[no-any-return]

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a sync or async function; the chain is built once, here."""
        return self.awrap(fn) if inspect.iscoroutinefunction(fn) else self.wrap(fn)
