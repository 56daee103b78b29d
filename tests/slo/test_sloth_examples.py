"""Sloth specs exactly as Sloth users write them: Sloth's own examples, and its generated rules.

The files under tests/slo/sloth_examples/ are copied unchanged from Sloth (see the README
there). Each spec is read, and the rules fournines generates from it are compared with
the rules Sloth generated from it (``_gen/``): alert rule by alert rule (names, labels,
annotations), group intervals, info-series labels, and in promtool, minute by minute,
the page and ticket alert states over the scenarios of test_promtool_sloth.py.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fournines.slo import (
    INFO_METRIC,
    SLOSpec,
    SpecError,
    generate_rules,
    load_spec,
    load_specs,
    parse_spec,
    parse_specs,
)
from fournines.slo.rules import alert_rule_labels

from ._promtool import DATA, assert_passes, promtool
from .test_promtool_sloth import BAD, GOOD, SCENARIOS, _values

EXAMPLES = Path(__file__).parent / "sloth_examples"
GEN = EXAMPLES / "_gen"
COMPARED = ["no-alerts", "contrib-slo-plugins", "k8s-getting-started", "multifile",
            "k8s-multifile", "slo-plugin-getting-started"]
_LEGACY_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Annotations Sloth writes on every alert unless the spec overrides them.
_SLOTH_DEFAULT_ANNOTATIONS = ("title",)


def _sloth_groups(name: str) -> list[dict[str, Any]]:
    """Sloth's rule groups for an example: its plain rule file, or its PrometheusRules' groups."""
    groups: list[dict[str, Any]] = []
    for document in yaml.safe_load_all((GEN / f"{name}.yml").read_text()):
        if document is None:
            continue
        groups += document["spec"]["groups"] if "spec" in document else document["groups"]
    return groups


def _our_groups(specs: tuple[SLOSpec, ...]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(generate_rules(specs))["groups"]
    return groups


def _sloth_spec(**alerting: Any) -> dict[str, Any]:
    """Sloth's getting-started spec (tests/slo/data/sloth), with ``alerting`` replaced."""
    data: dict[str, Any] = yaml.safe_load((DATA / "sloth" / "getting-started.yml").read_text())
    data["slos"][0]["alerting"] = alerting
    return data


def _with_plugins(*chain: dict[str, Any], **plugins: Any) -> dict[str, Any]:
    data = _sloth_spec(name="MyServiceHighErrorRate")
    data["slos"][0]["plugins"] = {"chain": list(chain), **plugins}
    return data


def _alerts(specs: SLOSpec | tuple[SLOSpec, ...]) -> list[dict[str, Any]]:
    groups = yaml.safe_load(generate_rules(specs))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


# --- 1. both alerts disabled, no alerting.name ------------------------------------------------


def test_no_alerts_example_is_read_although_it_names_no_alert() -> None:
    (slo,) = load_spec(EXAMPLES / "no-alerts.yml").slos
    assert not slo.alerting.page
    assert not slo.alerting.ticket


def test_no_alerts_example_generates_no_alert_rules_as_sloth_does() -> None:
    sloth = [r for g in _sloth_groups("no-alerts") for r in g["rules"] if "alert" in r]
    assert sloth == []
    assert _alerts(load_spec(EXAMPLES / "no-alerts.yml")) == []


def test_an_enabled_alert_still_needs_a_name_as_in_sloth() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_sloth_spec(ticket_alert={"disable": True}))
    assert info.value.path == "slos[0].alerting.name"
    assert info.value.problem == "is required"


# --- 2. SLO plugins ---------------------------------------------------------------------------


def test_info_labels_plugin_puts_its_labels_on_the_info_series_as_sloth_does() -> None:
    slo_name = "requests-availability-contrib-plugin-info-labels-v1"
    (sloth_info,) = [r for g in _sloth_groups("contrib-slo-plugins") for r in g["rules"]
                     if r.get("record") == "sloth_slo_info"
                     and r["labels"]["sloth_slo"] == slo_name]
    plugin_labels = {k: v for k, v in sloth_info["labels"].items() if k.startswith("plug-")}
    assert plugin_labels == {"plug-l1": "in-k1", "plug-l2": "in-k2", "plug-l3": "in-k3"}
    spec = load_spec(EXAMPLES / "contrib-slo-plugins.yml")
    rules = [r for g in _our_groups((spec,)) for r in g["rules"]]
    (ours,) = [r for r in rules
               if r.get("record") == INFO_METRIC and r["labels"]["fournines_slo"] == slo_name]
    assert plugin_labels.items() <= ours["labels"].items()
    # Only the info series carries them, as in Sloth.
    others = [r for r in rules if r is not ours]
    assert not any("plug-l1" in r.get("labels", {}) for r in others)


def test_rule_intervals_plugin_sets_the_intervals_sloth_sets() -> None:
    def intervals(groups: list[dict[str, Any]], slo: str) -> set[str | None]:
        return {g.get("interval") for g in groups if g["name"].endswith(slo)}

    spec = load_spec(EXAMPLES / "contrib-slo-plugins.yml")
    slo = "requests-availability-contrib-plugin-rule-intervals-v1"
    assert intervals(_sloth_groups("contrib-slo-plugins"), slo) == {"5m"}
    assert intervals(_our_groups((spec,)), slo) == {"5m"}
    other = "requests-availability-contrib-plugin-info-labels-v1"
    assert intervals(_our_groups((spec,)), other) == {None}


def test_rule_intervals_that_differ_split_the_rules_into_three_groups() -> None:
    spec = parse_spec(_with_plugins({"id": "sloth.dev/contrib/rule_intervals/v1", "config": {
        "interval": {"default": "1m", "sliError": "42s", "alert": "11s"}}}))
    groups = {g["name"].rsplit("-", 1)[1]: g for g in _our_groups((spec,))}
    assert {k: g["interval"] for k, g in groups.items()} == {
        "sli": "42s", "meta": "1m", "alerts": "11s"}
    assert all("alert" in r for r in groups["alerts"]["rules"])
    assert not any("alert" in r for r in groups["sli"]["rules"] + groups["meta"]["rules"])


def test_spec_level_slo_plugins_apply_to_every_slo() -> None:
    data = _sloth_spec(name="X")
    data["slo_plugins"] = {"chain": [{"id": "sloth.dev/contrib/info_labels/v1",
                                      "config": {"labels": {"team": "a"}}}]}
    (slo,) = parse_spec(data).slos
    assert dict(slo.info_labels) == {"team": "a"}


def test_debug_plugins_of_sloths_example_change_nothing() -> None:
    with_debug = load_spec(EXAMPLES / "slo-plugin-getting-started.yml")
    plain = load_spec(DATA / "sloth" / "getting-started.yml")
    assert with_debug.slos == plain.slos


@pytest.mark.parametrize("plugin", [
    "sloth.dev/contrib/denominator_corrected_rules/v1",
    "sloth.dev/contrib/validate_victoria_metrics/v1",
    "example.com/my/plugin/v1",
])
def test_an_slo_plugin_fournines_does_not_implement_is_refused_by_name(plugin: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_with_plugins({"id": plugin}), source="slo.yml")
    assert info.value.path == "slos[0].plugins.chain[0].id"
    assert plugin in info.value.problem
    assert "not supported" in info.value.problem


def test_cli_refuses_an_unsupported_plugin_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "slo.yml"
    path.write_text(json.dumps(_with_plugins(
        {"id": "sloth.dev/contrib/denominator_corrected_rules/v1"})))
    result = subprocess.run([sys.executable, "-m", "fournines", "slo", "rules", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "sloth.dev/contrib/denominator_corrected_rules/v1" in result.stderr
    assert result.stdout == ""


def test_overriding_sloths_default_plugins_without_putting_them_back_is_refused() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_with_plugins({"id": "sloth.dev/core/sli_rules/v1"}, overridePrevious=True))
    assert info.value.path == "slos[0].plugins.overridePrevious"
    assert "sloth.dev/core/alert_rules/v1" in info.value.problem


def test_overriding_with_the_defaults_put_back_is_read() -> None:
    chain = [{"id": p} for p in ("sloth.dev/core/sli_rules/v1",
                                 "sloth.dev/core/metadata_rules/v1",
                                 "sloth.dev/core/alert_rules/v1")]
    assert parse_spec(_with_plugins(*chain, overridePrevious=True)).slos[0].alerting.page


@pytest.mark.parametrize(("plugin", "path", "problem"), [
    ({"id": "sloth.dev/contrib/info_labels/v1", "config": {"labels": {}}},
     "slos[0].plugins.chain[0].config.labels", "at least one label"),
    ({"id": "sloth.dev/contrib/info_labels/v1", "config": {"labels": {"a": "b"},
                                                          "metricName": "my_info"}},
     "slos[0].plugins.chain[0].config.metricName", "no rule records 'my_info'"),
    ({"id": "sloth.dev/contrib/info_labels/v1", "priority": -1,
      "config": {"labels": {"a": "b"}}},
     "slos[0].plugins.chain[0].priority", "before Sloth's metadata rules"),
    ({"id": "sloth.dev/contrib/info_labels/v1", "config": {"labels": {"fournines_slo": "b"}}},
     "slos[0].plugins.chain[0].config.labels", "one of fournines' own labels"),
    ({"id": "sloth.dev/contrib/rule_intervals/v1", "config": {"interval": {"alert": "1m"}}},
     "slos[0].plugins.chain[0].config.interval.default", "is required"),
    ({"id": "sloth.dev/contrib/rule_intervals/v1", "config": {"interval": {"default": "0s"}}},
     "slos[0].plugins.chain[0].config.interval.default", "above 0"),
    ({"id": "sloth.dev/contrib/rule_intervals/v1", "config": {"interval": {"default": "soon"}}},
     "slos[0].plugins.chain[0].config.interval.default", "Prometheus duration"),
])
def test_plugin_configs_sloth_would_refuse_or_ignore_are_refused(
        plugin: dict[str, Any], path: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_with_plugins(plugin))
    assert info.value.path == path
    assert problem in info.value.problem


# --- 3. page_alert / ticket_alert annotations and labels ---------------------------------------


def test_tier_annotations_and_labels_go_on_that_tiers_alert() -> None:
    spec = parse_spec(_sloth_spec(
        name="MyServiceHighErrorRate", labels={"category": "availability"},
        annotations={"summary": "common", "runbook": "https://runbooks/x"},
        page_alert={"labels": {"severity": "pageteam"},
                    "annotations": {"summary": "paging", "dashboard": "d1"}},
        ticket_alert={"labels": {"severity": "slack"}, "annotations": {"queue": "q"}}))
    page, ticket = (a for a in _alerts(spec) if a["alert"] == "MyServiceHighErrorRate")
    assert page["labels"]["severity"] == "pageteam"
    assert page["annotations"] == {"summary": "paging", "runbook": "https://runbooks/x",
                                   "dashboard": "d1"}
    assert ticket["labels"]["severity"] == "slack"
    assert ticket["annotations"] == {"summary": "common", "runbook": "https://runbooks/x",
                                     "queue": "q"}


@pytest.mark.parametrize("name", ["k8s-getting-started", "multifile", "contrib-slo-plugins"])
def test_alert_rules_carry_the_labels_and_annotations_sloth_gives_them(name: str) -> None:
    ours: dict[tuple[str, str], dict[str, Any]] = {}
    for spec in load_specs(EXAMPLES / f"{name}.yml"):
        for slo in spec.slos:
            for tier in ("page", "ticket"):
                labels = alert_rule_labels(spec, slo, tier)
                (rule,) = [a for a in _alerts(spec) if a["labels"] == labels]
                ours[spec.service + "/" + slo.name, tier] = rule
    compared = 0
    for group in _sloth_groups(name):
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            # Sloth's alert groups are named sloth-slo-alerts-SERVICE-SLO.
            (key,) = [k for k in ours if group["name"] == "sloth-slo-alerts-" + k[0].replace(
                "/", "-", 1) and k[1] == rule["labels"]["sloth_severity"]]
            mine = ours[key]
            assert mine["alert"] == rule["alert"]
            sloth_labels = {k: v for k, v in rule["labels"].items() if k != "sloth_severity"}
            assert sloth_labels.items() <= mine["labels"].items()
            annotations = {k: v for k, v in rule["annotations"].items()
                           if k not in _SLOTH_DEFAULT_ANNOTATIONS}
            assert annotations.items() <= mine["annotations"].items()
            compared += 1
    assert compared == len(ours)


# --- 4. alert names are label values -----------------------------------------------------------


@pytest.mark.parametrize("name", ["my-service-high-error-rate", "checkout.errors", "Checkout: 5xx"])
def test_an_alert_name_sloth_accepts_is_accepted_and_promtool_valid(
        name: str, tmp_path: Path) -> None:
    spec = parse_spec(_sloth_spec(name=name))
    assert spec.slos[0].alerting.name == name
    assert {a["alert"] for a in _alerts(spec)} == {name, "SLOMetricsAbsent"}
    (tmp_path / "rules.yml").write_text(generate_rules(spec))
    assert_passes(promtool("check", "rules", tmp_path / "rules.yml"))


def test_a_fournines_spec_takes_an_alert_name_with_a_dash() -> None:
    spec = parse_spec({"service": "api", "slos": [{
        "name": "a", "objective": 99.9, "sli": {"availability": {}},
        "alerting": {"name": "api-error-budget-burn"}}]})
    assert spec.slos[0].alerting.name == "api-error-budget-burn"


# --- 5. Kubernetes resources and multi-document files ------------------------------------------


def test_kubernetes_resource_reads_like_the_prometheus_v1_spec() -> None:
    k8s = load_spec(EXAMPLES / "k8s-getting-started.yml")
    plain = load_spec(DATA / "sloth" / "getting-started.yml")
    assert (k8s.service, k8s.labels, k8s.slos) == (plain.service, plain.labels, plain.slos)


def test_multi_document_file_gives_one_spec_per_document() -> None:
    specs = load_specs(EXAMPLES / "multifile.yml")
    assert [(s.service, s.slos[0].objective) for s in specs] == [
        ("myservice", 99.9), ("myservice2", 99.99)]


def test_kubernetes_multi_document_file_reads_like_the_prometheus_v1_one() -> None:
    k8s = load_specs(EXAMPLES / "k8s-multifile.yml")
    plain = load_specs(EXAMPLES / "multifile.yml")
    assert [(s.service, s.labels, s.slos) for s in k8s] == [
        (s.service, s.labels, s.slos) for s in plain]


def test_load_spec_of_a_multi_document_file_points_to_load_specs() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(EXAMPLES / "multifile.yml")
    assert "myservice, myservice2" in info.value.problem
    assert "load_specs()" in info.value.problem


def test_cli_generates_the_rules_of_every_document(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "fournines", "slo", "rules",
                             str(EXAMPLES / "k8s-multifile.yml"), "-o", str(tmp_path / "r.yml"),
                             "--tests", str(tmp_path / "r.test.yml")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    names = [g["name"] for g in yaml.safe_load((tmp_path / "r.yml").read_text())["groups"]]
    assert names == ["fournines-slo-myservice-requests-availability",
                     "fournines-slo-myservice2-requests-availability"]
    assert_passes(promtool("test", "rules", "r.test.yml", cwd=tmp_path))


def test_the_same_slo_in_two_documents_is_refused() -> None:
    document = _sloth_spec(name="X")
    with pytest.raises(SpecError) as info:
        parse_specs([document, copy.deepcopy(document)])
    assert info.value.path == "documents[1]"
    assert "already in documents[0]" in info.value.problem


def test_a_kubernetes_resource_of_another_api_version_is_refused() -> None:
    document = yaml.safe_load((EXAMPLES / "k8s-getting-started.yml").read_text())
    document["apiVersion"] = "sloth.slok.dev/v2"
    with pytest.raises(SpecError) as info:
        parse_spec(document)
    assert info.value.path == "apiVersion"


def test_a_misspelt_sloth_field_is_refused_not_ignored() -> None:
    data = _sloth_spec(name="X", ticket_alrt={"disable": True})
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert info.value.path == "slos[0].alerting.ticket_alrt"


# --- every example, minute by minute in promtool ------------------------------------------------


def _promtool_safe(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # promtool 2.42 refuses UTF-8 label names (Sloth's own output of its info_labels
    # example has `plug-l1`): those info rules are compared above instead.
    out = []
    for group in groups:
        rules = [r for r in group["rules"]
                 if all(_LEGACY_NAME.match(k) for k in r.get("labels", {}))]
        out.append({**group, "rules": rules})
    return out


def _alert_selectors(specs: tuple[SLOSpec, ...]) -> list[tuple[str, str, bool]]:
    """(Sloth's selector, ours, whether the tier is on) per SLO and tier."""
    out = []
    for spec in specs:
        for slo in spec.slos:
            for tier in ("page", "ticket"):
                on = slo.alerting.page if tier == "page" else slo.alerting.ticket
                name = json.dumps(slo.alerting.name)
                sloth = (f'ALERTS{{alertname={name}, alertstate="firing", sloth_service='
                         f'{json.dumps(spec.service)}, sloth_slo={json.dumps(slo.name)}, '
                         f'sloth_severity="{tier}"}}')
                labels = {**alert_rule_labels(spec, slo, tier), "alertname": slo.alerting.name,
                          "alertstate": "firing"}
                ours = "ALERTS{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(
                    labels.items())) + "}"
                out.append((sloth, ours, on))
    return out


@pytest.mark.parametrize("name", COMPARED)
def test_alerts_fire_at_the_same_minutes_as_sloths(name: str, tmp_path: Path) -> None:
    specs = load_specs(EXAMPLES / f"{name}.yml")
    sloth_groups = _promtool_safe(_sloth_groups(name))
    our_groups = _promtool_safe(_our_groups(specs))
    (tmp_path / "sloth.rules.yml").write_text(yaml.safe_dump({"groups": sloth_groups}))
    (tmp_path / "fournines.rules.yml").write_text(yaml.safe_dump({"groups": our_groups}))
    tests = []
    for scenario, (segments, _) in SCENARIOS.items():
        end = sum(m for m, _ in segments)
        good, bad = _values(segments)
        checks = []
        for sloth, ours, on in _alert_selectors(specs):
            differ = (f"sum_over_time(((count({sloth}) or vector(0)) != bool "
                      f"(count({ours}) or vector(0)))[{end}m:1m])")
            checks.append({"expr": differ, "eval_time": f"{end}m",
                           "exp_samples": [{"labels": "{}", "value": 0}]})
            if scenario == "total outage":  # not two silent rule sets
                fired = f"sum_over_time((count({sloth}) or vector(0))[{end}m:1m]) > bool 0"
                checks.append({"expr": fired, "eval_time": f"{end}m",
                               "exp_samples": [{"labels": "{}", "value": int(on)}]})
        tests.append({"name": scenario, "interval": "1m",
                      "input_series": [{"series": GOOD, "values": good},
                                       {"series": BAD, "values": bad}],
                      "promql_expr_test": checks})
    order = [g["name"] for g in sloth_groups + our_groups]
    (tmp_path / "compare.test.yml").write_text(json.dumps({
        "rule_files": ["sloth.rules.yml", "fournines.rules.yml"], "evaluation_interval": "1m",
        "group_eval_order": order, "tests": tests}, indent=1))
    assert_passes(promtool("check", "rules", tmp_path / "sloth.rules.yml",
                           tmp_path / "fournines.rules.yml"))
    assert_passes(promtool("test", "rules", "compare.test.yml", cwd=tmp_path))
