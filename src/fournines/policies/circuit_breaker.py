"""The circuit breaker: stop calling what is failing, probe it, recover.

States and transitions::

    CLOSED --(trip strategy says so)--> OPEN --(its wait passed)--> HALF_OPEN
    HALF_OPEN --(half_open_probes successes)--> CLOSED
    HALF_OPEN --(any failure)--> OPEN, waiting twice as long (up to reset_timeout)
    force_open() -> FORCED_OPEN, force_closed() -> FORCED_CLOSED, reset() -> CLOSED

Three trip strategies decide when a closed breaker opens:

- :class:`ConsecutiveFailures` (default): ``threshold`` failures in a row (5).
- :class:`FailureRate`: the failure rate, or the slow-call rate, over a sliding
  window of the last N calls or the last N seconds, once ``minimum_calls`` are
  in the window (resilience4j's semantics).
- :class:`AdaptiveThrottling`: Google SRE client-side throttling; the breaker
  never "opens" but drops calls with probability
  ``max(0, (requests - k * accepts) / (requests + 1))`` over a rolling window,
  letting one call through when none has passed for ``force_probe_after``
  (the algorithm of go-zero's and Kratos's SRE breakers).

How long an open breaker waits: ``reset_timeout`` every time by default (gobreaker's
fixed timeout). With ``initial_reset_timeout``, an opening from CLOSED waits that
long, each failed probe doubles the wait, up to ``reset_timeout``, and closing starts
over (resilience4j's exponential ``waitIntervalFunctionInOpenState``). A breaker that
tripped on a blip then serves again within about a second, while a dependency that
stays down is still probed no more often than every ``reset_timeout``.

Every transition starts a new *generation*; an outcome reported for a call
admitted in an earlier generation is ignored (gobreaker's rule), so a slow
call that started while closed cannot re-open a breaker that has since
recovered, nor count as a half-open probe.

A call cancelled by its fournines deadline (an enclosing ``Timeout`` ran out)
counts as failing with ``DeadlineExceededError``, so a hung dependency opens the
breaker in any order of a ``Pipeline``; a cancellation from elsewhere (a caller
that went away) is no outcome at all.

The closed, consecutive-failures path is the hot path of every protected call:
it takes no lock, reads the clock never, and touches two attributes.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, ParamSpec, TypeVar

from .._clock import Clock, system_clock
from .._deadline import cancelled_by_deadline
from .._errors import (
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceededError,
    RejectedError,
    check_number,
    new_rejection,
)
from .._events import (
    CallRejected,
    Event,
    Listener,
    StateChanged,
    dispatch,
    global_listeners,
)
from .._events import _global as _GLOBAL_LISTENERS
from ._classify import ExceptionFilter, exception_predicate
from ._shell import Decorates
from ._window import Rolling as _Rolling

__all__ = [
    "AdaptiveThrottling",
    "BreakerPermit",
    "CircuitBreaker",
    "ConsecutiveFailures",
    "FailureRate",
    "State",
]

P = ParamSpec("P")
T = TypeVar("T")


class State(StrEnum):
    """The states of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"


_CLOSED = State.CLOSED
_OPEN = State.OPEN
_HALF_OPEN = State.HALF_OPEN
_FORCED_OPEN = State.FORCED_OPEN
_FORCED_CLOSED = State.FORCED_CLOSED


def _not_rejected(exc: BaseException) -> bool:
    return not isinstance(exc, RejectedError)


def _timed_out(name: str) -> DeadlineExceededError:
    """What a call that its fournines deadline cancelled failed with, for ``failure_on``."""
    return DeadlineExceededError(f"{name}: the call was cancelled by its deadline")


# --- trip strategies (frozen configuration) -------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsecutiveFailures:
    """Open after ``threshold`` failures in a row (any success resets the count)."""

    threshold: int = 5

    def __post_init__(self) -> None:
        check_number("ConsecutiveFailures", "threshold", self.threshold, minimum=1, integer=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureRate:
    """Open when the failure rate or slow-call rate over a sliding window is too high.

    ``window`` is a number of calls (``window_type="count"``) or of seconds
    (``window_type="time"``, kept in one-second buckets). Nothing trips before
    ``minimum_calls`` outcomes are in the window. A call slower than
    ``slow_call_duration`` seconds is slow; ``slow_call_rate`` of slow calls trips
    the breaker even when they succeed. Rates are fractions in (0, 1].

    A count window never holds more than ``window`` calls, so ``minimum_calls``
    may not exceed it; ``slow_call_rate`` needs ``slow_call_duration``.
    """

    threshold: float = 0.5
    window: int = 100
    window_type: Literal["count", "time"] = "count"
    minimum_calls: int = 20
    slow_call_duration: float | None = None
    slow_call_rate: float = 1.0

    def __post_init__(self) -> None:
        check_number("FailureRate", "threshold", self.threshold, minimum=0,
                     exclusive_minimum=True, maximum=1)
        check_number("FailureRate", "window", self.window, minimum=1, integer=True)
        if self.window_type not in ("count", "time"):
            raise ConfigurationError(
                f"FailureRate.window_type must be 'count' or 'time', got {self.window_type!r}"
            )
        check_number("FailureRate", "minimum_calls", self.minimum_calls, minimum=1, integer=True)
        check_number("FailureRate", "slow_call_duration", self.slow_call_duration, minimum=0,
                     exclusive_minimum=True, optional=True)
        check_number("FailureRate", "slow_call_rate", self.slow_call_rate, minimum=0,
                     exclusive_minimum=True, maximum=1)
        # Settings that pass alone but can never act together.
        if self.window_type == "count" and self.minimum_calls > self.window:
            raise ConfigurationError(
                f"FailureRate.minimum_calls must be <= window ({self.window}) for a count "
                f"window, which never holds more calls: with {self.minimum_calls} it could "
                "never trip"
            )
        if self.slow_call_duration is None and self.slow_call_rate != 1.0:
            raise ConfigurationError(
                f"FailureRate.slow_call_rate ({self.slow_call_rate!r}) has no effect without "
                "slow_call_duration: set slow_call_duration, the seconds that make a call slow"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveThrottling:
    """Google SRE client-side adaptive throttling (SRE book, "Handling Overload").

    Over a rolling ``window`` of seconds (``buckets`` buckets), ``requests`` counts
    every call attempted (dropped ones too) and ``accepts`` the successful ones; a
    call is dropped with probability ``max(0, (requests - k*accepts)/(requests+1))``.
    Below ``min_requests`` nothing is dropped; when no call has passed for
    ``force_probe_after`` seconds one is let through as a probe. Defaults follow
    go-zero (k=1.5, 10 s in 40 buckets, 1 s forced pass).
    """

    k: float = 1.5
    window: float = 10.0
    buckets: int = 40
    min_requests: int = 5
    force_probe_after: float = 1.0

    def __post_init__(self) -> None:
        check_number("AdaptiveThrottling", "k", self.k, minimum=1)
        check_number("AdaptiveThrottling", "window", self.window, minimum=0,
                     exclusive_minimum=True)
        check_number("AdaptiveThrottling", "buckets", self.buckets, minimum=1, integer=True)
        check_number("AdaptiveThrottling", "min_requests", self.min_requests, minimum=0,
                     integer=True)
        check_number("AdaptiveThrottling", "force_probe_after", self.force_probe_after,
                     minimum=0, exclusive_minimum=True)


TripStrategy = ConsecutiveFailures | FailureRate | AdaptiveThrottling


# --- windows ---------------------------------------------------------------------------


class _RateTracker:
    """Failure and slow-call rates over a count or time window."""

    __slots__ = ("_cfg", "_pos", "_ring", "_rolling", "_size", "calls", "failures", "slow")

    def __init__(self, cfg: FailureRate) -> None:
        self._cfg = cfg
        self._ring: list[int] = []
        self._pos = 0
        self._size = cfg.window
        self._rolling = _Rolling(1.0, cfg.window, 3) if cfg.window_type == "time" else None
        self.calls = self.failures = self.slow = 0

    def record(self, now: float, failed: bool, slow: bool) -> bool:
        """Record an outcome; return whether the breaker should trip."""
        cfg = self._cfg
        if self._rolling is not None:
            self._rolling.add(now, 1, int(failed), int(slow))
            calls, failures, slow_calls = self._rolling.totals
        else:
            code = int(failed) | (int(slow) << 1)
            ring = self._ring
            if len(ring) < self._size:
                ring.append(code)
            else:
                old = ring[self._pos]
                self.calls -= 1
                self.failures -= old & 1
                self.slow -= old >> 1
                ring[self._pos] = code
                self._pos = (self._pos + 1) % self._size
            self.calls += 1
            self.failures += int(failed)
            self.slow += int(slow)
            calls, failures, slow_calls = self.calls, self.failures, self.slow
        if calls < cfg.minimum_calls:
            return False
        return (
            failures >= cfg.threshold * calls
            or (cfg.slow_call_duration is not None and slow_calls >= cfg.slow_call_rate * calls)
        )

    def clear(self) -> None:
        self._ring.clear()
        self._pos = 0
        self.calls = self.failures = self.slow = 0
        if self._rolling is not None:
            self._rolling.clear()


class _Throttle:
    """Request/accept counters and the drop decision of adaptive throttling."""

    __slots__ = ("_cfg", "_rng", "_rolling", "last_pass")

    def __init__(self, cfg: AdaptiveThrottling, rng: random.Random) -> None:
        self._cfg = cfg
        self._rng = rng
        self._rolling = _Rolling(cfg.window / cfg.buckets, cfg.buckets, 2)
        self.last_pass = -1.0

    def drop_probability(self, now: float) -> float:
        self._rolling.advance(now)
        requests, accepts = self._rolling.totals
        if requests < self._cfg.min_requests:
            return 0.0
        return max(0.0, (requests - self._cfg.k * accepts) / (requests + 1))

    def admit(self, now: float) -> bool:
        p = self.drop_probability(now)
        if p > 0.0:
            forced = self.last_pass >= 0 and now - self.last_pass >= self._cfg.force_probe_after
            if not forced and self._rng.random() < p:
                self._rolling.add(now, 1, 0)
                return False
        self.last_pass = now
        return True

    def record(self, now: float, accepted: bool) -> None:
        self._rolling.add(now, 1, int(accepted))

    def clear(self) -> None:
        self._rolling.clear()
        self.last_pass = -1.0


# --- the breaker -----------------------------------------------------------------------


class BreakerPermit:
    """Permission for one call; report its outcome exactly once.

    Call :meth:`success` or :meth:`failure` when the call ends, or
    :meth:`release` when it ended in a way that says nothing about the
    dependency, or :meth:`cancelled` when it was cancelled (which tells the two
    kinds of cancellation apart). Reports after the first are ignored.
    """

    __slots__ = ("_breaker", "_done", "_gen", "_probe", "_start")

    def __init__(self, breaker: CircuitBreaker, gen: int, start: float, probe: bool) -> None:
        self._breaker = breaker
        self._gen = gen
        self._start = start
        self._probe = probe
        self._done = False

    @property
    def probe(self) -> bool:
        """Whether this permit is a half-open probe (its outcome decides the state)."""
        return self._probe

    def success(self) -> None:
        """The call succeeded."""
        if not self._done:
            self._done = True
            breaker = self._breaker
            # A success while closed with no failure counted changes nothing: skip the lock.
            if breaker._closed_gen == self._gen and not breaker._failures and not self._probe:
                return
            breaker._record(self._gen, False, self._start, self._probe)

    def failure(self, exc: BaseException | None = None) -> None:
        """The call failed with ``exc``; exceptions the breaker does not count are successes."""
        if not self._done:
            self._done = True
            failed = exc is None or self._breaker._is_failure(exc)
            self._breaker._record(self._gen, failed, self._start, self._probe)

    def cancelled(self) -> None:
        """The call was cancelled: report it as the cancellation's origin says.

        Cancelled by a fournines deadline (a ``Timeout`` ran out), it failed with
        a ``DeadlineExceededError``: a hung dependency must open the breaker.
        Cancelled from elsewhere (a caller that went away), it says nothing
        about the dependency: :meth:`release`.
        """
        if cancelled_by_deadline():
            self.failure(_timed_out(self._breaker._name))
        else:
            self.release()

    def release(self) -> None:
        """Give the permit back without an outcome (frees a half-open probe slot)."""
        if not self._done:
            self._done = True
            self._breaker._release(self._gen, self._probe)


class CircuitBreaker(Decorates):
    """A circuit breaker; see the module docstring for states and strategies.

    Use it as ``breaker.call(fn, *args)``, ``await breaker.acall(fn, *args)``,
    as a decorator on sync or async functions, or in two steps with
    :meth:`try_acquire` and the permit it returns.

    :param name: shown in errors, events and metrics.
    :param trip: when a closed breaker opens (default: 5 consecutive failures).
    :param reset_timeout: seconds an open breaker waits before probing (60); with
        ``initial_reset_timeout``, the longest it waits.
    :param initial_reset_timeout: the wait after an opening from CLOSED, doubled by
        each failed probe up to ``reset_timeout`` (``None``: always ``reset_timeout``;
        a larger value is capped at ``reset_timeout``).
    :param half_open_probes: calls admitted at once while half-open, and the
        successes needed to close (3).
    :param failure_on: which exceptions count as failures: a type, a tuple of
        types or a predicate (default: every ``Exception`` except fournines'
        own rejections, which say nothing about the dependency's health: a
        rate limiter or bulkhead inside the breaker must not open it). Other
        exceptions count as successes: the dependency answered.
    :param clock: where time comes from.
    :param listeners: receive :class:`StateChanged` and :class:`CallRejected`.
    :param rng: the random source of adaptive throttling (seed it for tests).
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_closed_gen",
        "_failures",
        "_gen",
        "_half_open_probes",
        "_half_open_successes",
        "_initial_setting",
        "_initial_wait",
        "_is_failure",
        "_listeners",
        "_lock",
        "_name",
        "_now",
        "_open_until",
        "_probes",
        "_rate",
        "_reset_timeout",
        "_state",
        "_threshold",
        "_throttle",
        "_trip",
        "_wait",
    )

    def __init__(
        self,
        name: str = "default",
        *,
        trip: TripStrategy | None = None,
        reset_timeout: float = 60.0,
        initial_reset_timeout: float | None = None,
        half_open_probes: int = 3,
        failure_on: ExceptionFilter = _not_rejected,
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
        rng: random.Random | None = None,
    ) -> None:
        trip = ConsecutiveFailures() if trip is None else trip
        if not isinstance(trip, ConsecutiveFailures | FailureRate | AdaptiveThrottling):
            raise ConfigurationError(
                "CircuitBreaker.trip must be ConsecutiveFailures, FailureRate or "
                f"AdaptiveThrottling, got {trip!r}"
            )
        check_number("CircuitBreaker", "reset_timeout", reset_timeout, minimum=0)
        check_number("CircuitBreaker", "initial_reset_timeout", initial_reset_timeout,
                     minimum=0, optional=True)
        check_number("CircuitBreaker", "half_open_probes", half_open_probes, minimum=1,
                     integer=True)
        self._name = name
        self._trip = trip
        self._reset_timeout = float(reset_timeout)
        self._initial_setting = (None if initial_reset_timeout is None
                                 else float(initial_reset_timeout))
        self._initial_wait = self._reset_timeout if initial_reset_timeout is None else min(
            float(initial_reset_timeout), self._reset_timeout)
        self._wait = self._initial_wait
        self._half_open_probes = half_open_probes
        self._clock = clock
        self._now = clock.monotonic
        self._is_failure = exception_predicate("CircuitBreaker", "failure_on", failure_on)
        self._listeners = tuple(listeners)
        self._lock = threading.Lock()
        self._threshold = trip.threshold if isinstance(trip, ConsecutiveFailures) else 0
        self._rate = _RateTracker(trip) if isinstance(trip, FailureRate) else None
        self._throttle = (
            _Throttle(trip, rng or random.Random()) if isinstance(trip, AdaptiveThrottling)
            else None
        )
        self._state = _CLOSED
        self._gen = 0
        self._failures = 0
        self._open_until = 0.0
        self._probes = 0
        self._half_open_successes = 0
        self._closed_gen: int | None = 0 if self._threshold else None

    # -- inspection ------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Shown in errors, events and metrics."""
        return self._name

    @property
    def trip(self) -> TripStrategy:
        """When a closed breaker opens."""
        return self._trip

    @property
    def reset_timeout(self) -> float:
        """The longest an open breaker waits before it lets probes through."""
        return self._reset_timeout

    @property
    def initial_reset_timeout(self) -> float:
        """The wait after an opening from CLOSED (``reset_timeout`` when not adaptive)."""
        return self._initial_wait

    @property
    def half_open_probes(self) -> int:
        """Probes admitted at once while half-open, and the successes that close it."""
        return self._half_open_probes

    @property
    def clock(self) -> Clock:
        """Where the breaker reads time."""
        return self._clock

    @property
    def state(self) -> State:
        """The current state (an open breaker whose timeout passed reports half-open)."""
        if self._state is _OPEN and self._now() >= self._open_until:
            self._lock.acquire()
            try:
                event = self._maybe_half_open(self._now())
            finally:
                self._lock.release()
            self._emit(event)
        return self._state

    @property
    def generation(self) -> int:
        """How many transitions this breaker has made (outcomes of older ones are ignored)."""
        return self._gen

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self._name!r}, state={self._state.value!r})"

    # -- run-time settings -----------------------------------------------------------

    def reconfigure(
        self,
        *,
        trip: TripStrategy | None = None,
        reset_timeout: float | None = None,
        initial_reset_timeout: float | None = None,
        half_open_probes: int | None = None,
        check_only: bool = False,
    ) -> None:
        """Change the trip strategy, the reset timeouts and/or ``half_open_probes`` at run time.

        ``None`` keeps a setting. Everything is checked first, then swapped under
        the breaker's lock: no call sees half of a change, and the state (closed,
        open, half-open, forced) is kept. A new ``ConsecutiveFailures`` threshold
        keeps the failures counted so far (the next failure is judged against the
        new threshold); another kind of strategy, or a ``FailureRate`` or
        ``AdaptiveThrottling`` with other settings, starts its statistics over and
        ignores the outcomes of calls admitted before the change (as a transition
        does). An open breaker's wait is measured from when it opened with the new
        timeouts (an adaptive wait already doubled stays, capped at the new
        ``reset_timeout``). ``initial_reset_timeout`` turns the adaptive reset on or
        changes it; it cannot be turned off again (pass it equal to
        ``reset_timeout`` instead). With ``check_only`` the settings are only checked.
        """
        new_trip = self._trip if trip is None else trip
        if not isinstance(new_trip, ConsecutiveFailures | FailureRate | AdaptiveThrottling):
            raise ConfigurationError(
                "CircuitBreaker.trip must be ConsecutiveFailures, FailureRate or "
                f"AdaptiveThrottling, got {new_trip!r}"
            )
        if reset_timeout is not None:
            check_number("CircuitBreaker", "reset_timeout", reset_timeout, minimum=0)
        check_number("CircuitBreaker", "initial_reset_timeout", initial_reset_timeout,
                     minimum=0, optional=True)
        if half_open_probes is not None:
            check_number("CircuitBreaker", "half_open_probes", half_open_probes, minimum=1,
                         integer=True)
        if check_only:
            return
        self._lock.acquire()
        try:
            old_trip = self._trip
            if new_trip != old_trip:
                if isinstance(new_trip, ConsecutiveFailures) and isinstance(
                        old_trip, ConsecutiveFailures):
                    self._threshold = new_trip.threshold
                else:
                    rng = self._throttle._rng if self._throttle is not None else random.Random()
                    self._threshold = (new_trip.threshold
                                       if isinstance(new_trip, ConsecutiveFailures) else 0)
                    self._rate = (_RateTracker(new_trip) if isinstance(new_trip, FailureRate)
                                  else None)
                    self._throttle = (_Throttle(new_trip, rng)
                                      if isinstance(new_trip, AdaptiveThrottling) else None)
                    # A new generation, as on a transition: outcomes of calls admitted
                    # under the old strategy would be counted in the wrong statistics.
                    self._gen += 1
                    self._failures = 0
                    self._probes = 0
                    self._half_open_successes = 0
                    self._closed_gen = (self._gen if self._state is _CLOSED and self._threshold
                                        else None)
                self._trip = new_trip
            if reset_timeout is not None or initial_reset_timeout is not None:
                limit = self._reset_timeout if reset_timeout is None else float(reset_timeout)
                if initial_reset_timeout is not None:
                    self._initial_setting = float(initial_reset_timeout)
                self._initial_wait = (limit if self._initial_setting is None
                                      else min(self._initial_setting, limit))
                wait = (limit if self._initial_setting is None
                        else max(min(self._wait, limit), self._initial_wait))
                if self._state is _OPEN:
                    self._open_until += wait - self._wait
                self._wait = wait
                self._reset_timeout = limit
            if half_open_probes is not None:
                self._half_open_probes = half_open_probes
        finally:
            self._lock.release()

    # -- manual control --------------------------------------------------------------

    def force_open(self) -> None:
        """Reject every call until :meth:`reset` or :meth:`force_closed`."""
        self._set(_FORCED_OPEN)

    def force_closed(self) -> None:
        """Admit every call and ignore outcomes until :meth:`reset` or :meth:`force_open`."""
        self._set(_FORCED_CLOSED)

    def reset(self) -> None:
        """Back to closed with clean statistics."""
        self._set(_CLOSED)

    def _set(self, state: State) -> None:
        self._lock.acquire()
        try:
            event = self._transition(state, self._now())
        finally:
            self._lock.release()
        self._emit(event)

    # -- the two-step core -----------------------------------------------------------

    def try_acquire(self) -> BreakerPermit:
        """Admit one call and return its permit, or raise :class:`CircuitOpenError`."""
        state = self._state
        if state is _OPEN:
            now = self._now()
            if now < self._open_until:
                raise self._reject("open", self._open_until - now)
        elif state is _CLOSED and self._throttle is None:
            return BreakerPermit(self, self._gen, self._now() if self._rate else 0.0, False)
        self._lock.acquire()
        try:
            now = self._now()
            event = self._maybe_half_open(now) if self._state is _OPEN else None
            state = self._state
            if state is _CLOSED or state is _FORCED_CLOSED:
                throttle = self._throttle
                if state is _CLOSED and throttle is not None and not throttle.admit(now):
                    reason, retry_after = "throttled", None
                else:
                    permit = BreakerPermit(self, self._gen, now, False)
                    reason = ""
            elif state is _HALF_OPEN:
                if self._probes < self._half_open_probes:
                    self._probes += 1
                    permit = BreakerPermit(self, self._gen, now, True)
                    reason = ""
                else:
                    reason, retry_after = "half_open_full", None
            elif state is _OPEN:
                reason, retry_after = "open", self._open_until - now
            else:
                reason, retry_after = "forced_open", None
        finally:
            self._lock.release()
        self._emit(event)
        if reason:
            raise self._reject(reason, retry_after)
        return permit

    def _reject(self, reason: str, retry_after: float | None) -> CircuitOpenError:
        if self._listeners or _GLOBAL_LISTENERS:
            self._notify_rejected(reason, retry_after)
        return new_rejection(CircuitOpenError, self._name, retry_after)

    def _notify_rejected(self, reason: str, retry_after: float | None) -> None:
        dispatch(self._listeners, CallRejected(
            policy="circuit_breaker", name=self._name, reason=reason, retry_after=retry_after,
        ))

    def _record(self, gen: int, failed: bool, start: float, probe: bool) -> None:
        self._lock.acquire()
        try:
            if gen != self._gen:
                return
            state = self._state
            event: Event | None = None
            if state is _CLOSED:
                if self._threshold:
                    if failed:
                        self._failures += 1
                        if self._failures >= self._threshold:
                            event = self._transition(_OPEN, self._now())
                    else:
                        self._failures = 0
                elif self._rate is not None:
                    now = self._now()
                    limit = self._rate._cfg.slow_call_duration
                    slow = limit is not None and now - start >= limit
                    if self._rate.record(now, failed, slow):
                        event = self._transition(_OPEN, now)
                elif self._throttle is not None:
                    self._throttle.record(self._now(), not failed)
            elif state is _HALF_OPEN and probe:
                self._probes -= 1
                if failed:
                    event = self._transition(_OPEN, self._now())
                else:
                    self._half_open_successes += 1
                    if self._half_open_successes >= self._half_open_probes:
                        event = self._transition(_CLOSED, self._now())
        finally:
            self._lock.release()
        self._emit(event)

    def _release(self, gen: int, probe: bool) -> None:
        if probe:
            self._lock.acquire()
            try:
                if gen == self._gen and self._state is _HALF_OPEN:
                    self._probes -= 1
            finally:
                self._lock.release()

    def _failure_closed(self, gen: int, exc: Exception) -> None:
        # Fast path's failure branch: classify, then record as any permit would.
        self._record(gen, self._is_failure(exc), 0.0, False)

    def _maybe_half_open(self, now: float) -> Event | None:
        if self._state is _OPEN and now >= self._open_until:
            return self._transition(_HALF_OPEN, now)
        return None

    def _transition(self, new: State, now: float) -> Event | None:
        """Move to ``new`` (lock held); return the event to emit after unlocking."""
        old = self._state
        self._gen += 1
        self._state = new
        self._failures = 0
        self._probes = 0
        self._half_open_successes = 0
        if new is _OPEN:
            # A failed probe: the dependency is still down, so wait longer this time.
            self._wait = (min(self._wait * 2, self._reset_timeout) if old is _HALF_OPEN
                          else self._initial_wait)
            self._open_until = now + self._wait
        if new is _CLOSED or new is _FORCED_CLOSED:
            if self._rate is not None:
                self._rate.clear()
            if self._throttle is not None:
                self._throttle.clear()
        self._closed_gen = self._gen if new is _CLOSED and self._threshold else None
        if old is new and new is not _CLOSED:
            return None
        if not (self._listeners or global_listeners()):
            return None
        return StateChanged(policy="circuit_breaker", name=self._name, old=old.value,
                            new=new.value)

    def _emit(self, event: Event | None) -> None:
        if event is not None:
            dispatch(self._listeners, event)

    # -- shells ----------------------------------------------------------------------

    # The closed fast path and the open rejection below appear four times (call, acall
    # and the two decorator wrappers) on purpose: a shared helper adds a Python frame,
    # ~60 ns to every protected call and ~140 ns to every rejection it raises through,
    # which is as much as the breaker itself (bench/breaker_closed.py, breaker_open.py).

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` through the breaker."""
        gen = self._closed_gen
        if gen is None:
            wait = self._open_until - self._now() if self._state is _OPEN else 0.0
            if wait > 0:
                if self._listeners or _GLOBAL_LISTENERS:
                    self._notify_rejected("open", wait)
                raise new_rejection(CircuitOpenError, self._name, wait)
            return self._call_permit(fn, *args, **kwargs)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._failure_closed(gen, exc)
            raise
        if self._failures:
            self._record(gen, False, 0.0, False)
        return result

    def _call_permit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        permit = self.try_acquire()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            permit.failure(exc)
            raise
        except BaseException:
            permit.release()
            raise
        permit.success()
        return result

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker.

        A call cancelled by a fournines deadline (an enclosing ``Timeout``) failed
        with a ``DeadlineExceededError``; any other cancellation is no outcome at
        all (a cancelled probe frees its slot).
        """
        gen = self._closed_gen
        if gen is None:
            wait = self._open_until - self._now() if self._state is _OPEN else 0.0
            if wait > 0:
                if self._listeners or _GLOBAL_LISTENERS:
                    self._notify_rejected("open", wait)
                raise new_rejection(CircuitOpenError, self._name, wait)
            return await self._acall_permit(fn, *args, **kwargs)
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            self._failure_closed(gen, exc)
            raise
        except asyncio.CancelledError:
            if cancelled_by_deadline():
                self._failure_closed(gen, _timed_out(self._name))
            raise
        if self._failures:
            self._record(gen, False, 0.0, False)
        return result

    async def _acall_permit(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        permit = self.try_acquire()
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            permit.failure(exc)
            raise
        except asyncio.CancelledError:
            permit.cancelled()
            raise
        except BaseException:
            permit.release()
            raise
        permit.success()
        return result

    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]:
        """A closure that calls ``fn`` through the breaker."""
        breaker = self
        failure_closed = self._failure_closed
        record = self._record
        call_permit = self._call_permit

        def through_breaker(*args: Any, **kwargs: Any) -> Any:
            gen = breaker._closed_gen
            if gen is None:
                wait = breaker._open_until - breaker._now() if breaker._state is _OPEN else 0.0
                if wait > 0:
                    if breaker._listeners or _GLOBAL_LISTENERS:
                        breaker._notify_rejected("open", wait)
                    raise new_rejection(CircuitOpenError, breaker._name, wait)
                return call_permit(fn, *args, **kwargs)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                failure_closed(gen, exc)
                raise
            if breaker._failures:
                record(gen, False, 0.0, False)
            return result

        return through_breaker

    def awrap(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """A coroutine function that awaits ``fn`` through the breaker."""
        breaker = self
        failure_closed = self._failure_closed
        record = self._record
        acall_permit = self._acall_permit

        async def through_breaker(*args: Any, **kwargs: Any) -> Any:
            gen = breaker._closed_gen
            if gen is None:
                wait = breaker._open_until - breaker._now() if breaker._state is _OPEN else 0.0
                if wait > 0:
                    if breaker._listeners or _GLOBAL_LISTENERS:
                        breaker._notify_rejected("open", wait)
                    raise new_rejection(CircuitOpenError, breaker._name, wait)
                return await acall_permit(fn, *args, **kwargs)
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                failure_closed(gen, exc)
                raise
            except asyncio.CancelledError:
                if cancelled_by_deadline():
                    failure_closed(gen, _timed_out(breaker._name))
                raise
            if breaker._failures:
                record(gen, False, 0.0, False)
            return result

        return through_breaker
