"""Retry: try again, after a jittered backoff, within attempts, time, deadline and budget.

The decision of whether and when to retry is sans-I/O (:meth:`Retry._plan`);
``call`` and ``acall`` only run attempts and sleep on the clock. A call whose
first attempt succeeds costs one function call and one attribute test more
than a bare call (two with a budget: the deposit).

Retrying stops, and the last error is re-raised as it was (or the last result
returned, for result-based retries), when:

- ``attempts`` attempts were made;
- the next wait would end after the retry's own ``timeout``;
- the next wait would end after the current deadline (retries never sleep in vain);
- the shared :class:`RetryBudget` has no retry left.

A rejection's ``retry_after`` hint (``RateLimitedError``, ``CircuitOpenError``)
lengthens the wait to at least that, capped by ``max_retry_after``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

from .._clock import Clock, system_clock, testing_state
from .._deadline import current_deadline
from .._errors import ConfigurationError, check_number
from .._events import Listener, RetriesExhausted, RetryScheduled, dispatch, global_listeners
from ._classify import ExceptionFilter, exception_predicate
from ._shell import Decorates
from .backoff import Backoff
from .budget import RetryBudget

__all__ = ["Retry"]

P = ParamSpec("P")
T = TypeVar("T")


class Retry(Decorates):
    """Retry a call on chosen errors or results.

    :param attempts: attempts in all, the first included (3).
    :param timeout: seconds from the first attempt after which no retry starts
        (``None``: no limit of its own; the current deadline still applies).
    :param backoff: the wait before each retry (exponential, full jitter).
    :param on: which exceptions are retried: a type, a tuple, or a predicate.
    :param on_result: a predicate over the result; true means "retry".
    :param budget: a :class:`RetryBudget`, possibly shared with other retries.
    :param max_retry_after: the cap on a rejection's ``retry_after`` hint.
    :param rng: random source of the jitter (seed it for reproducible tests).
    """

    __slots__ = (
        "_budget",
        "_listeners",
        "_now",
        "_on",
        "_on_result",
        "_rng",
        "attempts",
        "backoff",
        "clock",
        "max_retry_after",
        "name",
        "timeout",
    )

    def __init__(
        self,
        *,
        attempts: int = 3,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        on: ExceptionFilter = Exception,
        on_result: Callable[[Any], bool] | None = None,
        budget: RetryBudget | None = None,
        max_retry_after: float = 60.0,
        name: str = "retry",
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
        rng: random.Random | None = None,
    ) -> None:
        check_number("Retry", "attempts", attempts, minimum=1, integer=True)
        check_number("Retry", "timeout", timeout, minimum=0, exclusive_minimum=True,
                     optional=True)
        check_number("Retry", "max_retry_after", max_retry_after, minimum=0)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ConfigurationError(f"Retry.backoff must be a Backoff, got {backoff!r}")
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError(f"Retry.budget must be a RetryBudget, got {budget!r}")
        if on_result is not None and not callable(on_result):
            raise ConfigurationError(f"Retry.on_result must be callable, got {on_result!r}")
        self.attempts = attempts
        self.timeout = timeout
        self.backoff = backoff or Backoff()
        self._on = exception_predicate("Retry", "on", on)
        self._on_result = on_result
        self._budget = budget
        self.max_retry_after = float(max_retry_after)
        self.name = name
        self.clock = clock
        self._now = clock.monotonic
        self._listeners = tuple(listeners)
        self._rng = rng or random.Random()

    @property
    def budget(self) -> RetryBudget | None:
        """The retry budget this retry draws from, if any."""
        return self._budget

    def __repr__(self) -> str:
        return f"Retry(name={self.name!r}, attempts={self.attempts!r}, timeout={self.timeout!r})"

    # -- the decision ----------------------------------------------------------------

    def _plan(
        self, attempt: int, previous: float, start: float, exc: BaseException | None
    ) -> float | None:
        """The wait before attempt ``attempt + 1``, or ``None`` to stop (event sent)."""
        testing = testing_state.enabled
        limit = self.attempts
        if testing and testing_state.attempts is not None:
            limit = min(limit, testing_state.attempts)
        reason = ""
        delay = 0.0
        if attempt >= limit:
            reason = "attempts"
        else:
            delay = self.backoff.delay(attempt, previous, self._rng)
            hint = getattr(exc, "retry_after", None)
            if isinstance(hint, int | float) and hint > delay:
                delay = min(float(hint), self.max_retry_after)
            if testing:
                delay = 0.0
            if self.timeout is not None and self._now() + delay - start > self.timeout:
                reason = "timeout"
            else:
                deadline = current_deadline()
                if deadline is not None and deadline.remaining() <= delay:
                    reason = "deadline"
                elif self._budget is not None and not self._budget.try_withdraw():
                    reason = "budget"
        notify = bool(self._listeners) or bool(global_listeners())
        if reason:
            if notify:
                dispatch(self._listeners, RetriesExhausted(
                    policy="retry", name=self.name, attempts=attempt, reason=reason, error=exc,
                ))
            return None
        if notify:
            dispatch(self._listeners, RetryScheduled(
                policy="retry", name=self.name, attempt=attempt, delay=delay, error=exc,
            ))
        return delay

    # -- shells ----------------------------------------------------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)``, retrying as configured."""
        if self._budget is not None:
            self._budget.deposit()
        start = self._now() if self.timeout is not None else 0.0
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if not self._on(exc):
                raise
            return self._again(fn, args, kwargs, start, exc, None)
        if self._on_result is not None and self._on_result(result):
            return self._again(fn, args, kwargs, start, None, result)
        return result

    def _again(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        start: float,
        exc: Exception | None,
        result: T | None,
    ) -> T:
        attempt = 1
        delay = 0.0
        while True:
            planned = self._plan(attempt, delay, start, exc)
            if planned is None:
                if exc is not None:
                    raise exc
                return result  # type: ignore[return-value]
            delay = planned
            if delay > 0:
                self.clock.sleep(delay)
            attempt += 1
            try:
                result = fn(*args, **kwargs)
            except Exception as error:
                if not self._on(error):
                    raise
                exc = error
                continue
            if self._on_result is not None and self._on_result(result):
                exc = None
                continue
            return result

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(*args, **kwargs)``, retrying as configured."""
        if self._budget is not None:
            self._budget.deposit()
        start = self._now() if self.timeout is not None else 0.0
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            if not self._on(exc):
                raise
            return await self._aagain(fn, args, kwargs, start, exc, None)
        if self._on_result is not None and self._on_result(result):
            return await self._aagain(fn, args, kwargs, start, None, result)
        return result

    async def _aagain(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        start: float,
        exc: Exception | None,
        result: T | None,
    ) -> T:
        attempt = 1
        delay = 0.0
        while True:
            planned = self._plan(attempt, delay, start, exc)
            if planned is None:
                if exc is not None:
                    raise exc
                return result  # type: ignore[return-value]
            delay = planned
            await self.clock.asleep(delay)
            attempt += 1
            try:
                result = await fn(*args, **kwargs)
            except Exception as error:
                if not self._on(error):
                    raise
                exc = error
                continue
            if self._on_result is not None and self._on_result(result):
                exc = None
                continue
            return result

    # The first attempt is inlined in these closures, as in call/acall: the happy path
    # of a decorated function or a pipeline must not pay for a second frame
    # (bench/retry_success.py, bench/pipeline.py).

    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]:
        """A closure that calls ``fn``, retrying as configured."""
        budget, now, on, on_result = self._budget, self._now, self._on, self._on_result
        timed = self.timeout is not None
        again = self._again

        def retrying(*args: Any, **kwargs: Any) -> Any:
            if budget is not None:
                budget.deposit()
            start = now() if timed else 0.0
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not on(exc):
                    raise
                return again(fn, args, kwargs, start, exc, None)
            if on_result is not None and on_result(result):
                return again(fn, args, kwargs, start, None, result)
            return result

        return retrying

    def awrap(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """A coroutine function that awaits ``fn``, retrying as configured."""
        budget, now, on, on_result = self._budget, self._now, self._on, self._on_result
        timed = self.timeout is not None
        aagain = self._aagain

        async def retrying(*args: Any, **kwargs: Any) -> Any:
            if budget is not None:
                budget.deposit()
            start = now() if timed else 0.0
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                if not on(exc):
                    raise
                return await aagain(fn, args, kwargs, start, exc, None)
            if on_result is not None and on_result(result):
                return await aagain(fn, args, kwargs, start, None, result)
            return result

        return retrying
