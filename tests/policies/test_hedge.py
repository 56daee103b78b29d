"""Hedge: one concurrent twin for a late idempotent call (time from a FakeClock)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import fournines
from fournines import ConfigurationError, Pipeline, Retry, RetryBudget, RetryScheduled
from fournines.policies.hedge import Hedge
from fournines.testing import FakeClock, RecordingListener


class Service:
    """Attempts that answer in the order the test releases them."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.gates: list[asyncio.Event] = []
        self.outcomes: dict[int, Any] = {}

    async def fetch(self, key: str) -> str:
        number = len(self.started)
        self.started.append(number)
        gate = asyncio.Event()
        self.gates.append(gate)
        try:
            if number not in self.outcomes:
                await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(number)
            raise
        outcome = self.outcomes.get(number, f"{key} from attempt {number}")
        if isinstance(outcome, BaseException):
            raise outcome
        return str(outcome)


def hedge(clock: FakeClock, **kwargs: Any) -> Hedge:
    return Hedge(delay=kwargs.pop("delay", 1.0), clock=clock, **kwargs)


async def test_a_late_call_is_hedged_and_the_hedge_wins() -> None:
    clock, service, recorder = FakeClock(), Service(), RecordingListener()
    service.outcomes[1] = "fast"  # the hedge answers at once; the first never does
    result = await hedge(clock, listeners=[recorder]).acall(service.fetch, "k")
    assert result == "fast"
    assert service.started == [0, 1]
    assert service.cancelled == [0]  # the loser was cancelled, not awaited
    assert clock.sleeps == [1.0]
    [event] = recorder.of(RetryScheduled)
    assert (event.policy, event.delay) == ("hedge", 1.0)


async def test_a_call_that_answers_in_time_is_not_hedged() -> None:
    clock, service, recorder = FakeClock(), Service(), RecordingListener()
    service.outcomes[0] = "quick"
    assert await hedge(clock, listeners=[recorder]).acall(service.fetch, "k") == "quick"
    assert service.started == [0]
    assert recorder.of(RetryScheduled) == []


async def test_a_failed_hedge_lets_the_first_attempt_win() -> None:
    clock, service = FakeClock(), Service()
    service.outcomes[1] = ConnectionError("hedge refused")

    async def release_first() -> None:
        while len(service.started) < 2:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        service.gates[0].set()

    releaser = asyncio.ensure_future(release_first())
    assert await hedge(clock).acall(service.fetch, "k") == "k from attempt 0"
    await releaser


async def test_when_both_fail_the_first_attempts_error_is_raised() -> None:
    clock, service = FakeClock(), Service()
    service.outcomes[1] = ConnectionError("second")

    async def fail_first() -> None:
        while len(service.started) < 2:
            await asyncio.sleep(0)
        service.outcomes[0] = ConnectionError("first")
        service.gates[0].set()

    failer = asyncio.ensure_future(fail_first())
    with pytest.raises(ConnectionError, match="first"):
        await hedge(clock).acall(service.fetch, "k")
    await failer


async def test_an_error_outside_on_ends_the_race_at_once() -> None:
    clock, service = FakeClock(), Service()
    service.outcomes[1] = KeyError("no such key")
    with pytest.raises(KeyError):
        await hedge(clock, on=ConnectionError).acall(service.fetch, "k")
    assert service.cancelled == [0]


async def test_a_bad_result_does_not_win() -> None:
    clock, service = FakeClock(), Service()
    service.outcomes[1] = "503"

    async def release_first() -> None:
        while len(service.started) < 2:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        service.outcomes[0] = "200"
        service.gates[0].set()

    releaser = asyncio.ensure_future(release_first())
    result = await hedge(clock, on_result=lambda r: r == "503").acall(service.fetch, "k")
    assert result == "200"
    await releaser


async def test_hedges_draw_from_the_retry_budget() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, ttl=10.0, clock=clock)  # one hedge
    policy = hedge(clock, budget=budget)
    hedged = 0
    for _ in range(3):
        service = Service()
        service.outcomes[1] = "hedge"
        task = asyncio.ensure_future(policy.acall(service.fetch, "k"))
        while len(service.started) < 1 or not clock.sleeps:
            await asyncio.sleep(0)
        for _ in range(5):
            await asyncio.sleep(0)
        if not task.done():
            service.gates[0].set()
        hedged += await task == "hedge"
        clock.sleeps.clear()
    assert hedged == 1


async def test_no_hedge_when_the_deadline_would_pass_first() -> None:
    clock, service = FakeClock(), Service()
    service.outcomes[0] = "only"
    async with fournines.deadline_after(0.5):
        assert await hedge(clock, delay=1.0).acall(service.fetch, "k") == "only"
    assert clock.sleeps == []


async def test_cancelling_the_call_cancels_both_attempts() -> None:
    clock, service = FakeClock(), Service()
    task = asyncio.ensure_future(hedge(clock).acall(service.fetch, "k"))
    while len(service.started) < 2:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(service.cancelled) == [0, 1]


def test_sync_call_runs_once_unhedged() -> None:
    calls: list[int] = []
    assert hedge(FakeClock()).call(lambda x: calls.append(x) or x, 7) == 7
    assert calls == [7]


async def test_hedge_composes_in_a_pipeline_sync_and_async() -> None:
    clock, service = FakeClock(), Service()
    service.outcomes[1] = "hedged"
    pipeline = Pipeline(Retry(attempts=2, clock=clock), hedge(clock))
    assert await pipeline.acall(service.fetch, "k") == "hedged"
    assert pipeline.call(lambda: "sync") == "sync"


def test_hedge_is_exported_with_read_only_settings() -> None:
    policy = fournines.Hedge(delay=0.2)
    assert policy.delay == 0.2
    with pytest.raises(AttributeError):
        policy.delay = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"delay": -1.0}, "Hedge.delay"), ({"delay": "1"}, "Hedge.delay"),
    ({"delay": 1.0, "budget": 5}, "Hedge.budget"),
    ({"delay": 1.0, "on": "errors"}, "Hedge.on"),
    ({"delay": 1.0, "on_result": 3}, "Hedge.on_result"),
])
def test_bad_settings_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")):
        Hedge(**kwargs)
