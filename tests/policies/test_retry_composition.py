"""Specification: an open breaker (or any rejection) fails fast through a retry."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fournines import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    ConsecutiveFailures,
    Pipeline,
    RateLimitedError,
    RetriesExhausted,
    Retry,
    deadline_after,
)
from fournines.testing import FakeClock, RecordingListener

NO_JITTER = Backoff(initial=0.1, multiplier=2, cap=1.0, jitter="none")


def open_breaker(clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker("payments", clock=clock, reset_timeout=60.0,
                             trip=ConsecutiveFailures(threshold=1))
    breaker.force_open()
    return breaker


def tripped_breaker(clock: FakeClock) -> CircuitBreaker:
    """A breaker opened by a failure, so its rejections carry ``retry_after``."""
    breaker = CircuitBreaker("payments", clock=clock, reset_timeout=60.0,
                             trip=ConsecutiveFailures(threshold=1))
    with pytest.raises(ConnectionError):
        breaker.call(_down)
    return breaker


def _down() -> str:
    raise ConnectionError("down")


async def _adown() -> str:
    raise ConnectionError("down")


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return "ok"

    async def acall(self) -> str:
        self.calls += 1
        return "ok"


@pytest.mark.parametrize("make_breaker", [open_breaker, tripped_breaker])
def test_pipeline_of_retry_and_open_breaker_fails_fast(
    clock: FakeClock, make_breaker: Callable[[FakeClock], CircuitBreaker]
) -> None:
    breaker = make_breaker(clock)
    fn = Counter()
    pipeline = Pipeline(Retry(attempts=3, clock=clock), breaker)
    with pytest.raises(CircuitOpenError):
        pipeline.call(fn)
    assert fn.calls == 0
    assert clock.sleeps == []


@pytest.mark.parametrize("make_breaker", [open_breaker, tripped_breaker])
async def test_async_pipeline_of_retry_and_open_breaker_fails_fast(
    clock: FakeClock, make_breaker: Callable[[FakeClock], CircuitBreaker]
) -> None:
    breaker = make_breaker(clock)
    fn = Counter()
    pipeline = Pipeline(Retry(attempts=3, clock=clock), breaker)
    with pytest.raises(CircuitOpenError):
        await pipeline.acall(fn.acall)
    assert fn.calls == 0
    assert clock.sleeps == []


def test_stacked_decorators_fail_fast_on_an_open_breaker(clock: FakeClock) -> None:
    breaker = tripped_breaker(clock)
    fn = Counter()

    @Retry(attempts=3, clock=clock)
    @breaker
    def fetch() -> str:
        return fn()

    with pytest.raises(CircuitOpenError):
        fetch()
    assert fn.calls == 0
    assert clock.sleeps == []


async def test_stacked_async_decorators_fail_fast_on_an_open_breaker(clock: FakeClock) -> None:
    breaker = tripped_breaker(clock)
    fn = Counter()

    @Retry(attempts=3, clock=clock)
    @breaker
    async def fetch() -> str:
        return await fn.acall()

    with pytest.raises(CircuitOpenError):
        await fetch()
    assert fn.calls == 0
    assert clock.sleeps == []


def test_breaker_opening_during_retries_ends_them_at_once(clock: FakeClock) -> None:
    breaker = CircuitBreaker("payments", clock=clock, trip=ConsecutiveFailures(threshold=2))
    calls = []

    def down() -> None:
        calls.append(1)
        raise ConnectionError("down")

    with pytest.raises(CircuitOpenError):
        Pipeline(Retry(attempts=5, backoff=NO_JITTER, clock=clock), breaker).call(down)
    assert len(calls) == 2
    assert clock.sleeps == pytest.approx([0.1, 0.2])  # the third attempt was refused at once


async def test_async_breaker_opening_during_retries_ends_them_at_once(clock: FakeClock) -> None:
    breaker = CircuitBreaker("payments", clock=clock, trip=ConsecutiveFailures(threshold=2))
    calls = []

    async def down() -> None:
        calls.append(1)
        raise ConnectionError("down")

    with pytest.raises(CircuitOpenError):
        await Pipeline(Retry(attempts=5, backoff=NO_JITTER, clock=clock), breaker).acall(down)
    assert len(calls) == 2
    assert clock.sleeps == pytest.approx([0.1, 0.2])


def test_rejections_are_not_retried_by_default(clock: FakeClock) -> None:
    calls = []

    def limited() -> None:
        calls.append(1)
        raise RateLimitedError("api", retry_after=0.01)

    with pytest.raises(RateLimitedError):
        Retry(attempts=3, clock=clock).call(limited)
    assert len(calls) == 1
    assert clock.sleeps == []


def test_explicit_on_still_retries_rejections(clock: FakeClock) -> None:
    calls = []

    def limited() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RateLimitedError("api", retry_after=0.5)
        return "ok"

    assert Retry(on=RateLimitedError, backoff=NO_JITTER, clock=clock).call(limited) == "ok"
    assert clock.sleeps == [0.5]


@pytest.mark.parametrize("on", [Exception, CircuitOpenError])
def test_explicit_on_with_an_open_breaker_still_fails_fast(
    clock: FakeClock, recorder: RecordingListener, on: type[Exception]
) -> None:
    # The breaker's hint (~60 s until half-open) is beyond the backoff cap (1 s).
    breaker = tripped_breaker(clock)
    retry = Retry(attempts=3, on=on, backoff=NO_JITTER, clock=clock, listeners=[recorder])
    with pytest.raises(CircuitOpenError):
        Pipeline(retry, breaker).call(Counter())
    assert clock.sleeps == []
    (gave_up,) = recorder.of(RetriesExhausted)
    assert (gave_up.attempts, gave_up.reason) == (1, "retry_after")


def test_hint_beyond_max_retry_after_ends_the_retry(clock: FakeClock,
                                                    recorder: RecordingListener) -> None:
    calls = []

    def limited() -> None:
        calls.append(1)
        raise RateLimitedError("api", retry_after=999_999_999)

    retry = Retry(on=RateLimitedError, max_retry_after=30, clock=clock, listeners=[recorder])
    with pytest.raises(RateLimitedError):
        retry.call(limited)
    assert len(calls) == 1
    assert clock.sleeps == []
    assert recorder.of(RetriesExhausted)[0].reason == "retry_after"


def test_hint_beyond_the_backoff_cap_ends_the_retry_by_default(clock: FakeClock) -> None:
    calls = []

    def limited() -> None:
        calls.append(1)
        raise RateLimitedError("api", retry_after=1.5)

    with pytest.raises(RateLimitedError):
        Retry(on=RateLimitedError, backoff=NO_JITTER, clock=clock).call(limited)  # cap 1 s
    assert len(calls) == 1
    assert clock.sleeps == []


def test_hint_beyond_the_retrys_own_timeout_ends_the_retry(
    clock: FakeClock, recorder: RecordingListener
) -> None:
    calls = []

    def limited() -> None:
        calls.append(1)
        raise RateLimitedError("api", retry_after=3)

    retry = Retry(on=RateLimitedError, timeout=2, max_retry_after=10, clock=clock,
                  listeners=[recorder])
    with pytest.raises(RateLimitedError):
        retry.call(limited)
    assert clock.sleeps == []
    assert recorder.of(RetriesExhausted)[0].reason == "retry_after"


async def test_hint_beyond_the_deadline_ends_the_retry(
    clock: FakeClock, recorder: RecordingListener
) -> None:
    calls = []

    async def limited() -> None:
        calls.append(1)
        raise RateLimitedError("api", retry_after=3)

    retry = Retry(on=RateLimitedError, max_retry_after=10, clock=clock, listeners=[recorder])
    with deadline_after(2, clock=clock), pytest.raises(RateLimitedError):
        await retry.acall(limited)
    assert clock.sleeps == []
    assert recorder.of(RetriesExhausted)[0].reason == "retry_after"


def test_a_non_rejection_inside_a_closed_breaker_is_still_retried(clock: FakeClock) -> None:
    breaker = CircuitBreaker("payments", clock=clock, trip=ConsecutiveFailures(threshold=5))
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("blip")
        return "ok"

    assert Pipeline(Retry(attempts=3, backoff=NO_JITTER, clock=clock), breaker).call(flaky) == "ok"
    assert clock.sleeps == pytest.approx([0.1, 0.2])


async def test_async_decorated_pipeline_fails_fast(clock: FakeClock) -> None:
    breaker = tripped_breaker(clock)

    @Pipeline(Retry(attempts=3, clock=clock), breaker)
    async def fetch() -> str:
        return await _adown()

    with pytest.raises(CircuitOpenError):
        await fetch()
    assert clock.sleeps == []
