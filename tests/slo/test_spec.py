"""Reading SLO specs: fournines' format, Sloth prometheus/v1, OpenSLO v1, and their errors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

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
    assert slo.sli.error_query == (
        f'({total}) - (sum(rate(http_requests_total{{job="profile",status!~"5.."}}'
        '[{{.window}}])))')


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


def test_several_documents_that_are_not_openslo_are_refused() -> None:
    error = _error([_spec(), _spec()])
    assert "only OpenSLO files may hold more than one document" in error.problem


def test_latency_threshold_between_the_default_buckets_is_refused() -> None:
    error = _error(_spec(sli={"latency": {"threshold": "200ms"}}))
    assert error.path == "slos[0].sli.latency.threshold"
    assert "not a bucket bound" in error.problem


def test_latency_threshold_of_a_named_histogram_is_not_checked_against_the_defaults() -> None:
    sli = parse_spec(_spec(sli={"latency": {"histogram": "rpc_seconds", "threshold": "200ms"}}))
    assert sli.slos[0].sli == LatencySLI(histogram="rpc_seconds", threshold=0.2)
