"""What every policy shares: turning ``call``/``acall`` into wrappers and decorators.

A policy wraps a function with :meth:`Decorates.wrap` (sync) or
:meth:`Decorates.awrap` (async): a closure that runs the function under the
policy. Decorators and :class:`~fournines.Pipeline` are both built from these
closures, so a policy that inlines its fast path into its closure (the breaker,
retry, token bucket and bulkhead do) speeds up both at once. Any object with
``call``/``acall`` gets the generic closures from :func:`wrap_with` and
:func:`awrap_with`.

Every closure built here carries the wrapped function's name, module, docstring
and ``__wrapped__`` (set once, when it is built), so a policy further out (a
:class:`~fournines.StaleCache` keying on the function) sees the user's function,
not the closure of the policy inside it. The signature survives too, for type
checkers: a decorated ``async def`` stays a coroutine function of the same
parameters.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

P = ParamSpec("P")
T = TypeVar("T")


def named_after(wrapper: Callable[P, T], fn: Callable[..., Any]) -> Callable[P, T]:
    """``wrapper`` carrying ``fn``'s name, module, docstring and ``__wrapped__``.

    A wrapper that is ``fn`` itself (a policy that lets calls through untouched)
    or that cannot take attributes (a callable object with slots) is returned as is.
    """
    if wrapper is not fn:
        with contextlib.suppress(AttributeError, TypeError):
            functools.update_wrapper(wrapper, fn)
    return wrapper


def wrap_with(policy: Any, fn: Callable[P, T]) -> Callable[P, T]:
    """A closure running ``fn`` through ``policy.call`` (or the policy's own ``wrap``)."""
    own = getattr(policy, "wrap", None)
    if own is not None:
        return named_after(own(fn), fn)
    call = policy.call

    def through_policy(*args: P.args, **kwargs: P.kwargs) -> T:
        return call(fn, *args, **kwargs)  # type: ignore[no-any-return]

    return named_after(through_policy, fn)


def awrap_with(
    policy: Any, fn: Callable[P, Awaitable[T]]
) -> Callable[P, Coroutine[Any, Any, T]]:
    """A coroutine function awaiting ``fn`` through ``policy.acall`` (or its own ``awrap``)."""
    own = getattr(policy, "awrap", None)
    if own is not None:
        return named_after(own(fn), fn)
    acall = policy.acall

    async def through_policy(*args: P.args, **kwargs: P.kwargs) -> T:
        return await acall(fn, *args, **kwargs)  # type: ignore[no-any-return]

    return named_after(through_policy, fn)


class Decorates:
    """Mixin: generic ``wrap``/``awrap`` closures and the decorator built on them."""

    __slots__ = ()

    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]:
        """A closure that runs ``fn`` (sync) under this policy."""
        call = self.call  # type: ignore[attr-defined]

        def through_policy(*args: P.args, **kwargs: P.kwargs) -> T:
            return call(fn, *args, **kwargs)  # type: ignore[no-any-return]

        return through_policy

    def awrap(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """A coroutine function that awaits ``fn`` under this policy."""
        acall = self.acall  # type: ignore[attr-defined]

        async def through_policy(*args: P.args, **kwargs: P.kwargs) -> T:
            return await acall(fn, *args, **kwargs)  # type: ignore[no-any-return]

        return through_policy

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` so every call goes through this policy (sync or async alike)."""
        if inspect.iscoroutinefunction(fn):
            return awrap_with(self, fn)
        return wrap_with(self, fn)
