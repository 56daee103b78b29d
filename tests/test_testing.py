"""Specification of testing mode (set_testing) as the retry planner sees it."""

from __future__ import annotations

import pytest

from fournines import Backoff, ConfigurationError, RateLimitedError, Retry
from fournines.policies.retry import RetryPlanner
from fournines.testing import FakeClock, is_testing, set_testing


def test_attempts_cap_reaches_every_planner() -> None:
    planner = RetryPlanner(attempts=10)
    with set_testing(True, attempts=3):
        assert not planner.plan(2).stop
        assert planner.plan(3).reason == "attempts"


def test_waits_are_zero_even_on_a_fake_clock() -> None:
    clock = FakeClock()
    calls = []

    def down() -> None:
        calls.append(1)
        raise ConnectionError

    with set_testing(True), pytest.raises(ConnectionError):
        Retry(attempts=3, backoff=Backoff(initial=30, cap=60), clock=clock).call(down)
    assert len(calls) == 3
    assert clock.monotonic() == 0


def test_rejections_are_still_not_retried() -> None:
    calls = []

    def limited() -> None:
        calls.append(1)
        raise RateLimitedError("api", retry_after=0.1)

    with set_testing(True, attempts=5), pytest.raises(RateLimitedError):
        Retry(attempts=5).call(limited)
    assert len(calls) == 1


def test_context_manager_restores_the_previous_state() -> None:
    with set_testing(True, attempts=2):
        with set_testing(False):
            assert not is_testing()
            assert not RetryPlanner(attempts=5).plan(2).stop
        assert is_testing()
        assert RetryPlanner(attempts=5).plan(2).stop
    assert not is_testing()


@pytest.mark.parametrize("attempts", [0, -1, True, 1.5])
def test_bad_attempts_name_the_field(attempts: object) -> None:
    with pytest.raises(ConfigurationError, match=r"set_testing\.attempts"):
        set_testing(True, attempts=attempts)  # type: ignore[arg-type]
    assert not is_testing()
