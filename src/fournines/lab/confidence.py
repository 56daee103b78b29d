"""Confidence intervals for the lab's proportions, and the verdict they support.

With 0 failures in ``n`` requests the availability is not 100 %: it is at
least ``0.05 ** (1 / n)`` with 95 % confidence, so 3,000 requests cannot
prove four nines (the bound is 99.90 %) and 29,956 are the fewest that can.
This module says how much a run proves:

- :func:`clopper_pearson` (two-sided), :func:`clopper_pearson_lower` and
  :func:`clopper_pearson_upper` (one-sided): the exact binomial interval,
  never narrower than it should be, whatever ``n`` and the count;
- :func:`judge`: "held" only when the one-sided lower bound reaches the
  target; "not proven" (with the sample size that would prove it) when the
  point estimate reaches it but the bound does not; "missed" otherwise;
- :func:`sample_size_to_prove`: the fewest requests that prove a target
  with a given number of failures;
- :func:`wilson` and :func:`newcombe_difference`: the difference of two
  proportions (protected minus unprotected) and its interval.

Pure arithmetic on the standard library (no scipy), so the numbers can be
checked by hand: ``tests/lab/test_confidence.py`` checks them against exact
binomial sums in rational arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .._errors import ConfigurationError

__all__ = [
    "Difference",
    "Interval",
    "Verdict",
    "clopper_pearson",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "judge",
    "newcombe_difference",
    "sample_size_to_prove",
    "wilson",
]

CLOPPER_PEARSON = "Clopper-Pearson exact"
"""The method name of :func:`clopper_pearson`'s intervals (also in the lab's JSON)."""

WILSON = "Wilson score"
"""The method name of :func:`wilson`'s intervals."""

NEWCOMBE = "Newcombe hybrid score (method 10)"
"""The method name of :func:`newcombe_difference`'s intervals."""

VerdictOutcome = Literal["held", "not proven", "missed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Interval:
    """A proportion ``successes / n`` and its confidence interval ``[lower, upper]``.

    ``method`` names how it was computed (e.g. ``"Clopper-Pearson exact"``).
    """

    successes: int
    n: int
    estimate: float
    lower: float
    upper: float
    confidence: float
    method: str

    def __contains__(self, value: float) -> bool:
        """Whether ``value`` lies in the interval (bounds included)."""
        return self.lower <= value <= self.upper


@dataclass(frozen=True, slots=True, kw_only=True)
class Difference:
    """The difference of two proportions ``first - second`` and its confidence interval."""

    estimate: float
    lower: float
    upper: float
    confidence: float
    method: str
    first: Interval
    second: Interval

    def __contains__(self, value: float) -> bool:
        """Whether ``value`` lies in the interval (bounds included)."""
        return self.lower <= value <= self.upper


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What ``successes`` of ``n`` prove about an availability ``target``.

    ``outcome`` is ``"held"`` when the one-sided lower bound (at
    ``confidence``) is at or above the target, ``"not proven"`` when only the
    point estimate is (``needed`` is then the sample size that would prove
    it with as many failures), ``"missed"`` when the point estimate is below.
    ``lower`` and ``upper`` are the one-sided Clopper-Pearson bounds.
    """

    outcome: VerdictOutcome
    target: float
    successes: int
    n: int
    estimate: float
    lower: float
    upper: float
    confidence: float
    needed: int | None = None

    @property
    def held(self) -> bool:
        """Whether the target is proven (the lower bound reaches it)."""
        return self.outcome == "held"

    @property
    def failures(self) -> int:
        """``n - successes``."""
        return self.n - self.successes

    @property
    def text(self) -> str:
        """The verdict in words, e.g. ``99.99 % held``.

        Not proven: ``99.99 % not proven at this sample size (need 29,956
        requests with 0 failures)``.
        """
        target = f"{self.target * 100:g} %"
        if self.outcome == "not proven":
            k = self.failures
            return (f"{target} not proven at this sample size (need {self.needed:,} requests "
                    f"with {k} failure{'' if k == 1 else 's'})")
        return f"{target} {self.outcome}"


# -- checks ------------------------------------------------------------------------------


def _check_counts(successes: object, n: object, *, first: str = "successes",
                  total: str = "n") -> None:
    for name, value in ((total, n), (first, successes)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{name} must be an int, got {value!r}")
    assert isinstance(n, int) and isinstance(successes, int)
    if n < 1:
        raise ConfigurationError(f"{total} must be >= 1 (no interval from no trials), got {n!r}")
    if not 0 <= successes <= n:
        raise ConfigurationError(f"{first} must be between 0 and {total} ({n}), "
                                 f"got {successes!r}")


def _check_share(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigurationError(f"{name} must be a number strictly between 0 and 1, "
                                 f"got {value!r}")
    return float(value)


# -- the regularized incomplete beta function ----------------------------------------------
#
# P(X >= k) for X ~ Binomial(n, p) is I_p(k, n - k + 1), the regularized incomplete beta
# function, so the exact interval is found by inverting I in p (Clopper & Pearson 1934).
# I is evaluated with its continued fraction (DLMF 8.17.22), by the modified Lentz method
# (Lentz 1976; Thompson & Barnett 1986), on the side of x where the fraction converges
# fast (x < (a + 1) / (a + b + 2)), the other side through I_x(a, b) = 1 - I_(1-x)(b, a).

_TINY = 1e-300
_EPS = 1e-16


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b), without its prefactor."""
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    # Converges in O(sqrt(max(a, b))) steps: a few hundred for a million trials.
    for m in range(1, 100_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            delta = c * d
            h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta I_{x}({a}, {b}): no convergence")  # pragma: no cover


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _incomplete_beta(1.0 - x, b, a)
    log_front = (a * math.log(x) + b * math.log1p(-x) - math.log(a)
                 - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)))
    return math.exp(log_front) * _beta_fraction(x, a, b)


def _solve(a: float, b: float, level: float, *, low_side: bool) -> float:
    """The p with I_p(a, b) = level, by bisection (I is increasing in p).

    Bisection rather than Newton: slower, but it cannot leave [0, 1] or
    oscillate in the flat tails, and the lab asks for a handful of bounds.
    The bracket shrinks until its ends are neighbours at float precision;
    the end returned is the outer one (the lower end for a lower bound), so
    rounding never narrows the interval.
    """
    lo, hi = 0.0, 1.0
    for _ in range(2_000):  # enough to reach the smallest float from [0, 1]
        mid = (lo + hi) / 2.0
        if not lo < mid < hi or hi - lo <= 2 * _EPS * hi:
            break
        if _incomplete_beta(mid, a, b) < level:
            lo = mid
        else:
            hi = mid
    return lo if low_side else hi


def _lower(successes: int, n: int, alpha: float) -> float:
    """The p at which P(X >= successes) = alpha: the lower bound with tail alpha."""
    if successes == 0:
        return 0.0
    if successes == n:  # P(X >= n) = p ** n: the bound in closed form
        return float(alpha ** (1.0 / n))
    return _solve(successes, n - successes + 1, alpha, low_side=True)


def _upper(successes: int, n: int, alpha: float) -> float:
    """The p at which P(X <= successes) = alpha: the upper bound with tail alpha."""
    if successes == n:
        return 1.0
    if successes == 0:  # P(X <= 0) = (1 - p) ** n
        return 1.0 - float(alpha ** (1.0 / n))
    # P(X <= s) = 1 - P(X >= s + 1) = 1 - I_p(s + 1, n - s)
    return _solve(successes + 1, n - successes, 1.0 - alpha, low_side=False)


# -- Clopper-Pearson -----------------------------------------------------------------------


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """The exact (Clopper-Pearson) two-sided interval of ``successes / n``.

    Each bound leaves ``(1 - confidence) / 2`` in its tail of the binomial
    distribution (Clopper & Pearson, Biometrika 26, 1934): the interval
    covers the true proportion at least ``confidence`` of the time for every
    ``n`` and every true proportion (it errs on the wide side). Raises
    :class:`~fournines.ConfigurationError` unless ``1 <= n`` and
    ``0 <= successes <= n`` (ints) and ``0 < confidence < 1``.
    """
    _check_counts(successes, n)
    confidence = _check_share("confidence", confidence)
    alpha = (1.0 - confidence) / 2.0
    return Interval(successes=successes, n=n, estimate=successes / n,
                    lower=_lower(successes, n, alpha), upper=_upper(successes, n, alpha),
                    confidence=confidence, method=CLOPPER_PEARSON)


def clopper_pearson_lower(successes: int, n: int, confidence: float = 0.95) -> float:
    """The one-sided exact lower bound of ``successes / n`` at ``confidence``.

    The true proportion is at or above it with probability ``confidence``;
    with ``successes == n`` it is ``(1 - confidence) ** (1 / n)``. The lab
    judges an objective on this bound (see :func:`judge`).
    """
    _check_counts(successes, n)
    return _lower(successes, n, 1.0 - _check_share("confidence", confidence))


def clopper_pearson_upper(successes: int, n: int, confidence: float = 0.95) -> float:
    """The one-sided exact upper bound of ``successes / n`` at ``confidence``.

    With ``successes == 0`` it is ``1 - (1 - confidence) ** (1 / n)``, about
    ``3 / n`` at 95 % (the "rule of three").
    """
    _check_counts(successes, n)
    return _upper(successes, n, 1.0 - _check_share("confidence", confidence))


def sample_size_to_prove(target: float = 0.9999, confidence: float = 0.95,
                         failures: int = 0) -> int:
    """The fewest requests with ``failures`` failures that prove ``target``.

    The smallest ``n`` whose one-sided exact lower bound of
    ``(n - failures) / n`` at ``confidence`` is at or above ``target``:
    29,956 for 99.99 % at 95 % with 0 failures (``0.05 ** (1 / n) >= 0.9999``).
    """
    target = _check_share("target", target)
    confidence = _check_share("confidence", confidence)
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
        raise ConfigurationError(f"failures must be an int >= 0, got {failures!r}")
    alpha = 1.0 - confidence

    def proves(n: int) -> bool:
        return _lower(n - failures, n, alpha) >= target

    # The bound grows with n at a fixed failure count: double, then bisect.
    # With 0 failures, start next to the closed form's answer.
    low = (max(0, math.floor(math.log(alpha) / math.log(target)) - 2) if failures == 0
           else failures)
    high = max(low + 1, 2 * low)
    while not proves(high):
        low, high = high, 2 * high
    while high - low > 1:  # invariant: proves(high), and not proves(low) or low <= failures
        mid = (low + high) // 2
        if mid > failures and proves(mid):
            high = mid
        else:
            low = mid
    return high


def judge(successes: int, n: int, target: float, confidence: float = 0.95) -> Verdict:
    """Whether ``successes`` of ``n`` prove an availability ``target``.

    ``"held"`` when the one-sided lower bound at ``confidence`` is at or
    above ``target``; ``"not proven"`` when the point estimate is but the
    bound is not (the verdict carries the sample size that would prove it
    with as many failures); ``"missed"`` when the point estimate is below
    ``target`` (and so, possibly, the upper bound too).
    """
    _check_counts(successes, n)
    target = _check_share("target", target)
    confidence = _check_share("confidence", confidence)
    alpha = 1.0 - confidence
    lower, upper = _lower(successes, n, alpha), _upper(successes, n, alpha)
    estimate = successes / n
    needed = None
    outcome: VerdictOutcome
    if lower >= target:
        outcome = "held"
    elif estimate >= target and upper >= target:
        outcome = "not proven"
        needed = sample_size_to_prove(target, confidence, failures=n - successes)
    else:
        outcome = "missed"
    return Verdict(outcome=outcome, target=target, successes=successes, n=n,
                   estimate=estimate, lower=lower, upper=upper, confidence=confidence,
                   needed=needed)


# -- Wilson and Newcombe -------------------------------------------------------------------


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """The Wilson score two-sided interval of ``successes / n`` (Wilson, JASA 22, 1927).

    The building block of :func:`newcombe_difference`; for one proportion the
    lab reports :func:`clopper_pearson`, which never covers less than asked.
    """
    _check_counts(successes, n)
    confidence = _check_share("confidence", confidence)
    from statistics import NormalDist  # noqa: PLC0415 - keep `import fournines.lab` light

    z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # at 0 and n one bound is exactly 0 or 1; rounding must not push it past
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(successes=successes, n=n, estimate=p, lower=lower, upper=upper,
                    confidence=confidence, method=WILSON)


def newcombe_difference(s1: int, n1: int, s2: int, n2: int,
                        confidence: float = 0.95) -> Difference:
    """The difference ``s1 / n1 - s2 / n2`` of two independent proportions, with its interval.

    Newcombe's hybrid score interval (Newcombe, Statistics in Medicine 17,
    1998, method 10): from the Wilson intervals ``[l1, u1]`` and ``[l2, u2]``
    of each proportion, ``d - sqrt((p1 - l1)**2 + (u2 - p2)**2)`` to
    ``d + sqrt((u1 - p1)**2 + (p2 - l2)**2)``. It stays inside [-1, 1] and
    behaves at 0 and 100 %, where the textbook normal interval collapses.
    """
    _check_counts(s1, n1, first="s1", total="n1")
    _check_counts(s2, n2, first="s2", total="n2")
    first, second = wilson(s1, n1, confidence), wilson(s2, n2, confidence)
    p1, p2 = first.estimate, second.estimate
    d = p1 - p2
    lower = d - math.hypot(p1 - first.lower, second.upper - p2)
    upper = d + math.hypot(first.upper - p1, p2 - second.lower)
    return Difference(estimate=d, lower=max(-1.0, lower), upper=min(1.0, upper),
                      confidence=first.confidence, method=NEWCOMBE, first=first,
                      second=second)
