"""The closed loop: SLO rules in a real Prometheus, a real Alertmanager, ``fournines
remediate`` reloading a leaking service under ``fournines serve``.

The end-to-end tests share one short run of ``fournines lab --scenario`` with a loop
(both passes, about a minute on the shared machine): they check its structure,
never its timings.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fournines import ConfigurationError
from fournines.lab.load import Outcome
from fournines.lab.loop import (
    ALERT,
    cooldown_held,
    generate_lab_rules,
    scale_duration,
    time_to_healthy,
)
from fournines.lab.scenario import load_scenario, parse_scenario

from .._servers import require_binary

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "lab-loop-test-token-0123456789"


# -- compressed time ------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "scaled"), [
    ("5m", "5s"), ("2m", "2s"), ("1h", "60s"), ("30d", "43200s"), ("1h30m", "90s"),
    ("15s", "250ms"),
])
def test_durations_are_divided_by_the_time_scale(window: str, scaled: str) -> None:
    assert scale_duration(window, 60) == scaled


def test_a_duration_prometheus_would_not_read_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        scale_duration("5 minutes", 60)


def test_the_generated_rules_scaled_to_lab_time_pass_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool", "prometheus")
    rules, commands = generate_lab_rules(tmp_path, 60.0, services=("gateway", "order"))
    assert [c[2:5] for c in commands] == [["fournines", "slo", "rules"]] * 2
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                             text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    import yaml

    groups = yaml.safe_load(rules.read_text())["groups"]
    assert {g["interval"] for g in groups} == {"250ms"}
    p1 = [r for g in groups for r in g["rules"] if r.get("alert") == ALERT]
    assert {r["labels"]["fournines_service"] for r in p1} == {"gateway", "order"}
    for rule in p1:
        assert rule["for"] == "2s" and rule["labels"]["severity"] == "P1"
        assert rule["expr"].startswith("fournines_slo:error_ratio:rate5m")
        assert rule["expr"].strip().endswith("> 0.001")
    ratios = [r for g in groups for r in g["rules"]
              if r.get("record") == "fournines_slo:error_ratio:rate5m"]
    assert ratios and all("[5s]" in r["expr"] and "[5m]" not in r["expr"] for r in ratios)


# -- the scenario ---------------------------------------------------------------------------


def test_the_closed_loop_example_has_a_leak_and_a_loop() -> None:
    scenario = load_scenario(ROOT / "examples" / "lab" / "closed-loop.yaml")
    assert scenario.loop is not None and scenario.loop.time_scale == 60
    [leak] = scenario.faults
    assert (leak.kind, leak.service) == ("leak", "order")
    assert "until" not in leak.label() and "order" in leak.label()


def test_a_loop_without_a_leak_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"loop: .*no leak"):
        parse_scenario({"duration": 10, "loop": {"cooldown": 3},
                        "faults": [{"kind": "profile_kill", "at": 1, "duration": 2}]},
                       source="s.yaml")


def test_a_leak_in_an_unknown_service_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"faults\[0\]\.service must be one of"):
        parse_scenario({"duration": 10, "faults": [
            {"kind": "leak", "at": 1, "duration": 2, "service": "billing"}]}, source="s.yaml")


def test_only_a_leak_or_a_rolling_deploy_names_a_service() -> None:
    with pytest.raises(ConfigurationError, match="only for rolling_deploy and leak"):
        parse_scenario({"duration": 10, "faults": [
            {"kind": "profile_kill", "at": 1, "duration": 2, "service": "profile"}]},
            source="s.yaml")


def test_a_loop_time_scale_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"loop\.time_scale must be"):
        parse_scenario({"duration": 10, "loop": {"time_scale": 0.5},
                        "faults": [{"kind": "leak", "at": 1, "duration": 2}]}, source="s.yaml")


# -- the measures ---------------------------------------------------------------------------


def outcome(at: float, ok: bool) -> Outcome:
    return Outcome(at=at, status=200 if ok else 502, latency=0.01, degraded=False,
                   send_lag=0.0)


def test_healthy_is_the_first_full_second_of_answered_pages_after_the_anchor() -> None:
    outcomes = [outcome(t / 10, not 20 <= t < 50 and t != 57) for t in range(100)]
    # failures 2.0-4.9 and a blip at 5.7: healthy from just after 5.7
    assert time_to_healthy(outcomes, 2.0) == pytest.approx(5.701)


def test_never_healthy_when_the_load_ends_first() -> None:
    outcomes = [outcome(t / 10, t < 20) for t in range(100)]
    assert time_to_healthy(outcomes, 2.0) is None


def audit(*stamps: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"ts": f"2026-12-03T14:00:{second}+00:00", "decision": decision,
             "target": "service/order"} for second, decision in stamps]


def test_the_cooldown_holds_when_repeats_within_it_were_refused() -> None:
    lines = audit(("00.000", "executed"), ("02.000", "refused"), ("11.000", "executed"))
    assert cooldown_held(lines, 10.0)


def test_the_cooldown_is_broken_by_two_restarts_within_it() -> None:
    lines = audit(("00.000", "executed"), ("04.000", "executed"))
    assert not cooldown_held(lines, 10.0)


def test_dry_runs_count_against_the_cooldown_too() -> None:
    lines = audit(("00.000", "dry-run"), ("03.000", "dry-run"))
    assert not cooldown_held(lines, 10.0)


# -- the leak, in a real service process --------------------------------------------------


def test_a_leak_slows_a_service_until_serve_reloads_it(tmp_path: Path) -> None:
    from fournines.lab.fleet import ServiceProcess
    from fournines.lab.services import LEAK_PATH

    control = Path(os.environ.get("TMPDIR", "/tmp")) / f"fournines-loop-{os.getpid()}.sock"
    service = ServiceProcess("profile", "protected", {"FOURNINES_LAB_CHAOS_TOKEN": TOKEN},
                             tmp_path, control=control)
    auth = {"authorization": f"Bearer {TOKEN}"}

    async def scenario() -> tuple[Any, ...]:
        service.spawn()
        try:
            await service.ready()
            async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
                refused = (await client.put(LEAK_PATH, params={"growth": 1})).status_code
                started = (await client.put(LEAK_PATH, params={"growth": 1},
                                            headers=auth)).json()
                await asyncio.sleep(0.5)
                t = time.perf_counter()
                assert (await client.get("/profiles/7")).status_code == 200
                slow = time.perf_counter() - t
                before = (await client.get(LEAK_PATH, headers=auth)).json()
                await service.restart()
                after = (await client.get(LEAK_PATH, headers=auth)).json()
                t = time.perf_counter()
                assert (await client.get("/profiles/7")).status_code == 200
                fast = time.perf_counter() - t
                return refused, started, before, after, slow, fast
        finally:
            service.stop()

    refused, started, before, after, slow, fast = asyncio.run(scenario())
    assert refused == 401
    assert started["leaking"] and before["leaking"] and before["delay"] > 0
    assert not after["leaking"] and after["delay"] == 0
    assert slow > fast  # the leak's 0.5 s at least, against a plain answer
    assert "rolling reload" in service.log.read_text()


# -- the whole loop, end to end -------------------------------------------------------------

SCENARIO = """\
name: loop-test
duration: 32
rate: 40
orders: 20
payment: {concurrency: 4, service_time: 0.03}
faults:
  - {kind: leak, service: order, at: 3, duration: 22, growth: 0.25}
loop: {time_scale: 60, cooldown: 6, max_actions: 3}
"""


class LoopRun:
    def __init__(self, out: Path, done: subprocess.CompletedProcess[str]) -> None:
        self.out = out
        self.done = done
        self.report: dict[str, Any] = json.loads((out / "loop.json").read_text())
        self.html = (out / "loop.html").read_text()


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory: pytest.TempPathFactory) -> LoopRun:
    require_binary("prometheus", "prometheus")
    require_binary("prometheus-alertmanager", "prometheus-alertmanager")
    out = tmp_path_factory.mktemp("loop")
    scenario = out / "loop.yaml"
    scenario.write_text(SCENARIO)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "fournines", "lab", "--scenario", str(scenario), "--out",
         str(out), "--json", str(out / "loop.json")],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return LoopRun(out, done)


def test_both_passes_ran_the_same_load(loop_run: LoopRun) -> None:
    passes = loop_run.report["passes"]
    assert list(passes) == ["loop", "no loop"]
    assert len({len(p["request_log"]) for p in passes.values()}) == 1


def test_the_p1_alert_is_in_prometheus_alerts_series_in_both_passes(loop_run: LoopRun) -> None:
    for name, one in loop_run.report["passes"].items():
        firing = [a for a in one["alerts"] if a["labels"]["alertname"] == ALERT
                  and a["labels"]["alertstate"] == "firing"
                  and a["labels"]["fournines_service"] == "order"]
        assert firing, name
        assert one["time_to_detect"] is not None and one["time_to_detect"] > 0
    assert f'ALERTS{{alertname="{ALERT}",alertstate="firing"' in loop_run.done.stdout


def test_the_loop_restarts_the_leaking_service_through_serve(loop_run: LoopRun) -> None:
    one = loop_run.report["passes"]["loop"]
    executed = [a for a in one["audit"] if a["decision"] == "executed"]
    assert executed and all(a["returncode"] == 0 for a in executed)
    assert executed[0]["target"] == "service/order"
    assert executed[0]["command"][2:5] == ["fournines", "serve", "--control"]
    assert executed[0]["command"][-1] == "--reload"
    assert one["time_to_remediate"] is not None
    ends = [e for e in one["fault_log"] if e["action"] == "end"]
    assert ends and not ends[0]["restarted"]  # nothing left to restart by hand


def test_without_the_loop_remediate_only_dry_runs_and_the_on_call_restarts(
        loop_run: LoopRun) -> None:
    one = loop_run.report["passes"]["no loop"]
    decisions = one["decisions"]
    assert decisions.get("dry-run", 0) >= 1 and "executed" not in decisions
    ends = [e for e in one["fault_log"] if e["action"] == "end"]
    assert ends and ends[0]["restarted"]


def test_the_loop_never_restarts_more_than_its_cooldown_allows(loop_run: LoopRun) -> None:
    report = loop_run.report
    cooldown = report["scenario"]["loop"]["cooldown"]
    assert report["cooldown_held"]
    for one in report["passes"].values():
        assert cooldown_held(one["audit"], cooldown)
        acted = [a for a in one["audit"] if a["decision"] in ("executed", "dry-run")]
        # The alert kept firing and Alertmanager repeated it every second: refused.
        refused = [a for a in one["audit"] if a["decision"] == "refused"
                   and a["reason"].startswith("cooldown")]
        assert acted and refused
        assert len(acted) <= 1 + report["scenario"]["duration"] / cooldown


def test_the_reports_carry_the_remediation_timeline(loop_run: LoopRun) -> None:
    stdout = loop_run.done.stdout
    assert "remediation timeline, loop" in stdout and "time to detect" in stdout
    assert "restart done service/order" in stdout
    assert "Remediation timeline: no loop" in loop_run.html
    assert "<svg" in loop_run.html and "<link" not in loop_run.html and "src=" not in loop_run.html
    events = [e["event"] for e in loop_run.report["passes"]["loop"]["timeline"]]
    assert any(e.startswith("fault leak") for e in events)
    assert any(e.startswith(f"ALERTS {ALERT}") for e in events)
    assert any(e.startswith("healthy") for e in events)


def test_a_loop_scenario_refuses_the_registry_before_anything_starts(tmp_path: Path) -> None:
    from fournines.lab import run_and_report

    with pytest.raises(ConfigurationError, match="drop --etcd"):
        run_and_report(scenario_file=str(ROOT / "examples" / "lab" / "closed-loop.yaml"),
                       out=tmp_path / "out", etcd="")
    assert not (tmp_path / "out").exists()
