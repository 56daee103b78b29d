"""Specification of Fallback, StaleCache and degradation tracking."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from fournines import (
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    Fallback,
    FallbackUsed,
    Pipeline,
    StaleCache,
    Timeout,
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


def test_an_async_fallback_fn_cannot_decorate_a_sync_function() -> None:
    # Every fallback would fail (a sync call cannot await fn): refuse it when decorating.
    async def default(exc: Exception) -> str:
        return "default avatar"

    with pytest.raises(ConfigurationError, match=r"Fallback\.fn\b"):
        Fallback(fn=default)(down)
    with pytest.raises(ConfigurationError, match=r"Fallback\.fn\b"):
        Pipeline(Fallback(fn=default))(down)


def test_an_async_fallback_fn_in_a_sync_call_leaves_no_coroutine_unawaited() -> None:
    made: list[Coroutine[Any, Any, str]] = []

    async def answer() -> str:
        return "default avatar"

    def default(exc: Exception) -> Coroutine[Any, Any, str]:
        made.append(answer())
        return made[-1]

    with pytest.raises(ConfigurationError, match="use acall"):
        Fallback(fn=default).call(down)
    assert made[0].cr_frame is None  # closed, so never "was never awaited"


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


class Payments:
    """A dependency that answers until it goes down."""

    def __init__(self) -> None:
        self.up = True

    def status(self, order: str, trace: str | None = None) -> str:
        if not self.up:
            raise Down("payment down")
        return f"{order}: paid"

    async def astatus(self, order: str) -> str:
        return self.status(order)


@pytest.fixture
def payments() -> Payments:
    return Payments()


def test_stale_cache_serves_the_last_good_result(clock: FakeClock, payments: Payments,
                                                 recorder: RecordingListener) -> None:
    cache: StaleCache[str] = StaleCache(max_age=300, clock=clock, listeners=[recorder])
    assert cache.call(payments.status, "o-1") == "o-1: paid"
    clock.advance(120)
    payments.up = False
    with track_degradation() as degradation:
        assert cache.call(payments.status, "o-1") == "o-1: paid"
    assert degradation.degraded
    assert recorder.of(FallbackUsed)[0].stale_age == 120


def test_stale_cache_refuses_results_older_than_max_age(clock: FakeClock,
                                                        payments: Payments) -> None:
    cache: StaleCache[str] = StaleCache(max_age=300, clock=clock)
    cache.call(payments.status, "o-1")
    clock.advance(301)
    payments.up = False
    with pytest.raises(Down):
        cache.call(payments.status, "o-1")


def test_stale_cache_keys_by_arguments(clock: FakeClock, payments: Payments) -> None:
    cache: StaleCache[str] = StaleCache(clock=clock)
    cache.call(payments.status, "o-1")
    payments.up = False
    with pytest.raises(Down):
        cache.call(payments.status, "o-2")


def test_stale_cache_custom_key_is_the_whole_key(clock: FakeClock) -> None:
    cache: StaleCache[str] = StaleCache(clock=clock, key=lambda order, **_: order)
    cache.call(lambda order, trace=None: "paid", "o-1", trace="abc")
    assert cache.call(down, "o-1", trace="def") == "paid"


def test_stale_cache_is_bounded(clock: FakeClock) -> None:
    cache: StaleCache[int] = StaleCache(clock=clock, max_keys=10)
    for i in range(100):
        cache.call(lambda n: n, i)
    assert len(cache) == 10


async def test_stale_cache_async(clock: FakeClock, payments: Payments) -> None:
    cache: StaleCache[str] = StaleCache(clock=clock)
    await cache.acall(payments.astatus, "o-1")
    payments.up = False
    assert await cache.acall(payments.astatus, "o-1") == "o-1: paid"


# -- one cache, several functions: the function is part of the default key ---------------


class Users:
    """Two lookups by the same argument, from one dependency."""

    def __init__(self) -> None:
        self.up = True

    def check(self) -> None:
        if not self.up:
            raise Down("users down")


def user_functions(users: Users) -> tuple[Callable[[int], str], Callable[[int], str]]:
    def user_name(user_id: int) -> str:
        users.check()
        return f"name-{user_id}"

    def user_email(user_id: int) -> str:
        users.check()
        return f"user{user_id}@example.com"

    return user_name, user_email


def async_user_functions(
    users: Users,
) -> tuple[Callable[[int], Awaitable[str]], Callable[[int], Awaitable[str]]]:
    async def user_name(user_id: int) -> str:
        users.check()
        return f"name-{user_id}"

    async def user_email(user_id: int) -> str:
        users.check()
        return f"user{user_id}@example.com"

    return user_name, user_email


def test_call_keeps_two_functions_with_the_same_arguments_apart(clock: FakeClock) -> None:
    users = Users()
    user_name, user_email = user_functions(users)
    cache: StaleCache[str] = StaleCache(clock=clock)
    cache.call(user_name, 1)
    users.up = False
    with pytest.raises(Down):
        cache.call(user_email, 1)
    assert cache.call(user_name, 1) == "name-1"


def test_decorating_keeps_two_functions_apart(clock: FakeClock) -> None:
    users = Users()
    cache: StaleCache[str] = StaleCache(clock=clock)
    user_name, user_email = (cache(f) for f in user_functions(users))
    user_name(1)
    users.up = False
    with pytest.raises(Down):
        user_email(1)
    assert user_name(1) == "name-1"


async def test_async_calls_keep_two_functions_apart(clock: FakeClock) -> None:
    users = Users()
    user_name, user_email = async_user_functions(users)
    cache: StaleCache[str] = StaleCache(clock=clock)
    await cache.acall(user_name, 1)
    users.up = False
    with pytest.raises(Down):
        await cache.acall(user_email, 1)
    assert await cache.acall(user_name, 1) == "name-1"


def test_the_key_sees_through_decorators_to_the_users_function(clock: FakeClock) -> None:
    users = Users()
    user_name, _ = user_functions(users)
    cache: StaleCache[str] = StaleCache(clock=clock)
    cache.call(CircuitBreaker("users", clock=clock)(user_name), 1)  # sets __wrapped__
    users.up = False
    assert cache.call(user_name, 1) == "name-1"


def test_partials_of_one_function_are_told_apart_by_their_arguments(clock: FakeClock) -> None:
    users = Users()

    def lookup(field: str, user_id: int) -> str:
        users.check()
        return f"{field}-{user_id}"

    cache: StaleCache[str] = StaleCache(clock=clock)
    cache.call(functools.partial(lookup, "name"), 1)
    users.up = False
    with pytest.raises(Down):
        cache.call(functools.partial(lookup, "email"), 1)
    assert cache.call(functools.partial(lookup, "name"), 1) == "name-1"


def test_a_pipeline_with_the_cache_innermost_keeps_two_functions_apart(
    clock: FakeClock,
) -> None:
    users = Users()
    pipeline = Pipeline(Timeout(5, clock=clock), StaleCache(clock=clock))
    user_name, user_email = (pipeline(f) for f in user_functions(users))
    user_name(1)
    users.up = False
    with pytest.raises(Down):
        user_email(1)
    assert user_name(1) == "name-1"


async def test_a_pipeline_with_the_cache_outermost_keeps_two_functions_apart(
    clock: FakeClock,
) -> None:
    # The cache wraps the closure of the policy inside it: only that closure's
    # __wrapped__ leads the cache to the user's function.
    users = Users()
    pipeline = Pipeline(StaleCache(clock=clock), CircuitBreaker("users", clock=clock))
    user_name, user_email = async_user_functions(users)
    await pipeline.acall(user_name, 1)
    users.up = False
    with pytest.raises(Down):
        await pipeline.acall(user_email, 1)
    assert await pipeline.acall(user_name, 1) == "name-1"


# -- lambdas and closures: what they capture is part of the default key ------------------


def order_status(order: str) -> str:
    if not ORDERS_UP[0]:
        raise Down("orders down")
    return f"{order}: paid"


def order_refund(order: str) -> str:
    if not ORDERS_UP[0]:
        raise Down("orders down")
    return f"{order}: refunded"


ORDERS_UP = [True]


@pytest.fixture
def orders() -> list[bool]:
    ORDERS_UP[0] = True
    return ORDERS_UP


def test_lambdas_over_different_arguments_are_told_apart(clock: FakeClock,
                                                         orders: list[bool]) -> None:
    # cache.call(lambda: fetch(order)) has no arguments of its own: the captured order is
    # what tells order 2 from order 1.
    cache: StaleCache[str] = StaleCache(clock=clock)

    def status(order: str) -> str:  # a request handler: one lambda, built per request
        return cache.call(lambda: order_status(order))

    status("o-1")
    orders[0] = False
    with pytest.raises(Down):
        status("o-2")
    assert status("o-1") == "o-1: paid"


def test_two_lambdas_without_captures_are_told_apart(clock: FakeClock,
                                                     orders: list[bool]) -> None:
    cache: StaleCache[str] = StaleCache(clock=clock)
    cache.call(lambda: order_status("o-1"))
    orders[0] = False
    with pytest.raises(Down):
        cache.call(lambda: order_refund("o-1"))


def test_closures_of_one_factory_over_different_values_are_told_apart(
    clock: FakeClock,
) -> None:
    users = Users()

    def lookup(field: str) -> Callable[[int], str]:
        def get(user_id: int) -> str:
            users.check()
            return f"{field}-{user_id}"
        return get

    cache: StaleCache[str] = StaleCache(clock=clock)
    cache.call(lookup("name"), 1)
    users.up = False
    with pytest.raises(Down):
        cache.call(lookup("email"), 1)
    assert cache.call(lookup("name"), 1) == "name-1"  # a re-created closure: the same key


def test_a_decorated_closure_reads_its_captures_at_each_call(clock: FakeClock,
                                                             orders: list[bool]) -> None:
    cache: StaleCache[str] = StaleCache(clock=clock)
    order = "o-1"

    @cache
    def current() -> str:
        return order_status(order)

    current()
    orders[0] = False
    order = "o-2"
    with pytest.raises(Down):
        current()


def test_a_closure_over_an_unhashable_value_is_still_served(clock: FakeClock,
                                                            orders: list[bool]) -> None:
    cache: StaleCache[str] = StaleCache(clock=clock)
    query = {"order": "o-1"}

    def fetch() -> str:
        return order_status(query["order"])

    assert cache.call(fetch) == "o-1: paid"
    orders[0] = False
    assert cache.call(fetch) == "o-1: paid"
