"""Specification of ``reconfigure``: policy settings changed at run time, atomically."""

from __future__ import annotations

import threading

import pytest

from fournines import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    ConsecutiveFailures,
    FailureRate,
    Gcra,
    RateLimitedError,
    Retry,
    State,
    TokenBucket,
)
from fournines.testing import FakeClock


def drain(limiter: TokenBucket | Gcra) -> int:
    admitted = 0
    while True:
        try:
            limiter.try_acquire()
        except RateLimitedError:
            return admitted
        admitted += 1


class Boom(Exception):
    pass


def fail() -> None:
    raise Boom


# -- TokenBucket ------------------------------------------------------------------------


def test_a_token_bucket_refills_at_the_new_rate_after_reconfigure(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=1, capacity=100, clock=clock)
    drain(bucket)

    bucket.reconfigure(rate=10)
    clock.advance(2)

    assert drain(bucket) == 20


def test_tokens_earned_before_a_rate_change_are_kept(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=10, capacity=100, clock=clock)
    drain(bucket)
    clock.advance(1)  # 10 tokens earned at the old rate

    bucket.reconfigure(rate=1)

    assert drain(bucket) == 10


def test_a_smaller_capacity_cuts_the_tokens_to_it(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=1, capacity=10, clock=clock)

    bucket.reconfigure(capacity=3)

    assert drain(bucket) == 3
    assert bucket.capacity == 3


def test_a_larger_capacity_invents_no_tokens(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=1, capacity=5, clock=clock)
    drain(bucket)

    bucket.reconfigure(capacity=50)

    assert drain(bucket) == 0


def test_an_invalid_token_bucket_setting_changes_nothing(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=5, capacity=10, clock=clock)

    with pytest.raises(ConfigurationError, match=r"TokenBucket\.capacity"):
        bucket.reconfigure(rate=50, capacity=0)

    assert (bucket.rate, bucket.capacity) == (5, 10)
    assert drain(bucket) == 10


# -- Gcra -------------------------------------------------------------------------------


def test_gcra_admits_at_the_new_rate_after_reconfigure(clock: FakeClock) -> None:
    limiter = Gcra(rate=1, burst=1, clock=clock)
    drain(limiter)

    limiter.reconfigure(rate=8, burst=4)  # powers of two: exact float arithmetic
    clock.advance(1)

    assert drain(limiter) == 4
    assert (limiter.rate, limiter.burst) == (8, 4)


def test_gcra_keeps_the_backlog_of_admissions_already_granted(clock: FakeClock) -> None:
    limiter = Gcra(rate=1, burst=4, clock=clock)
    drain(limiter)  # 4 admissions to drain: 4 s at 1/s

    limiter.reconfigure(rate=2)  # the same 4 admissions drain in 2 s
    clock.advance(1)

    assert drain(limiter) == 2


# -- Retry ------------------------------------------------------------------------------


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        raise Boom


def test_retry_makes_the_new_number_of_attempts_after_reconfigure(clock: FakeClock) -> None:
    retry = Retry(attempts=2, backoff=Backoff(initial=0, cap=0), clock=clock)
    fn = Counting()

    retry.reconfigure(attempts=5)
    with pytest.raises(Boom):
        retry.call(fn)

    assert fn.calls == 5
    assert retry.attempts == 5


def test_a_decorated_function_follows_the_reconfigured_retry(clock: FakeClock) -> None:
    retry = Retry(attempts=2, backoff=Backoff(initial=0, cap=0), clock=clock)
    fn = Counting()
    wrapped = retry(fn)

    retry.reconfigure(attempts=4)
    with pytest.raises(Boom):
        wrapped()

    assert fn.calls == 4


def test_retry_reconfigure_keeps_what_it_is_not_given(clock: FakeClock) -> None:
    backoff = Backoff(initial=0.5, cap=2)
    retry = Retry(attempts=3, backoff=backoff, max_retry_after=1.5, name="pay", clock=clock)

    retry.reconfigure(attempts=6)

    assert (retry.backoff, retry.max_retry_after, retry.name) == (backoff, 1.5, "pay")


def test_an_invalid_retry_setting_changes_nothing(clock: FakeClock) -> None:
    retry = Retry(attempts=3, clock=clock)

    with pytest.raises(ConfigurationError, match=r"Retry\.attempts"):
        retry.reconfigure(attempts=0)

    assert retry.attempts == 3


# -- CircuitBreaker ---------------------------------------------------------------------


def test_a_lower_threshold_opens_the_breaker_sooner(clock: FakeClock) -> None:
    breaker = CircuitBreaker(trip=ConsecutiveFailures(threshold=10), clock=clock)
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)

    breaker.reconfigure(trip=ConsecutiveFailures(threshold=3))
    with pytest.raises(Boom):
        breaker.call(fail)

    assert breaker.state is State.OPEN


def test_a_higher_threshold_keeps_the_breaker_closed_longer(clock: FakeClock) -> None:
    breaker = CircuitBreaker(trip=ConsecutiveFailures(threshold=2), clock=clock)

    breaker.reconfigure(trip=ConsecutiveFailures(threshold=4))
    for _ in range(3):
        with pytest.raises(Boom):
            breaker.call(fail)

    assert breaker.state is State.CLOSED


def test_an_open_breaker_stays_open_through_a_reconfigure(clock: FakeClock) -> None:
    breaker = CircuitBreaker(trip=ConsecutiveFailures(threshold=1), reset_timeout=10,
                             clock=clock)
    with pytest.raises(Boom):
        breaker.call(fail)

    breaker.reconfigure(trip=ConsecutiveFailures(threshold=5))

    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        breaker.call(fail)


def test_a_shorter_reset_timeout_is_measured_from_when_the_breaker_opened(
    clock: FakeClock,
) -> None:
    breaker = CircuitBreaker(trip=ConsecutiveFailures(threshold=1), reset_timeout=60,
                             clock=clock)
    with pytest.raises(Boom):
        breaker.call(fail)
    clock.advance(5)

    breaker.reconfigure(reset_timeout=6)
    assert breaker.state is State.OPEN
    clock.advance(1)

    assert breaker.state is State.HALF_OPEN


def test_an_adaptive_wait_is_capped_by_a_smaller_reset_timeout(clock: FakeClock) -> None:
    breaker = CircuitBreaker(trip=ConsecutiveFailures(threshold=1), reset_timeout=60,
                             initial_reset_timeout=1, half_open_probes=1, clock=clock)
    with pytest.raises(Boom):
        breaker.call(fail)
    for _ in range(4):  # four failed probes: the wait is 16 s now
        clock.advance(60)
        with pytest.raises(Boom):
            breaker.call(fail)

    breaker.reconfigure(reset_timeout=3)
    clock.advance(3)

    assert breaker.state is State.HALF_OPEN


def test_the_adaptive_reset_can_be_turned_on_at_run_time(clock: FakeClock) -> None:
    breaker = CircuitBreaker(trip=ConsecutiveFailures(threshold=1), reset_timeout=60,
                             clock=clock)
    breaker.reconfigure(initial_reset_timeout=2)
    with pytest.raises(Boom):
        breaker.call(fail)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(fail)

    assert info.value.retry_after == pytest.approx(2.0)


def test_switching_to_a_failure_rate_starts_its_window_empty(clock: FakeClock) -> None:
    breaker = CircuitBreaker(trip=ConsecutiveFailures(threshold=100), clock=clock)
    for _ in range(5):
        with pytest.raises(Boom):
            breaker.call(fail)

    breaker.reconfigure(trip=FailureRate(threshold=0.5, window=4, minimum_calls=4))
    for _ in range(3):
        with pytest.raises(Boom):
            breaker.call(fail)
    assert breaker.state is State.CLOSED
    with pytest.raises(Boom):
        breaker.call(fail)

    assert breaker.state is State.OPEN


def test_an_outcome_admitted_under_the_old_strategy_is_ignored(clock: FakeClock) -> None:
    breaker = CircuitBreaker(trip=ConsecutiveFailures(threshold=1), clock=clock)
    permit = breaker.try_acquire()

    breaker.reconfigure(trip=FailureRate(threshold=0.5, window=2, minimum_calls=1))
    permit.failure(Boom())

    assert breaker.state is State.CLOSED


def test_fewer_half_open_probes_close_the_breaker_sooner(clock: FakeClock) -> None:
    breaker = CircuitBreaker(trip=ConsecutiveFailures(threshold=1), reset_timeout=1,
                             half_open_probes=5, clock=clock)
    with pytest.raises(Boom):
        breaker.call(fail)
    clock.advance(1)

    breaker.reconfigure(half_open_probes=1)
    breaker.call(lambda: None)

    assert breaker.state is State.CLOSED


def test_an_invalid_breaker_setting_changes_nothing(clock: FakeClock) -> None:
    breaker = CircuitBreaker(trip=ConsecutiveFailures(threshold=2), reset_timeout=5,
                             clock=clock)

    with pytest.raises(ConfigurationError, match=r"CircuitBreaker\.half_open_probes"):
        breaker.reconfigure(trip=ConsecutiveFailures(threshold=9), half_open_probes=0)

    assert breaker.trip == ConsecutiveFailures(threshold=2)
    assert breaker.reset_timeout == 5


def test_reconfiguring_while_threads_take_tokens_loses_and_invents_none(
    clock: FakeClock,
) -> None:
    bucket = TokenBucket(rate=1, capacity=5000, clock=clock)  # the clock stands still
    admitted = [0] * 4
    stop = threading.Event()

    def take(slot: int) -> None:
        while True:
            try:
                bucket.try_acquire()
            except RateLimitedError:
                if stop.is_set():
                    return
                continue
            admitted[slot] += 1

    def flip() -> None:
        for n in range(2000):
            bucket.reconfigure(rate=1 if n % 2 else 100)
        stop.set()

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=flip))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sum(admitted) == 5000


def test_check_only_checks_and_changes_nothing(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=5, capacity=10, clock=clock)
    gcra = Gcra(rate=5, burst=2, clock=clock)
    retry = Retry(attempts=3, clock=clock)
    breaker = CircuitBreaker(trip=ConsecutiveFailures(threshold=2), clock=clock)

    bucket.reconfigure(rate=50, check_only=True)
    gcra.reconfigure(burst=9, check_only=True)
    retry.reconfigure(attempts=7, check_only=True)
    breaker.reconfigure(trip=ConsecutiveFailures(threshold=9), check_only=True)
    with pytest.raises(ConfigurationError, match=r"TokenBucket\.rate"):
        bucket.reconfigure(rate=0, check_only=True)

    assert (bucket.rate, gcra.burst, retry.attempts) == (5, 2, 3)
    assert breaker.trip == ConsecutiveFailures(threshold=2)
