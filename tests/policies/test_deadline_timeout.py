"""Specification of deadlines and the Timeout policy."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from fournines import (
    ConfigurationError,
    DeadlineExceeded,
    DeadlineExceededError,
    Timeout,
    current_deadline,
    deadline_after,
)
from fournines.testing import FakeClock, RecordingListener


def test_no_deadline_by_default() -> None:
    assert current_deadline() is None


def test_deadline_is_computed_on_entry(clock: FakeClock) -> None:
    scope = deadline_after(5, clock=clock)
    clock.advance(100)
    with scope as deadline:
        assert deadline.remaining() == 5
        assert current_deadline() is deadline
    assert current_deadline() is None


def test_nested_deadline_keeps_the_earlier(clock: FakeClock) -> None:
    with deadline_after(2, clock=clock) as outer:
        with deadline_after(10, clock=clock) as inner:
            assert inner is outer
            assert current_deadline() is outer
        with deadline_after(1, clock=clock) as shorter:
            assert shorter.remaining() == 1
        assert current_deadline() is outer


def test_deadline_expires_with_time(clock: FakeClock) -> None:
    with deadline_after(1, clock=clock) as deadline:
        clock.advance(1)
        assert deadline.expired()
        assert deadline.remaining() == 0


async def test_deadline_works_as_async_context_manager(clock: FakeClock) -> None:
    async with deadline_after(3, clock=clock) as deadline:
        assert current_deadline() is deadline


async def test_child_tasks_inherit_the_deadline(clock: FakeClock) -> None:
    async def child() -> float | None:
        deadline = current_deadline()
        return None if deadline is None else deadline.remaining()

    with deadline_after(3, clock=clock):
        assert await asyncio.create_task(child()) == 3


def test_deadline_rejects_non_numbers() -> None:
    with pytest.raises(ConfigurationError, match=r"deadline_after\.seconds"):
        deadline_after("soon")  # type: ignore[arg-type]


def test_deadline_exceeded_is_a_timeout_error() -> None:
    assert issubclass(DeadlineExceededError, TimeoutError)


def test_sync_timeout_sets_the_deadline_for_inner_calls(clock: FakeClock) -> None:
    seen = Timeout(2.5, clock=clock).call(current_deadline)
    assert seen is not None
    assert seen.remaining() == 2.5
    assert current_deadline() is None


def test_sync_timeout_returns_a_late_result_instead_of_losing_it(clock: FakeClock) -> None:
    def slow() -> str:
        clock.advance(5)
        return "done"

    assert Timeout(1, clock=clock).call(slow) == "done"


def test_timeout_refuses_calls_whose_deadline_already_passed(clock: FakeClock) -> None:
    calls = []
    with deadline_after(1, clock=clock):
        clock.advance(2)
        with pytest.raises(DeadlineExceededError):
            Timeout(5, clock=clock).call(lambda: calls.append(1))
    assert calls == []


async def test_async_timeout_cancels_the_call(recorder: RecordingListener) -> None:
    cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        await Timeout(0.02, listeners=[recorder], name="pay").acall(hang)
    assert cancelled.is_set()
    assert time.monotonic() - started < 10  # not the 30 s of the call
    (event,) = recorder.of(DeadlineExceeded)
    assert event.name == "pay"


async def test_async_timeout_is_capped_by_the_outer_deadline() -> None:
    async def remaining() -> float:
        deadline = current_deadline()
        assert deadline is not None
        return deadline.remaining()

    with deadline_after(0.5):
        assert await Timeout(60).acall(remaining) <= 0.5


async def test_async_timeout_passes_results_and_errors_through() -> None:
    async def ok() -> int:
        return 3

    async def bad() -> None:
        raise KeyError("x")

    timeout = Timeout(5)
    assert await timeout.acall(ok) == 3
    with pytest.raises(KeyError):
        await timeout.acall(bad)


async def test_outside_cancellation_is_not_turned_into_a_timeout() -> None:
    async def hang() -> None:
        await asyncio.sleep(30)

    task = asyncio.create_task(Timeout(20).acall(hang))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_task_is_usable_after_a_timeout() -> None:
    async def hang() -> None:
        await asyncio.sleep(30)

    with pytest.raises(DeadlineExceededError):
        await Timeout(0.01).acall(hang)
    await asyncio.sleep(0)  # no cancellation left pending on this task
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_timeout_decorates_coroutine_functions() -> None:
    @Timeout(0.01)
    async def hang() -> None:
        await asyncio.sleep(30)

    with pytest.raises(DeadlineExceededError):
        await hang()


def test_timeout_rejects_non_positive_seconds() -> None:
    with pytest.raises(ConfigurationError, match=r"Timeout\.seconds must be > 0"):
        Timeout(0)


def test_an_infinite_deadline_sets_none(clock: FakeClock) -> None:
    # math.inf means "no deadline of its own": code inside sees none, so nothing below
    # (an outgoing call's x-request-timeout-ms, a wait) has to handle an infinite budget.
    with deadline_after(math.inf, clock=clock) as deadline:
        assert current_deadline() is None
        assert deadline.remaining() == math.inf
    assert current_deadline() is None


def test_an_infinite_deadline_keeps_the_enclosing_one(clock: FakeClock) -> None:
    with deadline_after(2.0, clock=clock) as outer:
        with deadline_after(math.inf, clock=clock) as inner:
            assert inner is outer
            assert current_deadline() is outer
        assert current_deadline() is outer


@pytest.mark.parametrize("field", ["at", "clock"])
def test_a_deadline_cannot_be_moved(clock: FakeClock, field: str) -> None:
    # Nested scopes share the outer Deadline object: moving it would move theirs too.
    with deadline_after(2.0, clock=clock) as deadline:
        before = getattr(deadline, field)
        with pytest.raises(AttributeError):
            setattr(deadline, field, before)
        assert deadline.remaining() == 2.0
