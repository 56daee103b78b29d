"""The SLO model, and readers for fournines, Sloth and OpenSLO spec files.

A fournines spec (YAML)::

    service: payment
    labels: {team: payments}
    slos:
      - name: availability
        objective: 99.9            # percent
        period: 30d                # 30d (default), 28d or 7d
        sli:
          availability:            # fournines' own middleware metrics
            selector: job="payment"
      - name: latency
        objective: 99
        sli:
          latency:                 # "requests faster than 300 ms"
            threshold: 300ms
            selector: job="payment"
      - name: checkout
        objective: 99.95
        sli:
          events:                  # any PromQL; {{.window}} is the range, as in Sloth
            error_query: sum(rate(orders_failed_total[{{.window}}]))
            total_query: sum(rate(orders_total[{{.window}}]))
        alerting: {page: true, ticket: false, min_events: 100}

Sloth's ``prometheus/v1`` files and its Kubernetes ``PrometheusServiceLevel``
resources (camelCase fields; several documents per file through :func:`load_specs`,
the SLO plugins of :data:`SLOTH_PLUGINS` applied, any other refused by name)
and OpenSLO v1 files (``SLO`` documents with inline or referenced ``SLI``
documents carrying a ``ratioMetric``) are read into the same model;
:func:`load_spec` tells them apart by their content.

Every problem is a :class:`SpecError` naming the file, the path inside it
(``slos[1].objective``) and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from .._errors import ConfigurationError
from .._files import read_text, yaml_documents
from ..asgi.metrics import DEFAULT_BUCKETS, REQUEST_DURATION, REQUESTS_TOTAL
from .budget import error_budget

__all__ = [
    "INFO_METRIC",
    "PERIODS",
    "SLO",
    "SLOTH_PLUGINS",
    "Alerting",
    "BudgetExhaustedAlert",
    "EventsSLI",
    "LabelRemoval",
    "LatencySLI",
    "RuleIntervals",
    "SLOSpec",
    "SpecError",
    "error_ratio_query",
    "errors_or_zero_query",
    "errors_query",
    "load_spec",
    "load_specs",
    "parse_spec",
    "parse_specs",
    "render_window",
    "total_query",
]

PERIODS: Mapping[str, int] = MappingProxyType({"30d": 30 * 86400, "28d": 28 * 86400,
                                               "7d": 7 * 86400})
"""The supported SLO periods and their length in seconds."""

INFO_METRIC = "fournines_slo_info"
"""The info series of each SLO (value 1; Sloth's ``sloth_slo_info``), carrying its labels."""

_WINDOW = re.compile(r"\{\{\s*\.window\s*\}\}")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Digits bounded: int() refuses more than 4300 of them with a ValueError of its own.
_DURATION = re.compile(r"^([0-9]{1,30})(ms|s|m|h|d|w)$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SELECTOR = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})?$", re.DOTALL)
# One PromQL label matcher, its value in any of PromQL's three quotings.
_MATCHER = (r"\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=~|!~|!=|=)\s*"
            r"(?:\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)\s*")
_MATCHERS = re.compile(rf"^{_MATCHER}(?:,{_MATCHER})*,?\s*$")
_EMPTY: Mapping[str, str] = MappingProxyType({})


class SpecError(ConfigurationError):
    """An invalid SLO spec; ``str()`` reads ``"FILE: slos[1].objective: what is wrong"``."""

    def __init__(self, problem: str, *, path: str = "", file: str | None = None) -> None:
        self.file = file
        self.path = path
        self.problem = problem
        super().__init__(": ".join(x for x in (file, path, problem) if x))


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsSLI:
    """Bad events over all events, as two PromQL queries of per-second rates.

    Both queries contain ``{{.window}}`` (as in Sloth) where the range goes:
    ``sum(rate(http_requests_total{status=~"5.."}[{{.window}}]))``.
    """

    error_query: str
    total_query: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencySLI:
    """Requests slower than ``threshold`` seconds are bad events.

    ``histogram`` is the base name of a Prometheus histogram, ``threshold`` one
    of its bucket bounds (``le``; written as prometheus_client writes it, so
    ``1`` selects ``le="1.0"``), ``selector`` label matchers without braces.
    """

    histogram: str = REQUEST_DURATION
    threshold: float
    selector: str = ""

    @property
    def le(self) -> str:
        """The ``le`` label value of the threshold bucket, as prometheus_client formats it."""
        return repr(float(self.threshold))


@dataclass(frozen=True, slots=True, kw_only=True)
class Alerting:
    """Which alerts to generate for one SLO, and their labels.

    ``name`` is the alert rule's name (a label value: any non-empty string, as in
    Sloth); ``page``/``ticket`` switch the multi-window multi-burn-rate tiers, ``simple``
    adds the seed's plain rule (5m error ratio above ``simple_percent`` % is
    ``P1``), ``min_events`` keeps windows with fewer requests than that from
    alerting, ``absent_after`` is how long the SLI's traffic may be missing
    before an alert says so (``None``: no such alert). ``labels`` and
    ``annotations`` go on every alert of the SLO; ``page_labels``,
    ``page_annotations``, ``ticket_labels`` and ``ticket_annotations`` on that
    tier's alert only, over the common ones (Sloth's ``page_alert`` and
    ``ticket_alert``).
    """

    name: str = "SLOErrorBudgetBurn"
    page: bool = True
    ticket: bool = True
    simple: bool = False
    simple_percent: float = 0.1
    min_events: float = 0
    absent_after: str | None = "10m"
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    page_labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    ticket_labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    page_annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    ticket_annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleIntervals:
    """How often Prometheus evaluates an SLO's rules; ``None`` is the global interval.

    ``sli`` is for the error-ratio recording rules, ``meta`` for the meta and
    info series, ``alerts`` for the alert rules: Prometheus durations like
    ``5m`` (Sloth's ``sloth.dev/contrib/rule_intervals/v1`` plugin sets them).
    When they differ, the SLO's rules are split into three groups.
    """

    sli: str | None = None
    meta: str | None = None
    alerts: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelRemoval:
    """Drop the SLO's own labels from its recorded series (Sloth's ``remove_labels/v1``).

    Every SLI and meta series loses each label except ``fournines_service``,
    ``fournines_slo`` and those in ``keep``; the info series (:data:`INFO_METRIC`)
    and the series named in ``skip`` keep all of theirs. Alert rules are untouched.
    With the labels only on the info series, a label whose value changes no longer
    splits the period ratio into two series (Sloth's issue #311).
    """

    keep: frozenset[str] = frozenset()
    skip: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetExhaustedAlert:
    """An alert when at most ``threshold`` of the period's error budget is left.

    Sloth's ``error_budget_exhausted_alert/v1``: ``name`` fires once
    ``fournines_slo:period_error_budget_remaining:ratio`` (selected by the SLO's
    identity, its labels and ``selector_labels``) has been ``<= threshold`` for
    ``for_`` (a Prometheus duration); the rule carries ``labels`` and ``annotations``.
    """

    name: str = "ErrorBudgetExhausted"
    threshold: float = 0.0
    for_: str = "5m"
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    selector_labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if not self.name:
            raise SpecError("BudgetExhaustedAlert.name: must be a non-empty string")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float) \
                or not math.isfinite(self.threshold):
            raise SpecError(f"BudgetExhaustedAlert.threshold: must be a finite number, got "
                            f"{self.threshold!r}")
        if not isinstance(self.for_, str) or _prom_duration_ms(self.for_) is None:
            raise SpecError(f"BudgetExhaustedAlert.for_: must be a Prometheus duration like "
                            f"5m or 1h30m, got {self.for_!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SLO:
    """One objective: ``objective`` percent of events good over a rolling ``period``.

    ``info_labels`` go on the SLO's info series (:data:`INFO_METRIC`) only, as
    Sloth's ``sloth.dev/contrib/info_labels/v1`` plugin puts them on
    ``sloth_slo_info``; ``intervals`` sets the rule groups' evaluation intervals;
    ``label_removals`` apply in order to the recorded series, and ``budget_alerts``
    are added after the burn-rate alerts (Sloth's ``remove_labels`` and
    ``error_budget_exhausted_alert`` plugins).
    """

    name: str
    objective: float
    period: str = "30d"
    sli: EventsSLI | LatencySLI
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    alerting: Alerting = field(default_factory=Alerting)
    info_labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    intervals: RuleIntervals = field(default_factory=RuleIntervals)
    label_removals: tuple[LabelRemoval, ...] = ()
    budget_alerts: tuple[BudgetExhaustedAlert, ...] = ()

    @property
    def period_seconds(self) -> int:
        """The period's length in seconds."""
        return PERIODS[self.period]

    @property
    def objective_ratio(self) -> Decimal:
        """The objective as an exact ratio (99.9 -> ``Decimal("0.999")``)."""
        return Decimal(repr(float(self.objective))) / 100

    @property
    def error_budget_ratio(self) -> Decimal:
        """The error budget as an exact ratio (99.9 -> ``Decimal("0.001")``)."""
        return 1 - self.objective_ratio

    @property
    def error_budget(self) -> float:
        """The share of events allowed to be bad: ``1 - objective / 100``."""
        return float(self.error_budget_ratio)


@dataclass(frozen=True, slots=True, kw_only=True)
class SLOSpec:
    """A service's SLOs, as read from ``source`` (a file name, or ``None``)."""

    service: str
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    slos: tuple[SLO, ...]
    source: str | None = None


# --- queries ---------------------------------------------------------------------------------


def render_window(query: str, window: str) -> str:
    """``query`` with every ``{{.window}}`` replaced by ``window``."""
    return _WINDOW.sub(window, query)


def _matchers(selector: str, *extra: str) -> str:
    parts = [p for p in (selector.strip(), *extra) if p]
    return "{" + ",".join(parts) + "}"


def total_query(slo: SLO, window: str) -> str:
    """PromQL for all events per second over ``window``."""
    sli = slo.sli
    if isinstance(sli, EventsSLI):
        return render_window(sli.total_query, window)
    return f"sum(rate({sli.histogram}_count{_matchers(sli.selector)}[{window}]))"


def errors_query(slo: SLO, window: str) -> str:
    """PromQL for bad events per second over ``window``."""
    sli = slo.sli
    if isinstance(sli, EventsSLI):
        return render_window(sli.error_query, window)
    good = _matchers(sli.selector, f'le="{sli.le}"')
    return (f"{total_query(slo, window)}\n  - sum(rate({sli.histogram}_bucket{good}[{window}]))")


def error_ratio_query(slo: SLO, window: str) -> str:
    """PromQL for the error ratio over ``window``: bad events / all events.

    Both are rates over the same window, so the ratio is weighted by traffic.
    Bad events of an events SLI with no series yet count as 0 (``or 0 * total``:
    a service that never failed still has a ratio; see :func:`errors_or_zero_query`),
    and zero traffic gives no sample rather than NaN (``total > 0``).
    """
    total = total_query(slo, window)
    errors = errors_query(slo, window)
    if isinstance(slo.sli, LatencySLI):  # see errors_or_zero_query
        return f"(\n  ({errors})\n)\n/\n(({total}) > 0)"
    return f"(\n  ({errors})\n  or\n  0 * ({total})\n)\n/\n(({total}) > 0)"


def errors_or_zero_query(slo: SLO, window: str) -> str:
    """:func:`errors_query`, with a missing error series read as no errors where that is true.

    An events SLI's error series appears with the first error, so until then
    there were none (``or 0 * total``). A latency SLI's bad events are the count
    minus the threshold bucket, which a client exports together with the count:
    a missing bucket means the threshold is no bucket bound, and reading that
    as "nothing was slow" would report a perfect SLI that was never measured.
    """
    errors = errors_query(slo, window)
    if isinstance(slo.sli, LatencySLI):
        return f"({errors})"
    return f"({errors})\nor\n0 * ({total_query(slo, window)})"


# --- reading ---------------------------------------------------------------------------------


def load_spec(path: str | os.PathLike[str]) -> SLOSpec:
    """Read a fournines, Sloth or OpenSLO v1 spec file holding one service's SLOs.

    Sloth's files are its ``prometheus/v1`` specs and its Kubernetes
    ``PrometheusServiceLevel`` resources (``sloth.slok.dev/v1``). A Sloth file of
    several documents (several services) is refused here with a pointer to
    :func:`load_specs`. Files larger than 1 MiB or nested deeper than 64 levels are
    refused before they are parsed (see :mod:`fournines._files`).
    """
    name = os.fspath(path)
    specs = load_specs(name)
    if len(specs) > 1:
        services = ", ".join(spec.service for spec in specs)
        raise SpecError(f"holds {len(specs)} Sloth specs (services {services}); read it with "
                        "load_specs(), as `fournines slo rules` and `slo check` do", file=name)
    return specs[0]


def load_specs(path: str | os.PathLike[str]) -> tuple[SLOSpec, ...]:
    """Every spec of a file: one per Sloth document, or the file's one fournines or OpenSLO spec.

    Sloth reads files of several documents (``---`` between them), each a service.
    """
    name = os.fspath(path)
    try:
        documents = yaml_documents(read_text(name))
    except ConfigurationError as exc:
        raise SpecError(str(exc), file=name) from None
    if not documents:
        raise SpecError("empty file", file=name)
    return parse_specs(documents, source=name)


def parse_specs(documents: Sequence[object], *, source: str | None = None) -> tuple[SLOSpec, ...]:
    """The specs of a file's parsed YAML documents (see :func:`load_specs`)."""
    if len(documents) == 1 or any(_is_openslo(d) for d in documents):
        return (parse_spec(documents[0] if len(documents) == 1 else list(documents),
                           source=source),)
    specs: list[SLOSpec] = []
    seen: dict[tuple[str, str], int] = {}
    try:
        for i, document in enumerate(documents):
            spec = _sloth_document(document, source, f"documents[{i}]")
            if spec is None:
                raise SpecError("several YAML documents, and this one is not a Sloth spec: "
                                "only Sloth and OpenSLO files may hold more than one document",
                                path=f"documents[{i}]")
            for slo in spec.slos:
                # Each becomes a rule group named after both: Prometheus refuses a file
                # with two groups of one name.
                if (spec.service, slo.name) in seen:
                    raise SpecError(f"service {spec.service!r} SLO {slo.name!r} is already in "
                                    f"documents[{seen[spec.service, slo.name]}]",
                                    path=f"documents[{i}]")
                seen[spec.service, slo.name] = i
            specs.append(spec)
    except SpecError as exc:
        if exc.file is None and source is not None:
            raise SpecError(exc.problem, path=exc.path, file=source) from None
        raise
    return tuple(specs)


def _is_openslo(data: object) -> bool:
    return isinstance(data, Mapping) and str(data.get("apiVersion", "")).startswith("openslo/")


def _sloth_document(data: object, source: str | None, where: str) -> SLOSpec | None:
    """The spec of a Sloth document, ``None`` if ``data`` is none (``where``: its path)."""
    if not isinstance(data, Mapping):
        return None
    node = _Node(data, where)
    if data.get("kind") == "PrometheusServiceLevel":
        node.check_keys(("apiVersion", "kind", "metadata", "spec", "status"))
        api = node.get("apiVersion").value
        if api != "sloth.slok.dev/v1":
            raise node.get("apiVersion").error(
                f"must be sloth.slok.dev/v1 for a PrometheusServiceLevel, got {api!r}")
        node.get("spec").mapping()
        return _read_sloth(node.get("spec"), source, camel=True)
    if data.get("version") == "prometheus/v1":
        return _read_sloth(node, source, camel=False)
    return None


def parse_spec(data: object, *, source: str | None = None) -> SLOSpec:
    """Build an :class:`SLOSpec` from parsed YAML/JSON (a list of documents for OpenSLO)."""
    try:
        if isinstance(data, list) or _is_openslo(data):
            docs = data if isinstance(data, list) else [data]
            if not any(_is_openslo(d) for d in docs):
                raise SpecError("several YAML documents, none of them OpenSLO: read several "
                                "Sloth documents with parse_specs() or load_specs()")
            return _read_openslo(docs, source)
        if not isinstance(data, Mapping):
            raise SpecError(f"must be a mapping, got {_kind(data)}")
        spec = _sloth_document(data, source, "")
        if spec is not None:
            return spec
        return _read_fournines(data, source)
    except SpecError as exc:
        if exc.file is None and source is not None:
            raise SpecError(exc.problem, path=exc.path, file=source) from None
        raise


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), type(value).__name__)


class _Node:
    """A value at a path inside the document, with typed accessors that name the path."""

    __slots__ = ("path", "value")

    def __init__(self, value: object, path: str) -> None:
        self.value = value
        self.path = path

    def error(self, problem: str) -> SpecError:
        return SpecError(problem, path=self.path)

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def mapping(self) -> Mapping[str, Any]:
        if not isinstance(self.value, Mapping):
            raise self.error(f"must be a mapping, got {_kind(self.value)}")
        return self.value

    def get(self, key: str) -> _Node:
        return _Node(self.mapping().get(key), self.at(key))

    def has(self, key: str) -> bool:
        return self.mapping().get(key) is not None

    def check_keys(self, allowed: Sequence[str]) -> None:
        for key in self.mapping():
            if key not in allowed:
                raise SpecError(f"unknown field (allowed: {', '.join(allowed)})",
                                path=self.at(str(key)))

    def items(self) -> list[_Node]:
        if self.value is None:
            raise self.error("is required")
        if not isinstance(self.value, list):
            raise self.error(f"must be a list, got {_kind(self.value)}")
        return [_Node(v, f"{self.path}[{i}]") for i, v in enumerate(self.value)]

    def string(self, default: str | None = None, *, pattern: re.Pattern[str] | None = None,
               what: str = "") -> str:
        if self.value is None:
            if default is None:
                raise self.error("is required")
            return default
        if not isinstance(self.value, str) or not self.value.strip():
            raise self.error(f"must be a non-empty string, got {self.value!r}")
        if pattern is not None and not pattern.match(self.value):
            raise self.error(f"must be {what}, got {self.value!r}")
        return self.value

    def boolean(self, default: bool) -> bool:
        if self.value is None:
            return default
        if not isinstance(self.value, bool):
            raise self.error(f"must be true or false, got {self.value!r}")
        return self.value

    def number(self, default: float | None = None) -> float:
        if self.value is None:
            if default is None:
                raise self.error("is required")
            return default
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise self.error(f"must be a number, got {self.value!r}")
        try:
            number = float(self.value)
        except OverflowError:  # an int of hundreds of digits: not even repr() is safe
            raise self.error("is too large a number") from None
        if not math.isfinite(number):
            raise self.error(f"must be finite, got {self.value!r}")
        return number

    def labels(self, *, utf8: bool = False) -> Mapping[str, str]:
        # utf8: any non-empty name, as Prometheus 3 (and Sloth) take them; Prometheus 2
        # refuses a rule file with such a name when it loads it.
        if self.value is None:
            return _EMPTY
        out: dict[str, str] = {}
        for key, value in self.mapping().items():
            where = self.at(str(key))
            if not isinstance(key, str) or not (key if utf8 else _LABEL_NAME.match(key)):
                raise SpecError("label name must be a non-empty string" if utf8 else
                                f"label name must match {_LABEL_NAME.pattern}", path=where)
            if key.startswith("__"):
                raise SpecError("label names starting with __ are reserved by Prometheus",
                                path=where)
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise SpecError(f"label value must be a string, got {value!r}", path=where)
            try:
                out[key] = str(value)
            except ValueError:  # an int past Python's int-to-str digit limit
                raise SpecError("label value is too long a number", path=where) from None
        return MappingProxyType(out)


def _objective(node: _Node) -> float:
    value = node.number()
    if not 0 < value < 100:
        raise node.error(f"must be a percentage > 0 and < 100 (got {value!r})")
    try:
        error_budget(value)
    except ConfigurationError as exc:  # budget reports and burn rates divide by it
        raise node.error(str(exc)) from None
    return value


def _period(node: _Node, default: str = "30d") -> str:
    value = node.value
    if value is None:
        return default
    aliases = {"4w": "28d", "1w": "7d", "720h": "30d", "672h": "28d", "168h": "7d"}
    if isinstance(value, str) and (value in PERIODS or value in aliases):
        return aliases.get(value, value)
    raise node.error(f"must be one of {', '.join(PERIODS)}, got {value!r}")


def _duration(node: _Node, default: str | None, *, period: str) -> str | None:
    value = node.value
    if value is None:
        return default
    if value is False:
        return None
    if not isinstance(value, str):
        raise node.error(f"must be a duration like 10m, or false, got {value!r}")
    match = _DURATION.match(value)
    if match is None or value.endswith("ms"):
        raise node.error(f"must be a duration like 10m, or false, got {value!r}")
    seconds = int(match.group(1)) * _DURATION_SECONDS[match.group(2)]
    if seconds == 0:
        raise node.error(f"must be more than 0 (false turns the alert off), got {value!r}")
    if seconds > PERIODS[period]:
        raise node.error(f"must be at most the SLO's period ({period}), got {value!r}")
    return value


def _seconds(node: _Node) -> float:
    value = node.value
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if not match:
            raise node.error(f"must be seconds or a duration like 300ms, got {value!r}")
        seconds = int(match.group(1)) * Decimal(str(_DURATION_SECONDS[match.group(2)]))
        number = float(seconds)
    else:
        number = node.number()
    if not math.isfinite(number):
        raise node.error("is too large a number of seconds")
    if number <= 0:
        raise node.error(f"must be > 0 seconds, got {value!r}")
    return number


def _matchers_of(node: _Node) -> str:
    # Pasted into `metric{...}` as is: anything but matchers would break the query, or
    # change what it means.
    selector = node.string("")
    if selector and not _MATCHERS.match(selector):
        raise node.error(f'must be label matchers without braces, like job="api", '
                         f"got {selector!r}")
    return selector


def _windowed(node: _Node) -> str:
    # Stripped: an indented first line would set the indentation of the rule file's
    # `expr: |` block for every line after it.
    query = node.string().strip()
    if not _WINDOW.search(query):
        raise node.error("must contain {{.window}} where the range goes, e.g. "
                         "sum(rate(errors_total[{{.window}}]))")
    return query


def _events(node: _Node, error: str = "error_query", total: str = "total_query") -> EventsSLI:
    node.check_keys((error, total))
    return EventsSLI(error_query=_windowed(node.get(error)), total_query=_windowed(node.get(total)))


def _fournines_sli(node: _Node) -> EventsSLI | LatencySLI:
    kinds = [k for k in ("events", "availability", "latency") if node.has(k)]
    node.check_keys(("events", "availability", "latency"))
    if len(kinds) != 1:
        raise node.error("needs exactly one of events, availability, latency")
    sub = node.get(kinds[0])
    if kinds[0] == "events":
        return _events(sub)
    if kinds[0] == "availability":
        sub.check_keys(("selector", "error_status"))
        selector = _matchers_of(sub.get("selector"))
        status = sub.get("error_status").string("5..")
        try:
            re.compile(status)  # Python's syntax is near enough RE2's to catch a typo here
        except re.error as exc:
            raise sub.get("error_status").error(
                f"must be a regular expression, got {status!r}: {exc}") from None
        window = "[{{.window}}]))"
        # JSON's string escapes are PromQL's: a regex like 5\d\d keeps its backslash.
        bad = _matchers(selector, f"status=~{json.dumps(status)}")
        return EventsSLI(
            error_query=f"sum(rate({REQUESTS_TOTAL}{bad}" + window,
            total_query=f"sum(rate({REQUESTS_TOTAL}{_matchers(selector)}" + window,
        )
    sub.check_keys(("histogram", "threshold", "selector"))
    threshold = _seconds(sub.get("threshold"))
    if not sub.has("histogram") and threshold not in DEFAULT_BUCKETS:
        # A threshold between two bounds matches no `le` series: the SLI would read as
        # all-bad (or no data) forever, so refuse it here rather than in production.
        bounds = ", ".join(f"{b:g}" for b in DEFAULT_BUCKETS)
        raise sub.get("threshold").error(
            f"{threshold:g} s is not a bucket bound of fournines' request histogram "
            f"({bounds}); pick one of those, or name the histogram under `histogram:` "
            f"when your MetricsMiddleware has buckets=... with this bound")
    return LatencySLI(
        histogram=sub.get("histogram").string(REQUEST_DURATION, pattern=_LABEL_NAME,
                                              what="a metric name"),
        threshold=threshold,
        selector=_matchers_of(sub.get("selector")),
    )


def _alerting(node: _Node, period: str) -> Alerting:
    if node.value is None:
        return Alerting()
    node.check_keys(("name", "page", "ticket", "simple", "simple_percent", "min_events",
                     "absent_after", "labels", "annotations", "page_labels", "ticket_labels",
                     "page_annotations", "ticket_annotations"))
    simple_percent = node.get("simple_percent").number(0.1)
    if not 0 < simple_percent < 100:
        raise node.get("simple_percent").error(f"must be > 0 and < 100 (got {simple_percent})")
    min_events = node.get("min_events").number(0)
    if min_events < 0:
        raise node.get("min_events").error(f"must be >= 0 (got {min_events})")
    return Alerting(
        name=node.get("name").string("SLOErrorBudgetBurn"),  # a label value: any string
        page=node.get("page").boolean(True),
        ticket=node.get("ticket").boolean(True),
        simple=node.get("simple").boolean(False),
        simple_percent=simple_percent,
        min_events=min_events,
        absent_after=_duration(node.get("absent_after"), "10m", period=period),
        labels=node.get("labels").labels(),
        annotations=node.get("annotations").labels(),
        page_labels=node.get("page_labels").labels(),
        ticket_labels=node.get("ticket_labels").labels(),
        page_annotations=node.get("page_annotations").labels(),
        ticket_annotations=node.get("ticket_annotations").labels(),
    )


def _unique(slos: list[SLO], node: _Node) -> tuple[SLO, ...]:
    seen: set[str] = set()
    for i, slo in enumerate(slos):
        if slo.name in seen:
            raise SpecError(f"duplicate SLO name {slo.name!r}", path=f"{node.path}[{i}].name")
        seen.add(slo.name)
    if not slos:
        raise node.error("needs at least one SLO")
    return tuple(slos)


def _read_fournines(data: Mapping[str, Any], source: str | None) -> SLOSpec:
    root = _Node(data, "")
    root.check_keys(("version", "service", "labels", "slos"))
    version = root.get("version").value
    if version not in (None, "fournines/v1"):
        raise root.get("version").error(
            f"must be fournines/v1 (or prometheus/v1 for Sloth), got {version!r}")
    slos: list[SLO] = []
    for item in root.get("slos").items():
        item.check_keys(("name", "objective", "period", "description", "labels", "sli",
                         "alerting"))
        period = _period(item.get("period"))
        slos.append(SLO(
            name=item.get("name").string(pattern=_NAME, what="a name of letters, digits, _ . -"),
            objective=_objective(item.get("objective")),
            period=period,
            sli=_fournines_sli(item.get("sli")),
            description=item.get("description").string(""),
            labels=item.get("labels").labels(),
            alerting=_alerting(item.get("alerting"), period),
        ))
    return SLOSpec(service=root.get("service").string(pattern=_NAME, what="a service name"),
                   labels=root.get("labels").labels(), slos=_unique(slos, root.get("slos")),
                   source=source)


# --- Sloth -----------------------------------------------------------------------------------

# Field names of Sloth's two formats: prometheus/v1 files are snake_case, the Kubernetes
# PrometheusServiceLevel resource (sloth.slok.dev/v1) is camelCase (Sloth's pkg/prometheus/
# api/v1 and pkg/kubernetes/api/sloth/v1 types).
_SNAKE = MappingProxyType({"error_query": "error_query", "total_query": "total_query",
                           "error_ratio_query": "error_ratio_query", "page_alert": "page_alert",
                           "ticket_alert": "ticket_alert", "slo_plugins": "slo_plugins"})
_CAMEL = MappingProxyType({"error_query": "errorQuery", "total_query": "totalQuery",
                           "error_ratio_query": "errorRatioQuery", "page_alert": "pageAlert",
                           "ticket_alert": "ticketAlert", "slo_plugins": "sloPlugins"})

_INFO_LABELS = "sloth.dev/contrib/info_labels/v1"
_RULE_INTERVALS = "sloth.dev/contrib/rule_intervals/v1"
_REMOVE_LABELS = "sloth.dev/contrib/remove_labels/v1"
_BUDGET_ALERT = "sloth.dev/contrib/error_budget_exhausted_alert/v1"
_REMAINING = "fournines_slo:period_error_budget_remaining:ratio"
# Sloth's default chain: what fournines' own rules always do (validate the spec; SLI,
# metadata and alert rules).
_CORE_DEFAULTS = ("sloth.dev/core/validate/v1", "sloth.dev/core/sli_rules/v1",
                  "sloth.dev/core/metadata_rules/v1", "sloth.dev/core/alert_rules/v1")
_CORE_GENERATORS = _CORE_DEFAULTS[1:]

SLOTH_PLUGINS: Mapping[str, str] = MappingProxyType({
    _INFO_LABELS: f"adds its labels to the SLO's info series ({INFO_METRIC})",
    _RULE_INTERVALS: "sets the evaluation interval of the SLO's rule groups",
    _REMOVE_LABELS: "removes the SLO's labels from its recorded series, except the info "
                    "series and those it is told to keep",
    _BUDGET_ALERT: "adds an alert when the period's error budget left falls to its threshold",
    **{plugin: "what fournines' rules always do" for plugin in _CORE_DEFAULTS},
    "sloth.dev/core/debug/v1": "nothing (it only logs in Sloth)",
    "sloth.dev/core/noop/v1": "nothing",
})
"""The Sloth SLO plugins fournines reads, and what each does to the generated rules.

Any other plugin in a Sloth spec's ``slo_plugins`` or ``plugins`` is refused by
name: it would change Sloth's output in a way fournines' rules would not.
"""

_PROM_DURATION = re.compile(r"^(?:[0-9]{1,9}y)?(?:[0-9]{1,9}w)?(?:[0-9]{1,9}d)?(?:[0-9]{1,9}h)?"
                            r"(?:[0-9]{1,9}m)?(?:[0-9]{1,9}s)?(?:[0-9]{1,9}ms)?$")


# Prometheus' model.ParseDuration (github.com/prometheus/common, model/time.go).
_PROM_DURATION_PARTS = re.compile(r"^(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?"
                                  r"(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?$")
_PROM_UNITS_MS = (("y", 365 * 86_400_000), ("w", 7 * 86_400_000), ("d", 86_400_000),
                  ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))


def _prom_duration_ms(text: str) -> int | None:
    """Milliseconds of a Prometheus duration (``1h30m``, ``0``), or ``None`` if it is not one."""
    if text == "0":
        return 0
    match = _PROM_DURATION_PARTS.match(text) if 0 < len(text) <= 80 else None
    if match is None:
        return None
    total = sum(int(part) * unit for part, (_, unit) in zip(match.groups(), _PROM_UNITS_MS,
                                                             strict=True) if part)
    return total if total * 1_000_000 < 2 ** 63 else None  # Go's int64 nanoseconds


def _prom_duration_text(milliseconds: int) -> str:
    """``model.Duration.String()``: ``90m`` is ``1h30m``; years and weeks only when exact."""
    if milliseconds == 0:
        return "0s"
    out = ""
    for unit, size in _PROM_UNITS_MS:
        if unit in ("y", "w") and milliseconds % size:
            continue
        if milliseconds >= size:
            out += f"{milliseconds // size}{unit}"
            milliseconds %= size
    return out


def _interval(node: _Node) -> str | None:
    if node.value is None:
        return None
    value = node.value
    if (not isinstance(value, str) or not value or not _PROM_DURATION.match(value)
            or not any(c in "123456789" for c in value)):
        raise node.error(f"must be a Prometheus duration above 0 like 1m or 1h30m, got {value!r}")
    return value


def _plugin_list(node: _Node) -> tuple[bool, list[tuple[int, _Node]]]:
    """``(override_previous, [(priority, plugin node), ...])`` of one ``plugins`` block."""
    if node.value is None:
        return False, []
    node.check_keys(("overridePrevious", "chain"))
    chain = node.get("chain").items() if node.has("chain") else []
    plugins = []
    for plugin in chain:
        plugin.check_keys(("id", "config", "priority"))
        plugin.get("id").string()
        priority = plugin.get("priority").value
        if priority is None:
            priority = 0
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise plugin.get("priority").error(f"must be an integer, got {priority!r}")
        plugins.append((priority, plugin))
    override = node.get("overridePrevious").boolean(False)
    if override and not plugins:
        raise node.get("chain").error("overridePrevious is set but no plugins are declared")
    return override, plugins


@dataclass(frozen=True, slots=True, kw_only=True)
class _PluginEffects:
    info_labels: Mapping[str, str]
    intervals: RuleIntervals
    label_removals: tuple[LabelRemoval, ...]
    budget_alerts: tuple[tuple[BudgetExhaustedAlert, _Node], ...]


# Sloth's names for the series fournines records, for remove_labels' skipMetrics (Sloth's
# pkg/common/conventions); the 5m ratio is what Sloth's period ratio sums, so skipping it
# keeps the labels on everything fournines' period ratio sums too.
def _sloth_series(period: str) -> dict[str, tuple[str, ...]]:
    series: dict[str, tuple[str, ...]] = {
        "slo:sli_error:ratio_rate5m": ("fournines_slo:error_ratio:rate5m",
                                       "fournines_slo:errors:rate5m",
                                       "fournines_slo:requests:rate5m"),
        f"slo:sli_error:ratio_rate{period}": ("fournines_slo:error_ratio:period",),
        "slo:objective:ratio": ("fournines_slo:objective:ratio",),
        "slo:error_budget:ratio": ("fournines_slo:error_budget:ratio",),
        "slo:time_period:days": ("fournines_slo:period:seconds",),
        "slo:current_burn_rate:ratio": ("fournines_slo:current_burn_rate:ratio",),
        "slo:period_burn_rate:ratio": ("fournines_slo:period_burn_rate:ratio",),
        "slo:period_error_budget_remaining:ratio": (_REMAINING,),
        "sloth_slo_info": (INFO_METRIC,),
    }
    for window in ("30m", "1h", "2h", "6h", "1d", "3d"):
        series[f"slo:sli_error:ratio_rate{window}"] = (f"fournines_slo:error_ratio:rate{window}",
                                                       f"fournines_slo:requests:rate{window}")
    return series


def _runs_after(plugins: list[tuple[int, _Node]], index: int, override: bool,
                needed: Sequence[str]) -> bool:
    """Whether the chain's plugin at ``index`` runs after Sloth's ``needed`` core plugins.

    The core generators replace the rules they make, so a plugin that runs before them
    changes nothing.
    """
    if not override:  # the defaults run between the plugins below 0 and the others
        return plugins[index][0] >= 0
    ids = [str(plugin.get("id").value) for _, plugin in plugins]
    return all(core in ids[:index] for core in needed)


def _plain_strings(node: _Node, plugin: str, what: str) -> list[str]:
    if node.value is None:
        return []
    out = []
    for item in node.items():
        if not isinstance(item.value, str) or not item.value:
            raise item.error(f"{plugin}: must be a non-empty {what}, got {item.value!r}")
        out.append(item.value)
    return out


def _string_map(node: _Node, plugin: str, *, label_names: bool) -> Mapping[str, str]:
    # Sloth decodes these into Go map[string]string: a number or a boolean is an error there.
    if node.value is None:
        return _EMPTY
    out: dict[str, str] = {}
    for key, value in node.mapping().items():
        where = node.at(str(key))
        if not isinstance(key, str) or not key:
            raise SpecError(f"{plugin}: names must be non-empty strings", path=where)
        if label_names and key.startswith("__"):
            raise SpecError(f"{plugin}: label names starting with __ are reserved by "
                            "Prometheus", path=where)
        if not isinstance(value, str):
            raise SpecError(f"{plugin}: must be a string, got {value!r}", path=where)
        out[key] = value
    return MappingProxyType(out)


def _remove_labels(config: _Node, period: str) -> LabelRemoval:
    if config.value is None:  # no config: Sloth's defaults
        config = _Node({}, config.path)
    config.check_keys(("preserveLabels", "skipMetrics"))
    keep = _plain_strings(config.get("preserveLabels"), _REMOVE_LABELS, "label name")
    sloth_names = _sloth_series(period)
    skip: set[str] = set()
    for name in _plain_strings(config.get("skipMetrics"), _REMOVE_LABELS, "metric name"):
        # A name of neither Sloth nor fournines names no series: nothing to skip, as in Sloth.
        skip.update(sloth_names.get(name, (name,)))
    return LabelRemoval(keep=frozenset(keep), skip=frozenset(skip))


def _budget_alert(config: _Node) -> BudgetExhaustedAlert:
    plugin = _BUDGET_ALERT
    if config.value is None:
        config = _Node({}, config.path)
    config.check_keys(("threshold", "for", "annotations", "alert_name", "alert_labels",
                       "selector_labels"))
    threshold = config.get("threshold")
    if threshold.value is not None and (isinstance(threshold.value, bool)
                                        or not isinstance(threshold.value, int | float)):
        raise threshold.error(f"{plugin}: must be a number (the share of the error budget "
                              f"left, 0 = all spent), got {threshold.value!r}")
    value = threshold.number(0.0)
    duration = config.get("for")
    milliseconds = 0
    if duration.value is not None:
        parsed = (_prom_duration_ms(duration.value) if isinstance(duration.value, str)
                  else None)
        if parsed is None:
            raise duration.error(f"{plugin}: must be a Prometheus duration like 5m or 1h30m, "
                                 f"got {duration.value!r}")
        milliseconds = parsed
    name = config.get("alert_name")
    if name.value is not None and not isinstance(name.value, str):
        raise name.error(f"{plugin}: must be a string, got {name.value!r}")
    selector = _string_map(config.get("selector_labels"), plugin, label_names=True)
    for key in selector:
        if not _LABEL_NAME.match(key):
            raise SpecError(f"{plugin}: a selector label name must match "
                            f"{_LABEL_NAME.pattern}", path=config.get("selector_labels").at(key))
    return BudgetExhaustedAlert(
        # Sloth's defaults: an empty name is ErrorBudgetExhausted, a zero duration 5m.
        name=name.value or "ErrorBudgetExhausted",
        threshold=value,
        for_=_prom_duration_text(milliseconds) if milliseconds else "5m",
        labels=_string_map(config.get("alert_labels"), plugin, label_names=True),
        annotations=_string_map(config.get("annotations"), plugin, label_names=False),
        selector_labels=selector)


def _sloth_plugins(group: _Node, own: _Node, *, period: str = "30d") -> _PluginEffects:
    """What the SLO's plugin chain (the spec's ``slo_plugins``, then its own) does to its rules.

    Follows Sloth's ``internal/app/generate``: an SLO's ``overridePrevious`` drops the
    group's plugins, either one drops Sloth's default plugins; the chain runs in
    priority order (stable), plugins below 0 before the defaults.
    """
    group_override, group_plugins = _plugin_list(group)
    override, plugins = _plugin_list(own)
    if not override:
        plugins = group_plugins + plugins
    override = override or group_override
    plugins.sort(key=lambda item: item[0])
    ids = {plugin.get("id").value for _, plugin in plugins}
    if override and not set(_CORE_GENERATORS) <= ids:
        missing = ", ".join(p for p in _CORE_GENERATORS if p not in ids)
        raise (own if own.value is not None else group).get("overridePrevious").error(
            f"drops Sloth's default plugins and the chain does not put back {missing}: "
            "Sloth would generate only part of the rules, fournines always generates all")
    labels: dict[str, str] = {}
    intervals = RuleIntervals()
    removals: list[LabelRemoval] = []
    budget_alerts: list[tuple[BudgetExhaustedAlert, _Node]] = []
    for index, (priority, plugin) in enumerate(plugins):
        plugin_id = str(plugin.get("id").value)
        config = plugin.get("config")
        if plugin_id not in SLOTH_PLUGINS:
            raise plugin.get("id").error(
                f"Sloth SLO plugin {plugin_id!r} is not supported by fournines, which would "
                f"generate rules without its changes; supported: {', '.join(SLOTH_PLUGINS)}")
        if plugin_id == _INFO_LABELS:
            config.check_keys(("labels", "metricName"))
            metric = config.get("metricName").string("sloth_slo_info")
            if metric not in ("sloth_slo_info", INFO_METRIC):
                raise config.get("metricName").error(
                    f"{_INFO_LABELS}: fournines' info series is {INFO_METRIC} (Sloth's "
                    f"sloth_slo_info); no rule records {metric!r}")
            if priority < 0 and not override:
                raise plugin.get("priority").error(
                    f"{_INFO_LABELS} below 0 runs before Sloth's metadata rules exist, so "
                    "it adds no labels; give it a priority of 0 or more")
            added = config.get("labels").labels(utf8=True)
            if not added:
                raise config.get("labels").error(f"{_INFO_LABELS} needs at least one label")
            for key in added:
                if key.startswith("fournines_"):  # the info series' join keys
                    raise config.get("labels").error(
                        f"{_INFO_LABELS}: {key!r} is one of fournines' own labels")
            labels.update(added)
        elif plugin_id == _RULE_INTERVALS:
            config.check_keys(("interval",))
            interval = config.get("interval")
            interval.check_keys(("default", "sliError", "metadata", "alert"))
            default = _interval(interval.get("default"))
            if default is None:
                raise interval.get("default").error(f"is required by {_RULE_INTERVALS}")
            intervals = RuleIntervals(
                sli=_interval(interval.get("sliError")) or default,
                meta=_interval(interval.get("metadata")) or default,
                alerts=_interval(interval.get("alert")) or default)
        elif plugin_id == _REMOVE_LABELS:
            if not _runs_after(plugins, index, override, _CORE_GENERATORS[:2]):
                raise plugin.get("priority").error(
                    f"{_REMOVE_LABELS} runs before Sloth's SLI and metadata rules exist, so "
                    "it removes no label; run it after them (a priority of 0 or more)")
            removals.append(_remove_labels(config, period))
        elif plugin_id == _BUDGET_ALERT:
            if not _runs_after(plugins, index, override, _CORE_GENERATORS[2:]):
                raise plugin.get("priority").error(
                    f"{_BUDGET_ALERT} runs before Sloth's alert rules, which replace its "
                    "alert; run it after them (a priority of 0 or more)")
            budget_alerts.append((_budget_alert(config), config))
    return _PluginEffects(info_labels=MappingProxyType(labels), intervals=intervals,
                          label_removals=tuple(removals), budget_alerts=tuple(budget_alerts))


def _check_budget_selectors(effects: _PluginEffects, service: str, name: str,
                            custom: Mapping[str, str]) -> None:
    """Refuse a budget alert whose selector matches no series: it would never fire."""
    ids = {"fournines_service": service, "fournines_slo": name}
    series = dict(custom)
    for removal in effects.label_removals:
        if _REMAINING not in removal.skip:
            series = {k: v for k, v in series.items() if k in removal.keep}
    series.update(ids)
    for alert, config in effects.budget_alerts:
        for key, value in {**custom, **alert.selector_labels}.items():
            where = (config.get("selector_labels").at(key) if key in alert.selector_labels
                     else config.path)
            if key not in series:
                why = (f"{_REMOVE_LABELS} removes it" if key in custom else
                       "that series has no such label")
                raise SpecError(
                    f"{_BUDGET_ALERT}: the alert selects {key}={value!r} on {_REMAINING}, but "
                    f"{why}: the alert would never fire", path=where)
            if series[key] != value:
                raise SpecError(
                    f"{_BUDGET_ALERT}: the alert selects {key}={value!r} on {_REMAINING}, "
                    f"which has {key}={series[key]!r}: the alert would never fire", path=where)


def _sloth_alert(node: _Node) -> tuple[bool, Mapping[str, str], Mapping[str, str]]:
    if node.value is None:
        return True, _EMPTY, _EMPTY
    node.check_keys(("disable", "labels", "annotations"))
    return (not node.get("disable").boolean(False), node.get("labels").labels(),
            node.get("annotations").labels())


def _sloth_alerting(node: _Node, names: Mapping[str, str]) -> Alerting:
    if node.value is None:
        return Alerting(page=False, ticket=False, absent_after=None)
    node.check_keys(("name", "labels", "annotations", names["page_alert"],
                     names["ticket_alert"]))
    page, page_labels, page_annotations = _sloth_alert(node.get(names["page_alert"]))
    ticket, ticket_labels, ticket_annotations = _sloth_alert(node.get(names["ticket_alert"]))
    # Sloth needs a name only for an alert it generates (pkg/common/validation, isValidAlert),
    # and generates none besides those two: no absent-traffic alert either.
    name = node.get("name").string(None if page or ticket else "SLOErrorBudgetBurn")
    return Alerting(name=name, page=page, ticket=ticket,
                    absent_after="10m" if page or ticket else None,
                    labels=node.get("labels").labels(),
                    annotations=node.get("annotations").labels(),
                    page_labels=page_labels, ticket_labels=ticket_labels,
                    page_annotations=page_annotations, ticket_annotations=ticket_annotations)


def _read_sloth(root: _Node, source: str | None, *, camel: bool) -> SLOSpec:
    names = _CAMEL if camel else _SNAKE
    root.check_keys(("service", "labels", names["slo_plugins"], "slos") if camel else
                    ("version", "service", "labels", names["slo_plugins"], "slos"))
    slos: list[SLO] = []
    for item in root.get("slos").items():
        item.check_keys(("name", "description", "objective", "plugins", "labels", "sli",
                         "alerting"))
        sli = item.get("sli")
        sli.check_keys(("events", "raw", "plugin"))
        if sli.has("raw"):
            raise sli.get("raw").error("raw error ratio SLIs are not supported (an average of "
                                       "ratios is not weighted by traffic); use sli.events")
        if sli.has("plugin"):
            plugin = sli.get("plugin")
            plugin_id = plugin.get("id").value if isinstance(plugin.value, Mapping) else None
            raise plugin.error(f"Sloth SLI plugins (here {plugin_id!r}) are not supported: "
                               "fournines cannot run their Go code; use sli.events")
        if not sli.has("events"):
            raise sli.error(f"needs events ({names['error_query']} and {names['total_query']})")
        effects = _sloth_plugins(root.get(names["slo_plugins"]), item.get("plugins"))
        slo_name = item.get("name").string(pattern=_NAME, what="a name of letters, digits, _ . -")
        service = root.get("service").string(pattern=_NAME, what="a service name")
        _check_budget_selectors(effects, service, slo_name,
                                {**root.get("labels").labels(), **item.get("labels").labels()})
        slos.append(SLO(
            name=slo_name,
            objective=_objective(item.get("objective")),
            sli=_events(sli.get("events"), names["error_query"], names["total_query"]),
            description=item.get("description").string(""),
            labels=item.get("labels").labels(),
            alerting=_sloth_alerting(item.get("alerting"), names),
            info_labels=effects.info_labels,
            intervals=effects.intervals,
            label_removals=effects.label_removals,
            budget_alerts=tuple(alert for alert, _ in effects.budget_alerts),
        ))
    return SLOSpec(service=root.get("service").string(pattern=_NAME, what="a service name"),
                   labels=root.get("labels").labels(), slos=_unique(slos, root.get("slos")),
                   source=source)


def _openslo_query(node: _Node, counter: bool) -> str:
    source = node.get("metricSource")
    kind = source.get("type").string("Prometheus")
    if kind.lower() != "prometheus":
        raise source.get("type").error(f"only Prometheus metric sources are supported, got "
                                       f"{kind!r}")
    query_node = source.get("spec").get("query")
    query = query_node.string().strip()
    if _WINDOW.search(query):
        return query
    selector = _SELECTOR.match(query)
    inner = (selector.group(1) or "{}")[1:-1] if selector else ""
    # `.*` inside the braces also takes `a{x="1"} or b{y="2"}`: only matchers may be there.
    if counter and selector and (not inner.strip() or _MATCHERS.match(inner)):
        return f"sum(rate({query}[{{{{.window}}}}]))"
    raise query_node.error("must be a counter selector (with counter: true) or a query "
                           "containing {{.window}}")


def _openslo_sli(node: _Node) -> EventsSLI:
    ratio = node.get("spec").get("ratioMetric")
    if ratio.value is None:
        raise ratio.error("is required (only ratio metrics are supported)")
    counter = ratio.get("counter").boolean(True)
    total = _openslo_query(ratio.get("total"), counter)
    if ratio.has("bad"):
        bad = _openslo_query(ratio.get("bad"), counter)
    elif ratio.has("good"):
        good = _openslo_query(ratio.get("good"), counter)
        # No good series (a service failing since it started never made one) is no good
        # events, so every request is bad; without the `or`, total - nothing is nothing,
        # which the error ratio would read as no errors at all.
        bad = f"({total}) - (({good}) or 0 * ({total}))"
    else:
        raise ratio.error("needs good or bad, and total")
    return EventsSLI(error_query=bad, total_query=total)


def _read_openslo(documents: Sequence[object], source: str | None) -> SLOSpec:
    nodes = [_Node(d, f"documents[{i}]") for i, d in enumerate(documents)]
    slis: dict[str, _Node] = {}
    slo_nodes: list[_Node] = []
    for node in nodes:
        kind = node.get("kind").string()
        api = node.get("apiVersion").string()
        if api != "openslo/v1":
            raise node.get("apiVersion").error(f"must be openslo/v1, got {api!r}")
        if kind == "SLI":
            slis[node.get("metadata").get("name").string()] = node
        elif kind == "SLO":
            slo_nodes.append(node)
    if not slo_nodes:
        raise SpecError("no OpenSLO document of kind SLO")
    service: str | None = None
    slos: list[SLO] = []
    for node in slo_nodes:
        spec = node.get("spec")
        name = node.get("metadata").get("name").string(pattern=_NAME, what="an SLO name")
        this_service = spec.get("service").string(pattern=_NAME, what="a service name")
        if service is not None and this_service != service:
            raise spec.get("service").error(
                f"all SLOs in one file must share a service ({service!r} before)")
        service = this_service
        if spec.has("indicator"):
            sli = _openslo_sli(spec.get("indicator"))
        else:
            ref = spec.get("indicatorRef").string()
            if ref not in slis:
                raise spec.get("indicatorRef").error(f"no SLI document named {ref!r}")
            sli = _openslo_sli(slis[ref])
        method = spec.get("budgetingMethod").string("Occurrences")
        if method != "Occurrences":
            raise spec.get("budgetingMethod").error(
                f"only Occurrences (good events over all events) is supported, got {method!r}")
        period = "30d"
        if spec.has("timeWindow"):
            windows = spec.get("timeWindow").items()
            if len(windows) != 1:
                raise spec.get("timeWindow").error("needs exactly one time window")
            if not windows[0].get("isRolling").boolean(True):
                raise windows[0].get("isRolling").error(
                    "only rolling windows are supported (the rules keep a rolling period)")
            period = _period(windows[0].get("duration"))
        objectives = spec.get("objectives").items()
        if not objectives:
            raise spec.get("objectives").error("needs at least one objective")
        for i, objective in enumerate(objectives):
            if objective.has("targetPercent"):
                percent = _objective(objective.get("targetPercent"))
            else:
                target = objective.get("target")
                ratio = target.number()
                if not 0 < ratio < 1:
                    raise target.error(f"must be > 0 and < 1 (got {ratio!r})")
                percent = float(Decimal(repr(ratio)) * 100)
            slos.append(SLO(
                name=name if len(objectives) == 1 else f"{name}-{i}",
                objective=percent, period=period, sli=sli,
                description=spec.get("description").string(""),
            ))
    assert service is not None
    return SLOSpec(service=service, slos=_unique(slos, _Node(None, "SLOs")), source=source)
