"""Prometheus recording and alerting rules for an :class:`~fournines.slo.spec.SLOSpec`.

Per SLO, one rule group ``fournines-slo-SERVICE-SLO`` holds, in evaluation order:

- the error ratio over 5m, 30m, 1h, 2h, 6h, 1d and 3d
  (``fournines_slo:error_ratio:rate5m`` ...), each straight from the SLI's
  queries, and over the whole period (``fournines_slo:error_ratio:period``):
  the sum of the 5m error rates over the period divided by the sum of the 5m
  request rates, so busy hours weigh more than quiet ones, as they should;
- meta series: ``fournines_slo_info`` (1, with the SLO's labels, its objective
  and period, and its ``info_labels``), ``fournines_slo:objective:ratio``,
  ``fournines_slo:error_budget:ratio``,
  ``fournines_slo:period:seconds``, ``fournines_slo:current_burn_rate:ratio`` (5m),
  ``fournines_slo:period_burn_rate:ratio`` and
  ``fournines_slo:period_error_budget_remaining:ratio`` (1 = untouched, 0 = spent);
- the multi-window multi-burn-rate alerts of the Google SRE workbook (chapter 5,
  "Alerting on SLOs"): a ``page`` alert when 2 % of the budget burns in 1h (with
  5m) or 5 % in 6h (with 30m), a ``ticket`` alert when 10 % burns in 1d (with
  2h) or in 3d (with 6h); optionally the seed's plain rule (5m error ratio above
  0.1 % is ``P1``); the SLO's ``budget_alerts`` (at most a threshold of the budget
  left, Sloth's ``error_budget_exhausted_alert``); and an alert when the SLI's traffic
  is missing.

Every series carries ``fournines_service`` and ``fournines_slo`` and the spec's
labels, except where the SLO's ``label_removals`` take them off (Sloth's
``remove_labels``: SLI and meta series keep only the identity and the labels kept).
An SLO whose :class:`~fournines.slo.spec.RuleIntervals` differ has its rules in
three groups instead (``...-sli``, ``...-meta``, ``...-alerts``), each
with its interval. Zero traffic gives no sample (never NaN), so it never alerts; the
``min_events`` guard keeps a window with fewer requests than that from alerting.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from .spec import (
    INFO_METRIC,
    SLO,
    BudgetExhaustedAlert,
    SLOSpec,
    error_ratio_query,
    errors_or_zero_query,
    total_query,
)

__all__ = [
    "ALERT_ABSENT",
    "ALERT_SIMPLE",
    "RECORD_BUDGET_REMAINING",
    "RECORD_ERROR_RATIO",
    "RECORD_PERIOD_ERROR_RATIO",
    "SIMPLE_FOR_MINUTES",
    "TIERS",
    "WINDOWS",
    "BurnRateWindow",
    "alert_rule_labels",
    "burn_rate_factor",
    "burn_rate_windows",
    "exact",
    "generate_rules",
    "slo_labels",
    "write_atomic",
]

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
"""The windows the error ratio is recorded over (besides the whole period)."""

_SECONDS = {"5m": 300, "30m": 1800, "1h": 3600, "2h": 7200, "6h": 21600, "1d": 86400,
            "3d": 259200}

RECORD_ERROR_RATIO = "fournines_slo:error_ratio:rate{window}"
"""Name of the recorded error ratio over ``window`` (one of :data:`WINDOWS`)."""
RECORD_PERIOD_ERROR_RATIO = "fournines_slo:error_ratio:period"
"""Name of the recorded error ratio over the SLO's whole period."""
RECORD_BUDGET_REMAINING = "fournines_slo:period_error_budget_remaining:ratio"
"""Name of the recorded share of the period's error budget left (1 = untouched, 0 = spent)."""
_ID_LABELS = ("fournines_service", "fournines_slo")
_ERRORS_5M = "fournines_slo:errors:rate5m"
_REQUESTS = "fournines_slo:requests:rate{window}"
ALERT_SIMPLE = "SLOHighErrorRate"
"""Name of the seed's plain alert (``Alerting.simple``)."""
SIMPLE_FOR_MINUTES = 2
"""How long the plain rule's condition must hold before it fires (the seed's ``for: 2m``)."""
_PLAIN_KEY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
ALERT_ABSENT = "SLOMetricsAbsent"
"""Name of the alert for an SLI whose traffic series are missing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BurnRateWindow:
    """One alert condition: ``budget_spent`` of the budget burnt within ``long`` (and ``short``)."""

    severity: str
    budget_spent: Fraction
    long: str
    short: str


TIERS: tuple[BurnRateWindow, ...] = (
    BurnRateWindow(severity="page", budget_spent=Fraction(2, 100), long="1h", short="5m"),
    BurnRateWindow(severity="page", budget_spent=Fraction(5, 100), long="6h", short="30m"),
    BurnRateWindow(severity="ticket", budget_spent=Fraction(10, 100), long="1d", short="2h"),
    BurnRateWindow(severity="ticket", budget_spent=Fraction(10, 100), long="3d", short="6h"),
)
"""The SRE workbook's windows; for a 30-day period their burn rates are 14.4, 6, 3 and 1."""


def burn_rate_factor(window: BurnRateWindow, period_seconds: int) -> Fraction:
    """How many times faster than sustainable the budget burns when the window alerts.

    Burning ``budget_spent`` of the budget within ``long`` is a burn rate of
    ``budget_spent * period / long``: 2 % in 1h of 30 days is 14.4, of 28 days
    13.44, of 7 days 3.36.
    """
    return window.budget_spent * period_seconds / _SECONDS[window.long]


def burn_rate_windows(slo: SLO) -> list[tuple[BurnRateWindow, Fraction]]:
    """The enabled tiers' windows of ``slo``, each with its burn-rate factor."""
    enabled = {"page": slo.alerting.page, "ticket": slo.alerting.ticket}
    return [(w, burn_rate_factor(w, slo.period_seconds)) for w in TIERS if enabled[w.severity]]


def exact(value: Fraction | Decimal) -> str:
    """PromQL text for ``value`` without float noise: ``0.0144``, or ``(14 / 15000)``.

    Ratios whose decimal expansion never ends (a 3d window of a 28-day period)
    are written as a division.
    """
    fraction = Fraction(value)
    denominator = fraction.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    if denominator != 1:
        return f"({fraction.numerator} / {fraction.denominator})"
    return format((Decimal(fraction.numerator) / Decimal(fraction.denominator)).normalize(), "f")


def slo_labels(spec: SLOSpec, slo: SLO) -> dict[str, str]:
    """The labels every series and alert of ``slo`` carries."""
    return {**spec.labels, **slo.labels, "fournines_service": spec.service,
            "fournines_slo": slo.name}


def alert_rule_labels(spec: SLOSpec, slo: SLO, kind: str) -> dict[str, str]:
    """The ``labels`` of an alert rule of ``slo``: ``kind`` is page, ticket, P1 or absent.

    A firing alert also carries the labels of the series it fired on
    (:func:`slo_labels`), except the absent alert, which has no series.
    """
    alerting = slo.alerting
    extra = {"page": alerting.page_labels, "ticket": alerting.ticket_labels}.get(kind, {})
    severity = "ticket" if kind == "absent" else kind
    # The SLO's identity is on the rules themselves too: promtool rejects two rules of one
    # name and label set, which every SLO's alerts would otherwise be.
    return {"severity": severity, **alerting.labels, **extra,
            "fournines_service": spec.service, "fournines_slo": slo.name}


def _selector(spec: SLOSpec, slo: SLO) -> str:
    return "{" + ", ".join(
        f"{k}={json.dumps(v)}" for k, v in (("fournines_service", spec.service),
                                            ("fournines_slo", slo.name))) + "}"


def _record_lines(name: str, expr: str, labels: Mapping[str, str]) -> list[str]:
    return [f"  - record: {name}", *_expr(expr), *_mapping("labels", labels)]


def _expr(expr: str) -> list[str]:
    return ["    expr: |", *(f"      {line}" for line in expr.splitlines())]


def _mapping(key: str, values: Mapping[str, str], indent: str = "    ") -> list[str]:
    if not values:
        return []
    return [f"{indent}{key}:", *(f"{indent}  {_key(k)}: {json.dumps(v)}" for k, v in sorted(
        values.items()))]


def _key(name: str) -> str:
    # Quoted unless plain: a UTF-8 label name (Sloth's info labels) or an alert name
    # like `a: b` would break the YAML.
    return name if _PLAIN_KEY.match(name) else json.dumps(name)


def _series_labels(slo: SLO, name: str, labels: Mapping[str, str]) -> dict[str, str]:
    """The labels of ``slo``'s recorded series ``name``, after its label removals."""
    out = dict(labels)
    for removal in slo.label_removals:
        if name != INFO_METRIC and name not in removal.skip:
            out = {k: v for k, v in out.items() if k in _ID_LABELS or k in removal.keep}
    return out


def _go_float(value: float) -> str:
    """``value`` as Go's ``fmt.Sprintf("%g")`` writes it (``0``, ``0.05``, ``1e-05``).

    Sloth writes a budget alert's threshold so; the same digits keep the rules equal.
    """
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(float(value))).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # where the decimal point falls within the digits
    exp = point - 1
    if exp < -4 or exp >= 6:  # Go's shortest %g switches to %e there
        mantissa = text[0] + (f".{text[1:]}" if len(text) > 1 else "")
        out = f"{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    elif point <= 0:
        out = "0." + "0" * -point + text
    elif point >= len(text):
        out = text + "0" * (point - len(text))
    else:
        out = f"{text[:point]}.{text[point:]}"
    return ("-" if sign else "") + out


def _go_quote(text: str) -> str:
    """``text`` as Go's ``strconv.Quote`` writes it, as Sloth's label matchers are."""
    escapes = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f",
               "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif char == " " or (char.isprintable() and not char.isspace()):
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def _budget_selector(spec: SLOSpec, slo: SLO, alert: BudgetExhaustedAlert) -> str:
    """The label matchers of a budget-exhausted alert: as Sloth's, with fournines' identity.

    The SLO's labels and the alert's ``selector_labels`` over ``fournines_service`` and
    ``fournines_slo``, sorted by name and written as Prometheus' ``LabelSet.String()``.
    """
    labels = {"fournines_service": spec.service, "fournines_slo": slo.name, **spec.labels,
              **slo.labels, **alert.selector_labels}
    return "{" + ", ".join(f"{k}={_go_quote(v)}" for k, v in sorted(labels.items())) + "}"


def _budget_alerts(spec: SLOSpec, slo: SLO) -> list[str]:
    lines: list[str] = []
    for alert in slo.budget_alerts:
        lines += [f"  # At most {_go_float(alert.threshold)} of the period's error budget left "
                  f"(Sloth's error_budget_exhausted_alert).",
                  f"  - alert: {_key(alert.name)}",
                  *_expr(f"{RECORD_BUDGET_REMAINING}{_budget_selector(spec, slo, alert)}"
                         f" <= {_go_float(alert.threshold)}"),
                  f"    for: {alert.for_}",
                  *_mapping("labels", alert.labels),
                  *_mapping("annotations", alert.annotations)]
    return lines


def _slo_group(spec: SLOSpec, slo: SLO) -> list[str]:
    labels = slo_labels(spec, slo)
    sel = _selector(spec, slo)

    def _record(name: str, expr: str, labels: Mapping[str, str]) -> list[str]:
        return _record_lines(name, expr, _series_labels(slo, name, labels))

    budget = slo.error_budget_ratio
    windows = burn_rate_windows(slo)
    min_events = slo.alerting.min_events
    sli = [f"  # Error ratios of {slo.name} (objective {exact(slo.objective_ratio * 100)}"
           f" % over {slo.period}): bad / all events, weighted by traffic."]
    sli += _record(_ERRORS_5M, errors_or_zero_query(slo, "5m"), labels)
    sli += _record(_REQUESTS.format(window="5m"), total_query(slo, "5m"), labels)
    for window in WINDOWS:
        sli += _record(RECORD_ERROR_RATIO.format(window=window),
                       error_ratio_query(slo, window), labels)
    if min_events > 0:
        for window in sorted({w.long for w, _ in windows}, key=_SECONDS.__getitem__):
            sli += _record(_REQUESTS.format(window=window), total_query(slo, window), labels)
    period = slo.period
    sli += _record(
        RECORD_PERIOD_ERROR_RATIO,
        f"sum_over_time({_ERRORS_5M}{sel}[{period}])\n/\n"
        f"(sum_over_time({_REQUESTS.format(window='5m')}{sel}[{period}]) > 0)", labels)
    meta = ["  # Meta series: what the objective is, and how much of its budget is left."]
    meta += _record(INFO_METRIC, "vector(1)", {
        **labels, "fournines_objective": exact(slo.objective_ratio * 100),
        "fournines_period": slo.period, **slo.info_labels})
    meta += _record("fournines_slo:objective:ratio", f"vector({exact(slo.objective_ratio)})",
                    labels)
    meta += _record("fournines_slo:error_budget:ratio", f"vector({exact(budget)})", labels)
    meta += _record("fournines_slo:period:seconds", f"vector({slo.period_seconds})", labels)
    meta += _record("fournines_slo:current_burn_rate:ratio",
                    f"{RECORD_ERROR_RATIO.format(window='5m')}{sel} / {exact(budget)}", labels)
    meta += _record("fournines_slo:period_burn_rate:ratio",
                    f"{RECORD_PERIOD_ERROR_RATIO}{sel} / {exact(budget)}", labels)
    meta += _record(RECORD_BUDGET_REMAINING,
                    f"1 - {RECORD_PERIOD_ERROR_RATIO}{sel} / {exact(budget)}", labels)
    alerts: list[str] = []
    for severity in ("page", "ticket"):
        tier = [(w, f) for w, f in windows if w.severity == severity]
        if tier:
            alerts += _burn_alert(spec, slo, severity, tier)
    if slo.alerting.simple:
        threshold = Decimal(repr(float(slo.alerting.simple_percent))) / 100
        alerts += [f"  # The seed's plain rule: 5m error ratio above "
                   f"{exact(threshold * 100)} % for {SIMPLE_FOR_MINUTES} minutes."]
        alerts += [f"  - alert: {ALERT_SIMPLE}",
                   *_expr(f"{RECORD_ERROR_RATIO.format(window='5m')}{sel} > {exact(threshold)}"),
                   f"    for: {SIMPLE_FOR_MINUTES}m",
                   *_mapping("labels", alert_rule_labels(spec, slo, "P1")),
                   *_mapping("annotations", {
                       "summary": f"{spec.service} {slo.name}: more than "
                                  f"{exact(threshold * 100)} % of requests failed over 5m",
                       **slo.alerting.annotations})]
    alerts += _budget_alerts(spec, slo)
    if slo.alerting.absent_after is not None:
        alerts += ["  # No traffic series at all (not scraped, renamed, never exported): "
                   "nothing to judge."]
        alerts += [f"  - alert: {ALERT_ABSENT}",
                   *_expr(f"absent({total_query(slo, '5m')})"),
                   f"    for: {slo.alerting.absent_after}",
                   *_mapping("labels", {**labels, **alert_rule_labels(spec, slo, "absent")}),
                   *_mapping("annotations", {
                       "summary": f"{spec.service} {slo.name}: no SLI traffic series for "
                                  f"{slo.alerting.absent_after}"})]
    name = f"fournines-slo-{spec.service}-{slo.name}"
    intervals = slo.intervals
    if intervals.sli == intervals.meta == intervals.alerts:
        # One group: Prometheus evaluates a group's rules in order, so the meta series and
        # alerts always see this evaluation's ratios.
        return _group(name, intervals.sli, sli + meta + alerts)
    # Groups run independently: with different intervals, a rule may see ratios up to one
    # interval old, as Sloth's groups (always three) do.
    return [*_group(f"{name}-sli", intervals.sli, sli),
            *_group(f"{name}-meta", intervals.meta, meta),
            *(_group(f"{name}-alerts", intervals.alerts, alerts) if alerts else [])]


def _group(name: str, interval: str | None, rules: list[str]) -> list[str]:
    head = [f"- name: {json.dumps(name)}"]
    if interval is not None:
        head.append(f"  interval: {interval}")
    return [*head, "  rules:", *rules]


def _burn_alert(spec: SLOSpec, slo: SLO, severity: str,
                tier: list[tuple[BurnRateWindow, Fraction]]) -> list[str]:
    # One alert per severity whose expression ORs the severity's two windows (as Sloth
    # does), so a page is one notification whichever window caught it.
    sel = _selector(spec, slo)
    budget = slo.error_budget_ratio
    alerting = slo.alerting
    period_hours = Fraction(slo.period_seconds, 3600)
    lines = [f"  # {severity} (SRE workbook, \"Alerting on SLOs\"): burn rate = budget share "
             f"spent x period / long window",
             f"  # (period {slo.period} = {period_hours} h); threshold = burn rate x error "
             f"budget {exact(budget)}."]
    parts = []
    for window, factor in tier:
        lines.append(f"  #   {exact(window.budget_spent * 100)} % in {window.long}: burn rate "
                     f"{exact(factor)}, checked over {window.long} and {window.short}")
        threshold = exact(factor * Fraction(budget))
        clauses = [f"  {RECORD_ERROR_RATIO.format(window=w)}{sel} > {threshold}"
                   for w in (window.long, window.short)]
        if alerting.min_events > 0:
            count = f"{_REQUESTS.format(window=window.long)}{sel} * {_SECONDS[window.long]}"
            clauses.append(f"  {count} >= {exact(Fraction(Decimal(repr(alerting.min_events))))}")
        parts.append("(\n" + "\n  and\n".join(clauses) + "\n)")
    summary = (f"{spec.service} {slo.name}: error budget burning too fast "
               f"({severity}; objective {exact(slo.objective_ratio * 100)} % over {slo.period})")
    tier_annotations = {"page": alerting.page_annotations,
                        "ticket": alerting.ticket_annotations}[severity]
    lines += [f"  - alert: {_key(alerting.name)}", *_expr("\nor\n".join(parts)),
              *_mapping("labels", alert_rule_labels(spec, slo, severity)),
              *_mapping("annotations", {"summary": summary, **alerting.annotations,
                                        **tier_annotations})]
    return lines


def generate_rules(spec: SLOSpec | Iterable[SLOSpec]) -> str:
    """The Prometheus rule file (YAML text) for every SLO of ``spec``, or of several specs.

    Several specs are the services of one multi-document Sloth file
    (:func:`~fournines.slo.spec.load_specs`).
    """
    specs = [spec] if isinstance(spec, SLOSpec) else list(spec)
    sources = sorted({os.path.basename(s.source) for s in specs if s.source})
    source = f" from {', '.join(sources)}" if sources else ""
    lines = [f"# Generated by fournines{source}: `fournines slo rules`. Do not edit by hand;",
             "# change the spec and generate again.", "groups:"]
    for one in specs:
        for slo in one.slos:
            lines += _slo_group(one, slo)
    return "\n".join(lines) + "\n"


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename: never half a file."""
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, temp = tempfile.mkstemp(prefix=".fournines-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
