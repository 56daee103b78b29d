"""The committed promtool suites under examples/slo/: current, passing, and able to fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fournines.slo import SLO, EventsSLI, SLOSpec, generate_rules, load_spec, parse_spec
from fournines.slo._promtool import generate_tests

from ._promtool import EXAMPLES, assert_passes, promtool

SPECS = ["payment", "openslo"]


@pytest.mark.parametrize("name", SPECS)
def test_committed_rules_and_suite_are_what_the_generator_writes_now(name: str) -> None:
    spec = load_spec(EXAMPLES / f"{name}.yml")
    assert (EXAMPLES / f"{name}.rules.yml").read_text() == generate_rules(spec)
    suite, skipped = generate_tests(spec, f"{name}.rules.yml")
    assert (EXAMPLES / f"{name}.rules.test.yml").read_text() == suite
    assert skipped == []


@pytest.mark.parametrize("name", SPECS)
def test_committed_suite_passes_promtool_test_rules(name: str) -> None:
    assert_passes(promtool("test", "rules", f"{name}.rules.test.yml", cwd=EXAMPLES))


def test_suite_states_every_promised_behaviour() -> None:
    suite = (EXAMPLES / "payment.rules.test.yml").read_text()
    for promise in (
        "payment availability: a total outage pages within 1 minute",
        "payment availability: a steady burn at 1.2x the sustainable rate opens a ticket and "
        "never pages",
        "payment availability: a 10-minute spike pages, and stops paging 30 minutes after it "
        "ends",
        "payment availability: zero traffic gives no data (never NaN) and no alert",
        "payment availability: no SLI series at all raises SLOMetricsAbsent after 10m",
        "payment checkout: a low-traffic service (16.6667 requests an hour, 10 % failing) "
        "does not page: fewer than 200 events in the window",
        "payment latency: a total outage pages within",
        "payment availability: the plain rule: 0.2 % errors over 5m is P1 after 2 minutes",
    ):
        assert promise in suite


def test_suite_fails_against_rules_with_a_wrong_page_threshold(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "openslo.rules.test.yml", tmp_path)
    rules = (EXAMPLES / "openslo.rules.yml").read_text()
    # 28d period, 99.9 %: the 5.6x page tier's threshold is 0.0056; make it 10x too lax.
    assert rules.count("> 0.0056\n") == 2
    (tmp_path / "openslo.rules.yml").write_text(rules.replace("> 0.0056\n", "> 0.056\n"))
    result = promtool("test", "rules", "openslo.rules.test.yml", cwd=tmp_path)
    assert result.returncode == 1
    assert 'severity="page"} 1E+00\n        got: nil' in result.stdout + result.stderr


def test_free_form_sli_queries_get_no_scenarios_and_are_reported() -> None:
    sli = EventsSLI(error_query="sum(rate(a[{{.window}}])) + sum(rate(b[{{.window}}]))",
                    total_query="sum(rate(c[{{.window}}]))")
    spec = SLOSpec(service="s", slos=(SLO(name="free", objective=99, sli=sli),))
    suite, skipped = generate_tests(spec, "r.yml")
    assert skipped == ["free"]
    assert "tests: []" in suite


@pytest.mark.parametrize("absent_after", ["30s", "1m", "90s"])
def test_generated_suite_passes_for_short_absent_after(tmp_path: Path, absent_after: str) -> None:
    spec = parse_spec({"service": "s", "slos": [{
        "name": "a", "objective": 99.9, "sli": {"availability": {"selector": 'job="s"'}},
        "alerting": {"absent_after": absent_after}}]})
    (tmp_path / "r.yml").write_text(generate_rules(spec))
    suite, _ = generate_tests(spec, "r.yml")
    (tmp_path / "r.test.yml").write_text(suite)
    assert_passes(promtool("test", "rules", "r.test.yml", cwd=tmp_path))
