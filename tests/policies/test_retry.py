"""Specification of Retry, Backoff and RetryBudget."""

from __future__ import annotations

import random

import pytest

from fournines import (
    Backoff,
    BudgetExhausted,
    CircuitOpenError,
    ConfigurationError,
    RateLimitedError,
    RetriesExhausted,
    Retry,
    RetryBudget,
    RetryScheduled,
    deadline_after,
)
from fournines.testing import FakeClock, RecordingListener, set_testing

NO_JITTER = Backoff(initial=0.1, multiplier=2, cap=1.0, jitter="none")


class Flaky:
    """Fails ``failures`` times with ``error``, then returns ``"ok"``."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or ConnectionError("flaky")
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"

    async def acall(self) -> str:
        return self()


def test_first_success_is_returned_without_waiting(clock: FakeClock) -> None:
    flaky = Flaky(0)
    assert Retry(clock=clock).call(flaky) == "ok"
    assert flaky.calls == 1
    assert clock.sleeps == []


def test_retries_until_success_with_exponential_waits(clock: FakeClock) -> None:
    flaky = Flaky(3)
    retry = Retry(attempts=4, backoff=NO_JITTER, clock=clock)
    assert retry.call(flaky) == "ok"
    assert flaky.calls == 4
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4])


def test_reraises_the_last_error_as_is_when_attempts_run_out(clock: FakeClock) -> None:
    error = ConnectionError("still down")
    flaky = Flaky(10, error)
    with pytest.raises(ConnectionError) as info:
        Retry(attempts=3, clock=clock).call(flaky)
    assert info.value is error
    assert flaky.calls == 3


def test_errors_not_listed_are_not_retried(clock: FakeClock) -> None:
    flaky = Flaky(5, KeyError("nope"))
    with pytest.raises(KeyError):
        Retry(on=ConnectionError, clock=clock).call(flaky)
    assert flaky.calls == 1


def test_on_accepts_a_predicate(clock: FakeClock) -> None:
    flaky = Flaky(2, ValueError("transient"))
    retry = Retry(on=lambda e: "transient" in str(e), clock=clock)
    assert retry.call(flaky) == "ok"


def test_on_result_retries_bad_results_and_returns_the_last(clock: FakeClock) -> None:
    answers = iter([None, None, None])
    retry = Retry(attempts=3, on_result=lambda r: r is None, clock=clock)
    assert retry.call(lambda: next(answers)) is None
    assert len(clock.sleeps) == 2


def test_on_result_stops_at_a_good_result(clock: FakeClock) -> None:
    answers = iter([503, 503, 200])
    retry = Retry(attempts=5, on_result=lambda r: r >= 500, clock=clock)
    assert retry.call(lambda: next(answers)) == 200


def test_retry_after_hint_lengthens_the_wait(clock: FakeClock) -> None:
    flaky = Flaky(1, RateLimitedError("api", retry_after=0.5))
    Retry(on=RateLimitedError, backoff=NO_JITTER, clock=clock).call(flaky)
    assert clock.sleeps == [0.5]


def test_retry_after_hint_beyond_the_cap_is_not_waited_for(clock: FakeClock) -> None:
    flaky = Flaky(1, CircuitOpenError("api", retry_after=3600))
    with pytest.raises(CircuitOpenError):
        Retry(on=CircuitOpenError, backoff=NO_JITTER, max_retry_after=5, clock=clock).call(flaky)
    assert flaky.calls == 1
    assert clock.sleeps == []


def test_max_retry_after_may_allow_hints_longer_than_the_backoff_cap(clock: FakeClock) -> None:
    flaky = Flaky(1, RateLimitedError("api", retry_after=4))
    retry = Retry(on=RateLimitedError, backoff=NO_JITTER, max_retry_after=5, clock=clock)
    assert retry.call(flaky) == "ok"
    assert clock.sleeps == [4]


def test_never_sleeps_past_the_current_deadline(clock: FakeClock) -> None:
    flaky = Flaky(10)
    retry = Retry(attempts=10, backoff=NO_JITTER, clock=clock)
    with deadline_after(0.5, clock=clock), pytest.raises(ConnectionError):
        retry.call(flaky)
    # waits 0.1 and 0.2 fit into 0.5 s; the next (0.4) would end past the deadline.
    assert clock.sleeps == pytest.approx([0.1, 0.2])


def test_own_timeout_bounds_all_attempts(clock: FakeClock, recorder: RecordingListener) -> None:
    flaky = Flaky(10)
    retry = Retry(attempts=10, timeout=0.35, backoff=NO_JITTER, clock=clock,
                  listeners=[recorder])
    with pytest.raises(ConnectionError):
        retry.call(flaky)
    assert clock.sleeps == pytest.approx([0.1, 0.2])
    assert recorder.of(RetriesExhausted)[0].reason == "timeout"


def test_events_tell_each_retry_and_the_give_up(clock: FakeClock,
                                                recorder: RecordingListener) -> None:
    retry = Retry(attempts=3, backoff=NO_JITTER, clock=clock, name="pay", listeners=[recorder])
    with pytest.raises(ConnectionError):
        retry.call(Flaky(5))
    scheduled = recorder.of(RetryScheduled)
    assert [e.attempt for e in scheduled] == [1, 2]
    assert [e.delay for e in scheduled] == pytest.approx([0.1, 0.2])
    (gave_up,) = recorder.of(RetriesExhausted)
    assert (gave_up.name, gave_up.attempts, gave_up.reason) == ("pay", 3, "attempts")


async def test_acall_retries_and_sleeps_on_the_clock(clock: FakeClock) -> None:
    flaky = Flaky(2)
    retry = Retry(attempts=3, backoff=NO_JITTER, clock=clock)
    assert await retry.acall(flaky.acall) == "ok"
    assert clock.sleeps == pytest.approx([0.1, 0.2])


async def test_decorator_works_on_coroutine_functions(clock: FakeClock) -> None:
    flaky = Flaky(1)

    @Retry(clock=clock)
    async def fetch() -> str:
        return flaky()

    assert await fetch() == "ok"


def test_decorator_works_on_functions(clock: FakeClock) -> None:
    flaky = Flaky(1)

    @Retry(clock=clock)
    def fetch() -> str:
        return flaky()

    assert fetch() == "ok"
    assert fetch.__name__ == "fetch"


def test_set_testing_skips_waits_and_caps_attempts() -> None:
    flaky = Flaky(10)
    with set_testing(True, attempts=2), pytest.raises(ConnectionError):
        Retry(attempts=10, backoff=Backoff(initial=30, cap=60)).call(flaky)
    assert flaky.calls == 2


def test_jitter_is_reproducible_with_a_seeded_rng(clock: FakeClock) -> None:
    def waits() -> list[float]:
        c = FakeClock()
        Retry(attempts=4, clock=c, rng=random.Random(42)).call(Flaky(3))
        return c.sleeps

    assert waits() == waits()


# -- budget ---------------------------------------------------------------------------


def test_budget_allows_ratio_of_requests_plus_floor(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.1, min_per_second=0.5, ttl=10, clock=clock)
    for _ in range(100):
        budget.deposit()
    granted = sum(budget.try_withdraw() for _ in range(100))
    assert granted == 15  # 10 % of 100 requests + 0.5/s over 10 s


def test_budget_deposits_expire_after_ttl(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0, ttl=10, clock=clock)
    for _ in range(10):
        budget.deposit()
    clock.advance(10.0)
    assert not budget.try_withdraw()


def test_shared_budget_stops_retries_of_every_caller(clock: FakeClock,
                                                     recorder: RecordingListener) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.2, ttl=10, clock=clock, name="pay",
                         listeners=[recorder])  # two retries in all
    first = Retry(attempts=5, budget=budget, clock=clock, listeners=[recorder])
    second = Retry(attempts=5, budget=budget, clock=clock, listeners=[recorder])
    one, two = Flaky(10), Flaky(10)
    with pytest.raises(ConnectionError):
        first.call(one)
    with pytest.raises(ConnectionError):
        second.call(two)
    assert one.calls + two.calls == 2 + 2  # two first attempts + two budgeted retries
    assert recorder.of(BudgetExhausted)[0].name == "pay"
    assert {e.reason for e in recorder.of(RetriesExhausted)} == {"budget"}


def test_budget_bounds_retry_amplification(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0, ttl=10, clock=clock)
    retry = Retry(attempts=3, budget=budget, backoff=Backoff(initial=0, cap=0), clock=clock)
    down = Flaky(10**9)
    for _ in range(1000):
        with pytest.raises(ConnectionError):
            retry.call(down)
    assert down.calls <= 1000 * 1.2


# -- backoff --------------------------------------------------------------------------


def test_backoff_without_jitter_doubles_up_to_the_cap() -> None:
    backoff = Backoff(initial=1, multiplier=2, cap=5, jitter="none")
    rng = random.Random(0)
    assert [backoff.delay(n, 0, rng) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_full_jitter_stays_under_the_exponential() -> None:
    backoff = Backoff(initial=1, multiplier=2, cap=100, jitter="full")
    rng = random.Random(0)
    assert all(0 <= backoff.delay(3, 0, rng) <= 4 for _ in range(1000))


def test_decorrelated_jitter_grows_from_the_previous_delay() -> None:
    backoff = Backoff(initial=1, cap=100, jitter="decorrelated")
    rng = random.Random(0)
    assert all(1 <= backoff.delay(2, 5, rng) <= 15 for _ in range(1000))


def test_backoff_survives_huge_retry_numbers() -> None:
    assert Backoff(cap=7, jitter="none").delay(10**6, 0, random.Random()) == 7


@pytest.mark.parametrize(("make", "field"), [
    (lambda: Retry(attempts=0), "Retry.attempts"),
    (lambda: Retry(timeout=0), "Retry.timeout"),
    (lambda: Retry(on="ConnectionError"), "Retry.on"),
    (lambda: Retry(backoff=0.1), "Retry.backoff"),
    (lambda: Backoff(cap=0.01, initial=1), "Backoff.cap"),
    (lambda: Backoff(jitter="random"), "Backoff.jitter"),
    (lambda: RetryBudget(ratio=-0.1), "RetryBudget.ratio"),
    (lambda: RetryBudget(ttl=0), "RetryBudget.ttl"),
])
def test_bad_configuration_names_the_field(make: object, field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")):
        make()  # type: ignore[operator]
