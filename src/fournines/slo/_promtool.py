"""``promtool test rules`` suites generated together with the rules.

For every SLO whose SLI series can be synthesised (fournines' availability
and latency SLIs, and event queries of the form ``sum(rate(SELECTOR[{{.window}}]))``,
or OpenSLO's ``total - good``), the suite replays scenarios at 1-minute
resolution and states what the generated alerts do:

- a total outage after an hour of health pages within a few minutes;
- a burn just above the slowest ticket tier (1.2x the sustainable rate on a
  30-day period) opens a ticket and never pages;
- a 10-minute total outage pages, and stops paging once the short windows no
  longer hold the spike (then never pages again);
- zero traffic gives no error ratio, no budget figure and no alert at all;
- no traffic series at all raises the absent-metrics alert after ``absent_after``;
- with ``min_events``, a low-traffic service with 10 % errors does not page;
- with ``simple``, twice the plain rule's error ratio is ``P1`` after its ``for``.

The expected alert states come from a model of the rules evaluated in Python:
window ratios are ``(bad events) / (all events)`` within the window, exactly
what ``rate()`` gives when samples fall on the window's edges (they do, at
1-minute steps). Only instants where every condition is at least 5 % away from
its threshold are asserted, so float rounding cannot flip an expectation.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .rules import (
    ALERT_ABSENT,
    ALERT_SIMPLE,
    RECORD_ERROR_RATIO,
    RECORD_PERIOD_ERROR_RATIO,
    SIMPLE_FOR_MINUTES,
    alert_rule_labels,
    burn_rate_windows,
    slo_labels,
)
from .spec import SLO, EventsSLI, LatencySLI, RuleIntervals, SLOSpec

__all__ = ["generate_tests"]

_SUM_RATE = re.compile(
    r"^\s*sum\s*\(\s*rate\s*\(\s*(?P<sel>[a-zA-Z_:][a-zA-Z0-9_:]*\s*(?:\{[^{}]*\})?)\s*"
    r"\[\s*\{\{\s*\.window\s*\}\}\s*\]\s*\)\s*\)\s*$")
_DIFFERENCE = re.compile(r"^\s*\((?P<a>.*)\)\s*-\s*\((?P<b>.*)\)\s*$", re.DOTALL)
# OpenSLO's good events as the reader writes them: `(good) or 0 * (total)`.
_OR_ZERO = re.compile(r"^\s*\((?P<a>.*)\)\s*or\s*0\s*\*\s*\((?P<b>.*)\)\s*$", re.DOTALL)
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
# Label values to try, most plausible first; "" (no such label) last.
_CANDIDATES = ("500", "503", "429", "200", "201", "404", "0", "1", "true", "false", "ok",
               "error", "success", "x", "GET", "")
_MINUTES = {"s": 1 / 60, "m": 1, "h": 60, "d": 1440}
_MARGIN = 0.05
_RATE = 6000.0  # requests a minute: 100 a second, a modest service


@dataclass(frozen=True, slots=True)
class _Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]

    def matches(self, metric: str, labels: Mapping[str, str]) -> bool:
        if metric != self.metric:
            return False
        for name, op, value in self.matchers:
            have = labels.get(name, "")
            if op == "=" and have != value:
                return False
            if op == "!=" and have == value:
                return False
            if op in ("=~", "!~") and (re.fullmatch(value, have) is not None) != (op == "=~"):
                return False
        return True


def _parse_selector(text: str) -> _Selector | None:
    text = text.strip()
    metric, _, rest = text.partition("{")
    matchers: list[tuple[str, str, str]] = []
    body = rest.rstrip().removesuffix("}") if rest else ""
    position = 0
    while position < len(body):
        match = _MATCHER.match(body, position)
        if match is None:
            return None
        value = re.sub(r"\\(.)", r"\1", match.group(3))
        matchers.append((match.group(1), match.group(2), value))
        position = match.end()
    return _Selector(metric.strip(), tuple(matchers))


def _sum_rate(query: str) -> _Selector | None:
    match = _SUM_RATE.match(query)
    return _parse_selector(match.group("sel")) if match else None


def _labels_for(metric: str, wanted: Sequence[tuple[_Selector, bool]]) -> dict[str, str] | None:
    """A label set of ``metric`` that each selector matches (True) or does not (False)."""
    names = sorted({m[0] for s, _ in wanted for m in s.matchers})
    choices = []
    for name in names:
        values = {v for s, _ in wanted for n, op, v in s.matchers if n == name and op == "="}
        choices.append([*sorted(values), *(c for c in _CANDIDATES if c not in values)])
    if math.prod(len(c) for c in choices) > 200_000:  # too many matchers to search
        return None
    for combination in itertools.product(*choices):
        labels = {n: v for n, v in zip(names, combination, strict=True) if v}
        if all(s.matches(metric, labels) == want for s, want in wanted):
            return labels
    return None


# A series and how its value follows the cumulative good and bad event counts.
_Series = tuple[str, dict[str, str], float, float]


def _series(slo: SLO) -> list[_Series] | None:
    """Input series for ``slo``'s SLI, or ``None`` when its queries are too free-form."""
    sli = slo.sli
    if isinstance(sli, LatencySLI):
        selector = _parse_selector(f"{sli.histogram}_count{{{sli.selector}}}")
        if selector is None:
            return None
        base = _labels_for(selector.metric, [(selector, True)])
        if base is None:
            return None
        return [(f"{sli.histogram}_count", base, 1, 1),
                (f"{sli.histogram}_bucket", {**base, "le": sli.le}, 1, 0),
                (f"{sli.histogram}_bucket", {**base, "le": "+Inf"}, 1, 1)]
    assert isinstance(sli, EventsSLI)
    total = _sum_rate(sli.total_query)
    if total is None:
        return None
    bad = _sum_rate(sli.error_query)
    if bad is not None:
        if bad.metric == total.metric:
            lb = _labels_for(total.metric, [(total, True), (bad, True)])
            lg = _labels_for(total.metric, [(total, True), (bad, False)])
            if lb is None or lg is None:
                return None
            return [(total.metric, lb, 0, 1), (total.metric, lg, 1, 0)]
        lb = _labels_for(bad.metric, [(bad, True)])
        lt = _labels_for(total.metric, [(total, True)])
        if lb is None or lt is None:
            return None
        return [(bad.metric, lb, 0, 1), (total.metric, lt, 1, 1)]
    difference = _DIFFERENCE.match(sli.error_query)
    subtracted = difference.group("b") if difference else ""
    or_zero = _OR_ZERO.match(subtracted)
    if or_zero is not None and _sum_rate(or_zero.group("b")) == total:
        subtracted = or_zero.group("a")
    good = _sum_rate(subtracted) if difference else None
    if difference is None or good is None or _sum_rate(difference.group("a")) != total:
        return None
    if good.metric == total.metric:
        lb = _labels_for(total.metric, [(total, True), (good, False)])
        lg = _labels_for(total.metric, [(total, True), (good, True)])
        if lb is None or lg is None:
            return None
        return [(total.metric, lb, 0, 1), (total.metric, lg, 1, 0)]
    lt = _labels_for(total.metric, [(total, True)])
    lg = _labels_for(good.metric, [(good, True)])
    if lt is None or lg is None:
        return None
    return [(total.metric, lt, 1, 1), (good.metric, lg, 1, 0)]


# --- the model -------------------------------------------------------------------------------


class _Run:
    """Cumulative good and bad counts per minute, and the alerts' state as the rules see it."""

    def __init__(self, slo: SLO, segments: Sequence[tuple[int, float, float]]) -> None:
        self.slo = slo
        self.good = [0.0]
        self.bad = [0.0]
        for minutes, good, bad in segments:
            for _ in range(minutes):
                self.good.append(self.good[-1] + good)
                self.bad.append(self.bad[-1] + bad)
        self.end = len(self.good) - 1

    def ratio(self, t: int, window: str) -> tuple[float | None, float]:
        start = max(0, t - _window_minutes(window))
        total = (self.good[t] + self.bad[t]) - (self.good[start] + self.bad[start])
        if t == 0 or total <= 0:
            return None, 0.0
        return (self.bad[t] - self.bad[start]) / total, total

    def state(self, t: int, severity: str) -> bool | None:
        """True/False when the tier clearly fires/does not at minute ``t``; None if close."""
        budget = float(self.slo.error_budget_ratio)
        minimum = self.slo.alerting.min_events
        verdicts: list[bool | None] = []
        for window, factor in burn_rate_windows(self.slo):
            if window.severity != severity:
                continue
            threshold = float(factor) * budget
            conditions: list[bool | None] = []
            for name in (window.long, window.short):
                value, _ = self.ratio(t, name)
                conditions.append(_compare(value, threshold))
            if minimum > 0:
                _, events = self.ratio(t, window.long)
                conditions.append(_compare(events, minimum, strict=False))
            if all(c is True for c in conditions):
                verdicts.append(True)
            elif any(c is False for c in conditions):
                verdicts.append(False)
            else:
                verdicts.append(None)
        if any(v is True for v in verdicts):
            return True
        if all(v is False for v in verdicts):
            return False
        return None


def _compare(value: float | None, threshold: float, *, strict: bool = True) -> bool | None:
    if value is None:
        return False
    if value > threshold * (1 + _MARGIN) or (not strict and value >= threshold * (1 + _MARGIN)):
        return True
    if value < threshold * (1 - _MARGIN):
        return False
    return None


def _minutes(count: int) -> str:
    return f"{count} minute{'' if count == 1 else 's'}"


def _window_minutes(window: str) -> int:
    return int(window[:-1]) * int(_MINUTES[window[-1]])


# --- writing ---------------------------------------------------------------------------------


def _number(value: float) -> str:
    rounded = round(value, 6)
    return str(int(rounded)) if rounded == int(rounded) else repr(rounded)


def _values(values: Sequence[float]) -> str:
    """Values in promtool's expanding notation: ``0+100x60 6000+0x30`` ..."""
    tokens = []
    i = 0
    while i < len(values):
        if i + 1 == len(values):
            tokens.append(_number(values[i]))
            break
        step = values[i + 1] - values[i]
        n = 1
        while i + n + 1 < len(values) and math.isclose(values[i + n + 1] - values[i + n], step,
                                                        rel_tol=1e-9, abs_tol=1e-9):
            n += 1
        tokens.append(f"{_number(values[i])}+{_number(step)}x{n}")
        i += n + 1
    return " ".join(tokens)


def _series_text(metric: str, labels: Mapping[str, str]) -> str:
    inner = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
    return f"{metric}{{{inner}}}"


def _q(text: str) -> str:
    return json.dumps(text)


class _Group:
    def __init__(self, name: str, run: _Run, series: Sequence[_Series] | None) -> None:
        self.name = name
        self.run = run
        self.series = series
        self.checks: list[tuple[str, int, list[tuple[str, float]]]] = []

    def expect(self, expr: str, minute: int, samples: list[tuple[str, float]]) -> None:
        self.checks.append((expr, minute, samples))

    def lines(self) -> list[str]:
        out = [f"  - name: {_q(self.name)}", "    interval: 1m", "    input_series:"]
        if self.series is None:
            out += ["      - series: 'fournines_unrelated_metric'", "        values: '1+0x60'"]
        else:
            for metric, labels, good, bad in self.series:
                values = [good * g + bad * b for g, b in zip(self.run.good, self.run.bad,
                                                             strict=True)]
                out += [f"      - series: {_q(_series_text(metric, labels))}",
                        f"        values: {_q(_values(values))}"]
        out.append("    promql_expr_test:")
        for expr, minute, samples in self.checks:
            out += [f"      - expr: {_q(expr)}", f"        eval_time: {minute}m"]
            if not samples:
                out.append("        exp_samples: []")
                continue
            out.append("        exp_samples:")
            for sample, value in samples:
                out += [f"          - labels: {_q(sample)}", f"            value: {value:g}"]
        return out


class _Suite:
    def __init__(self, spec: SLOSpec, slo: SLO) -> None:
        self.spec = spec
        self.slo = slo
        self.series_labels = slo_labels(spec, slo)

    def alert(self, kind: str) -> dict[str, str]:
        """The labels of the ALERTS series of a firing alert of ``kind``."""
        name = {"absent": ALERT_ABSENT, "P1": ALERT_SIMPLE}.get(kind, self.slo.alerting.name)
        base = {**self.series_labels, **alert_rule_labels(self.spec, self.slo, kind)}
        return {**base, "alertname": name, "alertstate": "firing"}

    def firing(self, kind: str) -> str:
        return _series_text("ALERTS", self.alert(kind))

    def tiers(self) -> set[str]:
        return {w.severity for w, _ in burn_rate_windows(self.slo)}

    def ratio(self, name: str) -> str:
        return _series_text(name, {"fournines_service": self.spec.service,
                                   "fournines_slo": self.slo.name})

    def groups(self) -> list[_Group]:
        series = _series(self.slo)
        if series is None:
            return []
        out = [g for g in (self.outage(series), self.spike(series), self.slow_burn(series),
                           self.low_traffic(series), self.simple(series)) if g is not None]
        out.append(self.zero_traffic(series))
        if self.slo.alerting.absent_after is not None:
            out.append(self.absent())
        return out

    def _name(self, text: str) -> str:
        return f"{self.spec.service} {self.slo.name}: {text}"

    def outage(self, series: list[_Series]) -> _Group | None:
        if "page" not in self.tiers():
            return None
        run = _Run(self.slo, [(60, _RATE, 0), (30, 0, _RATE)])
        first = next((t for t in range(61, run.end + 1) if run.state(t, "page") is True), None)
        if first is None or any(run.state(t, "page") is not False for t in range(0, 61)):
            return None
        group = _Group(self._name(f"a total outage pages within {_minutes(first - 60)}"),
                       run, series)
        page = self.firing("page")
        group.expect(f"count_over_time({page}[60m])", 60, [])
        group.expect(page, first, [(page, 1)])
        return group

    def simple(self, series: list[_Series]) -> _Group | None:
        alerting = self.slo.alerting
        if not alerting.simple:
            return None
        threshold = alerting.simple_percent / 100
        ratio = 2 * threshold
        run = _Run(self.slo, [(30, _RATE, 0), (20, _RATE * (1 - ratio), _RATE * ratio)])

        def above(t: int) -> bool | None:
            return _compare(run.ratio(t, "5m")[0], threshold)

        start = next((t for t in range(31, run.end + 1) if above(t) is True), None)
        fires = None if start is None else start + SIMPLE_FOR_MINUTES
        if fires is None or fires > run.end or any(above(t) is not True
                                                   for t in range(start or 0, fires + 1)):
            return None
        group = _Group(self._name(
            f"the plain rule: {_number(2 * alerting.simple_percent)} % errors over 5m is P1 "
            f"after {_minutes(SIMPLE_FOR_MINUTES)}"), run, series)
        p1 = self.firing("P1")
        group.expect(f"count_over_time({p1}[30m])", 30, [])
        group.expect(p1, fires - 1, [])
        group.expect(p1, fires, [(p1, 1)])
        return group

    def spike(self, series: list[_Series]) -> _Group | None:
        if "page" not in self.tiers():
            return None
        run = _Run(self.slo, [(60, _RATE, 0), (10, 0, _RATE), (45, _RATE, 0)])
        first = next((t for t in range(61, 71) if run.state(t, "page") is True), None)
        last = max((t for t in range(61, run.end + 1) if run.state(t, "page") is not False),
                   default=None)
        if first is None or last is None or last + 1 >= run.end:
            return None
        stop = last + 1
        group = _Group(self._name(f"a 10-minute spike pages, and stops paging {_minutes(stop - 70)}"
                                  " after it ends, when the short windows have recovered"),
                       run, series)
        page = self.firing("page")
        group.expect(page, first, [(page, 1)])
        after = max((t for t in range(71, stop) if run.state(t, "page") is True), default=None)
        if after is not None:
            group.expect(page, after, [(page, 1)])
        group.expect(page, stop, [])
        group.expect(f"count_over_time({page}[{run.end - stop}m])", run.end, [])
        if "ticket" in self.tiers() and run.state(stop, "ticket") is True:
            ticket = self.firing("ticket")
            group.expect(ticket, stop, [(ticket, 1)])
        return group

    def slow_burn(self, series: list[_Series]) -> _Group | None:
        windows = burn_rate_windows(self.slo)
        slowest = min((f for w, f in windows if w.severity == "ticket"), default=None)
        burn = 1.2 * float(slowest if slowest is not None else 1)
        ratio = burn * float(self.slo.error_budget_ratio)
        if ratio >= 1:
            return None
        run = _Run(self.slo, [(120, _RATE * (1 - ratio), _RATE * ratio)])
        if any(run.state(t, "page") is not False for t in range(run.end + 1)):
            return None
        group = _Group(self._name(f"a steady burn at {burn:g}x the sustainable rate opens a "
                                  "ticket and never pages"), run, series)
        if "ticket" in self.tiers():
            ticket = self.firing("ticket")
            for minute in (30, 120):
                if run.state(minute, "ticket") is True:
                    group.expect(ticket, minute, [(ticket, 1)])
        if "page" in self.tiers():
            group.expect(f"count_over_time({self.firing('page')}[120m])", 120, [])
        return group

    def low_traffic(self, series: list[_Series]) -> _Group | None:
        minimum = self.slo.alerting.min_events
        if minimum <= 0 or "page" not in self.tiers():
            return None
        per_minute = minimum / 720  # a twelfth of the minimum an hour
        run = _Run(self.slo, [(120, per_minute * 0.9, per_minute * 0.1)])
        if any(run.state(t, "page") is not False for t in range(run.end + 1)):
            return None
        group = _Group(self._name(
            f"a low-traffic service ({minimum / 12:g} requests an hour, 10 % failing) does not "
            f"page: fewer than {minimum:g} events in the window"), run, series)
        group.expect(f"count_over_time({self.firing('page')}[120m])", 120, [])
        return group

    def zero_traffic(self, series: list[_Series]) -> _Group:
        run = _Run(self.slo, [(60, 0, 0)])
        group = _Group(self._name("zero traffic gives no data (never NaN) and no alert"), run,
                       [(m, labels, 0, 0) for m, labels, _, _ in series])
        selector = {"alertstate": "firing", "fournines_service": self.spec.service,
                    "fournines_slo": self.slo.name}
        group.expect(f"count_over_time({_series_text('ALERTS', selector)}[60m])", 60, [])
        for name in (RECORD_ERROR_RATIO.format(window="5m"),
                     RECORD_ERROR_RATIO.format(window="1h"), RECORD_PERIOD_ERROR_RATIO,
                     "fournines_slo:period_error_budget_remaining:ratio"):
            group.expect(self.ratio(name), 60, [])
        return group

    def absent(self) -> _Group:
        after = self.slo.alerting.absent_after or "0m"
        minutes = math.ceil(int(after[:-1]) * _MINUTES[after[-1]])
        run = _Run(self.slo, [(minutes + 5, 0, 0)])
        group = _Group(self._name(f"no SLI series at all raises {ALERT_ABSENT} after {after}"),
                       run, None)
        absent = self.firing("absent")
        # It fires at the first evaluation `after` past the start: at minute 0 for 0m, so
        # the quiet check goes before that minute (and is left out when there is none).
        if minutes >= 1:
            group.expect(absent, min(1, minutes - 1), [])
        group.expect(absent, minutes + 1, [(absent, 1)])
        return group


def generate_tests(spec: SLOSpec | Sequence[SLOSpec], rules_file: str) -> tuple[str, list[str]]:
    """A ``promtool test rules`` file for ``spec``'s rules (or several specs') at ``rules_file``.

    ``rules_file`` is written into the suite as given (promtool resolves it
    relative to the suite). Returns the text and the names of SLOs left out
    because their SLI queries are too free-form to synthesise series for, or
    because their rules have evaluation intervals of their own (the scenarios
    expect an evaluation every minute).
    """
    specs = [spec] if isinstance(spec, SLOSpec) else list(spec)
    lines = ["# Generated by fournines with the rules: `fournines slo rules SPEC --tests FILE`.",
             "# Run: promtool test rules FILE", f"rule_files:\n  - {_q(rules_file)}",
             "evaluation_interval: 1m", "tests:"]
    skipped = []
    for one, slo in [(each, slo) for each in specs for slo in each.slos]:
        groups = [] if slo.intervals != RuleIntervals() else _Suite(one, slo).groups()
        if not groups:
            skipped.append(slo.name if len(specs) == 1 else f"{one.service}/{slo.name}")
            continue
        for group in groups:
            lines += group.lines()
    if skipped:
        lines.insert(2, "# No scenarios for (free-form SLI queries, or own rule intervals): "
                     + ", ".join(skipped))
    if lines[-1] == "tests:":
        lines[-1] = "tests: []"
    return "\n".join(lines) + "\n", skipped
