"""The shortened lab, end to end: real processes, real faults, the reports it writes.

One run of ``fournines lab --duration 7 --prometheus`` (7 s of load per variant,
the default scenario's faults scaled to fit, a private Prometheus scraping the
protected fleet) is shared by the tests of this module. Prometheus is optional
for the lab, so only the test about it needs the binary; the others run without.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .._servers import require_binary

ROOT = Path(__file__).resolve().parents[2]


class LabRun:
    def __init__(self, out: Path, done: subprocess.CompletedProcess[str], seconds: float):
        self.out = out
        self.done = done
        self.seconds = seconds
        self.report: dict[str, Any] = json.loads((out / "lab.json").read_text())
        self.html = (out / "report.html").read_text()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> LabRun:
    out = tmp_path_factory.mktemp("lab")
    prometheus = ["--prometheus"] if shutil.which("prometheus") else []
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fournines", "lab", "--duration", "7", "--seed", "11",
         "--out", str(out), "--json", str(out / "lab.json"), *prometheus],
        capture_output=True, text=True, timeout=240, check=False, cwd=ROOT,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return LabRun(out, done, time.monotonic() - started)


def test_the_protected_variant_serves_more_than_the_unprotected_one(lab: LabRun) -> None:
    variants = lab.report["variants"]
    assert variants["protected"]["availability"] > variants["unprotected"]["availability"]
    assert variants["protected"]["failed"] < variants["unprotected"]["failed"]
    assert lab.report["targets"][
        "protected beats unprotected (95 % interval of the difference above 0)"]["met"] is True
    comparison = lab.report["comparison"]
    assert 0 < comparison["lower"] < comparison["difference"] < comparison["upper"]


def test_both_variants_got_the_same_load_and_the_same_faults(lab: LabRun) -> None:
    variants = lab.report["variants"]
    assert variants["protected"]["requests"] == variants["unprotected"]["requests"] > 100
    log = lab.report["request_log"]
    assert [r["at"] for r in log["protected"]] == [r["at"] for r in log["unprotected"]]
    planned = {v: sorted((e["fault"], e["action"], e["planned"]) for e in lab.report[
        "fault_log"] if e["variant"] == v) for v in ("unprotected", "protected")}
    assert planned["protected"] == planned["unprotected"] != []


def test_the_json_report_has_every_part_of_the_issue(lab: LabRun) -> None:
    report = lab.report
    assert {"scenario", "seed", "rate", "capacity", "objective", "faults", "variants",
            "targets", "timings", "fault_log", "request_log", "missed_scrapes", "statistics",
            "comparison"} <= set(report)
    assert report["objective"] == 0.9999
    assert report["capacity"]["measured"] > 0
    # the protected gateway's own BudgetTracker, read from its /metrics
    assert set(report["tracker_budget_remaining"]["protected"]) == {"gateway/page-availability"}
    assert report["tracker_budget_remaining"]["unprotected"] == {}
    for summary in report["variants"].values():
        assert {"requests", "full", "degraded", "failed", "availability_full",
                "availability", "latency_seconds", "breaker_openings", "retries", "sheds",
                "error_budget_consumed", "verdict", "failures_by_phase",
                "series", "availability_interval", "availability_full_interval",
                "interval_method", "objective_verdict", "meets_objective",
                "send_lag"} <= set(summary)
        assert set(summary["send_lag"]) == {"p99_seconds", "max_seconds", "late",
                                            "late_after_seconds", "generator_behind"}
        interval = summary["availability_interval"]
        assert interval["lower"] <= summary["availability"] <= interval["upper"]
        assert set(summary["latency_seconds"]) == {"p50", "p95", "p99", "max",
                                                   "worst_second_p99", "p99_by_phase"}
        assert len(summary["series"]["availability"]) == 7
        assert summary["requests"] == summary["full"] + summary["degraded"] + summary["failed"]
    for variant, log in report["request_log"].items():
        summary = report["variants"][variant]
        assert len(log) == summary["requests"]
        assert sum(200 <= r["status"] < 300 and not r["degraded"] for r in log) == summary["full"]


def test_every_fault_was_applied_and_undone_without_error(lab: LabRun) -> None:
    log = lab.report["fault_log"]
    assert [e for e in log if "error" in e] == []
    kinds = {(e["variant"], e["fault"].split(" ")[0], e["action"]) for e in log}
    for variant in ("unprotected", "protected"):
        for kind in ("payment_errors", "payment_latency", "partition", "profile_kill",
                     "capacity_loss"):
            assert (variant, kind, "begin") in kinds
            assert (variant, kind, "end") in kinds


def test_the_protected_fleet_shows_its_policies_at_work(lab: LabRun) -> None:
    protected = lab.report["variants"]["protected"]
    assert protected["degraded"] > 0  # stale payment statuses, guest profiles
    assert protected["retries"] + protected["breaker_openings"] > 0
    unprotected = lab.report["variants"]["unprotected"]
    assert (unprotected["degraded"], unprotected["retries"]) == (0, 0)


def test_the_html_report_is_self_contained(lab: LabRun) -> None:
    html = lab.html
    assert html.count("<svg") >= 6
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    for plot in ("availability", "latency-protected", "breakers", "retries-sheds", "budget"):
        assert f'id="{plot}"' in html


def test_prometheus_scraped_the_protected_fleet_and_evaluated_the_slo_rules(
        lab: LabRun) -> None:
    require_binary("prometheus", "prometheus")
    summary = lab.report["prometheus"]
    assert "scraped 4 services of the protected fleet" in summary
    assert "gateway 5m error ratio (SLO rules)" in summary
    assert (lab.out / "prometheus" / "slo-rules.yml").exists()


def test_the_terminal_shows_the_table_and_the_verdicts(lab: LabRun) -> None:
    out = lab.done.stdout
    for label in ("availability (full)", "p50 / p95 / p99", "breaker openings", "retries",
                  "sheds", "error budget consumed", "send lag", "verdict"):
        assert label in out
    assert "99.99 %" in out
    assert "Clopper-Pearson exact" in out
    assert "unprotected: +" in out  # the comparison line
    # a 7 s run is far too short to prove four nines, whatever it served
    assert "99.99 % held" not in out
    assert lab.report["variants"]["protected"]["objective_verdict"]["outcome"] in (
        "not proven", "missed")
    assert "HTML report:" in out
    print(f"shortened lab: {lab.seconds:.1f} s wall time")
