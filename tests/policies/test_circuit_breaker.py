"""Specification of CircuitBreaker: states, strategies, generations, shells."""

from __future__ import annotations

import random

import pytest

from fournines import (
    AdaptiveThrottling,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    ConsecutiveFailures,
    FailureRate,
    RateLimitedError,
    State,
    StateChanged,
)
from fournines.testing import FakeClock, RecordingListener


class Boom(Exception):
    pass


def ok() -> str:
    return "ok"


def fail() -> None:
    raise Boom("down")


def trip(breaker: CircuitBreaker, times: int = 5) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            breaker.call(fail)


def test_opens_after_five_consecutive_failures_by_default(clock: FakeClock) -> None:
    breaker = CircuitBreaker("payments", clock=clock)
    trip(breaker, 4)
    assert breaker.state is State.CLOSED
    trip(breaker, 1)
    assert breaker.state is State.OPEN


def test_a_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    trip(breaker, 4)
    breaker.call(ok)
    trip(breaker, 4)
    assert breaker.state is State.CLOSED


def test_open_breaker_rejects_without_calling(clock: FakeClock) -> None:
    breaker = CircuitBreaker("payments", clock=clock)
    trip(breaker)
    calls = []
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: calls.append(1))
    assert calls == []
    assert info.value.name == "payments"
    assert info.value.retry_after == pytest.approx(60.0)


def test_open_rejection_carries_remaining_open_time(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    trip(breaker)
    clock.advance(45)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    assert info.value.retry_after == pytest.approx(15.0)


def test_half_open_after_sixty_seconds_by_default(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    trip(breaker)
    clock.advance(59.9)
    assert breaker.state is State.OPEN
    clock.advance(0.1)
    assert breaker.state is State.HALF_OPEN


def test_closes_after_three_successful_probes(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    trip(breaker)
    clock.advance(60)
    breaker.call(ok)
    breaker.call(ok)
    assert breaker.state is State.HALF_OPEN
    breaker.call(ok)
    assert breaker.state is State.CLOSED


def test_any_failure_while_half_open_opens_again(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    trip(breaker)
    clock.advance(60)
    breaker.call(ok)
    trip(breaker, 1)
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    assert info.value.retry_after == pytest.approx(60.0)


def test_adaptive_reset_first_waits_the_initial_timeout(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, reset_timeout=8.0, initial_reset_timeout=1.0)
    trip(breaker)
    clock.advance(0.99)
    assert breaker.state is State.OPEN
    clock.advance(0.01)
    assert breaker.state is State.HALF_OPEN


def test_adaptive_reset_doubles_after_each_failed_probe_up_to_reset_timeout(
        clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, reset_timeout=5.0, initial_reset_timeout=1.0)
    trip(breaker)
    waits = []
    for _ in range(5):
        with pytest.raises(CircuitOpenError) as info:
            breaker.call(ok)
        waits.append(info.value.retry_after)
        clock.advance(info.value.retry_after or 0.0)
        trip(breaker, 1)  # the probe fails: the dependency is still down
    assert waits == pytest.approx([1.0, 2.0, 4.0, 5.0, 5.0])


def test_adaptive_reset_starts_over_after_the_breaker_closes(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, reset_timeout=8.0, initial_reset_timeout=1.0,
                             half_open_probes=1)
    trip(breaker)
    clock.advance(1.0)
    trip(breaker, 1)
    clock.advance(2.0)
    breaker.call(ok)
    assert breaker.state is State.CLOSED
    trip(breaker)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    assert info.value.retry_after == pytest.approx(1.0)


def test_initial_reset_timeout_longer_than_reset_timeout_is_capped(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, reset_timeout=2.0, initial_reset_timeout=10.0)
    assert breaker.initial_reset_timeout == 2.0


def test_negative_initial_reset_timeout_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="initial_reset_timeout"):
        CircuitBreaker(initial_reset_timeout=-1.0)


def test_half_open_admits_only_its_probes_at_once(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, half_open_probes=2)
    trip(breaker)
    clock.advance(60)
    first, second = breaker.try_acquire(), breaker.try_acquire()
    with pytest.raises(CircuitOpenError):
        breaker.try_acquire()
    first.success()
    third = breaker.try_acquire()
    second.success()
    assert breaker.state is State.CLOSED
    third.success()  # a late probe result of an earlier generation changes nothing
    assert breaker.state is State.CLOSED


def test_released_probe_frees_its_slot(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, half_open_probes=1)
    trip(breaker)
    clock.advance(60)
    breaker.try_acquire().release()
    breaker.try_acquire().success()
    assert breaker.state is State.CLOSED


def test_late_failure_from_earlier_generation_is_ignored(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=ConsecutiveFailures(threshold=1),
                             half_open_probes=1)
    slow_call = breaker.try_acquire()  # admitted while closed (generation 0)
    trip(breaker, 1)
    clock.advance(60)
    breaker.call(ok)
    assert breaker.state is State.CLOSED
    slow_call.failure(Boom())  # arrives after open -> half-open -> closed
    assert breaker.state is State.CLOSED


def test_late_failure_of_a_fast_path_call_is_ignored(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=ConsecutiveFailures(threshold=1))

    def fails_after_breaker_was_reset() -> None:
        breaker.force_open()
        breaker.reset()
        raise Boom

    with pytest.raises(Boom):
        breaker.call(fails_after_breaker_was_reset)
    assert breaker.state is State.CLOSED


def test_permit_reports_only_once(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=ConsecutiveFailures(threshold=2))
    permit = breaker.try_acquire()
    permit.failure(Boom())
    permit.failure(Boom())
    assert breaker.state is State.CLOSED


def test_failure_on_selects_counted_exceptions(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, failure_on=(ConnectionError,),
                             trip=ConsecutiveFailures(threshold=1))
    with pytest.raises(KeyError):
        breaker.call(lambda: {}["missing"])
    assert breaker.state is State.CLOSED
    with pytest.raises(ConnectionError):
        breaker.call(lambda: (_ for _ in ()).throw(ConnectionError()))
    assert breaker.state is State.OPEN


def test_failure_on_accepts_a_predicate(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, failure_on=lambda e: "fatal" in str(e),
                             trip=ConsecutiveFailures(threshold=1))
    with pytest.raises(Boom):
        breaker.call(lambda: (_ for _ in ()).throw(Boom("benign")))
    assert breaker.state is State.CLOSED
    with pytest.raises(Boom):
        breaker.call(lambda: (_ for _ in ()).throw(Boom("fatal")))
    assert breaker.state is State.OPEN


def test_rejections_of_inner_policies_are_not_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=ConsecutiveFailures(threshold=1))
    with pytest.raises(RateLimitedError):
        breaker.call(lambda: (_ for _ in ()).throw(RateLimitedError("inner", 1.0)))
    assert breaker.state is State.CLOSED


def test_force_open_rejects_until_reset(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    breaker.force_open()
    clock.advance(3600)
    assert breaker.state is State.FORCED_OPEN
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    breaker.reset()
    assert breaker.call(ok) == "ok"


def test_force_closed_admits_and_ignores_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=ConsecutiveFailures(threshold=1))
    breaker.force_closed()
    trip(breaker, 10)
    assert breaker.state is State.FORCED_CLOSED


def test_transitions_are_sent_to_listeners(clock: FakeClock, recorder: RecordingListener) -> None:
    breaker = CircuitBreaker("pay", clock=clock, listeners=[recorder], half_open_probes=1)
    trip(breaker)
    clock.advance(60)
    breaker.call(ok)
    moves = [(e.old, e.new) for e in recorder.of(StateChanged)]
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert all(e.name == "pay" and e.policy == "circuit_breaker"
               for e in recorder.of(StateChanged))


def test_each_transition_starts_a_new_generation(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    assert breaker.generation == 0
    trip(breaker)
    clock.advance(60)
    assert breaker.state is State.HALF_OPEN
    assert breaker.generation == 2


def test_decorates_sync_functions(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)

    @breaker
    def add(a: int, b: int = 0) -> int:
        return a + b

    assert add(1, b=2) == 3
    assert add.__name__ == "add"


async def test_decorates_async_functions(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=ConsecutiveFailures(threshold=1))

    @breaker
    async def broken() -> None:
        raise Boom

    with pytest.raises(Boom):
        await broken()
    with pytest.raises(CircuitOpenError):
        await broken()


async def test_acall_counts_failures_and_recovers(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, half_open_probes=1)

    async def afail() -> None:
        raise Boom

    async def aok() -> int:
        return 7

    for _ in range(5):
        with pytest.raises(Boom):
            await breaker.acall(afail)
    assert breaker.state is State.OPEN
    clock.advance(60)
    assert await breaker.acall(aok) == 7
    assert breaker.state is State.CLOSED


async def test_cancelled_probe_is_not_a_failure(clock: FakeClock) -> None:
    import asyncio

    breaker = CircuitBreaker(clock=clock, half_open_probes=1)
    trip(breaker)
    clock.advance(60)

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await breaker.acall(cancelled)
    assert breaker.state is State.HALF_OPEN
    breaker.call(ok)
    assert breaker.state is State.CLOSED


# -- failure rate ---------------------------------------------------------------------


def test_failure_rate_waits_for_minimum_calls(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=FailureRate(threshold=0.5, window=10,
                                                           minimum_calls=4))
    trip(breaker, 3)
    assert breaker.state is State.CLOSED
    trip(breaker, 1)
    assert breaker.state is State.OPEN


def test_failure_rate_trips_at_threshold_over_count_window(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=FailureRate(threshold=0.5, window=4,
                                                           minimum_calls=4))
    for fn in (ok, ok, ok):
        breaker.call(fn)
    trip(breaker, 1)  # 1 of 4 failed
    assert breaker.state is State.CLOSED
    trip(breaker, 1)  # window now ok, ok, fail, fail: 50 %
    assert breaker.state is State.OPEN


def test_count_window_forgets_old_outcomes(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=FailureRate(threshold=0.75, window=4,
                                                           minimum_calls=4))
    trip(breaker, 2)
    for _ in range(4):
        breaker.call(ok)  # pushes both failures out of the window
    trip(breaker, 2)
    assert breaker.state is State.CLOSED


def test_time_window_forgets_outcomes_older_than_window(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=FailureRate(
        threshold=0.5, window=10, window_type="time", minimum_calls=4))
    trip(breaker, 3)
    clock.advance(11)
    breaker.call(ok)
    trip(breaker, 1)
    assert breaker.state is State.CLOSED  # only 2 calls in the last 10 s
    trip(breaker, 2)
    assert breaker.state is State.OPEN


def test_slow_calls_trip_even_when_they_succeed(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=FailureRate(
        window=4, minimum_calls=4, slow_call_duration=1.0, slow_call_rate=0.5))

    def slow() -> str:
        clock.advance(2.0)
        return "late"

    breaker.call(ok)
    breaker.call(ok)
    breaker.call(slow)
    assert breaker.state is State.CLOSED
    breaker.call(slow)
    assert breaker.state is State.OPEN


# -- adaptive throttling --------------------------------------------------------------


def test_throttling_drops_nothing_while_healthy(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=AdaptiveThrottling(), rng=random.Random(1))
    for _ in range(1000):
        breaker.call(ok)
    assert breaker.state is State.CLOSED


def test_throttling_drops_in_proportion_to_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=AdaptiveThrottling(window=1000, buckets=10),
                             rng=random.Random(3))
    dropped = reached = 0
    for _ in range(2000):
        try:
            breaker.call(fail)
        except CircuitOpenError:
            dropped += 1
        except Boom:
            reached += 1
    # With no accepts, p = requests / (requests + 1): nearly everything is dropped,
    # but the backend keeps seeing a trickle (the minimum of requests before throttling).
    assert dropped > 1900
    assert reached >= 5


def test_throttling_probability_follows_sre_formula(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=AdaptiveThrottling(k=2.0, min_requests=0),
                             rng=random.Random(5))
    for _ in range(30):
        breaker.call(ok)
    for _ in range(70):
        with pytest.raises((Boom, CircuitOpenError)):  # dropped calls count as requests too
            breaker.call(fail)
    throttle = breaker._throttle
    assert throttle is not None
    # requests = 100, accepts = 30: p = (100 - 2 * 30) / 101
    assert throttle.drop_probability(clock.monotonic()) == pytest.approx(40 / 101)


def test_throttling_forces_a_probe_when_nothing_passed(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=AdaptiveThrottling(window=1000, buckets=10,
                                                                  force_probe_after=1.0),
                             rng=random.Random(9))
    for _ in range(500):
        try:
            breaker.call(fail)
        except (Boom, CircuitOpenError):
            pass
    clock.advance(1.0)
    calls = []
    breaker.call(lambda: calls.append(1))
    assert calls == [1]


def test_throttling_recovers_as_accepts_return(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=AdaptiveThrottling(window=10, buckets=10),
                             rng=random.Random(2))
    for _ in range(100):
        try:
            breaker.call(fail)
        except (Boom, CircuitOpenError):
            pass
    clock.advance(11)  # the window forgets the outage
    for _ in range(100):
        assert breaker.call(ok) == "ok"


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"reset_timeout": -1}, "CircuitBreaker.reset_timeout"),
    ({"half_open_probes": 0}, "CircuitBreaker.half_open_probes"),
    ({"trip": "five"}, "CircuitBreaker.trip"),
    ({"failure_on": 42}, "CircuitBreaker.failure_on"),
])
def test_bad_configuration_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("make", "field"), [
    (lambda: ConsecutiveFailures(threshold=0), "ConsecutiveFailures.threshold"),
    (lambda: FailureRate(threshold=1.5), "FailureRate.threshold"),
    (lambda: FailureRate(window_type="calls"), "FailureRate.window_type"),
    (lambda: FailureRate(slow_call_duration=0), "FailureRate.slow_call_duration"),
    (lambda: AdaptiveThrottling(k=0.5), "AdaptiveThrottling.k"),
])
def test_bad_strategy_names_the_field(make: object, field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")) as info:
        make()  # type: ignore[operator]
    assert isinstance(info.value, ValueError)
