"""fournines' alerts for Sloth's getting-started spec fire when Sloth's own rules do.

Method: both rule sets run in ONE promtool test (rule_files lists Sloth's published
rules, tests/slo/data/sloth/getting-started.rules.yml, and the rules fournines generates
from Sloth's spec, tests/slo/data/sloth/getting-started.yml). For each scenario, an
expression counts, at every minute of the scenario (a 1-minute subquery), the minutes in
which the number of firing page (or ticket) alerts of Sloth and of fournines differ; it
must be 0. Another expression checks that Sloth's alert does fire in the scenario, so
the comparison is not between two silent rule sets.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest

from fournines.slo.rules import generate_rules
from fournines.slo.spec import load_spec

from ._promtool import DATA, assert_passes, promtool

RATE = 6000  # requests a minute
BAD = 'http_request_duration_seconds_count{job="myservice", code="500"}'
GOOD = 'http_request_duration_seconds_count{job="myservice", code="200"}'
SLOTH = {"page": 'ALERTS{alertname="MyServiceHighErrorRate", alertstate="firing", '
                 'sloth_severity="page"}',
         "ticket": 'ALERTS{alertname="MyServiceHighErrorRate", alertstate="firing", '
                   'sloth_severity="ticket"}'}
OURS = {"page": 'ALERTS{alertname="MyServiceHighErrorRate", alertstate="firing", '
                'fournines_slo="requests-availability", severity="pageteam"}',
        "ticket": 'ALERTS{alertname="MyServiceHighErrorRate", alertstate="firing", '
                  'fournines_slo="requests-availability", severity="slack"}'}

# promtool evaluates rule groups in an unspecified order unless told: Sloth's alerts live in
# a group of their own after its recording groups, so without an order they sometimes see
# the previous minute's ratios, and flip a minute late. fournines keeps an SLO in one group.
GROUP_ORDER = [
    "sloth-slo-sli-recordings-myservice-requests-availability",
    "sloth-slo-meta-recordings-myservice-requests-availability",
    "sloth-slo-alerts-myservice-requests-availability",
    "fournines-slo-myservice-requests-availability",
]

# name -> segments of (minutes, error ratio), and the severities Sloth must fire in it.
SCENARIOS: dict[str, tuple[list[tuple[int, float]], tuple[str, ...]]] = {
    "total outage": ([(60, 0), (30, 1), (60, 0)], ("page", "ticket")),
    "10-minute spike": ([(60, 0), (10, 1), (80, 0)], ("page", "ticket")),
    "8x burn (6x page tier)": ([(420, 0.008)], ("page", "ticket")),
    "3.5x burn (3x ticket tier)": ([(240, 0.0035)], ("ticket",)),
    "1.2x burn (1x ticket tier)": ([(240, 0.0012)], ("ticket",)),
    # 21.3x, not 20x: with 20x, 9 burst minutes in the 30m window make a ratio of exactly
    # 6 x 0.001, where Sloth's float threshold (6 * 0.0009999999999999432) fires and the
    # exact one does not. The comparison is about the same windows, not about that tie.
    "bursts of 21.3x every hour": ([(20, 0.0213), (40, 0)] * 4, ("page", "ticket")),
    "zero traffic": ([(120, -1)], ()),
}


def _values(segments: list[tuple[int, float]]) -> tuple[str, str]:
    good, bad = [0.0], [0.0]
    for minutes, ratio in segments:
        rate = 0 if ratio < 0 else RATE
        for _ in range(minutes):
            good.append(good[-1] + rate * (1 - max(ratio, 0)))
            bad.append(bad[-1] + rate * max(ratio, 0))
    return (" ".join(f"{v:g}" for v in good), " ".join(f"{v:g}" for v in bad))


def _suite(rule_files: list[str], scenarios: Iterable[str] = SCENARIOS) -> str:
    groups = []
    for name in scenarios:
        segments, fires = SCENARIOS[name]
        end = sum(m for m, _ in segments)
        good, bad = _values(segments)
        checks = []
        for severity in ("page", "ticket"):
            differ = (f"sum_over_time(((count({SLOTH[severity]}) or vector(0)) != bool "
                      f"(count({OURS[severity]}) or vector(0)))[{end}m:1m])")
            checks.append({"expr": differ, "eval_time": f"{end}m",
                           "exp_samples": [{"labels": "{}", "value": 0}]})
            # 1 when Sloth's alert fired at some minute of the scenario, else 0.
            fired = (f"sum_over_time((count({SLOTH[severity]}) or vector(0))[{end}m:1m]) "
                     "> bool 0")
            checks.append({"expr": fired, "eval_time": f"{end}m",
                           "exp_samples": [{"labels": "{}",
                                            "value": int(severity in fires)}]})
        groups.append({"name": name, "interval": "1m",
                       "input_series": [{"series": GOOD, "values": good},
                                        {"series": BAD, "values": bad}],
                       "promql_expr_test": checks})
    # JSON is YAML.
    return json.dumps({"rule_files": rule_files, "evaluation_interval": "1m",
                       "group_eval_order": GROUP_ORDER, "tests": groups}, indent=1)


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sloth")
    shutil.copy(DATA / "sloth" / "getting-started.rules.yml", directory / "sloth.rules.yml")
    spec = load_spec(DATA / "sloth" / "getting-started.yml")
    (directory / "fournines.rules.yml").write_text(generate_rules(spec))
    (directory / "compare.test.yml").write_text(
        _suite(["sloth.rules.yml", "fournines.rules.yml"]))
    return directory


def test_both_rule_sets_are_valid_prometheus_rules(suite_dir: Path) -> None:
    assert_passes(promtool("check", "rules", suite_dir / "sloth.rules.yml",
                           suite_dir / "fournines.rules.yml"))


def test_page_and_ticket_alerts_fire_at_the_same_minutes_as_sloths(suite_dir: Path) -> None:
    assert_passes(promtool("test", "rules", "compare.test.yml", cwd=suite_dir))


def test_the_comparison_notices_a_differing_threshold(suite_dir: Path) -> None:
    text = (suite_dir / "fournines.rules.yml").read_text()
    broken = suite_dir / "broken"
    broken.mkdir()
    shutil.copy(suite_dir / "sloth.rules.yml", broken / "sloth.rules.yml")
    # A 6x page tier at 9x: an 8x burn pages with Sloth's rules and not with these.
    assert text.count("> 0.006\n") == 2
    (broken / "fournines.rules.yml").write_text(text.replace("> 0.006\n", "> 0.009\n"))
    (broken / "compare.test.yml").write_text(
        _suite(["sloth.rules.yml", "fournines.rules.yml"], ["8x burn (6x page tier)"]))
    result = promtool("test", "rules", "compare.test.yml", cwd=broken)
    assert result.returncode == 1
    assert "pageteam" in result.stdout + result.stderr
