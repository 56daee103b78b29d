"""Timeout: a deadline for one call, that nests with the deadlines around it.

Async calls are cancelled when their time is up, and
:class:`~fournines.DeadlineExceededError` (a ``TimeoutError``) is raised in
their place. A circuit breaker inside the timeout counts such a call as a
failure (a ``DeadlineExceededError``), so a hung dependency opens it; a
cancellation from elsewhere (a caller that went away) is no failure.

Python cannot interrupt a running thread, so sync calls get the
deadline set around them instead: every fournines policy inside respects it
(retries stop waiting, limiters and bulkheads give up in time, outgoing HTTP
calls carry the remaining budget) and the result of a call that overran is
still returned, never thrown away.

The effective timeout is the smaller of ``seconds`` and what is left of the
current deadline; a call whose deadline has already passed is refused without
being started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from .._clock import Clock, system_clock
from .._deadline import Deadline, push_deadline, reset_deadline
from .._errors import DeadlineExceededError, check_number
from .._events import DeadlineExceeded, Listener, dispatch, global_listeners
from ._shell import Decorates

__all__ = ["Timeout"]

P = ParamSpec("P")
T = TypeVar("T")


class _Fuse:
    """Cancels one task when the timer fires, and remembers that it did.

    The cancellation goes through :meth:`Deadline.cancel`, which marks the
    deadline: a breaker inside the call then counts it as a failure (a hung
    dependency must open its breaker), unlike a cancellation from elsewhere.
    """

    __slots__ = ("deadline", "fired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: Deadline) -> None:
        self.task = task
        self.deadline = deadline
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.deadline.cancel(self.task)


class Timeout(Decorates):
    """Give each call at most ``seconds`` (and never more than the current deadline)."""

    __slots__ = ("_clock", "_listeners", "_name", "_seconds")

    def __init__(
        self,
        seconds: float,
        *,
        name: str = "timeout",
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
    ) -> None:
        check_number("Timeout", "seconds", seconds, minimum=0, exclusive_minimum=True)
        self._seconds = float(seconds)
        self._name = name
        self._clock = clock
        self._listeners = tuple(listeners)

    @property
    def seconds(self) -> float:
        """The most each call may take (less when the current deadline is nearer)."""
        return self._seconds

    @property
    def name(self) -> str:
        """Shown in errors and events."""
        return self._name

    @property
    def clock(self) -> Clock:
        """Where the timeout reads time."""
        return self._clock

    def __repr__(self) -> str:
        return f"Timeout({self._seconds!r}, name={self._name!r})"

    def _expired(self, budget: float) -> DeadlineExceededError:
        if self._listeners or global_listeners():
            dispatch(self._listeners,
                     DeadlineExceeded(policy="timeout", name=self._name, timeout=budget))
        return DeadlineExceededError(f"{self._name}: deadline of {budget:.3f}s exceeded")

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn`` with the deadline set (see the module docstring for sync semantics)."""
        deadline, token = push_deadline(self._seconds, self._clock)
        try:
            if deadline.remaining() <= 0:
                raise self._expired(0.0)
            return fn(*args, **kwargs)
        finally:
            reset_deadline(token)

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn``; cancel it and raise ``DeadlineExceededError`` when time is up."""
        deadline, token = push_deadline(self._seconds, self._clock)
        try:
            budget = deadline.remaining()
            if budget <= 0:
                raise self._expired(0.0)
            task = asyncio.current_task()
            if task is None:  # pragma: no cover - acall outside a task is a misuse
                return await fn(*args, **kwargs)
            # A hand-rolled asyncio.timeout: the same uncancel() bookkeeping, minus its
            # state machine and rescheduling support, which costs ~3 us per call there.
            cancelling = task.cancelling()
            fuse = _Fuse(task, deadline)
            handle = task.get_loop().call_later(budget, fuse)
            try:
                result = await fn(*args, **kwargs)
            except asyncio.CancelledError:
                if fuse.fired and task.uncancel() <= cancelling:
                    raise self._expired(budget) from None
                raise
            finally:
                handle.cancel()
            if fuse.fired:
                # The call swallowed our cancellation and finished anyway: withdraw the
                # request so it does not hit the caller's next await.
                task.uncancel()
            return result
        finally:
            reset_deadline(token)

