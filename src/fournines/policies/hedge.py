"""Hedge: when an idempotent call is late, start one more; the first good outcome wins.

``await Hedge(delay=0.05).acall(fetch, key)`` starts ``fetch(key)``; if it has not
finished after ``delay`` seconds, a second ``fetch(key)`` starts concurrently
(one hedge at most, as in "The Tail at Scale", Dean and Barroso, 2013). The
first attempt to end well (no error matched by ``on``, no result matched by
``on_result``) wins; the other is cancelled. When both end badly, the first
attempt's outcome is the call's. Only hedge calls that are safe to run twice.

Hedges are bounded like retries: every call deposits in a
:class:`~fournines.RetryBudget` and every hedge withdraws one retry from it
(no hedge when it refuses); no hedge starts when the current deadline would
pass before the hedge delay. Each hedge sends
``RetryScheduled(policy="hedge", delay=<the delay>)``.

``call`` (sync) runs the function once, unhedged: a thread cannot be cancelled,
so a losing sync attempt would run on to the end, holding its connection and
doubling the load the hedge was meant to bound. It exists so that a
:class:`~fournines.Pipeline` holding a ``Hedge`` serves sync calls too.

:func:`race` is the core, for callers that admit the second attempt themselves
(the httpx transport takes a breaker permit and a bulkhead slot for it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from .._clock import Clock, system_clock
from .._deadline import current_deadline
from .._errors import ConfigurationError, check_number
from .._events import Listener, RetryScheduled, dispatch, global_listeners
from ._classify import ExceptionFilter, exception_predicate
from ._shell import Decorates
from .budget import RetryBudget

__all__ = ["Hedge", "race"]

P = ParamSpec("P")
T = TypeVar("T")


async def _wait_for(task: asyncio.Future[Any], delay: float, clock: Clock) -> bool:
    """Wait up to ``delay`` (on ``clock``) for ``task``; whether it is done."""
    if clock is system_clock:
        # Real time, even in testing mode: skipping the wait would hedge every call.
        done, _ = await asyncio.wait((task,), timeout=delay)
        return bool(done)
    sleeper = asyncio.ensure_future(clock.asleep(delay))
    try:
        await asyncio.wait((task, sleeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
    return task.done()


async def _discard(task: asyncio.Future[Any], index: int) -> None:
    """The default fate of a losing attempt: cancelled, its outcome ignored."""
    if not task.done():
        await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()  # retrieved: asyncio must not log it as never awaited


async def race(
    first: Callable[[], Awaitable[T]],
    *,
    delay: float,
    launch: Callable[[], Callable[[], Awaitable[T]] | None],
    decisive: Callable[[asyncio.Future[T]], bool],
    clock: Clock = system_clock,
    settle: Callable[[asyncio.Future[T], int], Awaitable[None]] = _discard,
) -> tuple[int, asyncio.Future[T]]:
    """Run ``first()``, hedged once after ``delay``; ``(index, future)`` of the winner.

    ``launch()`` is asked for the hedge when ``first`` is late: it returns the
    function to run, or ``None`` when no hedge may go. ``decisive(future)`` says
    whether a finished attempt's outcome ends the race (``False``: wait for the
    other). The winner's future is done (read it with ``result()``); index 0 is
    the first attempt, 1 the hedge. Every other attempt is cancelled, then
    ``settle(future, index)`` is awaited for it (default: wait for it to end).
    Cancelled itself, the race cancels and settles every attempt.
    """
    tasks: list[asyncio.Future[T]] = [asyncio.ensure_future(first())]
    winner: asyncio.Future[T] | None = None
    try:
        if not await _wait_for(tasks[0], delay, clock):
            hedge = launch()
            if hedge is not None:
                tasks.append(asyncio.ensure_future(hedge()))
        if len(tasks) == 1:
            await asyncio.wait(tasks)
            winner = tasks[0]
        else:
            pending = set(tasks)
            while pending and winner is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                # The first attempt first on a tie.
                winner = next((t for t in tasks if t in done and decisive(t)), None)
            if winner is None:
                winner = tasks[0]  # both ended badly: the first attempt's outcome
    finally:
        losers = [(i, t) for i, t in enumerate(tasks) if t is not winner]
        # Cancel every loser before awaiting any: a second cancellation of this task
        # while one is settled must not leave the other running, unsettled.
        for _, task in losers:
            task.cancel()
        interrupted: BaseException | None = None
        for index, task in losers:
            try:
                await settle(task, index)
            except BaseException as exc:
                task.cancel()
                interrupted = exc
        if interrupted is not None:
            raise interrupted
    return tasks.index(winner), winner


class Hedge(Decorates):
    """Hedge a late idempotent async call with one concurrent twin; see the module docstring.

    :param delay: seconds to wait for the first attempt before starting the hedge.
    :param on: errors that do not end the race (the other attempt may still win):
        a type, a tuple, or a predicate (default: every ``Exception``).
    :param on_result: a predicate over a result; true means "not good, wait for the other".
    :param budget: the :class:`~fournines.RetryBudget` hedges draw from
        (default: one of this hedge's own, 20 % of calls plus 10 a second).
    :param name: names the hedge in events.
    :param clock: where the hedge delay is measured.
    :param listeners: receive ``RetryScheduled(policy="hedge")`` for each hedge.
    """

    __slots__ = ("_budget", "_clock", "_delay", "_listeners", "_name", "_on", "_on_result")

    def __init__(
        self,
        *,
        delay: float,
        on: ExceptionFilter = Exception,
        on_result: Callable[[Any], bool] | None = None,
        budget: RetryBudget | None = None,
        name: str = "hedge",
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
    ) -> None:
        check_number("Hedge", "delay", delay, minimum=0)
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError(f"Hedge.budget must be a RetryBudget, got {budget!r}")
        if on_result is not None and not callable(on_result):
            raise ConfigurationError(f"Hedge.on_result must be callable, got {on_result!r}")
        self._delay = float(delay)
        self._on = exception_predicate("Hedge", "on", on)
        self._on_result = on_result
        self._budget = budget if budget is not None else RetryBudget(
            name=name, clock=clock, listeners=listeners)
        self._name = name
        self._clock = clock
        self._listeners = tuple(listeners)

    @property
    def delay(self) -> float:
        """Seconds the first attempt has before the hedge starts."""
        return self._delay

    @property
    def budget(self) -> RetryBudget:
        """The retry budget hedges draw from."""
        return self._budget

    @property
    def name(self) -> str:
        """The name of this hedge in events."""
        return self._name

    def __repr__(self) -> str:
        return f"Hedge(name={self._name!r}, delay={self._delay!r})"

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` once, unhedged (a thread cannot be cancelled)."""
        return fn(*args, **kwargs)

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(*args, **kwargs)``, hedged once if it is late."""
        budget = self._budget
        budget.deposit()
        delay = self._delay

        def attempt() -> Awaitable[T]:
            return fn(*args, **kwargs)

        def launch() -> Callable[[], Awaitable[T]] | None:
            deadline = current_deadline()
            if deadline is not None and deadline.remaining() <= 0:
                return None
            if not budget.try_withdraw():
                return None
            if self._listeners or global_listeners():
                dispatch(self._listeners, RetryScheduled(
                    policy="hedge", name=self._name, attempt=1, delay=delay, error=None))
            return attempt

        deadline = current_deadline()
        if deadline is not None and deadline.remaining() <= delay:
            return await fn(*args, **kwargs)  # the hedge could never start in time
        winner: asyncio.Future[T]
        _, winner = await race(attempt, delay=delay, launch=launch, decisive=self._decisive,
                               clock=self._clock)
        return winner.result()

    def _decisive(self, task: asyncio.Future[Any]) -> bool:
        if task.cancelled():
            return False
        error = task.exception()
        if error is not None:
            return not (isinstance(error, Exception) and self._on(error))
        return self._on_result is None or not self._on_result(task.result())
