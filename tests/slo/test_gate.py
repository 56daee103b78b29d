"""The deploy gate: 0 proceed, 1 the budget forbids, 2 no data or no Prometheus; never 0 by
accident."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fournines._errors import ConfigurationError
from fournines.cli import main
from fournines.slo.budget import compute_budget
from fournines.slo.gate import GatePolicy, SLOBudget, decide, read_budget
from fournines.slo.spec import parse_spec

from .._prometheus import PrometheusServer
from .._servers import free_port

SPEC = {
    "service": "payment",
    "slos": [{"name": "availability", "objective": 99.0, "period": "7d",
              "sli": {"availability": {"selector": 'job="payment"'}}}],
}


def slo_budget(remaining_percent: float | None) -> SLOBudget:
    slo = parse_spec(SPEC).slos[0]
    ratio = None if remaining_percent is None else (1 - remaining_percent / 100) * 0.01
    budget = compute_budget(objective=99.0, period_seconds=slo.period_seconds, error_ratio=ratio)
    return SLOBudget(slo=slo, budget=budget)


@pytest.mark.parametrize(("remaining", "verdict", "status"), [
    (100.0, "proceed", 0), (20.0, "proceed", 0), (17.0, "caution", 0), (15.0, "caution", 0),
    (14.9, "block", 1), (3.0, "block", 1), (-50.0, "block", 1), (None, "no-data", 2),
])
def test_default_policy_outside_production(remaining: float | None, verdict: str,
                                           status: int) -> None:
    exit_status, [decision] = decide([slo_budget(remaining)])
    assert (decision.verdict, exit_status) == (verdict, status)


def test_below_five_percent_in_production_needs_manual_approval() -> None:
    status, [decision] = decide([slo_budget(4.0)], environment="production")
    assert status == 1
    assert decision.verdict == "approval"
    assert "MANUAL APPROVAL REQUIRED" in decision.message


def test_between_five_and_fifteen_percent_production_is_blocked_not_approval() -> None:
    status, [decision] = decide([slo_budget(10.0)], environment="production")
    assert (status, decision.verdict) == (1, "block")


def test_caution_band_can_be_made_to_block() -> None:
    status, [decision] = decide([slo_budget(17.0)], GatePolicy(caution_blocks=True))
    assert (status, decision.verdict) == (1, "caution")


def test_thresholds_are_configurable() -> None:
    policy = GatePolicy(proceed_percent=60, block_percent=50, approval_percent=10)
    assert decide([slo_budget(55.0)], policy)[0] == 0
    assert decide([slo_budget(45.0)], policy)[0] == 1


def test_a_forbidding_slo_wins_over_one_without_data() -> None:
    status, _ = decide([slo_budget(None), slo_budget(1.0)])
    assert status == 1


def test_one_slo_without_data_keeps_the_gate_from_saying_yes() -> None:
    status, _ = decide([slo_budget(90.0), slo_budget(None)])
    assert status == 2


def test_no_slos_at_all_is_no_data() -> None:
    assert decide([])[0] == 2


@pytest.mark.parametrize("kwargs", [
    {"proceed_percent": 10, "block_percent": 15}, {"approval_percent": 20},
    {"proceed_percent": 101}, {"block_percent": math.nan},
])
def test_inconsistent_thresholds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match="GatePolicy"):
        GatePolicy(**kwargs)  # type: ignore[arg-type]


def test_nan_from_prometheus_is_no_data() -> None:
    slo = parse_spec(SPEC).slos[0]
    item = read_budget(slo, lambda expr: math.nan)
    assert decide([item])[0] == 2


def write_spec(tmp_path: Path) -> str:
    path = tmp_path / "slo.yaml"
    path.write_text(json.dumps(SPEC))
    return str(path)


def test_gate_exits_2_when_prometheus_is_unreachable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["slo", "gate", write_spec(tmp_path), "--prometheus", url]) == 2
    assert "cannot reach Prometheus" in capsys.readouterr().err


def test_gate_exits_2_for_a_spec_that_cannot_be_read(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    assert main(["slo", "gate", missing, "--prometheus", "http://127.0.0.1:1"]) == 2


def test_gate_exits_2_when_prometheus_has_no_traffic_for_the_slo(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A real Prometheus that scrapes only itself: the SLO's series do not exist.
    spec = write_spec(tmp_path)
    with PrometheusServer(targets=[]) as prometheus:
        status = main(["slo", "gate", spec, "--prometheus", prometheus.url])
        text = capsys.readouterr().out
        json_status = main(["slo", "gate", spec, "--prometheus", prometheus.url, "--json"])
        report = json.loads(capsys.readouterr().out)
    assert (status, json_status) == (2, 2)
    assert "NO DATA" in text
    assert report["exit_status"] == 2
    assert report["decisions"][0]["verdict"] == "no-data"


def test_budget_reports_no_data_as_dashes_and_json_nulls(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path)
    with PrometheusServer(targets=[]) as prometheus:
        assert main(["slo", "budget", spec, "--prometheus", prometheus.url]) == 0
        table = capsys.readouterr().out
        assert main(["slo", "budget", spec, "--prometheus", prometheus.url, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
    row = table.splitlines()[3].split()
    assert row[0] == "availability"
    assert row[-7:] == ["-"] * 7  # remaining and every burn rate: no data, not 100 %
    [slo] = report["slos"]
    assert slo["remaining_ratio"] is None
    assert slo["total_minutes"] == pytest.approx(7 * 24 * 60 * 0.01)
    assert set(slo["burn_rates"]) == {"5m", "1h", "6h", "1d", "3d", "7d"}


def test_bad_gate_thresholds_are_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["slo", "gate", write_spec(tmp_path), "--prometheus", "http://127.0.0.1:1",
              "--proceed-at", "10"])
    assert exc.value.code == 2
