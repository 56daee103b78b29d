"""Specification of Pipeline composition."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fournines import (
    Bulkhead,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    ConsecutiveFailures,
    DeadlineExceededError,
    Fallback,
    Pipeline,
    Retry,
    StaleCache,
    State,
    Timeout,
    TokenBucket,
    track_degradation,
)
from fournines.testing import FakeClock


class Tracer:
    """A policy that records when calls enter and leave it."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.log.append(f"enter {self.name}")
        try:
            return fn(*args, **kwargs)
        finally:
            self.log.append(f"leave {self.name}")

    async def acall(self, fn: Callable[..., Awaitable[Any]], /, *args: Any,
                    **kwargs: Any) -> Any:
        self.log.append(f"enter {self.name}")
        try:
            return await fn(*args, **kwargs)
        finally:
            self.log.append(f"leave {self.name}")


def test_first_policy_is_outermost() -> None:
    log: list[str] = []
    pipeline = Pipeline(Tracer("a", log), Tracer("b", log), Tracer("c", log))
    assert pipeline.call(lambda x: x * 2, 21) == 42
    assert log == ["enter a", "enter b", "enter c", "leave c", "leave b", "leave a"]


async def test_async_pipeline_keeps_the_order() -> None:
    log: list[str] = []
    pipeline = Pipeline(Tracer("a", log), Tracer("b", log))

    async def work(x: int, *, y: int) -> int:
        return x + y

    assert await pipeline.acall(work, 1, y=2) == 3
    assert log == ["enter a", "enter b", "leave b", "leave a"]


def test_empty_pipeline_just_calls() -> None:
    assert Pipeline().call(lambda: 5) == 5


def test_decorator_builds_the_chain_once() -> None:
    log: list[str] = []

    @Pipeline(Tracer("a", log), Tracer("b", log))
    def double(x: int) -> int:
        return 2 * x

    assert double(2) == 4
    assert double(3) == 6
    assert log.count("enter b") == 2


async def test_decorator_on_coroutine_functions() -> None:
    log: list[str] = []

    @Pipeline(Tracer("a", log))
    async def double(x: int) -> int:
        return 2 * x

    assert await double(4) == 8


def test_retry_outside_breaker_retries_each_attempt_through_it(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock, trip=ConsecutiveFailures(threshold=3))
    calls = []

    def down() -> None:
        calls.append(1)
        raise ConnectionError

    pipeline = Pipeline(Retry(attempts=5, max_retry_after=1, clock=clock), breaker)
    with pytest.raises(CircuitOpenError):
        pipeline.call(down)
    assert len(calls) == 3  # the breaker opened after 3 and refused the rest
    assert breaker.state is State.OPEN


def test_fallback_outermost_answers_an_open_breaker(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    breaker.force_open()
    pipeline = Pipeline(Fallback(value="guest"), breaker)
    with track_degradation() as degradation:
        assert pipeline.call(lambda: "alice") == "guest"
    assert degradation.degraded


def test_stale_cache_in_a_pipeline_keys_by_the_callers_arguments(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    pipeline = Pipeline(StaleCache(clock=clock), breaker)

    def status(order: str) -> str:
        return f"{order} paid"

    assert pipeline.call(status, "o-1") == "o-1 paid"
    breaker.force_open()
    assert pipeline.call(status, "o-1") == "o-1 paid"


async def test_whole_async_stack_works_together() -> None:
    pipeline = Pipeline(
        Timeout(1.0),
        Retry(attempts=3),
        CircuitBreaker(),
        TokenBucket(rate=1000, capacity=100),
        Bulkhead(max_concurrent=10, max_queue=50),  # rejections are not retried: queue
    )

    async def work(i: int) -> int:
        await asyncio.sleep(0)
        return i

    assert await asyncio.gather(*(pipeline.acall(work, i) for i in range(50))) == list(range(50))


async def test_timeout_outermost_bounds_all_retries() -> None:
    attempts = []

    async def hang() -> None:
        attempts.append(1)
        await asyncio.sleep(30)

    pipeline = Pipeline(Timeout(0.05), Retry(attempts=100))
    with pytest.raises(DeadlineExceededError):
        await pipeline.acall(hang)
    assert len(attempts) == 1


def test_policies_must_have_call_and_acall() -> None:
    with pytest.raises(ConfigurationError, match=r"Pipeline\.policies\[1\]"):
        Pipeline(Retry(), object())  # type: ignore[arg-type]


def test_alternating_functions_each_run_through_the_chain() -> None:
    log: list[str] = []
    pipeline = Pipeline(Tracer("a", log), Tracer("b", log))
    results = [pipeline.call(fn, 10) for fn in (lambda x: x + 1, lambda x: x * 3) * 2]
    assert results == [11, 30, 11, 30]
    assert log.count("enter b") == 4


async def test_alternating_coroutine_functions_each_run_through_the_chain() -> None:
    pipeline = Pipeline(Retry(), CircuitBreaker())

    async def inc(x: int) -> int:
        return x + 1

    async def triple(x: int) -> int:
        return x * 3

    assert [await pipeline.acall(fn, 10) for fn in (inc, triple, inc)] == [11, 30, 11]
