"""Specification of the lab's reports, from a result built by hand (no fleet needed)."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console

from fournines.lab.load import Outcome
from fournines.lab.metrics import Sample
from fournines.lab.report import (
    plot_svg,
    render_html,
    render_summary_svg,
    render_table,
    write_json,
)
from fournines.lab.runner import LabResult
from fournines.lab.scenario import Fault, Scenario
from fournines.lab.stats import summarize

FAULTS = (Fault(kind="payment_errors", at=1, duration=1),
          Fault(kind="profile_kill", at=2, duration=1))


def result() -> LabResult:
    scenario = Scenario(duration=4, faults=FAULTS)
    good = [Outcome(at=i / 10, status=200, latency=0.02, degraded=i % 3 == 0, send_lag=0.0,
                    sources="payment-status" if i % 3 == 0 else "") for i in range(40)]
    bad = [Outcome(at=i / 10, status=502 if 10 <= i < 20 else 200, latency=0.3,
                   degraded=False, send_lag=0.0, error="order 502" if 10 <= i < 20 else "")
           for i in range(40)]
    samples = [Sample(at=s + 0.5, retries=3 * s, sheds=s,
                      breakers={"order -> payment": 2 if s == 1 else 0}) for s in range(4)]
    return LabResult(
        scenario=scenario, seed=7, rate=10.0, capacity=66.0, capacity_model=66.7,
        summaries={"unprotected": summarize("unprotected", bad, [], FAULTS, 4),
                   "protected": summarize("protected", good, samples, FAULTS, 4)},
        outcomes={"unprotected": bad, "protected": good},
    )


def test_the_html_report_needs_no_network_and_has_every_plot() -> None:
    page = render_html(result())
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page and "<link" not in page
    for plot in ("availability", "availability-full", "latency-unprotected",
                 "latency-protected", "breakers", "retries-sheds", "budget"):
        assert f'id="{plot}"' in page


def test_the_html_report_says_which_variant_missed_and_why() -> None:
    page = render_html(result())
    assert "99.99 % MISSED" in page and "99.99 % HELD" in page
    assert "HTTP 502 (order 502)" in page  # where the unprotected failures came from
    assert "payment_errors (20% x 500)" in page


def test_fault_windows_are_shaded_in_every_plot() -> None:
    svg = plot_svg("t", 4, [("a", "#000", [1.0, None, 0.5, 0.7])], [(1, 2, "kill")])
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    shaded = [r for r in root.iter(f"{ns}rect") if r.get("fill-opacity")]
    assert len(shaded) == 1
    assert shaded[0].find(f"{ns}title").text == "kill"  # type: ignore[union-attr]
    # a gap (None) splits the line: one point alone, then a segment of two
    assert len(list(root.iter(f"{ns}polyline"))) == 1
    assert len(list(root.iter(f"{ns}circle"))) == 1


def test_the_summary_picture_is_one_valid_standalone_svg() -> None:
    svg = render_summary_svg(result())
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(root.findall("{http://www.w3.org/2000/svg}svg")) == 3


def test_the_terminal_table_has_every_column_of_the_issue() -> None:
    out = io.StringIO()
    render_table(result(), Console(file=out, width=140))
    text = out.getvalue()
    for label in ("requests", "availability (full)", "availability (full + degraded)",
                  "p50 / p95 / p99", "p99 of the worst second", "breaker openings",
                  "retries", "sheds", "error budget consumed", "verdict"):
        assert label in text
    assert "target protected availability >= 99.99 %: met" in text
    assert "target protected p99 < 1 s in every second: met" in text
    assert "unprotected: where the 10 failures came from" in text


def test_the_json_is_strict_json_with_nan_as_null(tmp_path: Path) -> None:
    lab = result()
    lab.summaries["protected"].p99 = float("nan")
    path = tmp_path / "lab.json"
    write_json(lab, path)
    data = json.loads(path.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(
        ValueError(c)))
    assert data["variants"]["protected"]["latency_seconds"]["p99"] is None
    assert data["variants"]["protected"]["series"]["retries"] == [0.0, 3.0, 3.0, 3.0]


def test_a_slow_second_misses_the_p99_target_even_when_the_whole_run_meets_it() -> None:
    lab = result()
    lab.summaries["protected"].worst_second_p99 = 1.2
    targets = lab.targets()
    assert targets["protected p99 < 1 s"]["met"] is True
    assert targets["protected p99 < 1 s in every second"] == {"value": 1.2, "met": False}


def test_the_json_keeps_every_request_and_every_fault_parameter(tmp_path: Path) -> None:
    lab = result()
    path = tmp_path / "lab.json"
    write_json(lab, path)
    data = json.loads(path.read_text())
    log = data["request_log"]["unprotected"]
    assert len(log) == 40
    assert log[10] == {"at": 1.0, "status": 502, "latency": 0.3, "degraded": False,
                       "send_lag": 0.0, "error": "order 502", "sources": ""}
    assert sum(not (200 <= r["status"] < 300) for r in log) == data["variants"][
        "unprotected"]["failed"]
    assert data["faults"][0] == {"kind": "payment_errors", "label": "payment_errors (20% x 500)",
                                 "at": 1, "duration": 1, "end": 2, "rate": 0.2, "status": 500,
                                 "latency": 2.0, "jitter": 0.0, "mode": "timeout",
                                 "factor": 3.0}
