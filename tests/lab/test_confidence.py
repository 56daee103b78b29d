"""Specification of the lab's confidence intervals and verdicts.

The reference is independent of the code under test: exact binomial tail sums
in rational arithmetic (:class:`fractions.Fraction`), closed forms, and the
published values of Clopper & Pearson's and Newcombe's papers.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from fournines import ConfigurationError
from fournines.lab.confidence import (
    clopper_pearson,
    clopper_pearson_lower,
    clopper_pearson_upper,
    judge,
    newcombe_difference,
    sample_size_to_prove,
    wilson,
)


def at_least(k: int, n: int, p: float | Fraction) -> Fraction:
    """P(X >= k) for X ~ Binomial(n, p), exactly (p taken as the exact value of the float)."""
    p = Fraction(p)
    return sum((math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1)),
               Fraction(0))


def at_most(k: int, n: int, p: float | Fraction) -> Fraction:
    """P(X <= k) for X ~ Binomial(n, p), exactly."""
    return 1 - at_least(k + 1, n, p)


def failures_at_most(k: int, n: int, q: float | Fraction) -> Fraction:
    """P(at most k failures in n) at failure rate q, exactly (a short sum for a small k)."""
    q = Fraction(q)
    return sum((math.comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(k + 1)),
               Fraction(0))


@pytest.mark.parametrize(("successes", "n"), [(1, 10), (5, 10), (9, 10), (3, 17), (28, 30),
                                               (49, 50)])
def test_each_exact_bound_leaves_two_and_a_half_percent_in_its_binomial_tail(
        successes: int, n: int) -> None:
    interval = clopper_pearson(successes, n)
    assert float(at_least(successes, n, interval.lower)) == pytest.approx(0.025, abs=1e-9)
    assert float(at_most(successes, n, interval.upper)) == pytest.approx(0.025, abs=1e-9)


def test_the_textbook_values_of_small_samples() -> None:
    # Clopper-Pearson 95 % intervals as tabulated (e.g. Brown, Cai & DasGupta 2001, and
    # every statistics package): 1/10, 5/10, 0/10, 10/10
    assert (round(clopper_pearson(1, 10).lower, 4), round(clopper_pearson(1, 10).upper, 4)) == (
        0.0025, 0.4450)
    assert (round(clopper_pearson(5, 10).lower, 4), round(clopper_pearson(5, 10).upper, 4)) == (
        0.1871, 0.8129)
    assert round(clopper_pearson(0, 10).upper, 4) == 0.3085
    assert round(clopper_pearson(10, 10).lower, 4) == 0.6915


@pytest.mark.parametrize("n", [1, 10, 3095, 30_000])
def test_zero_successes_bound_the_rate_by_the_closed_form(n: int) -> None:
    interval = clopper_pearson(0, n)
    assert interval.lower == 0.0
    assert interval.upper == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-12)
    assert clopper_pearson_upper(0, n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-12)


@pytest.mark.parametrize("n", [1, 10, 3095, 30_000])
def test_no_failure_bounds_the_availability_by_the_closed_form(n: int) -> None:
    assert clopper_pearson(n, n).upper == 1.0
    assert clopper_pearson(n, n).lower == pytest.approx(0.025 ** (1 / n), rel=1e-12)
    assert clopper_pearson_lower(n, n) == pytest.approx(0.05 ** (1 / n), rel=1e-12)


def test_zero_failures_in_three_thousand_requests_support_only_three_nines() -> None:
    # the arithmetic: the upper bound of the failure rate is about 3 / n
    assert clopper_pearson_upper(0, 3095) == pytest.approx(3 / 3095, rel=0.01)
    assert 0.999 < clopper_pearson_lower(3095, 3095) < 0.9999


def test_one_sided_bounds_of_large_samples_match_direct_binomial_sums() -> None:
    # few failures in many requests: the continued fraction with a in the tens of thousands,
    # against the binomial sum term by term (in floats: exact fractions of n = 100,000
    # would take minutes)
    for failures, n in ((1, 47_437), (3, 40_000), (12, 100_000)):
        q = 1 - clopper_pearson_lower(n - failures, n)
        tail = sum(math.comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(failures + 1))
        assert tail == pytest.approx(0.05, rel=1e-8)


def test_the_exact_interval_contains_the_estimate_and_widens_with_confidence() -> None:
    for successes, n in ((0, 5), (3, 5), (5, 5), (123, 200), (2999, 3000)):
        narrow, wide = clopper_pearson(successes, n, 0.9), clopper_pearson(successes, n, 0.99)
        assert narrow.estimate in narrow
        assert wide.lower <= narrow.lower <= narrow.upper <= wide.upper
        assert narrow.method == "Clopper-Pearson exact"


def test_the_bounds_grow_with_the_successes_and_narrow_with_the_sample() -> None:
    lowers = [clopper_pearson(s, 20).lower for s in range(21)]
    uppers = [clopper_pearson(s, 20).upper for s in range(21)]
    assert lowers == sorted(lowers) and uppers == sorted(uppers)
    widths = [clopper_pearson(n // 2, n).upper - clopper_pearson(n // 2, n).lower
              for n in (10, 100, 1000, 10_000)]
    assert widths == sorted(widths, reverse=True)


def test_four_nines_at_95_percent_need_29956_requests_without_a_failure() -> None:
    assert sample_size_to_prove() == 29_956
    assert sample_size_to_prove(target=0.9999, confidence=0.95, failures=0) == 29_956
    assert clopper_pearson_lower(29_956, 29_956) >= 0.9999 > clopper_pearson_lower(
        29_955, 29_955)


def test_each_failure_raises_the_sample_size_needed() -> None:
    needed = [sample_size_to_prove(failures=k) for k in range(4)]
    assert needed == sorted(needed) and len(set(needed)) == 4
    # checked exactly: at 47,437 requests 1 failure proves 99.99 %, at 47,436 it does not
    q = Fraction(1, 10_000)
    assert needed[1] == 47_437
    assert failures_at_most(1, 47_437, q) <= Fraction(1, 20) < failures_at_most(1, 47_436, q)


def test_three_nines_need_fewer_requests() -> None:
    assert sample_size_to_prove(target=0.999) == math.ceil(math.log(0.05) / math.log(0.999))


def test_proof_is_held_only_when_the_lower_bound_reaches_the_target() -> None:
    verdict = judge(29_956, 29_956, 0.9999)
    assert verdict.outcome == "held" and verdict.held
    assert verdict.text == "99.99 % held"
    assert verdict.needed is None


def test_no_failure_in_too_few_requests_is_not_proven_and_says_how_many_would_be() -> None:
    verdict = judge(3095, 3095, 0.9999)
    assert verdict.outcome == "not proven" and not verdict.held
    assert verdict.needed == 29_956
    assert verdict.text == ("99.99 % not proven at this sample size "
                            "(need 29,956 requests with 0 failures)")


def test_a_failure_below_the_budget_is_not_proven_with_the_size_for_that_count() -> None:
    verdict = judge(39_999, 40_000, 0.9999)
    assert verdict.outcome == "not proven"
    assert verdict.needed == sample_size_to_prove(failures=1) == 47_437
    assert verdict.text.endswith("(need 47,437 requests with 1 failure)")


def test_a_point_estimate_below_the_target_is_missed() -> None:
    verdict = judge(3094, 3095, 0.9999)
    assert verdict.outcome == "missed" and verdict.text == "99.99 % missed"
    assert verdict.needed is None
    assert judge(50, 100, 0.9999).upper < 0.9999


def test_no_trials_are_refused_naming_the_argument() -> None:
    with pytest.raises(ConfigurationError, match=r"^n must be >= 1"):
        clopper_pearson(0, 0)
    with pytest.raises(ConfigurationError, match=r"^n must be >= 1"):
        judge(0, 0, 0.9999)
    with pytest.raises(ConfigurationError, match=r"^n1 must be >= 1"):
        newcombe_difference(0, 0, 1, 1)


def test_more_successes_than_trials_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"^successes must be between 0 and n"):
        clopper_pearson(11, 10)
    with pytest.raises(ConfigurationError, match=r"^successes must be between 0 and n"):
        wilson(-1, 10)
    with pytest.raises(ConfigurationError, match=r"^s2 must be between 0 and n2"):
        newcombe_difference(1, 1, 3, 2)


def test_a_confidence_or_target_outside_zero_and_one_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"^confidence must be"):
        clopper_pearson(1, 2, confidence=95)
    with pytest.raises(ConfigurationError, match=r"^target must be"):
        judge(1, 2, target=1.0)
    with pytest.raises(ConfigurationError, match=r"^failures must be an int >= 0"):
        sample_size_to_prove(failures=-1)


def test_counts_must_be_ints() -> None:
    with pytest.raises(ConfigurationError, match=r"^n must be an int"):
        clopper_pearson(1, 2.0)  # type: ignore[arg-type]


def test_wilson_matches_its_formula_and_stays_in_zero_one() -> None:
    # 81 of 263 (Newcombe 1998's single-proportion example): 0.2553 to 0.3662
    interval = wilson(81, 263)
    assert (round(interval.lower, 4), round(interval.upper, 4)) == (0.2553, 0.3662)
    assert wilson(0, 10).lower == 0.0 and wilson(10, 10).upper == 1.0
    assert interval.method == "Wilson score"


def test_the_difference_of_two_proportions_matches_newcombes_published_examples() -> None:
    # Newcombe 1998, table II, method 10 (hybrid score)
    first = newcombe_difference(56, 70, 48, 80)
    assert (round(first.lower, 4), round(first.upper, 4)) == (0.0524, 0.3339)
    second = newcombe_difference(9, 10, 3, 10)
    assert (round(second.lower, 4), round(second.upper, 4)) == (0.1705, 0.8090)
    assert first.method == "Newcombe hybrid score (method 10)"


def test_the_difference_interval_contains_the_point_difference() -> None:
    for s1, n1, s2, n2 in ((30_000, 30_000, 16_000, 30_000), (0, 10, 10, 10), (5, 9, 5, 9),
                           (1, 3, 2, 7)):
        difference = newcombe_difference(s1, n1, s2, n2)
        assert difference.estimate == pytest.approx(s1 / n1 - s2 / n2)
        assert difference.estimate in difference
        assert -1.0 <= difference.lower <= difference.upper <= 1.0
