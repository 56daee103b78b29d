"""Root-cause ranking: which service departed first and most from its own steady state.

For every fault window the lab ranks the protected fleet's services by their own
golden signals, read once a second from their ``/metrics`` (see
:class:`~fournines.lab.metrics.Sample`), and names the top suspect. The method, in
full:

1. **Baseline.** Each service's signals over the steady seconds before the first
   fault (the first :data:`WARM_UP` seconds left out): per second, the 5xx share of
   its answers, its mean latency, its request rate and its requests in flight. Their
   mean and standard deviation, the deviation floored (:data:`FLOORS`) so that a
   signal that never moved in the baseline does not make every wobble infinite.
2. **Departure.** Over the first :data:`LOOK` seconds of the fault window, each
   second's z-score against the baseline: upwards for errors, latency and in-flight
   requests, both ways for the request rate (a partitioned service sees its traffic
   vanish). A second in which the service could not be scraped scores
   :data:`UNREACHABLE`. A caller's breaker on the service that was closed when the
   fault began and opens in the window scores :data:`BREAKER_OPENED` (the callers'
   view: a fault on the link, a partition or added latency, leaves the service's own
   signals quiet but not its callers' breakers). A service has *departed* when some
   signal reaches :data:`THRESHOLD`; its *onset* is the first such second, its
   *score* the largest.
3. **Ranking.** Failures travel upstream, so the callers of a broken service depart
   with it. Departed services whose own dependencies (:data:`TOPOLOGY`) did not depart
   come first (the deepest departure explains the others), then the other departed
   ones; within each group the earlier onset, then the larger score, first. Services
   that did not depart follow, by score.

The lab knows what it injected (:data:`TRUE_CAUSE`), so it reports the ranking's
top-1 and top-3 hit rates; faults without a single culprit (more arrivals) are not
counted. The naive baseline, always naming the most frequent true cause, is printed
beside them, since a ranking is only worth what it adds to that.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .metrics import Sample
from .scenario import Fault

__all__ = [
    "BREAKER_OPENED",
    "FLOORS",
    "LOOK",
    "THRESHOLD",
    "TOPOLOGY",
    "TRUE_CAUSE",
    "UNREACHABLE",
    "WARM_UP",
    "Accuracy",
    "FaultRanking",
    "Suspect",
    "accuracy",
    "rank_faults",
    "signals",
]

TOPOLOGY: Mapping[str, tuple[str, ...]] = {
    "gateway": ("order", "profile"), "order": ("payment",), "payment": (), "profile": (),
}
"""Who calls whom in the lab's fleet."""

TRUE_CAUSE: Mapping[str, str | None] = {
    "payment_errors": "payment", "payment_latency": "payment", "capacity_loss": "payment",
    "partition": "payment",  # the link from order to payment; payment is what is cut off
    "profile_kill": "profile",
    "overload": None,  # more arrivals at the edge: no single service is the cause
    "instance_kill": "payment",
    "registry_outage": None,  # the registry is no service of the fleet's
    "leak": None,  # the service the leak names (Fault.service), not one per kind
}
"""The service each fault kind breaks (``None``: not counted in the accuracy)."""

WARM_UP = 2.0
"""Seconds at the start of the load left out of the baseline (connections, caches)."""
LOOK = 5.0
"""Seconds from a fault's start over which departures are looked for."""
THRESHOLD = 4.0
"""The z-score at which a signal has departed from its baseline."""
UNREACHABLE = 100.0
"""The score of a second in which the service's ``/metrics`` could not be read."""
BREAKER_OPENED = 50.0
"""The score of a service whose caller's breaker on it opened in the window."""
FLOORS: Mapping[str, tuple[float, float]] = {
    "errors": (0.005, 0.0), "latency": (0.002, 0.1), "traffic": (1.0, 0.1),
    "in_flight": (1.0, 0.5),
}
"""Per signal, the least standard deviation: ``max(absolute, relative * baseline mean)``."""

SIGNALS = ("errors", "latency", "traffic", "in_flight")


@dataclass(frozen=True, slots=True, kw_only=True)
class Suspect:
    """One service's departure in one fault window."""

    service: str
    departed: bool
    score: float
    """The largest z-score of any signal in the window (:data:`UNREACHABLE` if unscraped)."""
    onset: float | None
    """Seconds from the fault's start to the first departed second (``None``: none)."""
    signal: str
    """The signal of the largest z-score (``"unreachable"`` when it could not be read)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultRanking:
    """The ranking of one fault window, and whether it named what the lab injected."""

    fault: str
    kind: str
    truth: str | None
    suspects: tuple[Suspect, ...]

    @property
    def top(self) -> Suspect | None:
        """The top suspect (``None`` when there were no signals at all)."""
        return self.suspects[0] if self.suspects else None

    def hit(self, k: int) -> bool:
        """Whether the true cause is among the first ``k`` suspects."""
        return self.truth is not None and self.truth in [s.service for s in self.suspects[:k]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Accuracy:
    """Hit rates over the faults that have a true cause."""

    faults: int
    top1: int
    top3: int
    naive_top1: int
    """Hits of always naming the most frequent true cause (the baseline to beat)."""


Series = dict[str, list[tuple[float, dict[str, float] | None]]]


def signals(samples: Sequence[Sample]) -> Series:
    """Per service, per scrape interval: ``(end time, {signal: value})`` or ``None``.

    ``None`` marks an interval whose closing scrape could not read the service. The
    counters are differences between consecutive readable scrapes; a counter that went
    down (a restarted process) starts that service over.
    """
    services = sorted({name for s in samples for name in s.slis})
    out: Series = {name: [] for name in services}
    for name in services:
        last: tuple[float, dict[str, float]] | None = None
        for sample in samples:
            now = sample.slis.get(name)
            if now is None:
                out[name].append((sample.at, None))
                continue
            if last is not None and all(now[k] >= last[1][k] for k in
                                        ("requests", "duration_count", "duration_sum")):
                span = max(sample.at - last[0], 1e-9)
                served = now["requests"] - last[1]["requests"]
                count = now["duration_count"] - last[1]["duration_count"]
                out[name].append((sample.at, {
                    "errors": (now["errors"] - last[1]["errors"]) / served if served else 0.0,
                    "latency": ((now["duration_sum"] - last[1]["duration_sum"]) / count
                                if count else 0.0),
                    "traffic": served / span,
                    "in_flight": now["in_flight"],
                }))
            last = (sample.at, now)
    return out


def _baseline(points: list[tuple[float, dict[str, float] | None]], start: float,
              end: float) -> dict[str, tuple[float, float]] | None:
    values = [v for at, v in points if start <= at <= end and v is not None]
    if len(values) < 2:
        return None
    out = {}
    for signal in SIGNALS:
        xs = [v[signal] for v in values]
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
        absolute, relative = FLOORS[signal]
        out[signal] = (mean, max(std, absolute, relative * abs(mean)))
    return out


def _z(signal: str, value: float, mean: float, std: float) -> float:
    z = (value - mean) / std
    return abs(z) if signal == "traffic" else z


def _suspect(service: str, points: list[tuple[float, dict[str, float] | None]],
             base: dict[str, tuple[float, float]], fault: Fault) -> Suspect:
    best, best_signal, onset = 0.0, "", None
    # An interval's signals belong to the second before its closing scrape.
    for at, values in points:
        if not _in_window(at, fault):
            continue
        if values is None:
            scores = {"unreachable": UNREACHABLE}
        else:
            scores = {s: _z(s, values[s], *base[s]) for s in SIGNALS}
        signal = max(scores, key=lambda k: scores[k])
        if scores[signal] > best:
            best, best_signal = scores[signal], signal
        if onset is None and scores[signal] >= THRESHOLD:
            onset = max(at - 1.0 - fault.at, 0.0)
    return Suspect(service=service, departed=onset is not None, score=best, onset=onset,
                   signal=best_signal or "none")


def _in_window(at: float, fault: Fault) -> bool:
    return fault.at < at <= min(fault.end, fault.at + LOOK) + 1.0


def _breakers_opened(samples: Sequence[Sample], fault: Fault) -> dict[str, tuple[float, str]]:
    """Callee -> (onset, caller) for breakers closed at the fault's start that opened."""
    before = [s for s in samples if s.at <= fault.at]
    start = before[-1].breakers if before else {}
    out: dict[str, tuple[float, str]] = {}
    for sample in samples:
        if not _in_window(sample.at, fault):
            continue
        for key, level in sample.breakers.items():
            caller, _, target = key.partition(" -> ")
            callee = target.split(" ")[0]
            if level >= 2 and start.get(key, 0) == 0 and callee not in out:
                out[callee] = (max(sample.at - 1.0 - fault.at, 0.0), caller)
    return out


def _with_breaker(suspect: Suspect, opened: tuple[float, str] | None) -> Suspect:
    if opened is None or suspect.score >= BREAKER_OPENED:
        return suspect
    onset, caller = opened
    return Suspect(service=suspect.service, departed=True, score=BREAKER_OPENED,
                   onset=onset if suspect.onset is None else min(onset, suspect.onset),
                   signal=f"breaker of {caller}")


def _order(suspect: Suspect, departed: frozenset[str],
           topology: Mapping[str, tuple[str, ...]]) -> tuple[int, float, float]:
    if not suspect.departed:
        return (2, 0.0, -suspect.score)
    deepest = not any(d in departed for d in topology.get(suspect.service, ()))
    return (0 if deepest else 1, suspect.onset or 0.0, -suspect.score)


def rank_faults(samples: Sequence[Sample], faults: Sequence[Fault],
                topology: Mapping[str, tuple[str, ...]] = TOPOLOGY) -> list[FaultRanking]:
    """Rank the services for every fault (see the module docstring for the method).

    Empty when the run has no steady seconds before its first fault to learn from.
    """
    if not faults:
        return []
    series = signals(samples)
    first = min(f.at for f in faults)
    bases = {name: _baseline(points, WARM_UP, first) for name, points in series.items()}
    rankings = []
    for fault in sorted(faults, key=lambda f: f.at):
        opened = _breakers_opened(samples, fault)
        suspects = [_with_breaker(_suspect(name, series[name], base, fault), opened.get(name))
                    for name, base in bases.items() if base is not None]
        departed = frozenset(s.service for s in suspects if s.departed)
        ordered = sorted(suspects, key=lambda s: _order(s, departed, topology))
        rankings.append(FaultRanking(fault=fault.label(), kind=fault.kind,
                                     truth=fault.service if fault.kind == "leak"
                                     else TRUE_CAUSE.get(fault.kind),
                                     suspects=tuple(ordered)))
    return rankings


def accuracy(rankings: Sequence[FaultRanking]) -> Accuracy:
    """Top-1 and top-3 hits over the faults with a true cause, and the naive baseline's."""
    counted = [r for r in rankings if r.truth is not None]
    causes = Counter(r.truth for r in counted)
    naive = causes.most_common(1)[0][1] if causes else 0
    return Accuracy(faults=len(counted), top1=sum(r.hit(1) for r in counted),
                    top3=sum(r.hit(3) for r in counted), naive_top1=naive)
