"""A Grafana dashboard for a service's SLOs: ``fournines slo dashboard SPEC``.

The JSON follows Grafana's current dashboard schema (``schemaVersion`` 39,
Grafana 10 and 11): a ``datasource`` variable so one file works with any
Prometheus data source, panels placed with ``gridPos`` on the 24-column grid,
``timeseries`` and ``stat`` panels with ``fieldConfig`` and ``options``, and
``row`` panels grouping them. Import it (Dashboards > New > Import) or
provision it from a file.

Layout:

- *Golden signals* of fournines' ASGI middleware (``$job`` picks the services):
  traffic by route, the 5xx ratio, latency p50/p95/p99 from the request
  histogram, and saturation (requests in flight, event-loop lag);
- one row per SLO: the SLI over the period, the error budget remaining
  (coloured at the gate's 5/15/20 % thresholds), the SLI over time against the
  objective, and burn rates over 5m, 1h, 6h, 1d and 3d with the 1x line and the
  page threshold (2 % of the budget in an hour, 14.4x for 30 days).

The SLO panels use the spec's own queries, the same ones the rules and the
budget report use.
"""

from __future__ import annotations

import re
from typing import Any

from ..asgi.metrics import REQUEST_DURATION, REQUESTS_TOTAL
from .budget import BURN_RATE_WINDOWS
from .spec import SLO, SLOSpec, error_ratio_query

__all__ = ["SCHEMA_VERSION", "build_dashboard"]

SCHEMA_VERSION = 39
"""The Grafana dashboard schema version written (Grafana 10.x/11.x read it as is)."""

_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_JOB = 'job=~"$job"'
_IN_FLIGHT = "http_requests_in_flight"
_LOOP_LAG = "event_loop_lag_seconds"


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": _DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref,
            "range": True, "instant": False, "editorMode": "code"}


def _thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


class _Layout:
    """Hands out panel ids and places panels left to right, rows top to bottom."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self._id = 0
        self._x = 0
        self._y = 0
        self._row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self._id += 1
        self.panels.append({"type": "row", "id": self._id, "title": title, "collapsed": False,
                            "panels": [], "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y}})
        self._y += 1

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_height
            self._x = 0
            self._row_height = 0

    def add(self, panel: dict[str, Any], *, w: int, h: int) -> None:
        if self._x + w > 24:
            self._newline()
        self._id += 1
        panel["id"] = self._id
        panel["gridPos"] = {"h": h, "w": w, "x": self._x, "y": self._y}
        self.panels.append(panel)
        self._x += w
        self._row_height = max(self._row_height, h)


def _timeseries(title: str, targets: list[dict[str, Any]], *, unit: str,
                description: str = "", thresholds: dict[str, Any] | None = None,
                threshold_style: str = "off", minimum: float | None = 0) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                   "showPoints": "never", "spanNulls": False,
                   "thresholdsStyle": {"mode": threshold_style}},
        "thresholds": thresholds or _thresholds(("green", None)),
    }
    if minimum is not None:
        defaults["min"] = minimum
    return {"type": "timeseries", "title": title, "description": description,
            "datasource": _DATASOURCE, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom",
                                   "showLegend": True, "calcs": []},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def _stat(title: str, expr: str, *, unit: str, thresholds: dict[str, Any],
          description: str = "", decimals: int = 3) -> dict[str, Any]:
    return {"type": "stat", "title": title, "description": description,
            "datasource": _DATASOURCE, "targets": [_target(expr, title, "A")],
            "fieldConfig": {"defaults": {"unit": unit, "decimals": decimals,
                                         "color": {"mode": "thresholds"},
                                         "thresholds": thresholds},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                          "values": False},
                        "colorMode": "background", "graphMode": "area", "justifyMode": "auto",
                        "orientation": "auto", "textMode": "auto", "wideLayout": True,
                        "showPercentChange": False}}


def _golden_signals(layout: _Layout) -> None:
    rate = "$__rate_interval"
    total = f"sum(rate({REQUESTS_TOTAL}{{{_JOB}}}[{rate}]))"
    layout.row("Golden signals")
    layout.add(_timeseries("Traffic", [_target(
        f"sum by (route) (rate({REQUESTS_TOTAL}{{{_JOB}}}[{rate}]))", "{{route}}", "A")],
        unit="reqps", description="Requests per second by route template."), w=6, h=8)
    layout.add(_timeseries("Errors", [_target(
        f'sum(rate({REQUESTS_TOTAL}{{{_JOB},status=~"5.."}}[{rate}])) / {total}',
        "5xx ratio", "A")], unit="percentunit", description="Share of requests answered 5xx."),
        w=6, h=8)
    quantiles = [
        _target(f"histogram_quantile({q}, sum by (le) "
                f"(rate({REQUEST_DURATION}_bucket{{{_JOB}}}[{rate}])))", f"p{name}", ref)
        for q, name, ref in ((0.5, "50", "A"), (0.95, "95", "B"), (0.99, "99", "C"))]
    layout.add(_timeseries("Duration", quantiles, unit="s",
                           description="Request duration percentiles inside the app."),
               w=6, h=8)
    layout.add(_timeseries("Saturation", [
        _target(f"sum({_IN_FLIGHT}{{{_JOB}}})", "in flight", "A"),
        _target(f"max({_LOOP_LAG}{{{_JOB}}})", "event-loop lag (s)", "B"),
    ], unit="short", description="Requests inside the app now; event-loop lag in seconds."),
        w=6, h=8)


def _fast_burn(slo: SLO) -> float:
    # The workbook's page threshold: 2 % of the budget spent in one hour.
    return round(0.02 * slo.period_seconds / 3600, 4)


def _slo_row(layout: _Layout, slo: SLO) -> None:
    budget = slo.error_budget
    period_ratio = error_ratio_query(slo, slo.period)
    objective = slo.objective / 100
    layout.row(f"SLO {slo.name}: {slo.objective:g} % over {slo.period}")
    layout.add(_stat(f"{slo.name} SLI ({slo.period})", f"1 - ({period_ratio})",
                     unit="percentunit", decimals=4,
                     description=slo.description or "Good events over all events.",
                     thresholds=_thresholds(("red", None), ("green", objective))), w=4, h=6)
    layout.add(_stat(f"{slo.name} error budget remaining",
                     f"1 - ({period_ratio}) / {budget!r}", unit="percentunit", decimals=1,
                     description="Share of the period's error budget left (the deploy gate "
                                 "blocks below 15 %).",
                     thresholds=_thresholds(("red", None), ("orange", 0.05),
                                            ("yellow", 0.15), ("green", 0.2))), w=4, h=6)
    layout.add(_timeseries(f"{slo.name} SLI", [
        _target(f"1 - ({error_ratio_query(slo, '5m')})", "SLI (5m)", "A"),
        _target(f"vector({objective!r})", "objective", "B"),
    ], unit="percentunit", minimum=None), w=8, h=6)
    fast = _fast_burn(slo)
    layout.add(_timeseries(
        f"{slo.name} burn rate",
        [_target(f"({error_ratio_query(slo, window)}) / {budget!r}", window,
                 chr(ord("A") + i)) for i, window in enumerate(BURN_RATE_WINDOWS)],
        unit="x", description=f"1x spends the budget in exactly {slo.period}; {fast:g}x "
                              "spends 2 % of it in an hour (page).",
        thresholds=_thresholds(("green", None), ("orange", 1.0), ("red", fast)),
        threshold_style="line"), w=8, h=6)


def _uid(service: str) -> str:
    # Grafana uids: at most 40 characters of letters, digits, '-' and '_'.
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"fournines-slo-{service}")[:40]


def build_dashboard(spec: SLOSpec, *, title: str | None = None,
                    uid: str | None = None) -> dict[str, Any]:
    """The dashboard for ``spec`` as a JSON-ready dict."""
    layout = _Layout()
    _golden_signals(layout)
    for slo in spec.slos:
        _slo_row(layout, slo)
    job_query = f"label_values({REQUESTS_TOTAL}, job)"
    return {
        "id": None,
        "uid": uid or _uid(spec.service),
        "title": title or f"{spec.service}: SLOs and golden signals",
        "description": f"Generated by fournines from {spec.source or 'an SLO spec'}.",
        "tags": ["fournines", "slo", spec.service],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0, "includeAll": False,
             "multi": False, "options": [], "refresh": 1, "regex": "", "skipUrlSync": False},
            {"name": "job", "label": "job", "type": "query", "datasource": _DATASOURCE,
             "definition": job_query,
             "query": {"query": job_query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
             "current": {}, "hide": 0, "includeAll": True, "allValue": ".*", "multi": True,
             "options": [], "refresh": 2, "regex": "", "skipUrlSync": False, "sort": 1},
        ]},
        "panels": layout.panels,
    }
