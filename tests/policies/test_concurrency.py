"""Policies under real concurrency: many threads or tasks, exact final counts.

Time that matters to a decision comes from a FakeClock that does not move, so
every count is exact. The only real waits are the bulkhead's asyncio queue
timeouts (tiny), and generous guards that turn a deadlock into a failure.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fournines import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    ConsecutiveFailures,
    Gcra,
    RateLimitedError,
    SlidingWindow,
    State,
    StateChanged,
    TokenBucket,
    deadline_after,
)
from fournines.testing import FakeClock, RecordingListener

THREADS = 8
GUARD = 30.0  # seconds before a stuck thread or task fails the test instead of hanging it


@pytest.fixture(autouse=True)
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads every microsecond instead of every 5 ms, so races get their chance."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released together; return their results."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def main(i: int) -> None:
        try:
            barrier.wait(GUARD)
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=main, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
        assert not thread.is_alive(), "a worker thread is stuck"
    if errors:
        raise errors[0]
    return results


# --- rate limiters ----------------------------------------------------------------------

LIMITERS = {
    "token_bucket": lambda clock: TokenBucket(rate=1.0, capacity=1000, clock=clock),
    "gcra": lambda clock: Gcra(rate=1.0, burst=1000, clock=clock),
    "sliding_counter": lambda clock: SlidingWindow(limit=1000, window=1.0, clock=clock),
    "sliding_log": lambda clock: SlidingWindow(limit=1000, window=1.0, mode="log", clock=clock),
}


@pytest.mark.parametrize("make", list(LIMITERS.values()), ids=list(LIMITERS))
def test_limiter_admits_exactly_its_capacity_across_threads(make: Callable[..., Any]) -> None:
    limiter = make(FakeClock())

    def hammer(_: int) -> tuple[int, int]:
        admitted = rejected = 0
        for _ in range(5_000):
            try:
                limiter.try_acquire()
            except RateLimitedError:
                rejected += 1
            else:
                admitted += 1
        return admitted, rejected

    results = run_threads(THREADS, hammer)
    assert sum(a for a, _ in results) == 1000
    assert sum(r for _, r in results) == THREADS * 5_000 - 1000


# --- circuit breaker --------------------------------------------------------------------


def test_half_open_breaker_grants_exactly_half_open_probes_permits_across_threads() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        trip=ConsecutiveFailures(threshold=1), reset_timeout=5.0, half_open_probes=3, clock=clock
    )
    breaker.try_acquire().failure(RuntimeError("down"))
    clock.advance(5.0)

    def hammer(_: int) -> tuple[list[object], int]:
        permits = []
        rejected = 0
        for _ in range(2_000):
            try:
                permits.append(breaker.try_acquire())
            except CircuitOpenError:
                rejected += 1
        return permits, rejected

    results = run_threads(THREADS, hammer)
    assert sum(len(p) for p, _ in results) == 3
    assert sum(r for _, r in results) == THREADS * 2_000 - 3
    assert breaker.state is State.HALF_OPEN


def test_closed_breaker_with_only_successes_emits_no_events_across_threads() -> None:
    recorder = RecordingListener()
    breaker = CircuitBreaker(listeners=[recorder])

    def hammer(_: int) -> int:
        return sum(breaker.call(lambda: 1) for _ in range(1_000))

    assert run_threads(THREADS, hammer) == [1_000] * THREADS
    assert recorder.events == []
    assert breaker.state is State.CLOSED


class Down(Exception):
    pass


def failing_breaker_run(
    threshold: int,
) -> tuple[CircuitBreaker, RecordingListener, int, list[type[BaseException]]]:
    """All threads call a failing fn through one breaker; return it, events, calls, outcomes."""
    recorder = RecordingListener()
    breaker = CircuitBreaker(
        trip=ConsecutiveFailures(threshold=threshold), reset_timeout=60.0,
        clock=FakeClock(), listeners=[recorder],
    )
    lock = threading.Lock()
    reached = 0

    def down() -> None:
        nonlocal reached
        with lock:
            reached += 1
        raise Down

    def hammer(_: int) -> list[type[BaseException]]:
        outcomes: list[type[BaseException]] = []
        for _ in range(500):
            try:
                breaker.call(down)
            except Exception as exc:
                outcomes.append(type(exc))
        return outcomes

    outcomes = [kind for kinds in run_threads(THREADS, hammer) for kind in kinds]
    return breaker, recorder, reached, outcomes


@pytest.mark.parametrize("threshold", [1, 5, 50])
def test_failing_calls_across_threads_open_the_breaker_exactly_once(threshold: int) -> None:
    breaker, recorder, _, _ = failing_breaker_run(threshold)
    assert [(e.old, e.new) for e in recorder.of(StateChanged)] == [("closed", "open")]
    assert breaker.state is State.OPEN


@pytest.mark.parametrize("threshold", [1, 5, 50])
def test_failing_calls_across_threads_reach_fn_only_until_the_breaker_opens(
    threshold: int,
) -> None:
    _, _, reached, outcomes = failing_breaker_run(threshold)
    # The threshold-th failure opens it; at most one call per other thread was in flight.
    assert threshold <= reached <= threshold + THREADS - 1
    assert outcomes.count(Down) == reached
    assert outcomes.count(CircuitOpenError) == THREADS * 500 - reached


# --- bulkhead, threads ------------------------------------------------------------------


def test_bulkhead_never_runs_more_than_max_concurrent_threads_and_completes_every_call() -> None:
    bulkhead = Bulkhead(max_concurrent=4, max_queue=100)
    lock = threading.Lock()
    inside = peak = 0

    def work() -> int:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        time.sleep(0)  # yield the GIL (not a timed wait) while holding a slot
        with lock:
            inside -= 1
        return 1

    results = run_threads(16, lambda _: sum(bulkhead.call(work) for _ in range(50)))
    assert sum(results) == 16 * 50
    assert 1 <= peak <= 4
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


def test_full_bulkhead_without_queue_runs_exactly_max_concurrent_and_rejects_the_rest() -> None:
    bulkhead = Bulkhead(max_concurrent=4, max_queue=0)
    cond = threading.Condition()
    entered = rejected = 0
    release = threading.Event()

    def held() -> str:
        nonlocal entered
        with cond:
            entered += 1
            cond.notify_all()
        assert release.wait(GUARD)
        return "ran"

    def caller(_: int) -> str:
        nonlocal rejected
        try:
            return bulkhead.call(held)
        except BulkheadFullError:
            with cond:
                rejected += 1
                cond.notify_all()
            return "rejected"

    outcome: list[list[str]] = []
    runner = threading.Thread(target=lambda: outcome.append(run_threads(16, caller)))
    runner.start()
    with cond:
        settled = cond.wait_for(lambda: entered + rejected == 16, GUARD)
    release.set()
    runner.join(GUARD)
    assert settled
    assert (entered, rejected) == (4, 12)
    assert sorted(outcome[0]) == ["ran"] * 4 + ["rejected"] * 12
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


# --- asyncio ----------------------------------------------------------------------------


async def test_token_bucket_admits_exactly_its_capacity_across_tasks() -> None:
    bucket = TokenBucket(rate=1.0, capacity=100, clock=FakeClock())

    async def ok() -> None:
        await asyncio.sleep(0)

    results = await asyncio.gather(*(bucket.acall(ok) for _ in range(500)),
                                   return_exceptions=True)
    assert results.count(None) == 100
    assert sum(isinstance(r, RateLimitedError) for r in results) == 400


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition()`` holds (guarded against hanging)."""
    async with asyncio.timeout(GUARD):
        while not condition():
            await asyncio.sleep(0)


async def test_bulkhead_runs_at_most_max_concurrent_tasks_and_completes_every_call() -> None:
    bulkhead = Bulkhead(max_concurrent=5, max_queue=50)
    inside = peak = 0

    async def work(i: int) -> int:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        for _ in range(i % 4 + 1):
            await asyncio.sleep(0)
        inside -= 1
        return i

    results = await asyncio.gather(*(bulkhead.acall(work, i) for i in range(50)))
    assert results == list(range(50))
    assert peak == 5
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


async def test_bulkhead_admits_queued_tasks_in_arrival_order() -> None:
    bulkhead = Bulkhead(max_concurrent=5, max_queue=50)
    entered: list[int] = []

    async def work(i: int) -> None:
        entered.append(i)
        for _ in range(3 - i % 3):  # finish out of order
            await asyncio.sleep(0)

    await asyncio.gather(*(bulkhead.acall(work, i) for i in range(50)))
    assert entered == list(range(50))


async def test_bulkhead_waiters_that_time_out_leave_the_queue_and_leak_no_slot() -> None:
    bulkhead = Bulkhead(max_concurrent=2, max_queue=10, max_wait=0.01)
    release = asyncio.Event()

    async def hold() -> None:
        await release.wait()

    async def quick() -> None:
        pass

    holders = [asyncio.create_task(bulkhead.acall(hold)) for _ in range(2)]
    await until(lambda: bulkhead.active == 2)
    results = await asyncio.gather(*(bulkhead.acall(quick) for _ in range(10)),
                                   return_exceptions=True)
    assert all(isinstance(r, BulkheadFullError) for r in results)
    assert bulkhead.queued == 0
    release.set()
    await asyncio.gather(*holders)
    assert (bulkhead.active, bulkhead.queued) == (0, 0)
    permits = [bulkhead.try_acquire(), bulkhead.try_acquire()]  # both slots are free again
    for permit in permits:
        permit.release()


async def test_bulkhead_waiters_behind_timed_out_ones_still_get_slots_in_order() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=10)
    release = asyncio.Event()
    entered: list[int] = []

    async def work(i: int) -> None:
        entered.append(i)
        if i == 0:
            await release.wait()

    async def impatient(i: int) -> None:
        async with deadline_after(0.01):
            await bulkhead.acall(work, i)

    holder = asyncio.create_task(bulkhead.acall(work, 0))
    await until(lambda: bulkhead.active == 1)
    tasks = [
        asyncio.create_task(impatient(i) if i % 2 else bulkhead.acall(work, i))
        for i in range(1, 9)
    ]
    await until(lambda: bulkhead.queued == 8)
    timed_out = await asyncio.gather(*(tasks[i - 1] for i in (1, 3, 5, 7)),
                                     return_exceptions=True)
    assert all(isinstance(r, BulkheadFullError) for r in timed_out)
    assert bulkhead.queued == 4
    release.set()
    await asyncio.gather(holder, *(tasks[i - 1] for i in (2, 4, 6, 8)))
    assert entered == [0, 2, 4, 6, 8]
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


async def test_cancelled_waiting_task_leaves_the_queue_and_leaks_no_slot() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=10)
    holder = bulkhead.try_acquire()

    async def quick() -> str:
        return "ran"

    waiter = asyncio.create_task(bulkhead.acall(quick))
    await until(lambda: bulkhead.queued == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.queued == 0
    holder.release()
    assert (bulkhead.active, bulkhead.queued) == (0, 0)
    assert await bulkhead.acall(quick) == "ran"


async def test_task_cancelled_after_being_handed_a_slot_passes_the_slot_on() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=10)
    holder = bulkhead.try_acquire()

    async def quick() -> str:
        return "ran"

    first = asyncio.create_task(bulkhead.acall(quick))
    second = asyncio.create_task(bulkhead.acall(quick))
    await until(lambda: bulkhead.queued == 2)
    holder.release()  # hands the slot to `first`, which has not run yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == "ran"
    assert (bulkhead.active, bulkhead.queued) == (0, 0)
