"""Properties of the policies' decision cores, checked by hypothesis.

Time is a FakeClock. Where a property compares against exact arithmetic, rates
are powers of two and instants multiples of 1/64 s, so every float the
policies compute is exact and the comparison is about the algorithm, not about
rounding.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fournines import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    ConsecutiveFailures,
    Gcra,
    RateLimitedError,
    RetryBudget,
    SlidingWindow,
    State,
    TokenBucket,
)
from fournines.testing import FakeClock

TICK = Fraction(1, 64)  # the grain of every instant in the exact-arithmetic properties

powers_of_two = st.integers(min_value=-3, max_value=6).map(lambda k: 2.0**k)
ticks = st.integers(min_value=0, max_value=256)  # a gap between two events, in 1/64 s


# --- TokenBucket ------------------------------------------------------------------------

bucket_ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(min_value=0, max_value=1e3)),
        st.tuples(st.just("acquire"), st.integers(min_value=1, max_value=12)),
    ),
    max_size=60,
)


@given(
    rate=st.floats(min_value=1e-3, max_value=1e6),
    capacity=st.floats(min_value=1, max_value=10),
    ops=bucket_ops,
)
def test_token_bucket_holds_between_zero_and_capacity_tokens(
    rate: float, capacity: float, ops: list[tuple[str, float]]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=rate, capacity=capacity, clock=clock)
    for op, arg in ops:
        if op == "advance":
            clock.advance(arg)
        else:
            cost = int(arg)
            try:
                bucket.try_acquire(cost)
            except RateLimitedError:
                pass
            except ConfigurationError:
                assert cost > capacity  # only a cost the bucket could never grant
        assert 0 <= bucket._tokens <= capacity
        assert 0 <= bucket.tokens <= capacity


@given(
    capacity=st.integers(min_value=1, max_value=10),
    costs=st.lists(st.integers(min_value=-5, max_value=10), max_size=20),
)
@example(capacity=5, costs=[-3])
def test_token_bucket_never_exceeds_capacity_even_when_asked_for_a_negative_cost(
    capacity: int, costs: list[int]
) -> None:
    bucket = TokenBucket(rate=1.0, capacity=capacity, clock=FakeClock())
    for cost in costs:
        try:
            bucket.try_acquire(cost)
        except (RateLimitedError, ConfigurationError):
            pass
        assert 0 <= bucket._tokens <= capacity


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda c: TokenBucket(rate=1.0, capacity=2, clock=c), id="token_bucket"),
        pytest.param(lambda c: Gcra(rate=1.0, burst=2, clock=c), id="gcra"),
        pytest.param(lambda c: SlidingWindow(limit=2, window=1.0, clock=c), id="counter"),
        pytest.param(
            lambda c: SlidingWindow(limit=2, window=1.0, mode="log", clock=c), id="log"
        ),
    ],
)
@pytest.mark.parametrize("cost", [0, -1, 0.5])
def test_a_cost_that_is_not_a_whole_number_of_at_least_one_is_a_configuration_error(
    make: Callable[[FakeClock], Any], cost: float
) -> None:
    limiter = make(FakeClock())
    with pytest.raises(ConfigurationError):
        limiter.try_acquire(cost)


# --- Backoff ----------------------------------------------------------------------------


@st.composite
def backoffs(draw: st.DrawFn) -> Backoff:
    jitter = draw(st.sampled_from(["full", "decorrelated", "equal", "none"]))
    # Decorrelated jitter grows from the previous delay, so it needs initial > 0.
    low = 1e-9 if jitter == "decorrelated" else 0
    initial = draw(st.floats(min_value=low, max_value=1e6))
    cap = draw(st.floats(min_value=initial, max_value=1e9))
    return Backoff(
        initial=initial,
        multiplier=draw(st.floats(min_value=1, max_value=1e3)),
        cap=cap,
        jitter=jitter,
    )


@given(
    backoff=backoffs(),
    retry=st.integers(min_value=1, max_value=10_000),
    previous=st.floats(min_value=0, allow_nan=False),
    rng=st.randoms(use_true_random=False),
)
@example(Backoff(initial=1, multiplier=2, cap=10, jitter="full"), 10_000, 0.0, random.Random(1))
@example(Backoff(initial=1, multiplier=1, cap=10, jitter="none"), 10_000, 0.0, random.Random(1))
@example(
    Backoff(initial=1, multiplier=2, cap=10, jitter="decorrelated"),
    10_000, float("inf"), random.Random(1),
)
@example(
    Backoff(initial=1e6, multiplier=1e3, cap=1e9, jitter="decorrelated"),
    10_000, 1.7e308, random.Random(1),
)
@example(Backoff(initial=5, multiplier=3, cap=5, jitter="equal"), 10_000, 5.0, random.Random(1))
def test_backoff_delay_stays_between_zero_and_the_cap(
    backoff: Backoff, retry: int, previous: float, rng: random.Random
) -> None:
    delay = backoff.delay(retry, previous, rng)
    assert 0 <= delay <= backoff.cap


# --- CircuitBreaker, half-open -----------------------------------------------------------

breaker_ops = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.just(0)),
        st.tuples(st.sampled_from(["success", "failure", "release"]), st.integers(0, 30)),
        st.tuples(st.just("advance"), st.integers(min_value=0, max_value=15)),
    ),
    max_size=80,
)


@given(
    probes=st.integers(min_value=1, max_value=4),
    threshold=st.integers(min_value=1, max_value=3),
    ops=breaker_ops,
)
def test_half_open_breaker_never_has_more_than_half_open_probes_outstanding(
    probes: int, threshold: int, ops: list[tuple[str, int]]
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        trip=ConsecutiveFailures(threshold=threshold),
        reset_timeout=10.0,
        half_open_probes=probes,
        clock=clock,
    )
    for _ in range(threshold):
        breaker.try_acquire().failure(RuntimeError("down"))
    clock.advance(10.0)
    assert breaker.state is State.HALF_OPEN

    issued: list[tuple[object, int]] = []  # (permit, generation it was issued in)
    done: set[int] = set()
    for op, arg in ops:
        if op == "acquire":
            try:
                permit = breaker.try_acquire()
            except CircuitOpenError:
                continue
            issued.append((permit, breaker.generation))
        elif op == "advance":
            clock.advance(arg)
        elif issued:
            index = arg % len(issued)
            permit = issued[index][0]
            getattr(permit, op)()
            done.add(index)
        if breaker.state is State.HALF_OPEN:
            outstanding = sum(
                1
                for i, (_, gen) in enumerate(issued)
                if i not in done and gen == breaker.generation
            )
            assert outstanding <= probes


# --- Gcra and TokenBucket against a reference bucket -------------------------------------


def reference_bucket(
    rate: Fraction, burst: int, arrivals: list[tuple[Fraction, int]]
) -> list[tuple[bool, Fraction]]:
    """A bucket of ``burst`` tokens refilled at ``rate``/s, starting full, in exact arithmetic.

    Returns, per arrival, whether it was admitted and how long it would have had
    to wait (0 when admitted).
    """
    tokens = Fraction(burst)
    last = Fraction(0)
    decisions = []
    for at, cost in arrivals:
        tokens = min(Fraction(burst), tokens + (at - last) * rate)
        last = at
        if tokens >= cost:
            tokens -= cost
            decisions.append((True, Fraction(0)))
        else:
            decisions.append((False, (cost - tokens) / rate))
    return decisions


@st.composite
def schedules(draw: st.DrawFn) -> tuple[float, int, list[tuple[int, int]]]:
    rate = draw(powers_of_two)
    burst = draw(st.integers(min_value=1, max_value=8))
    arrivals = draw(
        st.lists(
            st.tuples(ticks, st.integers(min_value=1, max_value=burst)), min_size=1, max_size=60
        )
    )
    return rate, burst, arrivals


def run_limiter(
    limiter: Gcra | TokenBucket, clock: FakeClock, gaps: list[tuple[int, int]]
) -> tuple[list[tuple[Fraction, int]], list[tuple[bool, Fraction]]]:
    arrivals = []
    decisions = []
    at = Fraction(0)
    for gap, cost in gaps:
        clock.advance(float(gap * TICK))
        at += gap * TICK
        arrivals.append((at, cost))
        try:
            limiter.try_acquire(cost)
        except RateLimitedError as exc:
            assert exc.retry_after is not None
            decisions.append((False, Fraction(exc.retry_after)))
        else:
            decisions.append((True, Fraction(0)))
    return arrivals, decisions


BUCKET_LIKE = [
    pytest.param(lambda rate, burst, c: Gcra(rate=rate, burst=burst, clock=c), id="gcra"),
    pytest.param(lambda rate, burst, c: TokenBucket(rate=rate, capacity=burst, clock=c),
                 id="token_bucket"),
]
ROUNDING_MARGIN = Fraction(1, 10**6)  # seconds a retry_after may add to stay on the safe side


@pytest.mark.parametrize("make", BUCKET_LIKE)
@given(schedule=schedules())
def test_limiter_admits_exactly_what_the_reference_bucket_admits(
    make: Callable[[float, int, FakeClock], Gcra | TokenBucket],
    schedule: tuple[float, int, list[tuple[int, int]]],
) -> None:
    rate, burst, gaps = schedule
    clock = FakeClock()
    arrivals, decisions = run_limiter(make(rate, burst, clock), clock, gaps)
    expected = reference_bucket(Fraction(rate), burst, arrivals)
    assert [ok for ok, _ in decisions] == [ok for ok, _ in expected]


@pytest.mark.parametrize("make", BUCKET_LIKE)
@given(schedule=schedules())
def test_limiter_retry_after_is_when_the_reference_bucket_has_room(
    make: Callable[[float, int, FakeClock], Gcra | TokenBucket],
    schedule: tuple[float, int, list[tuple[int, int]]],
) -> None:
    rate, burst, gaps = schedule
    clock = FakeClock()
    arrivals, decisions = run_limiter(make(rate, burst, clock), clock, gaps)
    expected = reference_bucket(Fraction(rate), burst, arrivals)
    for (_, wait), (_, room_in) in zip(decisions, expected, strict=True):
        assert room_in <= wait <= room_in + ROUNDING_MARGIN


# --- SlidingWindow ----------------------------------------------------------------------


@st.composite
def window_runs(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, int]]]:
    limit = draw(st.integers(min_value=1, max_value=8))
    window = draw(st.integers(min_value=1, max_value=256))  # in ticks
    arrivals = draw(
        st.lists(
            st.tuples(ticks, st.integers(min_value=1, max_value=limit)), min_size=1, max_size=80
        )
    )
    return limit, window, arrivals


def admitted_ticks(
    limiter: SlidingWindow, clock: FakeClock, gaps: list[tuple[int, int]]
) -> list[int]:
    """Run the arrivals; return the instant (in ticks) of every admitted unit."""
    admitted = []
    at = 0
    for gap, cost in gaps:
        clock.advance(float(gap * TICK))
        at += gap
        try:
            limiter.try_acquire(cost)
        except RateLimitedError:
            continue
        admitted.extend([at] * cost)
    return admitted


@given(run=window_runs())
def test_sliding_log_never_admits_more_than_limit_in_any_window(
    run: tuple[int, int, list[tuple[int, int]]],
) -> None:
    limit, window, gaps = run
    clock = FakeClock()
    limiter = SlidingWindow(limit=limit, window=float(window * TICK), mode="log", clock=clock)
    admitted = admitted_ticks(limiter, clock, gaps)
    for end in set(admitted):
        # Every window of `window` seconds, (end - window, end], ending at an admission.
        assert sum(1 for t in admitted if end - window < t <= end) <= limit


@given(run=window_runs())
def test_sliding_counter_never_admits_more_than_limit_in_one_fixed_window(
    run: tuple[int, int, list[tuple[int, int]]],
) -> None:
    limit, window, gaps = run
    clock = FakeClock()
    limiter = SlidingWindow(limit=limit, window=float(window * TICK), clock=clock)
    admitted = admitted_ticks(limiter, clock, gaps)
    for index in {t // window for t in admitted}:
        assert sum(1 for t in admitted if t // window == index) <= limit


# --- retry_after ------------------------------------------------------------------------

EXACT_LIMITERS = [
    pytest.param(lambda limit, window, c: Gcra(rate=limit / window, burst=limit, clock=c),
                 id="gcra"),
    pytest.param(lambda limit, window, c: TokenBucket(rate=limit / window, capacity=limit,
                                                      clock=c),
                 id="token_bucket"),
    pytest.param(
        lambda limit, window, c: SlidingWindow(limit=limit, window=window, mode="log", clock=c),
        id="sliding_log",
    ),
]


@pytest.mark.parametrize("make", EXACT_LIMITERS)
@given(
    limit=st.sampled_from([1, 2, 4, 8]),
    window=powers_of_two,
    gaps=st.lists(st.tuples(ticks, st.integers(min_value=1, max_value=8)), max_size=60),
)
def test_waiting_retry_after_is_enough_for_the_rejected_request_in_exact_arithmetic(
    make: Callable[[int, float, FakeClock], Any],
    limit: int,
    window: float,
    gaps: list[tuple[int, int]],
) -> None:
    clock = FakeClock()
    limiter = make(limit, window, clock)
    for gap, cost in gaps:
        clock.advance(float(gap * TICK))
        try:
            limiter.try_acquire(min(cost, limit))
        except RateLimitedError as exc:
            assert exc.retry_after is not None
            assert exc.retry_after > 0
            clock.advance(exc.retry_after)
            limiter.try_acquire(min(cost, limit))  # no other traffic came: this must pass


def drained_token_bucket() -> tuple[FakeClock, TokenBucket, int]:
    clock = FakeClock(1.7)
    bucket = TokenBucket(rate=3.0, capacity=1, clock=clock)
    bucket.try_acquire()
    return clock, bucket, 1


def drained_gcra() -> tuple[FakeClock, Gcra, int]:
    clock = FakeClock()
    gcra = Gcra(rate=7.0, burst=3, clock=clock)
    gcra.try_acquire(3)
    clock.advance(0.1)
    return clock, gcra, 3


def full_sliding_log() -> tuple[FakeClock, SlidingWindow, int]:
    clock = FakeClock(0.1)
    log = SlidingWindow(limit=1, window=3.0, mode="log", clock=clock)
    log.try_acquire()
    clock.advance(0.2)
    return clock, log, 1


def full_sliding_counter() -> tuple[FakeClock, SlidingWindow, int]:
    clock = FakeClock(3.0)
    counter = SlidingWindow(limit=4, window=1.0, clock=clock)
    counter.try_acquire(3)
    clock.advance(1.0)  # those 3 now weigh on the sliding window from the previous one
    counter.try_acquire()
    return clock, counter, 1


@pytest.mark.parametrize(
    "setup", [drained_token_bucket, drained_gcra, full_sliding_log, full_sliding_counter],
    ids=["token_bucket", "gcra", "sliding_log", "sliding_counter"],
)
def test_a_request_that_waited_exactly_its_retry_after_is_admitted(
    setup: Callable[[], tuple[FakeClock, Any, int]],
) -> None:
    clock, limiter, cost = setup()
    with pytest.raises(RateLimitedError) as rejected:
        limiter.try_acquire(cost)
    assert rejected.value.retry_after is not None
    clock.advance(rejected.value.retry_after)
    limiter.try_acquire(cost)


@given(
    start=st.floats(min_value=0, max_value=1e3),
    rate=st.floats(min_value=0.1, max_value=1e3),
    burst=st.integers(min_value=1, max_value=10),
)
@example(start=0.1, rate=3.0, burst=1)
def test_fresh_gcra_admits_a_full_burst_at_once(start: float, rate: float, burst: int) -> None:
    gcra = Gcra(rate=rate, burst=burst, clock=FakeClock(start))
    gcra.try_acquire(burst)


# --- RetryBudget ------------------------------------------------------------------------

budget_ops = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.just(0)),
        st.tuples(st.just("retry"), st.just(0)),
        st.tuples(st.just("advance"), st.integers(min_value=0, max_value=640)),
    ),
    max_size=120,
)
# ttl = 10 * 2**k, so each of the budget's ten buckets is a power of two wide and the
# budget's bucket arithmetic is exact at instants that are multiples of 1/64 s.
ttls = st.sampled_from([1.25, 2.5, 5.0, 10.0])
ratios = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0])
floors = st.sampled_from([0.0, 0.5, 1.0, 2.0])


def run_budget(
    budget: RetryBudget, clock: FakeClock, ops: list[tuple[str, int]]
) -> tuple[list[Fraction], list[Fraction]]:
    """Run the ops; return the instants of requests and of granted retries."""
    requests: list[Fraction] = []
    retries: list[Fraction] = []
    now = Fraction(0)
    for op, arg in ops:
        if op == "advance":
            clock.advance(float(arg * TICK))
            now += arg * TICK
        elif op == "request":
            budget.deposit()
            requests.append(now)
        elif budget.try_withdraw():
            retries.append(now)
    return requests, retries


def retries_over_budget(
    requests: list[Fraction],
    retries: list[Fraction],
    *,
    span: Fraction,
    ttl: Fraction,
    ratio: Fraction,
    floor: Fraction,
) -> list[Fraction]:
    """Instants t of granted retries where those granted in (t - span, t] exceed the budget.

    The budget at t is ``ratio`` times the requests in (t - ttl, t] plus ``floor * ttl``.
    """
    over = []
    for t in retries:
        granted = sum(1 for r in retries if t - span < r <= t)
        deposited = sum(1 for q in requests if t - ttl < q <= t)
        if granted > ratio * deposited + floor * ttl:
            over.append(t)
    return over


@given(ttl=ttls, ratio=ratios, floor=floors, ops=budget_ops)
@example(
    ttl=10.0,
    ratio=0.0,
    floor=1.0,
    ops=[("advance", 63), *[("retry", 0)] * 10, ("advance", 640 - 63), *[("retry", 0)] * 10],
)
def test_retry_budget_never_grants_more_than_its_budget_within_one_ttl(
    ttl: float, ratio: float, floor: float, ops: list[tuple[str, int]]
) -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_per_second=floor, ttl=ttl, clock=clock)
    requests, retries = run_budget(budget, clock, ops)
    exact_ttl = Fraction(ttl)
    assert retries_over_budget(
        requests, retries, span=exact_ttl, ttl=exact_ttl, ratio=Fraction(ratio),
        floor=Fraction(floor),
    ) == []


@given(ttl=ttls, ratio=ratios, floor=floors, ops=budget_ops)
def test_retry_budget_never_grants_more_than_its_budget_within_nine_tenths_of_ttl(
    ttl: float, ratio: float, floor: float, ops: list[tuple[str, int]]
) -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_per_second=floor, ttl=ttl, clock=clock)
    requests, retries = run_budget(budget, clock, ops)
    exact_ttl = Fraction(ttl)
    assert retries_over_budget(
        requests, retries, span=exact_ttl * Fraction(9, 10), ttl=exact_ttl,
        ratio=Fraction(ratio), floor=Fraction(floor),
    ) == []
