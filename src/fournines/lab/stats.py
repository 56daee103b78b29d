"""The lab's arithmetic: percentiles, availability, error budgets, per-second series.

Pure functions over the load generator's outcomes and the metric samples, so
the report's numbers can be checked by hand (and are, in ``tests/lab``).
Every availability carries its exact 95 % confidence interval, and the
objective is judged on the one-sided 95 % lower bound (see
:mod:`fournines.lab.confidence`): a run too short to prove four nines says so.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .confidence import CLOPPER_PEARSON, Interval, Verdict, clopper_pearson, judge
from .load import Outcome
from .metrics import Sample
from .scenario import Fault

__all__ = [
    "BEHIND_LAG",
    "BEHIND_SHARE",
    "CONFIDENCE",
    "FULL_SERVICE_SHARE",
    "OBJECTIVE",
    "RECOVERY_BUCKET",
    "PhaseCounts",
    "VariantSummary",
    "budget_consumed",
    "per_second",
    "percentile",
    "phase_of",
    "summarize",
    "time_to_full_service",
]

OBJECTIVE = 0.9999
"""The availability objective the lab holds the fleet to: four nines."""

CONFIDENCE = 0.95
"""The confidence of every interval the lab reports, and of its verdicts (one-sided)."""

P99_TARGET = 1.0
"""The protected variant's p99 latency target, seconds."""

BEHIND_LAG = 0.1
"""Seconds after its intended time past which a request counts as sent late."""

BEHIND_SHARE = 0.01
"""The share of late requests (over :data:`BEHIND_LAG`) past which the load generator
fell behind: its own delay is then part of the latencies the report shows (they are
measured from the intended time, so the fleet is not flattered, but it is blamed for
the generator's delay). Far behind (see ``fournines.lab.runner.LAG_LIMIT``), the run is
void."""


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ``values``; NaN when empty.

    Nearest rank: the smallest value with at least ``q`` % of the values at or
    below it, i.e. the ``ceil(q / 100 * n)``-th smallest. No interpolation, so
    every reported latency is one a request really had.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def budget_consumed(requests: int, failures: int, objective: float = OBJECTIVE) -> float:
    """The share of the error budget spent: ``failures / ((1 - objective) * requests)``.

    1.0 means exactly the budget; above 1.0 the objective is missed. With no
    requests nothing is spent (0.0).
    """
    if requests == 0:
        return 0.0
    return failures / ((1.0 - objective) * requests)


def phase_of(at: float, faults: Sequence[Fault]) -> str:
    """The fault window that time ``at`` falls in (the first, by start).

    Outside every window: ``"after <the fault that ended last>"``, since a fleet
    recovering from a fault (a queue draining, a process restarting) is not in
    its steady state; ``"steady"`` before the first fault.
    """
    for fault in faults:
        if fault.at <= at < fault.end:
            return fault.label()
    ended = [f for f in faults if f.end <= at]
    if ended:
        return f"after {max(ended, key=lambda f: f.end).label()}"
    return "steady"


FULL_SERVICE_SHARE = 0.99
"""The share of full answers within 1 s at which a stretch of time counts as full service."""

RECOVERY_BUCKET = 0.5
"""Seconds per bucket when looking for the return of full service after a fault."""


def _full_in_time(outcome: Outcome) -> bool:
    return outcome.ok and not outcome.degraded and outcome.latency < P99_TARGET


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseCounts:
    """One variant's answers in one phase (a fault window, the time after it, or steady).

    ``full_in_time``: full answers within 1 s; ``answered_in_time``: answers, full or
    degraded, within 1 s. The lab's target compares the first of the protected fleet
    with the second of the unprotected one: degrading is allowed, but not at the
    cost of answers the unprotected fleet gives in full.

    ``in_time_after_end``: of ``answered_in_time``, the answers of a fault window that
    came only after the fault had ended. A fleet that waits gets these when a fault
    ends (the fault proxy passes held data on at once when a latency toxic goes, as
    Toxiproxy does); a fleet that bounds its waits below the fault's latency cannot.
    The report shows them so that a missed target says what it was missed by.
    """

    requests: int
    full_in_time: int
    answered_in_time: int
    degraded: int
    failed: int
    in_time_after_end: int = 0

    def to_json(self) -> dict[str, int]:
        """A JSON-ready dict."""
        return {"requests": self.requests, "full_in_time": self.full_in_time,
                "answered_in_time": self.answered_in_time, "degraded": self.degraded,
                "failed": self.failed, "in_time_after_end": self.in_time_after_end}


def _phase_counts(outcomes: Sequence[Outcome], end: float | None = None) -> PhaseCounts:
    in_time = [o for o in outcomes if o.ok and o.latency < P99_TARGET]
    return PhaseCounts(
        requests=len(outcomes),
        full_in_time=sum(_full_in_time(o) for o in outcomes),
        answered_in_time=len(in_time),
        degraded=sum(o.ok and o.degraded for o in outcomes),
        failed=sum(not o.ok for o in outcomes),
        in_time_after_end=0 if end is None else sum(
            o.at + o.latency >= end for o in in_time))


def time_to_full_service(outcomes: Sequence[Outcome], fault: Fault,
                         faults: Sequence[Fault], duration: float) -> float | None:
    """Seconds from ``fault``'s end until full service, or ``None`` if it never came back.

    The time after the fault (up to 1 s before the next fault's start, whose pages
    it may already answer, or the end of the load) is cut into :data:`RECOVERY_BUCKET`
    buckets; full service is back at the end of
    the last bucket whose requests were answered in full within 1 s less than
    :data:`FULL_SERVICE_SHARE` of the time (0 when none was). ``None`` when the last
    bucket itself falls short, or nothing was sent after the fault: the run cannot
    say when it came back. Resolution: one bucket.
    """
    # A page sent less than 1 s before the next fault begins may be answered under it.
    until = min([f.at - P99_TARGET for f in faults if f.at >= fault.end] + [duration])
    buckets: dict[int, list[bool]] = {}
    for outcome in outcomes:
        if fault.end <= outcome.at < until:
            index = int((outcome.at - fault.end) // RECOVERY_BUCKET)
            buckets.setdefault(index, []).append(_full_in_time(outcome))
    if not buckets:
        return None
    count = max(1, math.ceil((until - fault.end) / RECOVERY_BUCKET - 1e-9))
    short = [i for i, full in buckets.items()
             if sum(full) < FULL_SERVICE_SHARE * len(full)]
    if not short:
        return 0.0
    last = max(short)
    if last >= count - 1:
        return None
    return (last + 1) * RECOVERY_BUCKET


def _failure_kind(outcome: Outcome) -> str:
    if not outcome.status:
        return outcome.error or "no answer"
    return f"HTTP {outcome.status}" + (f" ({outcome.error})" if outcome.error else "")


@dataclass(slots=True)
class VariantSummary:
    """Everything the report says about one variant.

    ``availability_interval`` and ``availability_full_interval`` are the exact
    two-sided 95 % intervals of the two availabilities; ``objective`` is the
    verdict on :data:`OBJECTIVE`, judged on the one-sided 95 % lower bound of
    ``availability``; ``meets_objective`` is true only when it is proven.
    """

    variant: str
    requests: int
    full: int
    degraded: int
    failed: int
    availability_full: float
    availability: float
    p50: float
    p95: float
    p99: float
    max_latency: float
    worst_second_p99: float
    max_send_lag: float
    breaker_openings: int
    retries: int
    sheds: int
    fallbacks: int
    budget_consumed: float
    availability_interval: Interval
    availability_full_interval: Interval
    objective: Verdict
    failures_by_phase: dict[str, dict[str, int]] = field(default_factory=dict)
    degraded_by_source: dict[str, int] = field(default_factory=dict)
    p99_by_phase: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[Any]] = field(default_factory=dict)
    p99_send_lag: float = 0.0
    """The 99th percentile of how late the load generator sent each request, seconds."""
    late_sends: int = 0
    """Requests the load generator sent more than :data:`BEHIND_LAG` late."""
    phases: dict[str, PhaseCounts] = field(default_factory=dict)
    """Answers per phase (see :func:`phase_of`), in the order the phases began."""
    recovery: dict[str, float | None] = field(default_factory=dict)
    """Per fault (its label): seconds from its end to full service
    (:func:`time_to_full_service`; ``None``: not back before the next fault or the end)."""

    @property
    def generator_behind(self) -> bool:
        """Whether the load generator fell behind its schedule (:data:`BEHIND_SHARE`)."""
        return self.late_sends > BEHIND_SHARE * self.requests

    @property
    def send_lag_text(self) -> str:
        """The generator's send lag in one phrase: p99 and worst, and whether it fell behind."""
        text = (f"p99 {self.p99_send_lag * 1000:.0f} ms, worst "
                f"{self.max_send_lag * 1000:.0f} ms")
        if self.generator_behind:
            text += (f": FELL BEHIND ({self.late_sends} of {self.requests} requests sent "
                     f"over {BEHIND_LAG * 1000:.0f} ms late)")
        return text

    @property
    def meets_objective(self) -> bool:
        """Whether four nines are proven: the one-sided 95 % lower bound reaches them."""
        return self.objective.held

    @property
    def verdict(self) -> str:
        """One line: did four nines hold (proven, not proven, missed), and p99 under 1 s.

        ``99.99 % held`` only when proven; else ``99.99 % not proven at this
        sample size (need N requests with 0 failures)`` or ``99.99 % missed``.
        """
        p99 = "p99 < 1 s" if self.p99 < P99_TARGET else "p99 >= 1 s"
        return f"{self.objective.text}, {p99}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the per-second series included)."""
        return {
            "variant": self.variant, "requests": self.requests, "full": self.full,
            "degraded": self.degraded, "failed": self.failed,
            "availability_full": self.availability_full, "availability": self.availability,
            "interval_method": CLOPPER_PEARSON, "confidence": CONFIDENCE,
            "availability_interval": _interval_json(self.availability_interval),
            "availability_full_interval": _interval_json(self.availability_full_interval),
            "latency_seconds": {"p50": self.p50, "p95": self.p95, "p99": self.p99,
                                "max": self.max_latency,
                                "worst_second_p99": self.worst_second_p99,
                                "p99_by_phase": self.p99_by_phase},
            "max_send_lag_seconds": self.max_send_lag,
            "send_lag": {"p99_seconds": self.p99_send_lag, "max_seconds": self.max_send_lag,
                         "late": self.late_sends, "late_after_seconds": BEHIND_LAG,
                         "generator_behind": self.generator_behind},
            "breaker_openings": self.breaker_openings, "retries": self.retries,
            "sheds": self.sheds, "fallbacks": self.fallbacks,
            "error_budget_consumed": self.budget_consumed,
            "meets_objective": self.meets_objective, "verdict": self.verdict,
            "objective_verdict": _verdict_json(self.objective),
            "failures_by_phase": self.failures_by_phase,
            "degraded_by_source": self.degraded_by_source,
            "phases": {k: v.to_json() for k, v in self.phases.items()},
            "recovery_seconds": self.recovery,
            "series": self.series,
        }


def _interval_json(interval: Interval) -> dict[str, Any]:
    return {"lower": interval.lower, "upper": interval.upper, "estimate": interval.estimate,
            "confidence": interval.confidence, "method": interval.method}


def _verdict_json(verdict: Verdict) -> dict[str, Any]:
    return {"outcome": verdict.outcome, "text": verdict.text, "target": verdict.target,
            "judged_on": f"one-sided {verdict.confidence * 100:g} % lower bound "
                         f"({CLOPPER_PEARSON})",
            "lower_bound": verdict.lower, "upper_bound": verdict.upper,
            "estimate": verdict.estimate, "confidence": verdict.confidence,
            "requests_needed": verdict.needed}


def _deltas(samples: Sequence[Sample], attr: str, seconds: int) -> list[float]:
    """Per-second increases of a cumulative counter, taken per service.

    A service missing from a scrape (killed, or too busy to answer) is skipped,
    not counted as zero; a value lower than the last one is a restart, and the
    new value is the increase (Prometheus's rule for ``increase()``).
    """
    out = [0.0] * seconds
    previous: dict[str, float] = {}
    for sample in samples:
        values = ({name: counters[attr] for name, counters in sample.services.items()}
                  if sample.services else {"": float(getattr(sample, attr))})
        second = min(max(int(sample.at), 0), seconds - 1)
        for name, value in values.items():
            last = previous.get(name)
            if last is not None:
                out[second] += value - last if value >= last else value
            previous[name] = value
    return out


def per_second(outcomes: Sequence[Outcome], samples: Sequence[Sample], duration: float,
               objective: float = OBJECTIVE) -> dict[str, list[Any]]:
    """The report's time series, one value per second of intended send time."""
    seconds = max(1, math.ceil(duration))
    buckets: list[list[Outcome]] = [[] for _ in range(seconds)]
    for outcome in outcomes:
        buckets[min(int(outcome.at), seconds - 1)].append(outcome)
    total = len(outcomes)
    allowed = (1.0 - objective) * total if total else 1.0
    series: dict[str, list[Any]] = {
        "second": list(range(seconds)), "requests": [], "availability": [],
        "availability_full": [], "p50": [], "p95": [], "p99": [], "budget_consumed": [],
    }
    failed_so_far = 0
    for bucket in buckets:
        n = len(bucket)
        ok = sum(1 for o in bucket if o.ok)
        full = sum(1 for o in bucket if o.ok and not o.degraded)
        failed_so_far += n - ok
        latencies = [o.latency for o in bucket]
        series["requests"].append(n)
        series["availability"].append(ok / n if n else None)
        series["availability_full"].append(full / n if n else None)
        for q in (50, 95, 99):
            series[f"p{q}"].append(percentile(latencies, q) if n else None)
        series["budget_consumed"].append(failed_so_far / allowed)
    for attr in ("retries", "sheds", "openings", "fallbacks"):
        series[attr] = _deltas(samples, attr, seconds)
    names = sorted({name for s in samples for name in s.breakers})
    breakers: dict[str, list[int | None]] = {}
    for name in names:
        states: list[int | None] = [None] * seconds
        for sample in samples:
            if name in sample.breakers:
                second = min(max(int(sample.at), 0), seconds - 1)
                states[second] = max(states[second] or 0, sample.breakers[name])
        # A breaker is only exported once it exists (closed) and a second may have no
        # scrape: carry the last known state forward, closed before the first.
        last = 0
        for second, state in enumerate(states):
            if state is None:
                states[second] = last
            else:
                last = state
        breakers[name] = states
    series["breakers"] = [{"name": n, "states": s} for n, s in breakers.items()]
    return series


def summarize(variant: str, outcomes: Sequence[Outcome], samples: Sequence[Sample],
              faults: Sequence[Fault], duration: float) -> VariantSummary:
    """Summarise one variant's run."""
    n = len(outcomes)
    ok = [o for o in outcomes if o.ok]
    full = sum(1 for o in ok if not o.degraded)
    failed = n - len(ok)
    latencies = [o.latency for o in outcomes]
    by_phase: dict[str, Counter[str]] = {}
    latencies_by_phase: dict[str, list[float]] = {}
    in_phase: dict[str, list[Outcome]] = {}
    ends = {f.label(): f.end for f in faults}
    for outcome in sorted(outcomes, key=lambda o: o.at):
        phase = phase_of(outcome.at, faults)
        in_phase.setdefault(phase, []).append(outcome)
        latencies_by_phase.setdefault(phase, []).append(outcome.latency)
        if not outcome.ok:
            by_phase.setdefault(phase, Counter())[_failure_kind(outcome)] += 1
    sources: Counter[str] = Counter()
    for outcome in ok:
        for source in filter(None, outcome.sources.split(",")):
            sources[source] += 1
    series = per_second(outcomes, samples, duration)
    availability = len(ok) / n if n else 0.0
    return VariantSummary(
        variant=variant, requests=n, full=full, degraded=len(ok) - full, failed=failed,
        availability_full=full / n if n else 0.0, availability=availability,
        p50=percentile(latencies, 50), p95=percentile(latencies, 95),
        p99=percentile(latencies, 99), max_latency=max(latencies, default=math.nan),
        worst_second_p99=max((p for p in series["p99"] if p is not None), default=math.nan),
        max_send_lag=max((o.send_lag for o in outcomes), default=0.0),
        p99_send_lag=max(percentile([o.send_lag for o in outcomes], 99), 0.0) if n else 0.0,
        late_sends=sum(o.send_lag > BEHIND_LAG for o in outcomes),
        # from the first scrape (just before the load) to the last (just after it)
        breaker_openings=round(sum(series["openings"])),
        retries=round(sum(series["retries"])),
        sheds=round(sum(series["sheds"])),
        fallbacks=round(sum(series["fallbacks"])),
        budget_consumed=budget_consumed(n, failed),
        availability_interval=_interval(len(ok), n),
        availability_full_interval=_interval(full, n),
        objective=_judge(len(ok), n),
        failures_by_phase={k: dict(v) for k, v in by_phase.items()},
        degraded_by_source=dict(sources.most_common()),
        p99_by_phase={k: percentile(v, 99) for k, v in latencies_by_phase.items()},
        phases={k: _phase_counts(v, ends.get(k)) for k, v in in_phase.items()},
        recovery={f.label(): time_to_full_service(outcomes, f, faults, duration)
                  for f in faults},
        series=series,
    )


def _interval(successes: int, n: int) -> Interval:
    """The exact 95 % interval; a run with no request proves nothing ([0, 1])."""
    if n == 0:
        return Interval(successes=0, n=0, estimate=0.0, lower=0.0, upper=1.0,
                        confidence=CONFIDENCE, method=CLOPPER_PEARSON)
    return clopper_pearson(successes, n, CONFIDENCE)


def _judge(successes: int, n: int) -> Verdict:
    """The verdict on four nines; with no request, missed (nothing was served)."""
    if n == 0:
        return Verdict(outcome="missed", target=OBJECTIVE, successes=0, n=0, estimate=0.0,
                       lower=0.0, upper=1.0, confidence=CONFIDENCE)
    return judge(successes, n, OBJECTIVE, CONFIDENCE)
