"""Retry: try again, after a jittered backoff, within attempts, time, deadline and budget.

Two parts. :class:`RetryPlanner` is the one retry decision of fournines,
sans-I/O and free of any caller's types: given how many attempts were made
and how the last one failed, it answers "wait this long, then retry" or
"stop, for this reason" (a :class:`RetryDecision`). :class:`Retry` is the
policy built on it (``call``/``acall``, decorators, pipelines); the httpx
transports, transaction retry and a consumer's retry ladder use the same
planner, so every retry in a process obeys the same rules and the same
:func:`fournines.testing.set_testing`.

Retrying stops, and the last error is re-raised as it was (or the last result
returned, for result-based retries), when (the ``reason`` of the
``RetriesExhausted`` event):

- ``"attempts"``: ``attempts`` attempts were made;
- ``"retry_after"``: the failure's ``retry_after`` hint (a ``RateLimitedError``,
  a ``CircuitOpenError``, an HTTP ``Retry-After``) is longer than the longest
  wait allowed (``max_retry_after``, by default the backoff's cap) or than the
  time left (the retry's own ``timeout``, the current deadline): a hint beyond
  what the retry may wait means "do not retry this", never "wait the cap";
- ``"timeout"``: the next wait would end after the retry's own ``timeout``;
- ``"deadline"``: the next wait would end after the current deadline
  (retries never sleep in vain);
- ``"budget"``: the shared :class:`RetryBudget` has no retry left.

A hint shorter than the longest wait lengthens the wait to at least the hint.

A call through :class:`Retry` whose first attempt succeeds costs one function
call and one attribute test more than a bare call (two with a budget: the
deposit); the planner runs only after a failure.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar, get_args

from .._clock import Clock, system_clock, testing_state
from .._deadline import Deadline, current_deadline
from .._errors import (
    CommitOutcomeUnknownError,
    ConfigurationError,
    RejectedError,
    check_number,
)
from .._events import Listener, RetriesExhausted, RetryScheduled, dispatch, global_listeners
from ._classify import ExceptionFilter, exception_predicate
from ._shell import Decorates
from .backoff import Backoff
from .budget import RetryBudget

__all__ = ["Retry", "RetryDecision", "RetryPlanner", "StopReason"]

P = ParamSpec("P")
T = TypeVar("T")

StopReason = Literal["attempts", "timeout", "deadline", "budget", "retry_after"]
"""Why a planner stopped retrying (the ``reason`` of ``RetriesExhausted``)."""


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What :meth:`RetryPlanner.plan` decided.

    ``reason is None``: wait ``delay`` seconds, then make the next attempt.
    Otherwise stop, for ``reason`` (``delay`` is then 0).
    """

    delay: float = 0.0
    reason: StopReason | None = None

    @property
    def stop(self) -> bool:
        """Whether retrying stops here."""
        return self.reason is not None


# Stops carry no data but their reason: one shared instance per reason.
_STOPS: dict[str, RetryDecision] = {
    reason: RetryDecision(0.0, reason)
    for reason in get_args(StopReason)
}


def _check(owner: str, attempts: object, timeout: object, backoff: object,
           max_retry_after: object, budget: object) -> None:
    check_number(owner, "attempts", attempts, minimum=1, integer=True)
    check_number(owner, "timeout", timeout, minimum=0, exclusive_minimum=True, optional=True)
    check_number(owner, "max_retry_after", max_retry_after, minimum=0, optional=True)
    if backoff is not None and not isinstance(backoff, Backoff):
        raise ConfigurationError(f"{owner}.backoff must be a Backoff, got {backoff!r}")
    if budget is not None and not isinstance(budget, RetryBudget):
        raise ConfigurationError(f"{owner}.budget must be a RetryBudget, got {budget!r}")


class RetryPlanner:
    """The sans-I/O retry decision: wait N seconds and retry, or stop (and why).

    It holds the settings (attempts, backoff, the retry's own timeout, the
    longest ``retry_after`` hint honoured, a shared budget) and no per-call
    state: the caller counts attempts, keeps the last delay and the start time,
    and does the sleeping. One planner serves any number of concurrent calls.

    :param attempts: attempts in all, the first included.
    :param timeout: seconds from ``start`` after which no retry begins (``None``:
        none of its own; the deadline still applies).
    :param backoff: the wait before each retry.
    :param max_retry_after: the longest ``retry_after`` hint honoured; a longer
        one stops the retry (``None``: the backoff's cap).
    :param budget: a :class:`RetryBudget` to withdraw each retry from (the caller
        deposits once per logical request, e.g. with :meth:`begin`).
    :param name: the ``name`` of the events sent.
    :param policy: the ``policy`` of the events sent (``"retry"``; transaction
        retry sends ``"transaction"``, so its retries are told apart from others').
    :param clock: where ``now`` comes from (for ``timeout``).
    :param listeners: receive ``RetryScheduled`` / ``RetriesExhausted``.
    :param rng: random source of the jitter.

    In testing mode (:func:`fournines.testing.set_testing`) every wait it returns
    is 0 and ``set_testing(attempts=n)`` caps the attempts; a hint beyond
    ``max_retry_after`` still stops (the outcome of a call does not change).

    >>> planner = RetryPlanner(attempts=2, backoff=Backoff(initial=1, jitter="none"))
    >>> planner.plan(1)
    RetryDecision(delay=1.0, reason=None)
    >>> planner.plan(2).reason
    'attempts'
    """

    __slots__ = ("_attempts", "_backoff", "_budget", "_clock", "_listeners", "_max_retry_after",
                 "_max_retry_after_given", "_name", "_now", "_policy", "_rng", "_timeout")

    def __init__(
        self,
        *,
        attempts: int = 3,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        max_retry_after: float | None = None,
        budget: RetryBudget | None = None,
        name: str = "retry",
        policy: str = "retry",
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
        rng: random.Random | None = None,
    ) -> None:
        _check("RetryPlanner", attempts, timeout, backoff, max_retry_after, budget)
        self._attempts = attempts
        self._timeout = None if timeout is None else float(timeout)
        self._backoff = backoff or Backoff()
        self._max_retry_after = (self._backoff.cap if max_retry_after is None
                                 else float(max_retry_after))
        self._max_retry_after_given = max_retry_after is not None
        self._budget = budget
        self._name = name
        self._policy = policy
        self._clock = clock
        self._now = clock.monotonic
        self._listeners = tuple(listeners)
        self._rng = rng or random.Random()

    @property
    def attempts(self) -> int:
        """Attempts in all, the first included."""
        return self._attempts

    @property
    def timeout(self) -> float | None:
        """Seconds from the start after which no retry begins."""
        return self._timeout

    @property
    def backoff(self) -> Backoff:
        """The wait before each retry."""
        return self._backoff

    @property
    def max_retry_after(self) -> float:
        """The longest ``retry_after`` hint honoured; a longer one stops the retry."""
        return self._max_retry_after

    @property
    def budget(self) -> RetryBudget | None:
        """The retry budget each retry is withdrawn from, if any."""
        return self._budget

    @property
    def name(self) -> str:
        """The name of the events sent."""
        return self._name

    @property
    def clock(self) -> Clock:
        """The clock ``timeout`` is measured on."""
        return self._clock

    def __repr__(self) -> str:
        return (f"RetryPlanner(name={self._name!r}, attempts={self._attempts!r}, "
                f"timeout={self._timeout!r}, max_retry_after={self._max_retry_after!r})")

    def begin(self) -> float:
        """Start one logical request: deposit it in the budget; the ``start`` for :meth:`plan`."""
        if self._budget is not None:
            self._budget.deposit()
        return self._now()

    def plan(
        self,
        attempt: int,
        *,
        previous: float = 0.0,
        start: float = 0.0,
        error: BaseException | None = None,
        retry_after: float | None = None,
        deadline: Deadline | None = None,
    ) -> RetryDecision:
        """Decide after attempt number ``attempt`` (1-based) failed; the event is sent.

        :param previous: the delay returned by the last decision (0.0 before the first).
        :param start: the clock's monotonic time when the first attempt began (read
            only with ``timeout``).
        :param error: the failure, for the events; its ``retry_after`` attribute, if a
            number, is the hint when ``retry_after`` is not given.
        :param retry_after: the hint, in seconds (a parsed HTTP ``Retry-After``).
        :param deadline: the deadline to respect (``None``: the current one).

        A retry it allows is withdrawn from the budget: every decision to wait
        must be followed by the attempt.
        """
        testing = testing_state.enabled
        limit = self._attempts
        if testing and testing_state.attempts is not None:
            limit = min(limit, testing_state.attempts)
        decision = self._decide(attempt, limit, previous, start, error, retry_after, deadline,
                                testing)
        if self._listeners or global_listeners():
            reason = decision.reason
            if reason is not None:
                dispatch(self._listeners, RetriesExhausted(
                    policy=self._policy, name=self._name, attempts=attempt, reason=reason,
                    error=error,
                ))
            else:
                dispatch(self._listeners, RetryScheduled(
                    policy=self._policy, name=self._name, attempt=attempt, delay=decision.delay,
                    error=error,
                ))
        return decision

    def _decide(self, attempt: int, limit: int, previous: float, start: float,
                error: BaseException | None, hint: float | None, deadline: Deadline | None,
                testing: bool) -> RetryDecision:
        if attempt >= limit:
            return _STOPS["attempts"]
        delay = self._backoff.delay(attempt, previous, self._rng)
        if hint is None:
            hint = getattr(error, "retry_after", None)
        hinted = False
        if isinstance(hint, int | float) and not isinstance(hint, bool) and hint > delay:
            # A hint beyond the longest wait (a hostile Retry-After, an open breaker's
            # reset timeout) says "not soon": waiting the cap instead would stall the
            # caller for nothing. (NaN fails ``hint > delay`` and is ignored.)
            if hint > self._max_retry_after:
                return _STOPS["retry_after"]
            delay = float(hint)
            hinted = True
        if testing:
            delay = 0.0
        timeout = self._timeout
        if timeout is not None and self._now() + delay - start > timeout:
            return _STOPS["retry_after" if hinted else "timeout"]
        if deadline is None:
            deadline = current_deadline()
        if deadline is not None and deadline.remaining() <= delay:
            return _STOPS["retry_after" if hinted else "deadline"]
        if self._budget is not None and not self._budget.try_withdraw():
            return _STOPS["budget"]
        return RetryDecision(float(delay))


def _not_rejected(exc: BaseException) -> bool:
    # A COMMIT whose outcome is unknown is never retried by default either: a retry
    # around transaction retry would apply a payment twice that it carefully did not.
    return not isinstance(exc, RejectedError | CommitOutcomeUnknownError)


class Retry(Decorates):
    """Retry a call on chosen errors or results (decisions by a :class:`RetryPlanner`).

    :param attempts: attempts in all, the first included (3).
    :param timeout: seconds from the first attempt after which no retry starts
        (``None``: no limit of its own; the current deadline still applies).
    :param backoff: the wait before each retry (exponential, full jitter).
    :param on: which exceptions are retried: a type, a tuple, or a predicate.
        ``None`` (the default): every ``Exception`` except fournines' rejections
        (:class:`~fournines.RejectedError`: an open breaker, a full bulkhead, a
        rate limiter) and :class:`~fournines.data.CommitOutcomeUnknownError` (work
        that may have been applied already); name them (``on=RateLimitedError``) to
        retry them too.
    :param on_result: a predicate over the result; true means "retry".
    :param budget: a :class:`RetryBudget`, possibly shared with other retries.
    :param max_retry_after: the longest ``retry_after`` hint waited for; a longer
        hint ends the retry at once (``None``: the backoff's cap).
    :param rng: random source of the jitter (seed it for reproducible tests).

    Why ``on`` is optional, and why its default leaves rejections out: retrying
    everything is the trap of tenacity's default (a ``TypeError`` retried three
    times, an open breaker waited out for a minute); stamina answers it by
    requiring ``on``. Here the dangerous part was the rejections: a policy that
    refused the call already said "not now", and a retry that waits it out
    turns an open breaker's fast failure into a stall of every caller. Leaving
    them out keeps ``Pipeline(Retry(), CircuitBreaker(...))`` fast to fail, while
    ``Retry()`` still retries the errors of the call itself (a reset connection,
    a timeout), which is what a pipeline around a network call needs. Narrow
    ``on`` to your transient errors where you can.

    Settings are read-only after construction, except through :meth:`reconfigure`.
    """

    __slots__ = ("_budget", "_clock", "_now", "_on", "_on_result", "_plan", "_planner",
                 "_timed")

    def __init__(
        self,
        *,
        attempts: int = 3,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        on: ExceptionFilter | None = None,
        on_result: Callable[[Any], bool] | None = None,
        budget: RetryBudget | None = None,
        max_retry_after: float | None = None,
        name: str = "retry",
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
        rng: random.Random | None = None,
    ) -> None:
        _check("Retry", attempts, timeout, backoff, max_retry_after, budget)
        if on_result is not None and not callable(on_result):
            raise ConfigurationError(f"Retry.on_result must be callable, got {on_result!r}")
        self._on = _not_rejected if on is None else exception_predicate("Retry", "on", on)
        self._on_result = on_result
        self._planner = RetryPlanner(
            attempts=attempts, timeout=timeout, backoff=backoff,
            max_retry_after=max_retry_after, budget=budget, name=name, clock=clock,
            listeners=listeners, rng=rng,
        )
        self._plan = self._planner.plan
        self._budget = budget
        self._timed = timeout is not None
        self._clock = clock
        self._now = clock.monotonic

    @property
    def planner(self) -> RetryPlanner:
        """The planner that decides this retry's waits and stops."""
        return self._planner

    @property
    def attempts(self) -> int:
        """Attempts in all, the first included."""
        return self._planner.attempts

    @property
    def timeout(self) -> float | None:
        """Seconds from the first attempt after which no retry starts."""
        return self._planner.timeout

    @property
    def backoff(self) -> Backoff:
        """The wait before each retry."""
        return self._planner.backoff

    @property
    def max_retry_after(self) -> float:
        """The longest ``retry_after`` hint waited for."""
        return self._planner.max_retry_after

    @property
    def budget(self) -> RetryBudget | None:
        """The retry budget this retry draws from, if any."""
        return self._budget

    @property
    def name(self) -> str:
        """The name of this retry's events."""
        return self._planner.name

    @property
    def clock(self) -> Clock:
        """The clock slept on between attempts."""
        return self._clock

    def __repr__(self) -> str:
        return f"Retry(name={self.name!r}, attempts={self.attempts!r}, timeout={self.timeout!r})"

    def reconfigure(
        self,
        *,
        attempts: int | None = None,
        backoff: Backoff | None = None,
        max_retry_after: float | None = None,
        check_only: bool = False,
    ) -> None:
        """Change ``attempts``, ``backoff`` and/or ``max_retry_after`` at run time (``None``: keep).

        Everything is checked first, then a new planner replaces the old one in a
        single assignment: a retry loop reads the planner once when its first
        attempt fails, so each call runs wholly under the old settings or wholly
        under the new ones. ``max_retry_after`` left as ``None`` keeps the current
        one (the backoff's cap if it was never set, and the new backoff's cap then).
        ``timeout`` and ``budget`` are fixed at construction (the shells decide from
        them before the planner is read). With ``check_only`` the settings are
        only checked.
        """
        old = self._planner
        new_attempts = old.attempts if attempts is None else attempts
        new_backoff = old.backoff if backoff is None else backoff
        if max_retry_after is not None:
            new_max: float | None = max_retry_after
        elif old._max_retry_after_given:
            new_max = old.max_retry_after
        else:
            new_max = None
        _check("Retry", new_attempts, old.timeout, new_backoff, new_max, old.budget)
        if check_only:
            return
        planner = RetryPlanner(
            attempts=new_attempts, timeout=old.timeout, backoff=new_backoff,
            max_retry_after=new_max, budget=old.budget, name=old.name, clock=old.clock,
            listeners=old._listeners, rng=old._rng,
        )
        self._planner, self._plan = planner, planner.plan

    # -- shells ----------------------------------------------------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)``, retrying as configured."""
        if self._budget is not None:
            self._budget.deposit()
        start = self._now() if self._timed else 0.0
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
        plan, sleep, on, on_result = self._plan, self._clock.sleep, self._on, self._on_result
        attempt = 1
        delay = 0.0
        while True:
            decision = plan(attempt, previous=delay, start=start, error=exc)
            if decision.reason is not None:
                if exc is not None:
                    raise exc
                return result  # type: ignore[return-value]
            delay = decision.delay
            if delay > 0:
                sleep(delay)
            attempt += 1
            try:
                result = fn(*args, **kwargs)
            except Exception as error:
                if not on(error):
                    raise
                exc = error
                continue
            if on_result is not None and on_result(result):
                exc = None
                continue
            return result

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(*args, **kwargs)``, retrying as configured."""
        if self._budget is not None:
            self._budget.deposit()
        start = self._now() if self._timed else 0.0
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
        plan, asleep, on, on_result = self._plan, self._clock.asleep, self._on, self._on_result
        attempt = 1
        delay = 0.0
        while True:
            decision = plan(attempt, previous=delay, start=start, error=exc)
            if decision.reason is not None:
                if exc is not None:
                    raise exc
                return result  # type: ignore[return-value]
            delay = decision.delay
            await asleep(delay)
            attempt += 1
            try:
                result = await fn(*args, **kwargs)
            except Exception as error:
                if not on(error):
                    raise
                exc = error
                continue
            if on_result is not None and on_result(result):
                exc = None
                continue
            return result

    # The first attempt is inlined in these closures, as in call/acall: the happy path
    # of a decorated function or a pipeline must not pay for a second frame
    # (bench/retry_success.py, bench/pipeline.py).

    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]:
        """A closure that calls ``fn``, retrying as configured."""
        budget, now, on, on_result = self._budget, self._now, self._on, self._on_result
        timed = self._timed
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
        timed = self._timed
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
