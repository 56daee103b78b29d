"""Specification of the local rate limiters."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from fournines import (
    CallRejected,
    ConfigurationError,
    Gcra,
    KeyedLimiter,
    Pipeline,
    RateLimitedError,
    SlidingWindow,
    TokenBucket,
    deadline_after,
)
from fournines.testing import FakeClock, RecordingListener


def drain(limiter: TokenBucket | Gcra | SlidingWindow) -> int:
    admitted = 0
    while True:
        try:
            limiter.try_acquire()
        except RateLimitedError:
            return admitted
        admitted += 1


def test_token_bucket_starts_full_and_admits_its_capacity(clock: FakeClock) -> None:
    assert drain(TokenBucket(rate=1, capacity=10, clock=clock)) == 10


def test_token_bucket_refills_at_its_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=5, capacity=10, clock=clock)
    drain(bucket)
    clock.advance(1.0)
    assert drain(bucket) == 5


def test_token_bucket_never_overfills(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=5, capacity=10, clock=clock)
    clock.advance(3600)
    assert bucket.tokens == 10


def test_rejection_says_when_the_cost_will_be_available(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=4, capacity=4, clock=clock, name="api")
    drain(bucket)
    with pytest.raises(RateLimitedError) as info:
        bucket.try_acquire(2)
    assert info.value.retry_after == pytest.approx(0.5, abs=1e-6)
    assert info.value.name == "api"


def test_cost_above_capacity_is_a_configuration_error(clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError, match=r"TokenBucket\.cost 11 exceeds the capacity"):
        TokenBucket(rate=1, capacity=10, clock=clock).try_acquire(11)


def test_rejections_are_events(clock: FakeClock, recorder: RecordingListener) -> None:
    bucket = TokenBucket(rate=1, capacity=1, clock=clock, listeners=[recorder], name="api")
    drain(bucket)
    (event,) = recorder.of(CallRejected)
    assert (event.policy, event.name, event.reason) == ("rate_limit", "api", "rate_limited")


def test_acquire_waits_for_tokens(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=10, capacity=1, clock=clock)
    bucket.try_acquire()
    bucket.acquire(max_wait=1.0)
    assert clock.sleeps == pytest.approx([0.1], abs=1e-6)


def test_acquire_refuses_to_wait_longer_than_max_wait(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=1, capacity=1, clock=clock)
    bucket.try_acquire()
    with pytest.raises(RateLimitedError):
        bucket.acquire(max_wait=0.5)
    assert clock.sleeps == []


def test_acquire_never_waits_past_the_deadline(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=1, capacity=1, clock=clock)
    bucket.try_acquire()
    with deadline_after(0.5, clock=clock), pytest.raises(RateLimitedError):
        bucket.acquire(max_wait=10)
    assert clock.sleeps == []


async def test_aacquire_waits_on_the_clock(clock: FakeClock) -> None:
    gcra = Gcra(rate=4, burst=1, clock=clock)
    gcra.try_acquire()
    await gcra.aacquire(max_wait=1)
    assert clock.sleeps == pytest.approx([0.25], abs=1e-6)


def test_call_waits_up_to_the_limiters_own_max_wait(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=10, capacity=1, clock=clock, max_wait=0.2)
    assert bucket.call(lambda: 1) == 1
    assert bucket.call(lambda: 2) == 2
    assert clock.sleeps == pytest.approx([0.1], abs=1e-6)


async def test_acall_rejects_at_once_by_default(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=1, capacity=1, clock=clock)

    async def work() -> int:
        return 1

    assert await bucket.acall(work) == 1
    with pytest.raises(RateLimitedError):
        await bucket.acall(work)


def test_gcra_admits_a_burst_then_the_rate(clock: FakeClock) -> None:
    gcra = Gcra(rate=10, burst=5, clock=clock)
    assert drain(gcra) == 5
    clock.advance(0.1)
    assert drain(gcra) == 1


def test_gcra_retry_after_is_the_emission_interval(clock: FakeClock) -> None:
    gcra = Gcra(rate=2, burst=1, clock=clock)
    gcra.try_acquire()
    with pytest.raises(RateLimitedError) as info:
        gcra.try_acquire()
    assert info.value.retry_after == pytest.approx(0.5, abs=1e-6)


def test_sliding_log_is_exact(clock: FakeClock) -> None:
    window = SlidingWindow(limit=3, window=10, mode="log", clock=clock)
    for t in (0, 1, 2):
        clock.advance(t - clock.monotonic())
        window.try_acquire()
    clock.advance(7.9)  # t = 9.9: all three still inside the window
    with pytest.raises(RateLimitedError) as info:
        window.try_acquire()
    assert info.value.retry_after == pytest.approx(0.1, abs=1e-6)
    clock.advance(0.1)
    window.try_acquire()


def test_sliding_counter_weights_the_previous_window(clock: FakeClock) -> None:
    window = SlidingWindow(limit=10, window=10, clock=clock)
    assert drain(window) == 10
    clock.advance(15)  # half of the previous window still overlaps: 5 count
    assert drain(window) == 5


def test_sliding_counter_forgets_after_two_windows(clock: FakeClock) -> None:
    window = SlidingWindow(limit=10, window=10, clock=clock)
    drain(window)
    clock.advance(25)
    assert drain(window) == 10


def test_sliding_counter_retry_after_admits_when_waited(clock: FakeClock) -> None:
    window = SlidingWindow(limit=10, window=10, clock=clock)
    drain(window)
    clock.advance(12)
    drain(window)
    with pytest.raises(RateLimitedError) as info:
        window.try_acquire()
    assert info.value.retry_after is not None
    clock.advance(info.value.retry_after)
    window.try_acquire()


def test_keyed_limiter_limits_each_key_separately(clock: FakeClock) -> None:
    keyed = KeyedLimiter(lambda: TokenBucket(rate=1, capacity=2, clock=clock))
    for key in ("alice", "bob"):
        keyed.try_acquire(key)
        keyed.try_acquire(key)
        with pytest.raises(RateLimitedError):
            keyed.try_acquire(key)


def test_keyed_limiter_memory_is_bounded(clock: FakeClock) -> None:
    keyed = KeyedLimiter(lambda: TokenBucket(rate=1, clock=clock), max_keys=100)
    for i in range(10_000):
        with contextlib.suppress(RateLimitedError):  # new keys beyond max_keys are refused
            keyed.try_acquire(f"client-{i}")
    assert len(keyed) == 100


def test_keyed_limiter_of_other_limiters_keeps_recently_used_keys(clock: FakeClock) -> None:
    keyed = KeyedLimiter(lambda: SlidingWindow(limit=1, window=1, clock=clock), max_keys=2)
    keyed.try_acquire("hot")
    keyed.try_acquire("a")
    keyed.limiter("hot")
    keyed.try_acquire("b")  # evicts "a", the least recently used
    with pytest.raises(RateLimitedError):
        keyed.try_acquire("hot")


def per_tenant(clock: FakeClock) -> KeyedLimiter:
    return KeyedLimiter(lambda: TokenBucket(rate=1, capacity=2, clock=clock),
                        key=lambda tenant, *args, **kwargs: tenant)


def echo(tenant: str, n: int) -> int:
    return n


async def aecho(tenant: str, n: int) -> int:
    return n


def test_keyed_limiter_with_a_key_limits_each_key_of_a_call(clock: FakeClock) -> None:
    keyed = per_tenant(clock)
    assert [keyed.call(echo, "acme", i) for i in range(2)] == [0, 1]
    with pytest.raises(RateLimitedError):
        keyed.call(echo, "acme", 2)
    assert keyed.call(echo, "globex", 3) == 3


def test_keyed_limiter_composes_in_a_pipeline_sync_and_async(clock: FakeClock) -> None:
    pipeline = Pipeline(per_tenant(clock))
    assert pipeline.call(echo, "acme", 1) == 1
    assert asyncio.run(pipeline.acall(aecho, "acme", 2)) == 2
    with pytest.raises(RateLimitedError):
        pipeline.call(echo, "acme", 3)
    assert asyncio.run(pipeline.acall(aecho, "globex", 4)) == 4


def test_keyed_limiter_decorates(clock: FakeClock) -> None:
    limited = per_tenant(clock)(echo)
    limited("acme", 1)
    limited("acme", 2)
    with pytest.raises(RateLimitedError):
        limited("acme", 3)


def test_keyed_limiter_without_a_key_is_no_policy(clock: FakeClock) -> None:
    keyed = KeyedLimiter(lambda: TokenBucket(rate=1, clock=clock))
    with pytest.raises(ConfigurationError, match=r"KeyedLimiter\.key"):
        keyed.call(echo, "acme", 1)
    with pytest.raises(ConfigurationError, match=r"KeyedLimiter\.key"):
        asyncio.run(keyed.acall(aecho, "acme", 1))


@pytest.mark.parametrize(("make", "field"), [
    (lambda: TokenBucket(rate=0), "TokenBucket.rate"),
    (lambda: TokenBucket(rate=1, capacity=0.5), "TokenBucket.capacity"),
    (lambda: TokenBucket(rate=1, max_wait=-1), "TokenBucket.max_wait"),
    (lambda: Gcra(rate=1, burst=0), "Gcra.burst"),
    (lambda: Gcra(rate=float("nan")), "Gcra.rate"),
    (lambda: SlidingWindow(limit=0, window=1), "SlidingWindow.limit"),
    (lambda: SlidingWindow(limit=1, window=1, mode="fixed"), "SlidingWindow.mode"),
    (lambda: KeyedLimiter(lambda: None, max_keys=0), "KeyedLimiter.max_keys"),
])
def test_bad_configuration_names_the_field(make: object, field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")):
        make()  # type: ignore[operator]


def test_bad_cost_names_the_argument(clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError, match=r"Gcra\.cost must be an int >= 1"):
        Gcra(rate=1, burst=10, clock=clock).acquire(0)
