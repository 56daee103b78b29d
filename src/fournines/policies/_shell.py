"""What every policy shares: turning ``call``/``acall`` into a decorator."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, cast

P = ParamSpec("P")


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
