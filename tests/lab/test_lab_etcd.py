"""The lab behind the registry, end to end: ``fournines lab --etcd`` on the registry example.

One shortened run (16 s of load per variant) of ``examples/lab/registry.yaml`` with
a private etcd the lab starts itself: the protected fleet registers in it and
finds payment, order and profile through it, payment runs two instances, one of
them is SIGKILLed for a while, then etcd itself is killed and restarted.
No timing thresholds: the structure, and who answered in the fault windows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .._servers import require_binary

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "lab" / "registry.yaml"
KILL = "instance_kill (SIGKILL a payment instance)"
OUTAGE = "registry_outage (etcd killed)"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_binary("etcd", "etcd-server")
    out = tmp_path_factory.mktemp("lab-etcd")
    done = subprocess.run(
        [sys.executable, "-m", "fournines", "lab", "--etcd", "--scenario", str(SCENARIO),
         "--duration", "16", "--seed", "5", "--out", str(out), "--json",
         str(out / "lab.json")],
        capture_output=True, text=True, timeout=240, check=False, cwd=ROOT,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    data: dict[str, Any] = json.loads((out / "lab.json").read_text())
    data["_stdout"] = done.stdout
    data["_html"] = (out / "report.html").read_text()
    return data


def test_the_protected_fleet_ran_behind_the_lab_s_own_etcd(report: dict[str, Any]) -> None:
    registry = report["registry"]
    assert registry["etcd"] == "started by the lab"
    assert registry["url"].startswith("http://127.0.0.1:")
    assert registry["variants"] == ["protected"]
    assert registry["payment_instances"] == 2
    # both payment instances served: each used CPU of its own
    assert report["cpu_cores"]["protected"]["payment-2"] > 0
    assert "payment-2" not in report["cpu_cores"]["unprotected"]
    assert "behind etcd" in report["_stdout"]
    assert "the protected fleet ran behind etcd at " + registry["url"] in report["_html"]


def test_both_registry_faults_were_applied_and_undone_in_both_variants(
        report: dict[str, Any]) -> None:
    log = report["fault_log"]
    assert [e for e in log if "error" in e] == []
    done = {(e["variant"], e["fault"], e["action"]) for e in log}
    for variant in ("unprotected", "protected"):
        for fault in (KILL, OUTAGE):
            assert {(variant, fault, "begin"), (variant, fault, "end")} <= done


def test_the_protected_fleet_answered_most_requests_while_an_instance_was_dead(
        report: dict[str, Any]) -> None:
    protected = report["variants"]["protected"]["phases"][KILL]
    unprotected = report["variants"]["unprotected"]["phases"][KILL]
    assert protected["requests"] == unprotected["requests"] > 0
    assert protected["failed"] < 0.1 * protected["requests"]
    # the unprotected fleet had only the one instance, and lost it
    assert unprotected["failed"] > protected["failed"]


def test_the_protected_fleet_answered_most_requests_while_etcd_was_down(
        report: dict[str, Any]) -> None:
    protected = report["variants"]["protected"]["phases"][OUTAGE]
    assert protected["requests"] > 0
    assert protected["failed"] < 0.1 * protected["requests"]
    after = report["variants"]["protected"]["phases"][f"after {OUTAGE}"]
    assert after["requests"] > 0
    assert after["failed"] < 0.1 * after["requests"]
