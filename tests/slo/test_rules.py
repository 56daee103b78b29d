"""Generated Prometheus rules: windows, exact burn-rate thresholds, switches, promtool-valid."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from fournines.slo import SLO, Alerting, EventsSLI, SLOSpec, generate_rules, load_spec, parse_spec
from fournines.slo.rules import TIERS, burn_rate_factor, exact, write_atomic

from ._promtool import DATA, EXAMPLES, assert_passes, promtool

EVENTS = EventsSLI(error_query="sum(rate(errors_total[{{.window}}]))",
                   total_query="sum(rate(requests_total[{{.window}}]))")


def _spec(**alerting: Any) -> SLOSpec:
    slo = SLO(name="api", objective=99.9, sli=EVENTS, alerting=Alerting(**alerting))
    return SLOSpec(service="shop", slos=(slo,))


def _rules(spec: SLOSpec) -> list[dict[str, Any]]:
    groups = yaml.safe_load(generate_rules(spec))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alerts(spec: SLOSpec) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for rule in _rules(spec):
        if "alert" in rule:
            kind = rule["labels"]["severity"] if rule["alert"] == "SLOErrorBudgetBurn" else (
                rule["alert"])
            out.setdefault(kind, []).append(rule)
    return out


@pytest.mark.parametrize(("period", "factors"), [
    (30, [Fraction("14.4"), Fraction(6), Fraction(3), Fraction(1)]),
    (28, [Fraction("13.44"), Fraction("5.6"), Fraction("2.8"), Fraction(14, 15)]),
    (7, [Fraction("3.36"), Fraction("1.4"), Fraction("0.7"), Fraction(7, 30)]),
])
def test_burn_rate_factors_scale_the_workbook_budget_shares_by_period(
        period: int, factors: list[Fraction]) -> None:
    assert [burn_rate_factor(w, period * 86400) for w in TIERS] == factors


def test_thresholds_are_written_exactly() -> None:
    assert exact(Fraction("14.4") * Fraction("0.001")) == "0.0144"
    assert exact(Fraction(14, 15) * Fraction("0.0005")) == "(7 / 15000)"
    assert exact(Fraction("0.0001") * 6) == "0.0006"


def test_no_float_noise_anywhere_in_the_rules() -> None:
    for path in (EXAMPLES / "payment.yml", DATA / "sloth" / "getting-started.yml"):
        text = generate_rules(load_spec(path))
        assert not re.search(r"\d\.\d*(?:0{6,}|9{6,})\d", text), path
        assert "e-0" not in text


def test_error_ratio_is_recorded_over_every_window_and_the_period() -> None:
    records = {r["record"]: r for r in _rules(_spec()) if "record" in r}
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        expr = records[f"fournines_slo:error_ratio:rate{window}"]["expr"]
        assert f"errors_total[{window}]" in expr
        assert f"(sum(rate(requests_total[{window}]))) > 0" in expr
    period = records["fournines_slo:error_ratio:period"]["expr"]
    # Traffic-weighted: summed error rates over summed request rates, not a mean of ratios.
    assert period.startswith("sum_over_time(fournines_slo:errors:rate5m{")
    assert "sum_over_time(fournines_slo:requests:rate5m{" in period
    assert "[30d]" in period
    assert records["fournines_slo:error_budget:ratio"]["expr"].strip() == "vector(0.001)"
    assert records["fournines_slo:objective:ratio"]["expr"].strip() == "vector(0.999)"
    for name in ("fournines_slo:current_burn_rate:ratio", "fournines_slo:period_burn_rate:ratio",
                 "fournines_slo:period_error_budget_remaining:ratio"):
        assert name in records
    for rule in records.values():
        assert rule["labels"]["fournines_service"] == "shop"
        assert rule["labels"]["fournines_slo"] == "api"


def test_page_and_ticket_alerts_use_the_workbook_windows() -> None:
    alerts = _alerts(_spec())
    (page,) = alerts["page"]
    (ticket,) = alerts["ticket"]
    assert "rate1h{" in page["expr"] and "rate5m{" in page["expr"]
    assert "> 0.0144" in page["expr"] and "> 0.006" in page["expr"]
    assert "rate1d{" in ticket["expr"] and "rate2h{" in ticket["expr"]
    assert "> 0.003" in ticket["expr"] and "> 0.001" in ticket["expr"]
    assert page["alert"] == ticket["alert"] == "SLOErrorBudgetBurn"


def test_each_tier_can_be_switched_off() -> None:
    assert set(_alerts(_spec(page=False))) == {"ticket", "SLOMetricsAbsent"}
    assert set(_alerts(_spec(ticket=False))) == {"page", "SLOMetricsAbsent"}
    assert set(_alerts(_spec(page=False, ticket=False, absent_after=None))) == set()


def test_simple_rule_is_the_seeds_five_minute_ratio_above_a_tenth_of_a_percent() -> None:
    assert "SLOHighErrorRate" not in _alerts(_spec())
    (simple,) = _alerts(_spec(simple=True))["SLOHighErrorRate"]
    assert simple["labels"]["severity"] == "P1"
    assert simple["alert"] == "SLOHighErrorRate"
    assert simple["expr"].strip().endswith("rate5m{fournines_service=\"shop\", "
                                           "fournines_slo=\"api\"} > 0.001")


def test_min_events_guard_requires_traffic_in_the_long_window() -> None:
    (page,) = _alerts(_spec(min_events=50))["page"]
    assert "fournines_slo:requests:rate1h{" in page["expr"]
    assert "* 3600 >= 50" in page["expr"]
    assert "requests:rate1h" not in generate_rules(_spec())


def test_absent_metrics_alert_waits_absent_after() -> None:
    (absent,) = _alerts(_spec())["SLOMetricsAbsent"]
    assert absent["expr"].strip() == "absent(sum(rate(requests_total[5m])))"
    assert absent["for"] == "10m"


def test_every_generated_file_passes_promtool_check_rules(tmp_path: Path) -> None:
    specs = [load_spec(EXAMPLES / "payment.yml"), load_spec(EXAMPLES / "openslo.yml"),
             load_spec(DATA / "sloth" / "getting-started.yml"),
             load_spec(DATA / "specs" / "openslo-bad-ratio.yml"),
             _spec(page=False), _spec(ticket=False, simple=True, min_events=10),
             _spec(page=False, ticket=False, absent_after=None)]
    for period in ("28d", "7d"):
        spec = _spec(min_events=5)
        specs.append(replace(spec, slos=(replace(spec.slos[0], period=period),)))
    files = []
    for i, spec in enumerate(specs):
        path = tmp_path / f"rules-{i}.yml"
        path.write_text(generate_rules(spec))
        files.append(path)
    assert_passes(promtool("check", "rules", *files))


def test_period_ratio_is_weighted_by_traffic(tmp_path: Path) -> None:
    # A quiet hour with half its 100 requests a minute failing, then a busy hour of 10000
    # clean requests a minute: 3000 errors in 606000 requests is 0.5 %, although the
    # mean of the 5m ratios is about 25 %.
    (tmp_path / "rules.yml").write_text(generate_rules(_spec()))
    labels = '{fournines_service="shop", fournines_slo="api"}'
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [
            {"series": "errors_total", "values": "0+50x60 3000+0x60"},
            {"series": "requests_total", "values": "0+100x60 6000+10000x60"}],
            "promql_expr_test": [
                {"expr": "0 * (fournines_slo:error_ratio:period > 0.004 < 0.006) + 1",
                 "eval_time": "120m", "exp_samples": [{"labels": labels, "value": 1}]},
                {"expr": "avg_over_time(fournines_slo:error_ratio:rate5m[120m]) > bool 0.2",
                 "eval_time": "120m", "exp_samples": [{"labels": labels, "value": 1}]},
            ]}]}))
    assert_passes(promtool("test", "rules", "test.yml", cwd=tmp_path))


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "rules.yml"
    target.write_text("old\n")
    with pytest.raises(TypeError):
        write_atomic(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rules.yml"]


def _cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fournines", "slo", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=60, check=False)


def test_cli_writes_rules_and_their_promtool_suite(tmp_path: Path) -> None:
    result = _cli("rules", EXAMPLES / "openslo.yml", "-o", tmp_path / "r.yml",
                  "--tests", tmp_path / "r.test.yml")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.yml").read_text() == generate_rules(load_spec(EXAMPLES / "openslo.yml"))
    assert 'rule_files:\n  - "r.yml"' in (tmp_path / "r.test.yml").read_text()


def test_cli_prints_rules_to_stdout_without_output_file() -> None:
    result = _cli("rules", EXAMPLES / "openslo.yml")
    assert result.returncode == 0
    assert result.stdout == generate_rules(load_spec(EXAMPLES / "openslo.yml"))


def test_cli_invalid_spec_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yml"
    spec.write_text("service: api\nslos:\n  - name: a\n    objective: 100\n"
                    "    sli: {availability: {}}\n")
    out = tmp_path / "rules.yml"
    out.write_text("previous\n")
    result = _cli("rules", spec, "-o", out)
    assert result.returncode == 2
    assert f"{spec}: slos[0].objective: must be a percentage" in result.stderr
    assert out.read_text() == "previous\n"


def test_cli_check_prints_budget_minutes_and_burn_rates() -> None:
    result = _cli("check", EXAMPLES / "payment.yml")
    assert result.returncode == 0, result.stderr
    assert "availability: 99.99 % over 30d; error budget 0.01 % = 4.32 minutes" in result.stdout
    assert "ticket (14 / 15)x (3d/6h)" in result.stdout


def test_spec_model_round_trips_through_parse_spec() -> None:
    spec = parse_spec({"service": "a", "slos": [{"name": "b", "objective": 99.5,
                                                 "sli": {"availability": {}}}]})
    assert spec.slos[0].alerting == Alerting()


def _promtool_replay(tmp_path: Path, spec: SLOSpec, series: dict[str, str],
                     checks: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rules.yml").write_text(generate_rules(spec))
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m",
                   "input_series": [{"series": k, "values": v} for k, v in series.items()],
                   "promql_expr_test": checks}]}))
    return promtool("test", "rules", "test.yml", cwd=tmp_path)


def test_good_total_sli_with_no_good_series_counts_every_request_as_bad(tmp_path: Path) -> None:
    # OpenSLO good/total: a service failing since its start never created its good series.
    # "No good events" is an error ratio of 1, never a fake 0 (which pages nobody and lets
    # the gate say yes during a total outage).
    ratio = {"counter": True,
             "good": {"metricSource": {"spec": {"query": 'http_requests_total{code="200"}'}}},
             "total": {"metricSource": {"spec": {"query": "http_requests_total"}}}}
    spec = parse_spec({"apiVersion": "openslo/v1", "kind": "SLO", "metadata": {"name": "api"},
                       "spec": {"service": "shop", "indicator": {"spec": {"ratioMetric": ratio}},
                                "objectives": [{"target": 0.999}]}})
    labels = '{fournines_service="shop", fournines_slo="api"}'
    result = _promtool_replay(
        tmp_path, spec, {'http_requests_total{code="500"}': "0+100x30"},
        [{"expr": "fournines_slo:error_ratio:rate5m", "eval_time": "30m",
          "exp_samples": [{"labels": f"fournines_slo:error_ratio:rate5m{labels}", "value": 1}]},
         {"expr": 'ALERTS{alertstate="firing", severity="page"}', "eval_time": "30m",
          "exp_samples": [{"labels": 'ALERTS{alertname="SLOErrorBudgetBurn", alertstate="firing",'
                                     ' fournines_service="shop", fournines_slo="api",'
                                     ' severity="page"}', "value": 1}]}])
    assert_passes(result)


def test_latency_sli_without_its_threshold_bucket_is_no_data_not_zero_errors(
        tmp_path: Path) -> None:
    # A histogram whose buckets do not include the threshold (0.3 between 0.25 and 0.5):
    # the bad events cannot be known, so no ratio at all rather than "nothing was slow".
    spec = parse_spec({"service": "shop", "slos": [{
        "name": "api", "objective": 99,
        "sli": {"latency": {"histogram": "work_seconds", "threshold": 0.3}}}]})
    result = _promtool_replay(tmp_path, spec, {
        "work_seconds_count": "0+100x30",
        'work_seconds_bucket{le="0.25"}': "0+0x30",
        'work_seconds_bucket{le="0.5"}': "0+0x30",
        'work_seconds_bucket{le="+Inf"}': "0+100x30"},
        [{"expr": "fournines_slo:error_ratio:rate5m", "eval_time": "30m", "exp_samples": []},
         {"expr": "fournines_slo:error_ratio:period", "eval_time": "30m", "exp_samples": []}])
    assert_passes(result)


def test_queries_and_status_regexes_of_any_shape_make_valid_rules(tmp_path: Path) -> None:
    # A query starting on an indented line would set the YAML block's indentation for
    # the lines after it; a regex with a backslash must reach PromQL escaped.
    spec = parse_spec({"service": "shop", "slos": [
        {"name": "events", "objective": 99, "sli": {"events": {
            "error_query": "sum(rate(errors_total[{{.window}}]))",
            "total_query": "\n  sum(rate(requests_total[{{.window}}]))\n+ sum(rate(other_total"
                           "[{{.window}}]))\n"}}},
        {"name": "status", "objective": 99, "sli": {"availability": {
            "selector": 'job="shop"', "error_status": "5\\d\\d"}}}]})
    path = tmp_path / "rules.yml"
    path.write_text(generate_rules(spec))
    assert_passes(promtool("check", "rules", path))
