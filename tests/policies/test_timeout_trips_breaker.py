"""Specification: a call that a fournines Timeout cancels is a failure to the breakers
inside it (a hung dependency opens them); a cancellation from anywhere else is not.

The timers are asyncio's own (real, and short); the breakers read a FakeClock, so an open
breaker stays open for as long as a test looks at it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from fournines import (
    Backoff,
    Bulkhead,
    CircuitBreaker,
    DeadlineExceededError,
    Pipeline,
    Retry,
    StaleCache,
    State,
    Timeout,
    TokenBucket,
    deadline_after,
)
from fournines.testing import FakeClock

TICK = 0.01  # the Timeout of every test: long enough to start the call, short to wait out


async def hang() -> str:
    """A dependency that never answers."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def breaker_of(clock: FakeClock, **kwargs: object) -> CircuitBreaker:
    return CircuitBreaker("payments", clock=clock, **kwargs)  # type: ignore[arg-type]


def retry() -> Retry:
    return Retry(attempts=3, backoff=Backoff(initial=0.001, cap=0.002))


# Every order of the README (and the issue's) with the breaker inside the Timeout, and
# the breaker outside it, where the DeadlineExceededError itself reaches the breaker.
ORDERS: dict[str, Callable[[CircuitBreaker], Pipeline]] = {
    "timeout-retry-breaker": lambda b: Pipeline(Timeout(TICK), retry(), b),
    "readme-protecting-a-call": lambda b: Pipeline(
        StaleCache(max_age=300), Timeout(TICK), retry(), TokenBucket(rate=100, capacity=20),
        b, Bulkhead(max_concurrent=20),
    ),
    "timeout-breaker": lambda b: Pipeline(Timeout(TICK), b),
    "breaker-timeout": lambda b: Pipeline(b, Timeout(TICK)),
}


async def time_out(call: Callable[[], Awaitable[object]], times: int = 5) -> None:
    for _ in range(times):
        with pytest.raises(DeadlineExceededError):
            await call()


@pytest.mark.parametrize("order", ORDERS)
async def test_a_hung_dependency_opens_the_breaker(clock: FakeClock, order: str) -> None:
    breaker = breaker_of(clock)
    pipeline = ORDERS[order](breaker)
    await time_out(lambda: pipeline.acall(hang), times=4)
    assert breaker.state is State.CLOSED
    await time_out(lambda: pipeline.acall(hang), times=1)
    assert breaker.state is State.OPEN


async def test_stacked_decorators_open_the_breaker_too(clock: FakeClock) -> None:
    breaker = breaker_of(clock)
    protected = Timeout(TICK)(retry()(breaker(hang)))
    await time_out(protected)
    assert breaker.state is State.OPEN


async def test_a_timeout_cut_short_by_the_enclosing_deadline_counts(clock: FakeClock) -> None:
    breaker = breaker_of(clock)
    pipeline = Pipeline(Timeout(10), breaker)  # the deadline around it is far shorter
    for _ in range(5):
        async with deadline_after(TICK):
            with pytest.raises(DeadlineExceededError):
                await pipeline.acall(hang)
    assert breaker.state is State.OPEN


async def cancel_from_outside(call: Callable[[], Awaitable[object]]) -> None:
    task = asyncio.ensure_future(call())
    for _ in range(5):  # let it reach the dependency
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("order", ["timeout-retry-breaker", "readme-protecting-a-call",
                                   "timeout-breaker"])
async def test_a_caller_that_goes_away_is_not_a_failure(clock: FakeClock, order: str) -> None:
    breaker = breaker_of(clock)
    pipeline = ORDERS[order](breaker)
    for _ in range(5):
        await cancel_from_outside(lambda: pipeline.acall(hang))
    assert breaker.state is State.CLOSED


async def open_then_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    await time_out(lambda: Pipeline(Timeout(TICK), breaker).acall(hang))
    clock.advance(breaker.reset_timeout)
    assert breaker.state is State.HALF_OPEN


async def test_a_probe_that_times_out_opens_the_breaker_again(clock: FakeClock) -> None:
    breaker = breaker_of(clock, reset_timeout=1.0, half_open_probes=1)
    await open_then_half_open(breaker, clock)
    await time_out(lambda: Pipeline(Timeout(TICK), breaker).acall(hang), times=1)
    assert breaker.state is State.OPEN


async def test_a_probe_whose_caller_goes_away_frees_its_slot(clock: FakeClock) -> None:
    breaker = breaker_of(clock, reset_timeout=1.0, half_open_probes=1)
    await open_then_half_open(breaker, clock)
    await cancel_from_outside(lambda: Pipeline(Timeout(10), breaker).acall(hang))
    assert breaker.state is State.HALF_OPEN
    breaker.try_acquire().success()  # the slot is free again, and the probe closes it
    assert breaker.state is State.CLOSED


async def test_a_two_step_permit_reports_a_cancellation_with_cancelled(
    clock: FakeClock,
) -> None:
    breaker = breaker_of(clock)

    async def guarded() -> str:
        permit = breaker.try_acquire()
        try:
            result = await hang()
        except asyncio.CancelledError:
            permit.cancelled()  # a failure if a fournines deadline cancelled the call
            raise
        permit.success()
        return result

    await time_out(lambda: Timeout(TICK).acall(guarded))
    assert breaker.state is State.OPEN
