"""KeyedLimiter at scale: one float per key, idle keys forgotten by time, floods refused."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from fournines import (
    CallRejected,
    Event,
    Gcra,
    KeyedLimiter,
    KeysEvicted,
    RateLimitedError,
    SlidingWindow,
    TokenBucket,
)
from fournines.instrumentation.prometheus import PrometheusListener
from fournines.testing import FakeClock


def drain(keyed: KeyedLimiter, key: str) -> None:
    with contextlib.suppress(RateLimitedError):
        while True:
            keyed.try_acquire(key)


def test_a_flood_of_new_keys_never_resets_an_active_keys_bucket(clock: FakeClock) -> None:
    keyed = KeyedLimiter(lambda: TokenBucket(rate=1, capacity=5, clock=clock), max_keys=100)
    drain(keyed, "victim")
    for i in range(10_000):
        with contextlib.suppress(RateLimitedError):
            keyed.try_acquire(f"attacker-{i}")
    with pytest.raises(RateLimitedError):
        keyed.try_acquire("victim")


def test_new_keys_beyond_max_keys_with_no_full_bucket_are_refused_and_counted(
    clock: FakeClock,
) -> None:
    events: list[Event] = []
    keyed = KeyedLimiter(lambda: Gcra(rate=1, burst=2, clock=clock, listeners=[events.append]),
                         max_keys=2, name="per_client")
    keyed.try_acquire("a")
    keyed.try_acquire("b")
    with pytest.raises(RateLimitedError) as refused:
        keyed.try_acquire("c")
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    assert keyed.evictions == {"idle": 0, "pressure": 0, "refused": 1}
    assert KeysEvicted(policy="keyed_limiter", name="per_client", kind="refused") in events
    assert any(isinstance(e, CallRejected) and e.reason == "max_keys" for e in events)


def test_at_max_keys_a_full_bucket_makes_room_for_a_new_key(clock: FakeClock) -> None:
    events: list[Event] = []
    keyed = KeyedLimiter(
        lambda: TokenBucket(rate=1, capacity=10, clock=clock, listeners=[events.append]),
        max_keys=1)
    keyed.try_acquire("a")
    clock.advance(1.0)  # "a" is full again, long before its generation ends (10 s)
    keyed.try_acquire("b")
    assert len(keyed) == 1
    assert keyed.evictions["pressure"] == 1
    assert KeysEvicted(policy="keyed_limiter", name="keyed", kind="pressure") in events


def test_keys_idle_for_capacity_over_rate_are_forgotten_without_any_call_for_them(
    clock: FakeClock,
) -> None:
    keyed = KeyedLimiter(lambda: TokenBucket(rate=2, capacity=4, clock=clock))
    for i in range(50):
        keyed.try_acquire(f"k{i}")
    clock.advance(2.0)  # capacity / rate: they are full
    keyed.try_acquire("other")
    clock.advance(2.0)
    keyed.try_acquire("other")
    assert len(keyed) == 1
    assert keyed.evictions["idle"] == 50


def test_a_key_in_use_is_kept_across_generations(clock: FakeClock) -> None:
    keyed = KeyedLimiter(lambda: TokenBucket(rate=1, capacity=2, clock=clock))
    drain(keyed, "busy")
    for _ in range(10):
        clock.advance(1.0)
        keyed.try_acquire("busy")  # one token a second: always empty afterwards
        with pytest.raises(RateLimitedError):
            keyed.try_acquire("busy")
    assert keyed.evictions["pressure"] == 0


def test_evictions_are_counted_in_the_prometheus_metric(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    listener = PrometheusListener(registry)
    keyed = KeyedLimiter(lambda: Gcra(rate=1, clock=clock, listeners=[listener]),
                         max_keys=1, name="per_ip")
    keyed.try_acquire("a")
    with pytest.raises(RateLimitedError):
        keyed.try_acquire("b")
    clock.advance(3.0)
    keyed.try_acquire("c")

    def value(kind: str) -> float | None:
        return registry.get_sample_value("fournines_keyed_limiter_evictions_total",
                                         {"name": "per_ip", "kind": kind})
    assert value("refused") == 1
    assert value("idle") == 1  # "a", forgotten by time before "c" needed room


def test_limiter_of_a_key_is_a_view_on_the_same_state(clock: FakeClock) -> None:
    keyed = KeyedLimiter(lambda: TokenBucket(rate=1, capacity=3, clock=clock))
    keyed.try_acquire("a", 2)
    view = keyed.limiter("a")
    assert view.tokens == 1  # type: ignore[attr-defined]
    view.try_acquire()
    with pytest.raises(RateLimitedError):
        keyed.try_acquire("a")


def test_acquire_waits_for_the_keys_own_bucket(clock: FakeClock) -> None:
    keyed = KeyedLimiter(lambda: Gcra(rate=2, clock=clock, max_wait=1.0), key=lambda k: k)
    keyed.call(lambda k: k, "a")
    start = clock.monotonic()
    keyed.call(lambda k: k, "a")
    assert clock.monotonic() - start == pytest.approx(0.5)


def test_other_limiters_keep_one_limiter_per_key(clock: FakeClock) -> None:
    keyed = KeyedLimiter(lambda: SlidingWindow(limit=1, window=1, clock=clock))
    keyed.try_acquire("a")
    assert isinstance(keyed.limiter("a"), SlidingWindow)


Factory = Callable[[FakeClock], TokenBucket | Gcra]
FACTORIES: list[Factory] = [
    lambda c: TokenBucket(rate=2, capacity=3, clock=c),
    lambda c: TokenBucket(rate=0.5, capacity=1, clock=c),
    lambda c: Gcra(rate=4, burst=2, clock=c),
    lambda c: Gcra(rate=1, burst=5, clock=c),
]
# Times in eighths of a second and power-of-two rates: exact in binary floating point,
# so the table's GCRA and a token bucket round alike.
steps = st.lists(st.tuples(st.integers(0, 16), st.sampled_from("abcd"), st.integers(1, 2)),
                 max_size=60)


@settings(max_examples=150, deadline=None)
@given(which=st.integers(0, len(FACTORIES) - 1), calls=steps)
def test_same_decisions_as_independent_per_key_limiters(
    which: int, calls: list[tuple[int, str, int]],
) -> None:
    clock = FakeClock()
    factory = FACTORIES[which]
    keyed = KeyedLimiter(lambda: factory(clock))
    alone: dict[str, TokenBucket | Gcra] = {}
    for eighths, key, units in calls:
        clock.advance(eighths / 8)
        reference = alone.setdefault(key, factory(clock))
        largest = reference.capacity if isinstance(reference, TokenBucket) else reference.burst
        cost = min(units, int(largest))
        expected: float | None = None
        try:
            reference.try_acquire(cost)
        except RateLimitedError as exc:
            expected = exc.retry_after
        got: float | None = None
        try:
            keyed.try_acquire(key, cost)
        except RateLimitedError as exc:
            got = exc.retry_after
        assert (got is None) == (expected is None)
        if got is not None:
            assert got == pytest.approx(expected)


def test_a_listener_may_use_the_limiter_it_hears_from(clock: FakeClock) -> None:
    seen: list[dict[str, int]] = []

    def listener(event: Event) -> None:
        if isinstance(event, KeysEvicted):
            seen.append(keyed.evictions)  # takes the limiter's lock: must not deadlock

    keyed = KeyedLimiter(lambda: Gcra(rate=1, clock=clock, listeners=[listener]), max_keys=1)
    keyed.try_acquire("a")
    clock.advance(1.0)
    keyed.try_acquire("b")  # "a" is full: dropped to make room
    assert seen == [{"idle": 0, "pressure": 1, "refused": 0}]


@pytest.mark.parametrize("rate", [2.1, 4.6, 5.5, 8.4, 11.0])  # where 3 / rate * rate < 3
def test_a_cost_of_the_whole_burst_is_granted_to_a_full_key(clock: FakeClock, rate: float) -> None:
    keyed = KeyedLimiter(lambda: Gcra(rate=rate, burst=3, clock=clock))
    keyed.try_acquire("a", 3)
    with pytest.raises(RateLimitedError):
        keyed.try_acquire("a")


def test_concurrent_threads_on_one_key_take_exactly_its_burst() -> None:
    clock = FakeClock()  # frozen: no refill while the threads run
    keyed = KeyedLimiter(lambda: TokenBucket(rate=1, capacity=500, clock=clock))
    granted: list[int] = []

    def worker() -> None:
        taken = 0
        for _ in range(200):
            with contextlib.suppress(RateLimitedError):
                keyed.try_acquire("shared")
                taken += 1
        granted.append(taken)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 500
