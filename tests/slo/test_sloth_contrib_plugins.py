"""Sloth's ``remove_labels/v1`` and ``error_budget_exhausted_alert/v1`` SLO plugins.

What each does is read from Sloth's source (internal/plugin/slo/contrib/remove_labels_v1
and error_budget_exhausted_alert_v1, commit 0e395d81513ff701f5d27b7aa47d794cb764fd5e);
Sloth ships no generated example using them, so the rules are checked here directly,
with promtool, and against Sloth's generated getting-started rules with the alert Sloth's
plugin adds to them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fournines.slo import (
    INFO_METRIC,
    SLOTH_PLUGINS,
    BudgetExhaustedAlert,
    SpecError,
    generate_rules,
    parse_spec,
)

from ._promtool import DATA, assert_passes, promtool
from .test_promtool_sloth import BAD, GOOD, _values

REMOVE = "sloth.dev/contrib/remove_labels/v1"
BUDGET = "sloth.dev/contrib/error_budget_exhausted_alert/v1"
SELECTOR = ('{fournines_service="myservice", fournines_slo="requests-availability", '
            'owner="myteam", repo="myorg/myservice", tier="2"}')
REMAINING = "fournines_slo:period_error_budget_remaining:ratio"


def _spec(*chain: dict[str, Any], **plugins: Any) -> dict[str, Any]:
    """Sloth's getting-started spec (labels owner, repo, tier) with an SLO plugin chain."""
    data: dict[str, Any] = yaml.safe_load((DATA / "sloth" / "getting-started.yml").read_text())
    data["slos"][0]["plugins"] = {"chain": list(chain), **plugins}
    return data


def _rules(data: dict[str, Any]) -> list[dict[str, Any]]:
    groups = yaml.safe_load(generate_rules(parse_spec(data)))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _budget_rules(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in _rules(data) if r.get("alert") not in (None, "MyServiceHighErrorRate",
                                                               "SLOMetricsAbsent")]


def _labels_of(data: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {r["record"]: r.get("labels", {}) for r in _rules(data) if "record" in r}


def _error(data: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="slo.yml")
    return info.value


def test_both_plugins_are_listed_as_supported() -> None:
    assert REMOVE in SLOTH_PLUGINS
    assert BUDGET in SLOTH_PLUGINS


# --- error_budget_exhausted_alert/v1 -----------------------------------------------------------


def test_budget_alert_with_no_config_is_sloths_default_rule() -> None:
    # Sloth: slo:period_error_budget_remaining:ratio{owner="myteam", repo="myorg/myservice",
    # sloth_id="myservice-requests-availability", sloth_service="myservice",
    # sloth_slo="requests-availability", tier="2"} <= 0, for 5m, no labels or annotations.
    [rule] = _budget_rules(_spec({"id": BUDGET}))
    assert rule == {"alert": "ErrorBudgetExhausted", "expr": f"{REMAINING}{SELECTOR} <= 0\n",
                    "for": "5m"}


def test_budget_alert_takes_sloths_config_fields() -> None:
    [rule] = _budget_rules(_spec({"id": BUDGET, "config": {
        "threshold": 0.05, "for": "90m", "alert_name": "ErrorBudgetLow",
        "alert_labels": {"severity": "info", "environment": "production"},
        "selector_labels": {"tier": "2"},
        "annotations": {"description": "Error budget low for SLO {{ $labels.fournines_slo }}"},
    }}))
    assert rule == {
        "alert": "ErrorBudgetLow",
        "expr": f"{REMAINING}{SELECTOR} <= 0.05\n",
        "for": "1h30m",  # written as Prometheus' model.Duration writes it, as Sloth does
        "labels": {"severity": "info", "environment": "production"},
        "annotations": {"description": "Error budget low for SLO {{ $labels.fournines_slo }}"},
    }


@pytest.mark.parametrize(("threshold", "text"), [
    (0, "0"), (0.25, "0.25"), (1, "1"), (0.0001, "0.0001"), (0.00001, "1e-05"),
    (-0.5, "-0.5"), (1234567, "1.234567e+06"), (100000, "100000"),
])
def test_budget_alert_threshold_is_written_as_go_writes_it(threshold: float, text: str) -> None:
    [rule] = _budget_rules(_spec({"id": BUDGET, "config": {"threshold": threshold}}))
    assert rule["expr"] == f"{REMAINING}{SELECTOR} <= {text}\n"


@pytest.mark.parametrize(("duration", "text"), [
    ("0s", "5m"), ("0", "5m"), ("60m", "1h"), ("24h", "1d"), ("7d", "1w"), ("8d", "8d"),
    ("14d", "2w"), ("365d", "1y"), ("90s", "1m30s"), ("1500ms", "1s500ms"),
])
def test_budget_alert_for_is_normalised_as_sloth_writes_it(duration: str, text: str) -> None:
    [rule] = _budget_rules(_spec({"id": BUDGET, "config": {"for": duration}}))
    assert rule["for"] == text


def test_budget_alert_label_values_are_quoted_as_go_quotes_them() -> None:
    data = _spec({"id": BUDGET})
    data["labels"] = {"owner": 'a "team"\\x', "note": "é\t"}
    [rule] = _budget_rules(data)
    assert ('{fournines_service="myservice", fournines_slo="requests-availability", '
            'note="é\\t", owner="a \\"team\\"\\\\x"}') in rule["expr"]


def test_two_budget_alerts_in_a_chain_make_two_rules_in_chain_order() -> None:
    rules = _budget_rules(_spec({"id": BUDGET, "config": {"alert_name": "A"}},
                                {"id": BUDGET, "priority": 5, "config": {"alert_name": "C"}},
                                {"id": BUDGET, "config": {"alert_name": "B"}}))
    assert [r["alert"] for r in rules] == ["A", "B", "C"]


def test_budget_alert_goes_to_the_alert_group_when_intervals_differ() -> None:
    data = _spec({"id": BUDGET}, {"id": "sloth.dev/contrib/rule_intervals/v1", "config": {
        "interval": {"default": "1m", "alert": "2m"}}})
    groups = yaml.safe_load(generate_rules(parse_spec(data)))["groups"]
    alerts = next(g for g in groups if g["name"].endswith("-alerts"))
    assert "ErrorBudgetExhausted" in [r.get("alert") for r in alerts["rules"]]


def test_spec_level_budget_alert_applies_to_every_slo() -> None:
    data = _spec()
    data["slo_plugins"] = {"chain": [{"id": BUDGET}]}
    assert parse_spec(data).slos[0].budget_alerts == (BudgetExhaustedAlert(),)


@pytest.mark.parametrize(("plugin", "path", "problem"), [
    ({"config": {"threshold": "0.05"}}, "config.threshold", "must be a number"),
    ({"config": {"threshold": True}}, "config.threshold", "must be a number"),
    ({"config": {"for": "soon"}}, "config.for", "Prometheus duration"),
    ({"config": {"for": 5}}, "config.for", "Prometheus duration"),
    ({"config": {"alert_name": 5}}, "config.alert_name", "must be a string"),
    ({"config": {"alert_labels": {"severity": 1}}}, "config.alert_labels.severity",
     "must be a string"),
    ({"config": {"annotations": {"summary": ["x"]}}}, "config.annotations.summary",
     "must be a string"),
    ({"config": {"alert_labels": {"__name__": "x"}}}, "config.alert_labels.__name__",
     "reserved"),
    ({"config": {"selector_labels": {"datacenter": "us-east"}}},
     "config.selector_labels.datacenter", "would never fire"),
    ({"config": {"selector_labels": {"tier": "1"}}}, "config.selector_labels.tier",
     "which has tier='2'"),
    ({"config": {"selector_labels": {"bad-name": "x"}}}, "config.selector_labels.bad-name",
     "must match"),
    ({"config": {"treshold": 0.1}}, "config.treshold", "unknown field"),
    ({"priority": -1}, "priority", "before Sloth's alert rules"),
])
def test_budget_alert_configs_that_cannot_work_are_refused_naming_plugin_and_field(
        plugin: dict[str, Any], path: str, problem: str) -> None:
    error = _error(_spec({"id": BUDGET, **plugin}))
    assert error.path == f"slos[0].plugins.chain[0].{path}"
    assert problem in error.problem
    if path != "priority" and "unknown field" not in problem:
        assert BUDGET in error.problem


def test_budget_alert_before_sloths_alert_rules_in_an_overriding_chain_is_refused() -> None:
    chain = [{"id": "sloth.dev/core/sli_rules/v1"}, {"id": "sloth.dev/core/metadata_rules/v1"},
             {"id": BUDGET}, {"id": "sloth.dev/core/alert_rules/v1"}]
    error = _error(_spec(*chain, overridePrevious=True))
    assert error.path == "slos[0].plugins.chain[2].priority"


def test_budget_alert_after_sloths_alert_rules_in_an_overriding_chain_is_read() -> None:
    chain = [{"id": "sloth.dev/core/sli_rules/v1"}, {"id": "sloth.dev/core/metadata_rules/v1"},
             {"id": "sloth.dev/core/alert_rules/v1"}, {"id": BUDGET}]
    assert len(parse_spec(_spec(*chain, overridePrevious=True)).slos[0].budget_alerts) == 1


def test_budget_alert_on_labels_remove_labels_drops_is_refused_naming_both_plugins() -> None:
    error = _error(_spec({"id": REMOVE}, {"id": BUDGET}))
    assert error.path == "slos[0].plugins.chain[1].config"
    assert BUDGET in error.problem
    assert REMOVE in error.problem
    assert "never fire" in error.problem


def test_budget_alert_with_remove_labels_keeping_its_series_labels_is_read() -> None:
    kept = _spec({"id": REMOVE, "config": {"preserveLabels": ["owner", "repo", "tier"]}},
                 {"id": BUDGET})
    skipped = _spec({"id": REMOVE, "config": {
        "skipMetrics": ["slo:period_error_budget_remaining:ratio"]}}, {"id": BUDGET})
    assert _budget_rules(kept) == _budget_rules(skipped) == _budget_rules(_spec({"id": BUDGET}))


# --- remove_labels/v1 ------------------------------------------------------------------------


def test_remove_labels_leaves_only_the_slo_identity_on_sli_and_meta_series() -> None:
    labels = _labels_of(_spec({"id": REMOVE}))
    identity = {"fournines_service": "myservice", "fournines_slo": "requests-availability"}
    for record, found in labels.items():
        if record != INFO_METRIC:
            assert found == identity, record
    assert labels[INFO_METRIC]["owner"] == "myteam"  # the info series keeps them all


def test_remove_labels_keeps_preserved_labels() -> None:
    labels = _labels_of(_spec({"id": REMOVE, "config": {"preserveLabels": ["tier", "nope"]}}))
    assert labels["fournines_slo:error_ratio:rate5m"] == {
        "fournines_service": "myservice", "fournines_slo": "requests-availability",
        "tier": "2"}


@pytest.mark.parametrize(("metric", "untouched"), [
    ("slo:objective:ratio", {"fournines_slo:objective:ratio"}),
    ("slo:time_period:days", {"fournines_slo:period:seconds"}),
    ("slo:sli_error:ratio_rate1h", {"fournines_slo:error_ratio:rate1h"}),
    ("slo:sli_error:ratio_rate30d", {"fournines_slo:error_ratio:period"}),
    # Sloth's period ratio sums its 5m ratio; fournines' sums these three.
    ("slo:sli_error:ratio_rate5m", {"fournines_slo:error_ratio:rate5m",
                                    "fournines_slo:errors:rate5m",
                                    "fournines_slo:requests:rate5m"}),
    ("fournines_slo:current_burn_rate:ratio", {"fournines_slo:current_burn_rate:ratio"}),
    ("no_such_metric", set()),  # names no series, in Sloth too: nothing to skip
])
def test_remove_labels_skips_the_series_sloths_metric_names_name(
        metric: str, untouched: set[str]) -> None:
    labels = _labels_of(_spec({"id": REMOVE, "config": {"skipMetrics": [metric]}}))
    kept = {record for record, found in labels.items()
            if "owner" in found and record != INFO_METRIC}
    assert kept == untouched


def test_remove_labels_leaves_alert_rules_alone_as_sloth_does() -> None:
    with_plugin = [r for r in _rules(_spec({"id": REMOVE})) if "alert" in r]
    without = [r for r in _rules(_spec()) if "alert" in r]
    assert with_plugin == without


def test_two_remove_labels_plugins_each_remove_what_they_do_not_keep() -> None:
    labels = _labels_of(_spec({"id": REMOVE, "config": {"preserveLabels": ["tier", "owner"]}},
                              {"id": REMOVE, "config": {"preserveLabels": ["tier"]}}))
    assert "owner" not in labels["fournines_slo:objective:ratio"]
    assert labels["fournines_slo:objective:ratio"]["tier"] == "2"


@pytest.mark.parametrize(("plugin", "path", "problem"), [
    ({"config": {"preserveLabels": "tier"}}, "config.preserveLabels", "must be a list"),
    ({"config": {"preserveLabels": [1]}}, "config.preserveLabels[0]", REMOVE),
    ({"config": {"skipMetrics": [""]}}, "config.skipMetrics[0]", "non-empty metric name"),
    ({"config": {"preserve_labels": ["tier"]}}, "config.preserve_labels", "unknown field"),
    ({"priority": -10}, "priority", "removes no label"),
])
def test_remove_labels_configs_that_cannot_work_are_refused(
        plugin: dict[str, Any], path: str, problem: str) -> None:
    error = _error(_spec({"id": REMOVE, **plugin}))
    assert error.path == f"slos[0].plugins.chain[0].{path}"
    assert problem in error.problem


# --- promtool --------------------------------------------------------------------------------


def _outage_suite(rule_files: list[str], alert: str, labels: dict[str, str]) -> str:
    # 60 minutes of total outage, then the same for a healthy service.
    outage = _values([(60, 1)])
    healthy = _values([(60, 0)])
    tests = []
    for (good, bad), firing in ((outage, True), (healthy, False)):
        tests.append({
            "interval": "1m",
            "input_series": [{"series": GOOD, "values": good}, {"series": BAD, "values": bad}],
            "alert_rule_test": [
                # The budget is spent from the first minute; `for: 5m` holds it back until 6m.
                {"eval_time": "3m", "alertname": alert, "exp_alerts": []},
                {"eval_time": "30m", "alertname": alert,
                 "exp_alerts": [{"exp_labels": labels}] if firing else []},
            ],
        })
    return json.dumps({"rule_files": rule_files, "evaluation_interval": "1m", "tests": tests})


def test_budget_alert_fires_on_a_total_outage_and_not_on_a_healthy_service(
        tmp_path: Path) -> None:
    data = _spec({"id": REMOVE, "config": {"preserveLabels": ["owner", "repo", "tier"]}},
                 {"id": BUDGET, "config": {"alert_labels": {"severity": "info"}}})
    (tmp_path / "rules.yml").write_text(generate_rules(parse_spec(data)))
    assert_passes(promtool("check", "rules", tmp_path / "rules.yml"))
    (tmp_path / "test.yml").write_text(_outage_suite(["rules.yml"], "ErrorBudgetExhausted", {
        "severity": "info", "fournines_service": "myservice",
        "fournines_slo": "requests-availability", "owner": "myteam", "repo": "myorg/myservice",
        "tier": "2"}))
    assert_passes(promtool("test", "rules", "test.yml", cwd=tmp_path))


def test_series_without_removed_labels_are_valid_rules_for_several_slos(tmp_path: Path) -> None:
    data = _spec({"id": REMOVE}, {"id": BUDGET, "config": {"selector_labels": {}}})
    data["slo_plugins"] = data["slos"][0].pop("plugins")
    data["labels"] = {}
    second = {**data["slos"][0], "name": "requests-availability-2"}
    data["slos"].append(second)
    (tmp_path / "rules.yml").write_text(generate_rules(parse_spec(data)))
    assert_passes(promtool("check", "rules", tmp_path / "rules.yml"))


def _compare_with_sloth(tmp_path: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    # Sloth's generated getting-started rules, plus the alert its plugin would add (written
    # from the plugin's source: the selector is the SLO's identity and labels). Both rule
    # sets run in one promtool test; the alerts must fire at the same minutes.
    sloth = yaml.safe_load((DATA / "sloth" / "getting-started.rules.yml").read_text())
    sloth_alert = {
        "alert": "SlothBudget",
        "expr": 'slo:period_error_budget_remaining:ratio{owner="myteam", '
                'repo="myorg/myservice", sloth_id="myservice-requests-availability", '
                'sloth_service="myservice", sloth_slo="requests-availability", tier="2"} '
                "<= 0.5",
        "for": "5m"}
    next(g for g in sloth["groups"] if "alerts" in g["name"])["rules"].append(sloth_alert)
    (tmp_path / "sloth.rules.yml").write_text(yaml.safe_dump(sloth))
    data = _spec({"id": BUDGET, "config": {"threshold": 0.5, "alert_name": "OurBudget",
                                           **config}})
    (tmp_path / "fournines.rules.yml").write_text(generate_rules(parse_spec(data)))
    tests = []
    firing = {name: f'(count(ALERTS{{alertname="{name}", alertstate="firing"}}) or vector(0))'
              for name in ("SlothBudget", "OurBudget")}
    # A healthy service, a total outage that ends, a steady 1.2x burn (above the half-budget
    # line from the start, as only those minutes are in the period yet).
    for segments, fires in (([(200, 0.0)], 0), ([(30, 0), (60, 1), (30, 0)], 1),
                            ([(240, 0.0012)], 1)):
        good, bad = _values(segments)
        end = sum(m for m, _ in segments)
        sloth_on, ours_on = firing["SlothBudget"], firing["OurBudget"]
        differ = f"sum_over_time(({sloth_on} != bool {ours_on})[{end}m:1m])"
        fired = f"max_over_time({firing['SlothBudget']}[{end}m:1m])"
        tests.append({
            "interval": "1m",
            "input_series": [{"series": GOOD, "values": good}, {"series": BAD, "values": bad}],
            "promql_expr_test": [
                {"expr": differ, "eval_time": f"{end}m", "exp_samples": [{"value": 0}]},
                {"expr": fired, "eval_time": f"{end}m", "exp_samples": [{"value": fires}]},
            ],
        })
    (tmp_path / "compare.test.yml").write_text(json.dumps({
        "rule_files": ["sloth.rules.yml", "fournines.rules.yml"], "evaluation_interval": "1m",
        "group_eval_order": [g["name"] for g in sloth["groups"]]
        + ["fournines-slo-myservice-requests-availability"],
        "tests": tests}))
    return promtool("test", "rules", "compare.test.yml", cwd=tmp_path)


def test_budget_alert_fires_at_the_minutes_sloths_plugin_alert_does(tmp_path: Path) -> None:
    assert_passes(_compare_with_sloth(tmp_path, {}))


def test_the_comparison_with_sloth_notices_a_differing_for(tmp_path: Path) -> None:
    assert _compare_with_sloth(tmp_path, {"for": "10m"}).returncode == 1


@pytest.mark.parametrize("fields", [{"name": ""}, {"threshold": float("nan")},
                                    {"threshold": True}, {"for_": "soon"}, {"for_": 5}])
def test_budget_alert_config_built_in_code_is_validated(fields: dict[str, Any]) -> None:
    with pytest.raises(SpecError) as info:
        BudgetExhaustedAlert(**fields)
    assert "BudgetExhaustedAlert." in str(info.value)
