"""Specification shared by every core policy: settings that can never act are refused at
construction (naming the field), and settings are read-only after it."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from fournines import (
    AdaptiveThrottling,
    Bulkhead,
    CircuitBreaker,
    ConfigurationError,
    ConsecutiveFailures,
    FailureRate,
    Fallback,
    Gcra,
    KeyedLimiter,
    Pipeline,
    SlidingWindow,
    StaleCache,
    Timeout,
    TokenBucket,
    deadline_after,
)
from fournines.policies.adaptive import (
    AimdConfig,
    AimdLimit,
    FixedLimit,
    Gradient2Config,
    Gradient2Limit,
)

# -- configurations that can never act ---------------------------------------------------


def refused(make: Callable[[], object], field: str) -> ConfigurationError:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.") + r"\b") as info:
        make()
    return info.value


def test_a_count_window_smaller_than_minimum_calls_is_refused() -> None:
    error = refused(lambda: FailureRate(window=100, minimum_calls=200),
                    "FailureRate.minimum_calls")
    assert "could never trip" in str(error)


def test_a_count_window_as_large_as_minimum_calls_is_accepted() -> None:
    assert FailureRate(window=20, minimum_calls=20).minimum_calls == 20


def test_a_time_window_takes_any_minimum_calls() -> None:
    # In a time window the number of calls is not bounded by the window's size.
    assert FailureRate(window=5, window_type="time", minimum_calls=200).window == 5


def test_a_slow_call_rate_without_a_slow_call_duration_is_refused() -> None:
    refused(lambda: FailureRate(slow_call_rate=0.5), "FailureRate.slow_call_rate")


def test_an_empty_tuple_of_failures_is_refused() -> None:
    # The breaker would count nothing as a failure and never open.
    refused(lambda: CircuitBreaker(failure_on=()), "CircuitBreaker.failure_on")


@pytest.mark.parametrize(("make", "field"), [
    (lambda: Fallback(value=1, on=()), "Fallback.on"),
    (lambda: StaleCache(on=()), "StaleCache.on"),
])
def test_a_fallback_for_no_error_at_all_is_refused(
    make: Callable[[], object], field: str
) -> None:
    refused(make, field)


def test_a_bulkhead_max_wait_without_a_queue_is_refused() -> None:
    error = refused(lambda: Bulkhead(max_concurrent=2, max_wait=1.0), "Bulkhead.max_wait")
    assert "max_queue" in str(error)


def test_a_bulkhead_queue_that_may_not_wait_is_refused() -> None:
    refused(lambda: Bulkhead(max_concurrent=2, max_queue=5, max_wait=0), "Bulkhead.max_wait")


def test_a_bulkhead_queue_with_a_wait_is_accepted() -> None:
    assert Bulkhead(max_concurrent=2, max_queue=5, max_wait=0.5).max_wait == 0.5


def test_a_stale_cache_whose_answers_are_never_fresh_is_refused() -> None:
    refused(lambda: StaleCache(max_age=0), "StaleCache.max_age")


@pytest.mark.parametrize("make", [
    lambda: AimdLimit(initial_limit=10, min_limit=10, max_limit=10),
    lambda: Gradient2Limit(initial_limit=10, min_limit=10, max_limit=10),
])
def test_an_adaptive_limit_with_no_room_to_adapt_is_refused(make: Callable[[], object]) -> None:
    error = refused(make, "max_limit")
    assert "FixedLimit" in str(error)


def test_a_gradient_limit_that_could_never_grow_is_refused() -> None:
    refused(lambda: Gradient2Limit(queue_size=0), "Gradient2Config.queue_size")


@pytest.mark.parametrize("seconds", [-1, -0.001, math.nan])
def test_deadline_after_refuses_a_negative_or_nan_duration(seconds: float) -> None:
    refused(lambda: deadline_after(seconds), "deadline_after.seconds")


def test_deadline_after_zero_is_already_expired() -> None:
    with deadline_after(0) as deadline:
        assert deadline.expired()


def test_deadline_after_infinity_never_expires() -> None:
    with deadline_after(math.inf) as deadline:
        assert not deadline.expired()


# -- KeyedLimiter's factory ---------------------------------------------------------------


def test_a_limiter_instance_in_place_of_a_factory_is_refused() -> None:
    bucket = TokenBucket(rate=1)
    error = refused(lambda: KeyedLimiter(bucket), "KeyedLimiter.factory")  # type: ignore[arg-type]
    assert "lambda: TokenBucket(...)" in str(error)


def test_a_factory_that_does_not_return_a_limiter_is_refused() -> None:
    error = refused(lambda: KeyedLimiter(lambda: None), "KeyedLimiter.factory")  # type: ignore[arg-type,return-value]
    assert "None" in str(error)


def test_a_factory_returning_one_shared_limiter_is_refused() -> None:
    # Every key would draw from the same bucket: that is one limiter, not one per key.
    shared = TokenBucket(rate=1)
    refused(lambda: KeyedLimiter(lambda: shared), "KeyedLimiter.factory")


def test_a_keyed_limiter_without_key_cannot_decorate() -> None:
    # Without key= every call through the decorator would raise: refuse it when decorating.
    keyed = KeyedLimiter(lambda: TokenBucket(rate=1))

    def load(user_id: int) -> int:
        return user_id

    async def aload(user_id: int) -> int:
        return user_id

    refused(lambda: keyed(load), "KeyedLimiter.key")
    refused(lambda: keyed(aload), "KeyedLimiter.key")


def test_a_pipeline_holding_a_keyed_limiter_without_key_refuses_before_running() -> None:
    ran: list[int] = []
    refused(lambda: Pipeline(KeyedLimiter(lambda: TokenBucket(rate=1)))(ran.append),
            "KeyedLimiter.key")
    assert ran == []


@pytest.mark.parametrize("instance", [CircuitBreaker("b"), Pipeline(), Timeout(1.0)],
                         ids=lambda p: type(p).__name__)
def test_a_policy_instance_in_place_of_a_factory_is_refused(instance: object) -> None:
    # A policy is callable (it decorates), so calling it as a factory failed with a
    # TypeError from inside fournines.
    refused(lambda: KeyedLimiter(instance), "KeyedLimiter.factory")  # type: ignore[arg-type]


def test_a_factory_that_needs_arguments_is_refused() -> None:
    error = refused(lambda: KeyedLimiter(TokenBucket), "KeyedLimiter.factory")  # type: ignore[arg-type]
    assert "no arguments" in str(error)


def test_a_key_that_is_not_callable_is_refused() -> None:
    refused(lambda: KeyedLimiter(lambda: TokenBucket(rate=1), key="ip"),  # type: ignore[arg-type]
            "KeyedLimiter.key")


# -- read-only settings -------------------------------------------------------------------


def _all_settings() -> list[tuple[object, str]]:
    breaker = CircuitBreaker("b")
    bulkhead = Bulkhead(max_concurrent=2, max_queue=1, max_wait=1.0)
    bucket = TokenBucket(rate=10, capacity=5)
    gcra = Gcra(rate=10, burst=5)
    window = SlidingWindow(limit=5, window=1)
    keyed = KeyedLimiter(lambda: TokenBucket(rate=1), key=lambda *a, **k: "k")
    timeout = Timeout(1.0)
    fallback = Fallback(value=1)
    cache: StaleCache[object] = StaleCache()
    return [
        *((breaker, f) for f in ("name", "trip", "reset_timeout", "half_open_probes", "clock")),
        *((ConsecutiveFailures(), f) for f in ("threshold",)),
        *((FailureRate(), f) for f in ("threshold", "window", "window_type", "minimum_calls",
                                       "slow_call_duration", "slow_call_rate")),
        *((AdaptiveThrottling(), f) for f in ("k", "window", "buckets", "min_requests",
                                              "force_probe_after")),
        *((bulkhead, f) for f in ("name", "max_concurrent", "max_queue", "max_wait", "clock")),
        *((bucket, f) for f in ("name", "rate", "capacity", "max_wait", "clock")),
        *((gcra, f) for f in ("name", "rate", "burst", "max_wait", "clock")),
        *((window, f) for f in ("name", "limit", "window", "mode", "max_wait", "clock")),
        *((keyed, f) for f in ("name", "max_keys", "factory", "key")),
        *((timeout, f) for f in ("name", "seconds", "clock")),
        *((fallback, f) for f in ("name",)),
        *((cache, f) for f in ("name", "max_age", "max_keys")),
        *((AimdLimit(), f) for f in ("config", "limit")),
        *((Gradient2Limit(), f) for f in ("config", "limit")),
        *((AimdConfig(), f) for f in ("min_limit", "max_limit")),
        *((Gradient2Config(), f) for f in ("min_limit", "max_limit")),
        *((FixedLimit(3), f) for f in ("limit",)),
        *((Pipeline(timeout, fallback), f) for f in ("policies",)),
    ]


@pytest.mark.parametrize(("policy", "field"), _all_settings(),
                         ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_a_setting_cannot_be_reassigned(policy: object, field: str) -> None:
    before = getattr(policy, field)
    with pytest.raises(AttributeError):
        setattr(policy, field, before)
    assert getattr(policy, field) is before


@pytest.mark.parametrize("policy", [
    CircuitBreaker("b"), Bulkhead(), TokenBucket(rate=1), Gcra(rate=1),
    SlidingWindow(limit=1, window=1), KeyedLimiter(lambda: TokenBucket(rate=1)),
    Timeout(1.0), Fallback(value=1), StaleCache(), AimdLimit(), Gradient2Limit(),
], ids=lambda p: type(p).__name__)
def test_no_new_attribute_can_be_added(policy: object) -> None:
    with pytest.raises(AttributeError):
        policy.max_attempts = 3  # type: ignore[attr-defined]
