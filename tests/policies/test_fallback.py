"""Specification of Fallback, StaleCache and degradation tracking."""

from __future__ import annotations

import asyncio

import pytest

from fournines import (
    CircuitOpenError,
    ConfigurationError,
    Fallback,
    FallbackUsed,
    StaleCache,
    track_degradation,
)
from fournines.testing import FakeClock, RecordingListener


class Down(Exception):
    pass


def down(*_: object) -> str:
    raise Down("payment down")


def test_fallback_value_answers_a_failed_call(recorder: RecordingListener) -> None:
    fallback = Fallback(value="unknown", name="status", listeners=[recorder])
    assert fallback.call(down) == "unknown"
    (event,) = recorder.of(FallbackUsed)
    assert event.name == "status"
    assert isinstance(event.error, Down)
    assert event.stale_age is None


def test_fallback_fn_gets_the_error() -> None:
    fallback = Fallback(fn=lambda exc: f"fallback after {type(exc).__name__}")
    assert fallback.call(down) == "fallback after Down"


def test_fallback_only_on_chosen_errors() -> None:
    fallback = Fallback(value="guest", on=CircuitOpenError)
    assert fallback.call(lambda: (_ for _ in ()).throw(CircuitOpenError("p"))) == "guest"
    with pytest.raises(Down):
        fallback.call(down)


def test_fallback_does_not_touch_successes() -> None:
    assert Fallback(value=0).call(lambda: 42) == 42


async def test_fallback_awaits_an_async_fn() -> None:
    async def adown() -> str:
        raise Down

    async def default(exc: Exception) -> str:
        return "default avatar"

    assert await Fallback(fn=default).acall(adown) == "default avatar"


def test_fallback_needs_exactly_one_of_value_and_fn() -> None:
    with pytest.raises(ConfigurationError, match="exactly one of value= or fn="):
        Fallback()
    with pytest.raises(ConfigurationError, match="exactly one of value= or fn="):
        Fallback(value=1, fn=lambda e: 2)


def test_degradation_scope_reports_fallbacks() -> None:
    fallback = Fallback(value="guest", name="profile")
    with track_degradation() as degradation:
        fallback.call(lambda: "alice")
        assert not degradation.degraded
        fallback.call(down)
    assert degradation.degraded
    assert degradation.sources == ["profile"]


async def test_degradation_scope_sees_fallbacks_in_child_tasks() -> None:
    fallback = Fallback(value="guest", name="profile")

    async def adown() -> str:
        raise Down

    with track_degradation() as degradation:
        await asyncio.gather(fallback.acall(adown), fallback.acall(adown))
    assert degradation.sources == ["profile", "profile"]


def test_stale_cache_serves_the_last_good_result(clock: FakeClock,
                                                 recorder: RecordingListener) -> None:
    cache: StaleCache[str] = StaleCache(max_age=300, clock=clock, listeners=[recorder])
    assert cache.call(lambda order: f"{order}: paid", "o-1") == "o-1: paid"
    clock.advance(120)
    with track_degradation() as degradation:
        assert cache.call(down, "o-1") == "o-1: paid"
    assert degradation.degraded
    assert recorder.of(FallbackUsed)[0].stale_age == 120


def test_stale_cache_refuses_results_older_than_max_age(clock: FakeClock) -> None:
    cache: StaleCache[str] = StaleCache(max_age=300, clock=clock)
    cache.call(lambda order: "paid", "o-1")
    clock.advance(301)
    with pytest.raises(Down):
        cache.call(down, "o-1")


def test_stale_cache_keys_by_arguments(clock: FakeClock) -> None:
    cache: StaleCache[str] = StaleCache(clock=clock)
    cache.call(lambda order: f"{order}: paid", "o-1")
    with pytest.raises(Down):
        cache.call(down, "o-2")


def test_stale_cache_custom_key(clock: FakeClock) -> None:
    cache: StaleCache[str] = StaleCache(clock=clock, key=lambda order, **_: order)
    cache.call(lambda order, trace=None: "paid", "o-1", trace="abc")
    assert cache.call(down, "o-1", trace="def") == "paid"


def test_stale_cache_is_bounded(clock: FakeClock) -> None:
    cache: StaleCache[int] = StaleCache(clock=clock, max_keys=10)
    for i in range(100):
        cache.call(lambda n: n, i)
    assert len(cache) == 10


async def test_stale_cache_async(clock: FakeClock) -> None:
    cache: StaleCache[str] = StaleCache(clock=clock)

    async def ok(order: str) -> str:
        return "paid"

    async def adown(order: str) -> str:
        raise Down

    await cache.acall(ok, "o-1")
    assert await cache.acall(adown, "o-1") == "paid"
