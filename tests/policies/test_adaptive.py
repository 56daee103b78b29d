"""Adaptive concurrency limits: bounds, reaction to latency and drops, configuration."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fournines import ConfigurationError
from fournines.policies.adaptive import (
    AimdConfig,
    AimdLimit,
    ConcurrencyLimit,
    FixedLimit,
    Gradient2Config,
    Gradient2Limit,
)

samples = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=1e4)
        | st.sampled_from([0.0, -1.0, float("nan"), float("inf")]),
        st.integers(min_value=0, max_value=10_000),
        st.booleans(),
    ),
    max_size=300,
)


@st.composite
def bounds(draw: st.DrawFn) -> tuple[int, int, int]:
    low = draw(st.integers(min_value=1, max_value=200))
    high = draw(st.integers(min_value=low + 1, max_value=1_000))
    initial = draw(st.integers(min_value=low, max_value=high))
    return initial, low, high


def feed(limit: ConcurrencyLimit, rtts: list[float]) -> list[int]:
    """Feed samples at full use (in flight = the limit); return the limit after each."""
    seen = []
    for rtt in rtts:
        limit.on_sample(rtt, limit.limit, False)
        seen.append(limit.limit)
    return seen


# --- bounds -----------------------------------------------------------------------------


@given(bounds(), st.floats(min_value=0.5, max_value=0.99), samples)
def test_aimd_limit_stays_within_min_and_max(
    limits: tuple[int, int, int], backoff: float, ops: list[tuple[float, int, bool]]
) -> None:
    initial, low, high = limits
    aimd = AimdLimit(initial_limit=initial, min_limit=low, max_limit=high, backoff_ratio=backoff)
    for rtt, inflight, dropped in ops:
        aimd.on_sample(rtt, inflight, dropped)
        assert low <= aimd.limit <= high


@given(
    bounds(),
    st.floats(min_value=0.01, max_value=1.0),
    st.floats(min_value=1.0, max_value=3.0),
    st.none() | st.integers(min_value=1, max_value=50),
    samples,
)
def test_gradient2_limit_stays_within_min_and_max(
    limits: tuple[int, int, int],
    smoothing: float,
    tolerance: float,
    queue_size: int | None,
    ops: list[tuple[float, int, bool]],
) -> None:
    initial, low, high = limits
    g2 = Gradient2Limit(initial_limit=initial, min_limit=low, max_limit=high,
                        smoothing=smoothing, rtt_tolerance=tolerance, queue_size=queue_size)
    for rtt, inflight, dropped in ops:
        g2.on_sample(rtt, inflight, dropped)
        assert low <= g2.limit <= high


# --- Gradient2: latency up -> limit down, latency down -> limit up ----------------------


@given(
    base_rtt=st.floats(min_value=1e-4, max_value=1.0),
    growth=st.floats(min_value=1.05, max_value=2.0),
    high=st.integers(min_value=20, max_value=1_000),
    low=st.integers(min_value=1, max_value=10),
)
def test_gradient2_limit_decreases_under_growing_latency(
    base_rtt: float, growth: float, high: int, low: int
) -> None:
    g2 = Gradient2Limit(initial_limit=high, min_limit=low, max_limit=high)
    feed(g2, [base_rtt] * 50)  # steady state: the limit stays at the top
    before = g2.limit
    after = feed(g2, [base_rtt * growth**i for i in range(1, 80)])[-1]
    assert after < before


@given(
    base_rtt=st.floats(min_value=1e-4, max_value=1.0),
    high=st.integers(min_value=20, max_value=1_000),
)
def test_gradient2_limit_recovers_when_latency_drops(base_rtt: float, high: int) -> None:
    g2 = Gradient2Limit(initial_limit=high, min_limit=1, max_limit=high)
    feed(g2, [base_rtt] * 50)
    low_point = feed(g2, [base_rtt * 1.2**i for i in range(1, 60)])[-1]
    recovered = feed(g2, [base_rtt] * 100)[-1]
    assert recovered > low_point


def test_gradient2_limit_grows_at_steady_latency_while_in_use() -> None:
    g2 = Gradient2Limit(initial_limit=20, min_limit=20, max_limit=200)
    assert feed(g2, [0.01] * 200)[-1] == 200


def test_gradient2_limit_ignores_samples_while_mostly_idle() -> None:
    g2 = Gradient2Limit(initial_limit=50, min_limit=1, max_limit=200)
    for i in range(100):
        g2.on_sample(0.01 * 1.2**i, inflight=10, dropped=False)
    assert g2.limit == 50


def test_gradient2_limit_never_shrinks_by_more_than_half_a_step() -> None:
    g2 = Gradient2Limit(initial_limit=100, min_limit=1, max_limit=100, smoothing=1.0,
                        queue_size=1)
    feed(g2, [0.001] * 20)
    g2.on_sample(100.0, inflight=100, dropped=False)  # a huge outlier
    assert g2.limit == 50 + 1  # half, plus the queue of 1


def test_gradient2_limit_ignores_meaningless_durations() -> None:
    g2 = Gradient2Limit(initial_limit=30, min_limit=1, max_limit=100)
    for rtt in (0.0, -1.0, float("nan"), float("inf")):
        g2.on_sample(rtt, inflight=30, dropped=False)
    assert (g2.limit, g2.long_rtt) == (30, 0.0)


# --- AIMD ---------------------------------------------------------------------------------


def test_aimd_limit_grows_by_one_per_success_while_in_use() -> None:
    aimd = AimdLimit(initial_limit=10, min_limit=1, max_limit=100)
    aimd.on_sample(0.01, inflight=5, dropped=False)
    assert aimd.limit == 11


def test_aimd_limit_ignores_successes_while_mostly_idle() -> None:
    aimd = AimdLimit(initial_limit=10, min_limit=1, max_limit=100)
    aimd.on_sample(0.01, inflight=4, dropped=False)
    assert aimd.limit == 10


def test_aimd_limit_backs_off_multiplicatively_on_a_drop() -> None:
    aimd = AimdLimit(initial_limit=100, min_limit=1, max_limit=100, backoff_ratio=0.5)
    aimd.on_sample(0.01, inflight=1, dropped=True)
    assert aimd.limit == 50


def test_aimd_limit_treats_a_request_slower_than_timeout_as_a_drop() -> None:
    aimd = AimdLimit(initial_limit=100, min_limit=1, max_limit=100, timeout=1.0)
    aimd.on_sample(1.5, inflight=100, dropped=False)
    assert aimd.limit == 90


@given(
    high=st.integers(min_value=20, max_value=1_000),
    timeout=st.floats(min_value=0.01, max_value=10),
)
def test_aimd_limit_falls_under_timeouts_and_recovers_after(high: int, timeout: float) -> None:
    aimd = AimdLimit(initial_limit=high, min_limit=1, max_limit=high, timeout=timeout)
    low_point = feed(aimd, [timeout * 2] * 20)[-1]
    assert low_point < high
    assert feed(aimd, [timeout / 2] * 50)[-1] > low_point


# --- FixedLimit and the protocol -----------------------------------------------------------


def test_fixed_limit_ignores_samples() -> None:
    fixed = FixedLimit(7)
    fixed.on_sample(100.0, inflight=7, dropped=True)
    assert fixed.limit == 7


@pytest.mark.parametrize("limit", [FixedLimit(3), AimdLimit(), Gradient2Limit()])
def test_every_algorithm_satisfies_the_concurrency_limit_protocol(
    limit: ConcurrencyLimit,
) -> None:
    assert isinstance(limit, ConcurrencyLimit)


def test_from_config_rebuilds_an_equivalent_limit() -> None:
    g2 = Gradient2Limit.from_config(Gradient2Config(initial_limit=5, min_limit=2, max_limit=9))
    aimd = AimdLimit.from_config(dataclasses.replace(AimdConfig(), initial_limit=30))
    assert (g2.limit, g2.config.max_limit, aimd.limit) == (5, 9, 30)


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: AimdLimit(min_limit=0, initial_limit=1), "min_limit"),
        (lambda: AimdLimit(min_limit=10, max_limit=5, initial_limit=5), "max_limit"),
        (lambda: AimdLimit(initial_limit=300), "initial_limit"),
        (lambda: AimdLimit(backoff_ratio=0.2), "backoff_ratio"),
        (lambda: AimdLimit(backoff_ratio=1.0), "backoff_ratio"),
        (lambda: AimdLimit(timeout=0), "timeout"),
        (lambda: Gradient2Limit(smoothing=0), "smoothing"),
        (lambda: Gradient2Limit(rtt_tolerance=0.9), "rtt_tolerance"),
        (lambda: Gradient2Limit(long_window=0), "long_window"),
        (lambda: Gradient2Limit(queue_size=-1), "queue_size"),
        (lambda: Gradient2Limit(initial_limit=2.5), "initial_limit"),  # type: ignore[arg-type]
        (lambda: FixedLimit(0), "limit"),
    ],
)
def test_bad_settings_raise_configuration_error_naming_the_field(
    build: object, field: str
) -> None:
    assert callable(build)
    with pytest.raises(ConfigurationError, match=rf"\.{field} "):
        build()


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Gradient2Config().smoothing = 0.5  # type: ignore[misc]
