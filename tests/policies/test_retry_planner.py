"""Specification of RetryPlanner, the one retry decision (Retry, transports, ladders)."""

from __future__ import annotations

import pytest

from fournines import (
    Backoff,
    ConfigurationError,
    RetriesExhausted,
    RetryBudget,
    RetryScheduled,
    deadline_after,
)
from fournines.policies.retry import RetryDecision, RetryPlanner
from fournines.testing import FakeClock, RecordingListener, set_testing

NO_JITTER = Backoff(initial=0.1, multiplier=2, cap=1.0, jitter="none")


def planner(clock: FakeClock, **kwargs: object) -> RetryPlanner:
    return RetryPlanner(backoff=NO_JITTER, clock=clock, **kwargs)  # type: ignore[arg-type]


def test_waits_the_backoff_until_the_attempts_are_used(clock: FakeClock) -> None:
    p = planner(clock, attempts=3)
    assert p.plan(1) == RetryDecision(delay=0.1)
    assert p.plan(2, previous=0.1) == RetryDecision(delay=0.2)
    assert p.plan(3, previous=0.2) == RetryDecision(reason="attempts")


def test_a_decision_to_stop_says_so(clock: FakeClock) -> None:
    assert planner(clock, attempts=1).plan(1).stop
    assert not planner(clock, attempts=2).plan(1).stop


def test_an_explicit_hint_lengthens_the_wait(clock: FakeClock) -> None:
    assert planner(clock).plan(1, retry_after=0.7).delay == 0.7


def test_the_errors_retry_after_is_the_hint(clock: FakeClock) -> None:
    class Busy(Exception):
        retry_after = 0.6

    assert planner(clock).plan(1, error=Busy()).delay == 0.6


def test_a_hint_shorter_than_the_backoff_changes_nothing(clock: FakeClock) -> None:
    assert planner(clock).plan(1, retry_after=0.01).delay == 0.1


@pytest.mark.parametrize("hint", [1.5, 999_999_999.0, float("inf")])
def test_a_hint_beyond_the_backoff_cap_stops(clock: FakeClock, hint: float) -> None:
    assert planner(clock).plan(1, retry_after=hint).reason == "retry_after"


def test_a_nan_hint_is_ignored(clock: FakeClock) -> None:
    assert planner(clock).plan(1, retry_after=float("nan")).delay == 0.1


def test_max_retry_after_sets_the_longest_hint(clock: FakeClock) -> None:
    p = planner(clock, max_retry_after=30)
    assert p.plan(1, retry_after=30).delay == 30
    assert p.plan(1, retry_after=31).reason == "retry_after"
    assert p.max_retry_after == 30


def test_max_retry_after_defaults_to_the_backoff_cap(clock: FakeClock) -> None:
    assert planner(clock).max_retry_after == NO_JITTER.cap


def test_own_timeout_counts_from_start(clock: FakeClock) -> None:
    p = planner(clock, timeout=1.0, attempts=10)
    start = p.begin()
    clock.advance(0.85)
    assert p.plan(1, start=start).delay == 0.1
    assert p.plan(2, previous=0.1, start=start).reason == "timeout"


def test_a_hint_past_the_own_timeout_stops_for_the_hint(clock: FakeClock) -> None:
    p = planner(clock, timeout=1.0, max_retry_after=5)
    assert p.plan(1, start=clock.monotonic(), retry_after=2).reason == "retry_after"


def test_the_current_deadline_is_respected(clock: FakeClock) -> None:
    p = planner(clock, attempts=10)
    with deadline_after(0.15, clock=clock):
        assert p.plan(1).delay == 0.1
        assert p.plan(2, previous=0.1).reason == "deadline"


def test_a_deadline_given_is_used_instead_of_the_current_one(clock: FakeClock) -> None:
    with deadline_after(0.05, clock=clock) as short:
        pass
    assert planner(clock).plan(1, deadline=short).reason == "deadline"


def test_a_hint_past_the_deadline_stops_for_the_hint(clock: FakeClock) -> None:
    p = planner(clock, max_retry_after=5)
    with deadline_after(1, clock=clock):
        assert p.plan(1, retry_after=2).reason == "retry_after"


def test_each_retry_is_withdrawn_from_the_budget(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0, min_per_second=0.1, ttl=10, clock=clock)  # one retry
    p = planner(clock, budget=budget, attempts=10)
    p.begin()
    assert not p.plan(1).stop
    assert p.plan(2).reason == "budget"


def test_begin_deposits_one_request(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=1, min_per_second=0, ttl=10, clock=clock)
    planner(clock, budget=budget).begin()
    assert budget.balance == 1


def test_events_tell_the_wait_and_the_stop(clock: FakeClock, recorder: RecordingListener) -> None:
    p = planner(clock, attempts=2, name="payments", listeners=[recorder])
    error = ConnectionError("down")
    p.plan(1, error=error)
    p.plan(2, previous=0.1, error=error)
    (scheduled,) = recorder.of(RetryScheduled)
    assert (scheduled.name, scheduled.attempt, scheduled.delay, scheduled.error) == (
        "payments", 1, 0.1, error)
    (stopped,) = recorder.of(RetriesExhausted)
    assert (stopped.name, stopped.attempts, stopped.reason) == ("payments", 2, "attempts")


def test_testing_mode_caps_attempts_and_zeroes_waits(clock: FakeClock) -> None:
    p = planner(clock, attempts=10)
    with set_testing(True, attempts=2):
        assert p.plan(1) == RetryDecision(delay=0.0)
        assert p.plan(2).reason == "attempts"
    assert p.plan(2).delay == 0.2


def test_testing_mode_still_refuses_a_hostile_hint(clock: FakeClock) -> None:
    with set_testing(True):
        assert planner(clock).plan(1, retry_after=3600).reason == "retry_after"


def test_settings_are_read_only(clock: FakeClock) -> None:
    p = planner(clock)
    with pytest.raises(AttributeError):
        p.attempts = 0  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"attempts": 0}, "RetryPlanner.attempts"),
    ({"timeout": 0}, "RetryPlanner.timeout"),
    ({"max_retry_after": -1}, "RetryPlanner.max_retry_after"),
    ({"backoff": 0.1}, "RetryPlanner.backoff"),
    ({"budget": 5}, "RetryPlanner.budget"),
])
def test_bad_configuration_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")):
        RetryPlanner(**kwargs)  # type: ignore[arg-type]
