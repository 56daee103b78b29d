"""Memory stays flat while policies reject: nothing is kept per rejected call.

Each test warms up, takes a tracemalloc snapshot, rejects 25_000 more calls,
collects garbage and compares: growth must stay under 32 KB in total, about
1.3 bytes per rejection. The smallest object CPython can keep costs 16 bytes,
so anything kept per rejected call would show as 400 KB or more.
"""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator

import pytest

from fournines import (
    CircuitBreaker,
    CircuitOpenError,
    KeyedLimiter,
    RateLimitedError,
    SlidingWindow,
    TokenBucket,
)
from fournines.testing import FakeClock

WARM_UP = 1_000
REJECTIONS = 25_000
MAX_GROWTH = 32 * 1024  # bytes, for all REJECTIONS together

IGNORED = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def snapshot() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(IGNORED)


def growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
    """Net bytes allocated between two snapshots."""
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def rejections(attempt: Callable[[], object], error: type[Exception], count: int) -> int:
    rejected = 0
    for _ in range(count):
        try:
            attempt()
        except error:
            rejected += 1
    return rejected


async def arejections(
    attempt: Callable[[], Awaitable[object]], error: type[Exception], count: int
) -> int:
    rejected = 0
    for _ in range(count):
        try:
            await attempt()
        except error:
            rejected += 1
    return rejected


def open_breaker() -> CircuitBreaker:
    breaker = CircuitBreaker(reset_timeout=60.0, clock=FakeClock())
    for _ in range(5):
        breaker.try_acquire().failure(RuntimeError("down"))
    return breaker


def ok() -> str:
    return "ok"


async def aok() -> str:
    return "ok"


@pytest.mark.usefixtures("traced")
def test_open_breaker_rejecting_sync_calls_keeps_memory_flat() -> None:
    breaker = open_breaker()
    assert rejections(lambda: breaker.call(ok), CircuitOpenError, WARM_UP) == WARM_UP
    before = snapshot()
    assert rejections(lambda: breaker.call(ok), CircuitOpenError, REJECTIONS) == REJECTIONS
    assert growth(before, snapshot()) < MAX_GROWTH


@pytest.mark.usefixtures("traced")
async def test_open_breaker_rejecting_async_calls_keeps_memory_flat() -> None:
    breaker = open_breaker()
    assert await arejections(lambda: breaker.acall(aok), CircuitOpenError, WARM_UP) == WARM_UP
    before = snapshot()
    rejected = await arejections(lambda: breaker.acall(aok), CircuitOpenError, REJECTIONS)
    assert rejected == REJECTIONS
    assert growth(before, snapshot()) < MAX_GROWTH


@pytest.mark.usefixtures("traced")
def test_empty_token_bucket_rejecting_calls_keeps_memory_flat() -> None:
    bucket = TokenBucket(rate=1.0, capacity=1, clock=FakeClock())
    bucket.try_acquire()
    assert rejections(bucket.try_acquire, RateLimitedError, WARM_UP) == WARM_UP
    before = snapshot()
    assert rejections(bucket.try_acquire, RateLimitedError, REJECTIONS) == REJECTIONS
    assert growth(before, snapshot()) < MAX_GROWTH


@pytest.mark.usefixtures("traced")
async def test_empty_token_bucket_rejecting_async_calls_keeps_memory_flat() -> None:
    bucket = TokenBucket(rate=1.0, capacity=1, clock=FakeClock())
    bucket.try_acquire()
    assert await arejections(lambda: bucket.acall(aok), RateLimitedError, WARM_UP) == WARM_UP
    before = snapshot()
    rejected = await arejections(lambda: bucket.acall(aok), RateLimitedError, REJECTIONS)
    assert rejected == REJECTIONS
    assert growth(before, snapshot()) < MAX_GROWTH


def test_keyed_limiter_keeps_at_most_max_keys_limiters_for_a_flood_of_distinct_keys() -> None:
    clock = FakeClock()
    keyed = KeyedLimiter(lambda: TokenBucket(rate=1.0, capacity=1, clock=clock), max_keys=1000)
    peak = 0
    for key in range(REJECTIONS):
        with contextlib.suppress(RateLimitedError):  # refused beyond max_keys
            keyed.try_acquire(f"client-{key}")
        peak = max(peak, len(keyed))
    assert peak == 1000
    assert len(keyed) == 1000


def test_keyed_limiter_forgets_the_least_recently_used_key_first() -> None:
    clock = FakeClock()
    keyed = KeyedLimiter(lambda: SlidingWindow(limit=1, window=1, clock=clock), max_keys=2)
    keyed.try_acquire("a")
    keyed.try_acquire("b")
    with pytest.raises(RateLimitedError):
        keyed.try_acquire("a")  # "a" is now the most recently used
    keyed.try_acquire("c")  # evicts "b"
    with pytest.raises(RateLimitedError):
        keyed.try_acquire("a")  # still remembered: still empty
    keyed.try_acquire("b")  # forgotten, so it starts afresh with a full bucket


@pytest.mark.usefixtures("traced")
def test_keyed_limiter_flooded_with_distinct_keys_keeps_memory_flat() -> None:
    clock = FakeClock()
    keyed = KeyedLimiter(lambda: TokenBucket(rate=1.0, capacity=1, clock=clock), max_keys=1000)
    for key in range(-2 * WARM_UP, 0):
        with contextlib.suppress(RateLimitedError):  # refused beyond max_keys
            keyed.try_acquire(key)
    before = snapshot()
    for key in range(REJECTIONS):
        with contextlib.suppress(RateLimitedError):
            keyed.try_acquire(key)
    assert growth(before, snapshot()) < MAX_GROWTH
