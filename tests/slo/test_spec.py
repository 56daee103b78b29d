"""Reading SLO specs: fournines' format, Sloth prometheus/v1, OpenSLO v1, and their errors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from fournines._errors import ConfigurationError
from fournines.asgi.metrics import REQUEST_DURATION, REQUESTS_TOTAL
from fournines.slo import (
    SLO,
    EventsSLI,
    LatencySLI,
    SpecError,
    error_ratio_query,
    load_spec,
    parse_spec,
    parse_specs,
)

from ._promtool import DATA, EXAMPLES


def _spec(**slo: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "availability", "objective": 99.9,
                            "sli": {"availability": {"selector": 'job="api"'}}}
    return {"service": "api", "slos": [{**base, **slo}]}


def _error(data: object, source: str | None = "slo.yml") -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source=source)
    return info.value


def test_fournines_spec_reads_service_labels_and_slos() -> None:
    spec = load_spec(EXAMPLES / "payment.yml")
    assert spec.service == "payment"
    assert dict(spec.labels) == {"team": "payments"}
    assert [s.name for s in spec.slos] == ["availability", "latency", "checkout"]
    assert [s.period for s in spec.slos] == ["30d", "7d", "28d"]
    assert spec.source == str(EXAMPLES / "payment.yml")


def test_period_defaults_to_30_days() -> None:
    slo = parse_spec(_spec()).slos[0]
    assert slo.period == "30d"
    assert slo.period_seconds == 30 * 86400


def test_error_budget_is_exact() -> None:
    slo = parse_spec(_spec(objective=99.99)).slos[0]
    assert slo.error_budget_ratio == Decimal("0.0001")
    assert slo.error_budget == 0.0001
    assert parse_spec(_spec(objective=99.9)).slos[0].error_budget == 0.001


def test_availability_sli_uses_the_middleware_request_counter() -> None:
    sli = parse_spec(_spec()).slos[0].sli
    assert isinstance(sli, EventsSLI)
    assert sli.total_query == f'sum(rate({REQUESTS_TOTAL}{{job="api"}}[{{{{.window}}}}]))'
    assert sli.error_query == (
        f'sum(rate({REQUESTS_TOTAL}{{job="api",status=~"5.."}}[{{{{.window}}}}]))')


def test_latency_sli_reads_a_threshold_in_milliseconds_or_seconds() -> None:
    for threshold in ("300ms", 0.3):
        sli = parse_spec(_spec(sli={"latency": {"threshold": threshold}})).slos[0].sli
        assert sli == LatencySLI(histogram=REQUEST_DURATION, threshold=0.3)
        assert sli.le == "0.3"
    assert LatencySLI(threshold=1).le == "1.0"  # as prometheus_client writes bucket bounds


def test_error_ratio_query_divides_bad_by_all_events_and_never_by_zero() -> None:
    slo = parse_spec(_spec()).slos[0]
    query = error_ratio_query(slo, "1h")
    assert "{{.window}}" not in query
    assert f'{REQUESTS_TOTAL}{{job="api",status=~"5.."}}[1h]' in query
    assert query.endswith(f'((sum(rate({REQUESTS_TOTAL}{{job="api"}}[1h]))) > 0)')


def test_latency_error_ratio_counts_requests_above_the_threshold_bucket() -> None:
    slo = SLO(name="fast", objective=99, sli=LatencySLI(threshold=0.25, selector='job="a"'))
    query = error_ratio_query(slo, "5m")
    assert f'{REQUEST_DURATION}_bucket{{job="a",le="0.25"}}[5m]' in query
    assert f'{REQUEST_DURATION}_count{{job="a"}}[5m]' in query


def test_sloth_spec_reads_events_and_alert_labels() -> None:
    spec = load_spec(DATA / "sloth" / "getting-started.yml")
    assert spec.service == "myservice"
    assert dict(spec.labels) == {"owner": "myteam", "repo": "myorg/myservice", "tier": "2"}
    (slo,) = spec.slos
    assert slo.name == "requests-availability"
    assert slo.objective == 99.9
    assert isinstance(slo.sli, EventsSLI)
    assert 'code=~"(5..|429)"' in slo.sli.error_query
    assert slo.alerting.name == "MyServiceHighErrorRate"
    assert dict(slo.alerting.page_labels) == {"severity": "pageteam", "routing_key": "myteam"}
    assert dict(slo.alerting.ticket_labels)["slack_channel"] == "#alerts-myteam"


def test_sloth_disabled_ticket_alert_turns_the_tier_off() -> None:
    data = {"version": "prometheus/v1", "service": "s", "slos": [{
        "name": "x", "objective": 99,
        "sli": {"events": {"error_query": "sum(rate(e[{{.window}}]))",
                           "total_query": "sum(rate(t[{{.window}}]))"}},
        "alerting": {"name": "X", "ticket_alert": {"disable": True}}}]}
    alerting = parse_spec(data).slos[0].alerting
    assert alerting.page and not alerting.ticket


def test_sloth_raw_sli_is_refused_with_the_reason() -> None:
    data = {"version": "prometheus/v1", "service": "s", "slos": [{
        "name": "x", "objective": 99, "sli": {"raw": {"error_ratio_query": "x"}}}]}
    error = _error(data)
    assert error.path == "slos[0].sli.raw"
    assert "weighted by traffic" in error.problem


def test_openslo_good_total_ratio_with_a_referenced_sli() -> None:
    spec = load_spec(EXAMPLES / "openslo.yml")
    (slo,) = spec.slos
    assert (spec.service, slo.name, slo.objective, slo.period) == (
        "profile", "profile-availability", 99.9, "28d")
    assert isinstance(slo.sli, EventsSLI)
    total = 'sum(rate(http_requests_total{job="profile"}[{{.window}}]))'
    assert slo.sli.total_query == total
    good = 'sum(rate(http_requests_total{job="profile",status!~"5.."}[{{.window}}]))'
    # A missing good series is no good events (all bad), never "total - nothing" = no data.
    assert slo.sli.error_query == f"({total}) - (({good}) or 0 * ({total}))"


def test_openslo_bad_total_ratio_inline_with_a_weekly_window() -> None:
    spec = load_spec(DATA / "specs" / "openslo-bad-ratio.yml")
    (slo,) = spec.slos
    assert (slo.objective, slo.period) == (99.5, "7d")
    assert isinstance(slo.sli, EventsSLI)
    assert slo.sli.error_query == (
        'sum(rate(search_requests_total{outcome="error"}[{{.window}}]))')


def test_openslo_missing_sli_reference_names_the_document() -> None:
    data = [{"apiVersion": "openslo/v1", "kind": "SLO", "metadata": {"name": "a"},
             "spec": {"service": "s", "indicatorRef": "nope",
                      "objectives": [{"target": 0.99}]}}]
    error = _error(data)
    assert error.path == "documents[0].spec.indicatorRef"
    assert "no SLI document named 'nope'" in error.problem


def test_error_names_file_path_and_problem() -> None:
    data = {"service": "api", "slos": [
        _spec()["slos"][0], {**_spec()["slos"][0], "name": "b", "objective": 100}]}
    error = _error(data)
    assert (error.file, error.path) == ("slo.yml", "slos[1].objective")
    assert str(error) == (
        "slo.yml: slos[1].objective: must be a percentage > 0 and < 100 (got 100.0)")
    assert isinstance(error, ConfigurationError)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(("slo", "path", "problem"), [
    ({"period": "90d"}, "slos[0].period", "must be one of 30d, 28d, 7d"),
    ({"objective": "high"}, "slos[0].objective", "must be a number"),
    ({"objective": None}, "slos[0].objective", "is required"),
    ({"sli": {}}, "slos[0].sli", "needs exactly one of events, availability, latency"),
    ({"sli": {"events": {"error_query": "sum(rate(e[5m]))", "total_query": "t"}}},
     "slos[0].sli.events.error_query", "must contain {{.window}}"),
    ({"sli": {"latency": {"threshold": "fast"}}}, "slos[0].sli.latency.threshold",
     "must be seconds or a duration"),
    ({"alerting": {"page": "yes"}}, "slos[0].alerting.page", "must be true or false"),
    ({"alerting": {"min_events": -1}}, "slos[0].alerting.min_events", "must be >= 0"),
    ({"labels": {"bad-name": "x"}}, "slos[0].labels.bad-name", "label name must match"),
    ({"colour": "red"}, "slos[0].colour", "unknown field"),
])
def test_invalid_fields_are_named(slo: dict[str, Any], path: str, problem: str) -> None:
    error = _error(_spec(**slo))
    assert error.path == path
    assert problem in error.problem


def test_duplicate_slo_names_are_refused() -> None:
    data = _spec()
    data["slos"].append(dict(data["slos"][0]))
    assert _error(data).path == "slos[1].name"


def test_unreadable_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"missing\.yml: cannot read"):
        load_spec(tmp_path / "missing.yml")
    broken = tmp_path / "broken.yml"
    broken.write_text("service: [unclosed\n")
    with pytest.raises(SpecError) as info:
        load_spec(broken)
    assert info.value.file == str(broken)
    assert "not valid YAML" in info.value.problem


def test_several_documents_that_are_neither_sloth_nor_openslo_are_refused() -> None:
    with pytest.raises(SpecError) as info:
        parse_specs([_spec(), _spec()], source="slo.yml")
    assert info.value.path == "documents[0]"
    assert "only Sloth and OpenSLO files may hold more than one document" in info.value.problem


def test_latency_threshold_between_the_default_buckets_is_refused() -> None:
    error = _error(_spec(sli={"latency": {"threshold": "200ms"}}))
    assert error.path == "slos[0].sli.latency.threshold"
    assert "not a bucket bound" in error.problem


def test_latency_threshold_of_a_named_histogram_is_not_checked_against_the_defaults() -> None:
    sli = parse_spec(_spec(sli={"latency": {"histogram": "rpc_seconds", "threshold": "200ms"}}))
    assert sli.slos[0].sli == LatencySLI(histogram="rpc_seconds", threshold=0.2)


HUGE = 10**400  # YAML reads 400 digits as an int no float can hold


@pytest.mark.parametrize(("slo", "path"), [
    ({"objective": HUGE}, "slos[0].objective"),
    ({"sli": {"latency": {"histogram": "rpc_seconds", "threshold": HUGE}}},
     "slos[0].sli.latency.threshold"),
    ({"alerting": {"min_events": HUGE}}, "slos[0].alerting.min_events"),
    ({"sli": {"latency": {"histogram": "rpc_seconds", "threshold": "9" * 400 + "s"}}},
     "slos[0].sli.latency.threshold"),
    ({"sli": {"latency": {"histogram": "rpc_seconds", "threshold": "9" * 5000 + "s"}}},
     "slos[0].sli.latency.threshold"),
    ({"alerting": {"absent_after": "9" * 5000 + "m"}}, "slos[0].alerting.absent_after"),
    ({"labels": {"team": 10**5000}}, "slos[0].labels.team"),
])
def test_numbers_too_large_for_a_float_are_a_spec_error(slo: dict[str, Any], path: str) -> None:
    assert _error(_spec(**slo)).path == path


def test_openslo_target_too_large_for_a_float_is_a_spec_error() -> None:
    data = yaml.safe_load((EXAMPLES / "openslo.yml").read_text().split("---")[1])
    sli = yaml.safe_load((EXAMPLES / "openslo.yml").read_text().split("---")[0])
    data["spec"]["objectives"] = [{"target": HUGE}]
    with pytest.raises(SpecError) as info:
        parse_spec([sli, data])
    assert info.value.path == "documents[1].spec.objectives[0].target"


@pytest.mark.parametrize("objective", [99.99999999999999, 99.9999999999999])
def test_objective_whose_budget_rounds_to_nothing_is_refused(objective: float) -> None:
    # An error budget below 1e-12 cannot be told from zero: every burn rate would divide by it.
    error = _error(_spec(objective=objective))
    assert error.path == "slos[0].objective"
    assert "error budget" in error.problem


def test_a_file_that_is_not_utf8_is_a_spec_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yml"
    path.write_bytes("service: caf\xe9\nslos: []\n".encode("latin-1"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.file == str(path)
    assert "UTF-8" in info.value.problem


@pytest.mark.parametrize("after", ["99999999999999999999d", "31d", "5w"])
def test_absent_after_longer_than_the_period_is_refused(after: str) -> None:
    # Missing for longer than the whole period means nothing; and a generated suite would
    # replay that many minutes.
    error = _error(_spec(alerting={"absent_after": after}))
    assert error.path == "slos[0].alerting.absent_after"
    assert "period" in error.problem


def test_absent_after_of_zero_is_refused() -> None:
    # absent(rate(...[5m])) holds until a series has two samples: `for: 0m` would fire on
    # every new series. `false` is how to turn the alert off.
    error = _error(_spec(alerting={"absent_after": "0m"}))
    assert error.path == "slos[0].alerting.absent_after"
    assert "false" in error.problem


@pytest.mark.parametrize("selector", [
    '{job="api"}', "job=api", 'job="api"}) or vector(1) or (up{a="b"', 'job="api" or vector(1)',
])
@pytest.mark.parametrize("kind", ["availability", "latency"])
def test_a_selector_that_is_not_label_matchers_is_refused(kind: str, selector: str) -> None:
    sli: dict[str, Any] = {"selector": selector}
    if kind == "latency":
        sli["threshold"] = "300ms"
    error = _error(_spec(sli={kind: sli}))
    assert error.path == f"slos[0].sli.{kind}.selector"
    assert "label matchers" in error.problem


@pytest.mark.parametrize("selector", [
    'job="api"', 'job="api", env!~"dev|test",', "job='api'", 'path=~"/a\\\\b"',
])
def test_label_matchers_in_every_quoting_are_selectors(selector: str) -> None:
    assert parse_spec(_spec(sli={"availability": {"selector": selector}})).slos[0]


@pytest.mark.parametrize("name", ["__name__", "__meta_x"])
def test_label_names_reserved_by_prometheus_are_refused(name: str) -> None:
    # promtool refuses the rules ("invalid label name"); say so at the spec.
    error = _error(_spec(labels={name: "x"}))
    assert error.path == f"slos[0].labels.{name}"
    assert "reserved" in error.problem


def _openslo_slo(**spec: Any) -> dict[str, Any]:
    ratio = {"counter": True,
             "good": {"metricSource": {"spec": {"query": 'requests_total{code="200"}'}}},
             "total": {"metricSource": {"spec": {"query": "requests_total"}}}}
    return {"apiVersion": "openslo/v1", "kind": "SLO", "metadata": {"name": "a"},
            "spec": {"service": "s", "indicator": {"spec": {"ratioMetric": ratio}},
                     "objectives": [{"target": 0.99}], **spec}}


@pytest.mark.parametrize(("field", "value", "path"), [
    # Good time slices over all time slices is another SLI than good events over all events.
    ("budgetingMethod", "Timeslices", "documents[0].spec.budgetingMethod"),
    ("budgetingMethod", "RatioTimeslices", "documents[0].spec.budgetingMethod"),
    # A calendar month resets its budget on the 1st; the rules keep a rolling window.
    ("timeWindow", [{"duration": "28d", "isRolling": False}],
     "documents[0].spec.timeWindow[0].isRolling"),
])
def test_openslo_semantics_the_rules_cannot_keep_are_refused(field: str, value: object,
                                                             path: str) -> None:
    assert _error(_openslo_slo(**{field: value})).path == path


def test_openslo_occurrences_over_a_rolling_window_is_read() -> None:
    spec = parse_spec(_openslo_slo(budgetingMethod="Occurrences",
                                   timeWindow=[{"duration": "7d", "isRolling": True}]))
    assert spec.slos[0].period == "7d"


@pytest.mark.parametrize("query", ['requests_total{a="b"} or up{c="d"}', "requests_total{a=b}"])
def test_openslo_counter_query_that_is_not_one_selector_is_refused(query: str) -> None:
    data = _openslo_slo()
    data["spec"]["indicator"]["spec"]["ratioMetric"]["total"]["metricSource"]["spec"][
        "query"] = query
    error = _error(data)
    assert error.path.endswith("ratioMetric.total.metricSource.spec.query")


def test_error_status_that_is_not_a_regex_is_refused() -> None:
    error = _error(_spec(sli={"availability": {"error_status": "5..)"}}))
    assert error.path == "slos[0].sli.availability.error_status"
    assert "regular expression" in error.problem
