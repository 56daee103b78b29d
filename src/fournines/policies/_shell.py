"""What every policy shares: turning ``call``/``acall`` into wrappers and decorators.

A policy wraps a function with :meth:`Decorates.wrap` (sync) or
:meth:`Decorates.awrap` (async): a closure that runs the function under the
policy. Decorators and :class:`~fournines.Pipeline` are both built from these
closures, so a policy that inlines its fast path into its closure (the breaker,
retry, token bucket and bulkhead do) speeds up both at once. Any object with
``call``/``acall`` gets the generic closures from :func:`wrap_with` and
:func:`awrap_with`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, overload

P = ParamSpec("P")
T = TypeVar("T")


def wrap_with(policy: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A closure running ``fn`` through ``policy.call`` (or the policy's own ``wrap``)."""
    own = getattr(policy, "wrap", None)
    if own is not None:
        return own(fn)  # type: ignore[no-any-return]
    call = policy.call

    def through_policy(*args: Any, **kwargs: Any) -> Any:
        return call(fn, *args, **kwargs)

    return through_policy


def awrap_with(policy: Any, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A coroutine function awaiting ``fn`` through ``policy.acall`` (or its own ``awrap``)."""
    own = getattr(policy, "awrap", None)
    if own is not None:
        return own(fn)  # type: ignore[no-any-return]
    acall = policy.acall

    async def through_policy(*args: Any, **kwargs: Any) -> Any:
        return await acall(fn, *args, **kwargs)

    return through_policy


class Decorates:
    """Mixin: generic ``wrap``/``awrap`` closures and the decorator built on them."""

    __slots__ = ()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A closure that runs ``fn`` (sync) under this policy."""
        call = self.call  # type: ignore[attr-defined]

        def through_policy(*args: Any, **kwargs: Any) -> Any:
            return call(fn, *args, **kwargs)

        return through_policy

    def awrap(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """A coroutine function that awaits ``fn`` under this policy."""
        acall = self.acall  # type: ignore[attr-defined]

        async def through_policy(*args: Any, **kwargs: Any) -> Any:
            return await acall(fn, *args, **kwargs)

        return through_policy

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` so every call goes through this policy (sync or async alike)."""
        wrapped = self.awrap(fn) if inspect.iscoroutinefunction(fn) else self.wrap(fn)
        return functools.wraps(fn)(wrapped)
