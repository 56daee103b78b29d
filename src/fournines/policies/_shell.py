"""What every policy shares: turning ``call``/``acall`` into a decorator."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast, overload

P = ParamSpec("P")
T = TypeVar("T")


def decorate(policy: Any, fn: Callable[P, Any]) -> Callable[P, Any]:
    """Wrap ``fn`` with ``policy.acall`` (coroutine functions) or ``policy.call``."""
    if inspect.iscoroutinefunction(fn):
        acall = policy.acall

        @functools.wraps(fn)
        async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return await acall(fn, *args, **kwargs)

        return async_wrapper
    call = policy.call

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        return call(fn, *args, **kwargs)

    return cast(Callable[P, Any], wrapper)


class Decorates:
    """Mixin: a policy with ``call``/``acall`` also decorates sync and async functions."""

    __slots__ = ()

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` so every call goes through this policy (sync or async alike)."""
        return decorate(self, fn)
