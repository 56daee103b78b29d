"""The Chaos Toolkit extension, run by the real ``chaos`` CLI against real uvicorn services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fournines.chaos.ctk import actions, probes
from tests._prometheus import PrometheusServer
from tests._servers import free_port, require_binary
from tests.asgi._uvicorn import ROOT, UvicornProcess

TOKEN = "ctk-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APP = "examples.chaos.service:app"
EXPERIMENT = ROOT / "examples" / "chaos" / "orders-delay.json"
CHAOS = Path(sys.executable).parent / "chaos"


def service(name: str, instance: str) -> UvicornProcess:
    return UvicornProcess(APP, env={"CHAOS_TOKEN": TOKEN, "SERVICE": name,
                                    "INSTANCE": instance})


@pytest.fixture(scope="module")
def fleet() -> Iterator[list[dict[str, Any]]]:
    """Two orders instances and one payments instance, as the experiment's configuration."""
    procs = [service("orders", "orders-1"), service("orders", "orders-2"),
             service("payments", "payments-1")]
    try:
        for proc in procs:
            proc.start()
        yield [
            {"url": procs[0].url, "labels": {"app": "orders", "instance": "orders-1"}},
            {"url": procs[1].url, "labels": {"app": "orders", "instance": "orders-2"}},
            {"url": procs[2].url, "labels": {"app": "payments", "instance": "payments-1"}},
        ]
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture
def clean(fleet: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    yield fleet
    for instance in fleet:
        httpx.delete(instance["url"] + "/chaos/faults", headers=AUTH)


def faults_of(url: str) -> list[dict[str, Any]]:
    response = httpx.get(url + "/chaos/faults", headers=AUTH)
    assert response.status_code == 200
    faults: list[dict[str, Any]] = response.json()["faults"]
    return faults


def chaos_run(tmp_path: Path, instances: list[dict[str, Any]], *var: str
              ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    require_binary(str(CHAOS), "chaostoolkit (pip)")
    var_file = tmp_path / "vars.json"
    var_file.write_text(json.dumps({"configuration": {"instances": instances}}))
    journal = tmp_path / "journal.json"
    env = {**os.environ, "FOURNINES_CHAOS_TOKEN": TOKEN,
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [str(CHAOS), "--no-version-check", "--log-file", str(tmp_path / "chaostoolkit.log"),
         "run", "--journal-path", str(journal), "--var-file", str(var_file), *var,
         str(EXPERIMENT)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env, check=False,
    )
    return result, json.loads(journal.read_text())


def test_chaos_discover_lists_every_activity_with_argument_types() -> None:
    # `chaos discover <dist>` locates the distribution's top-level package and calls its
    # discover(); this is that call, in a fresh interpreter as the CLI would make it.
    code = ("import json; from fournines.chaos.ctk import discover; "
            "print(json.dumps(discover(False)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    activities = {a["name"]: a for a in json.loads(out)["activities"]}
    assert {n for n, a in activities.items() if a["type"] == "action"} == {
        "inject_fault", "inject_fault_by_label", "remove_fault", "remove_faults_by_label",
        "add_toxic", "remove_toxic", "set_proxy_enabled", "partition", "heal"}
    assert {n for n, a in activities.items() if a["type"] == "probe"} == {
        "health_status", "service_healthy", "availability", "service_availability",
        "active_faults", "error_ratio", "slo_burn_rate"}
    arguments = {a["name"]: a.get("type") for a in activities["inject_fault"]["arguments"]}
    assert arguments["url"] == "string" and arguments["duration"] == "number"
    assert arguments["status"] == "integer"
    assert activities["availability"]["return_type"] == "number"
    assert all(a["doc"] for a in activities.values())


def test_the_example_experiment_is_valid_for_chaos_validate(tmp_path: Path) -> None:
    require_binary(str(CHAOS), "chaostoolkit (pip)")
    result = subprocess.run([str(CHAOS), "--no-version-check", "validate", str(EXPERIMENT)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "FOURNINES_CHAOS_TOKEN": TOKEN}, check=False)
    assert result.returncode == 0, result.stderr


def test_chaos_run_delays_one_orders_instance_and_rolls_back(
    tmp_path: Path, clean: list[dict[str, Any]]
) -> None:
    # The fault keeps its 30 s; the observation pause shrinks to 2 s, so the rollback
    # finds the fault still there and has to remove it.
    result, journal = chaos_run(tmp_path, clean, "--var", "observe:int=2")
    assert result.returncode == 0, result.stderr
    assert journal["status"] == "completed" and journal["deviated"] is False
    for phase in ("before", "after"):
        state = journal["steady_states"][phase]
        assert state["steady_state_met"] is True
        assert state["probes"][0]["output"] is True
        assert state["probes"][1]["output"] >= 0.99
    runs = {r["activity"]["name"]: r for r in journal["run"]}
    [hit] = runs["delay-one-orders-instance"]["output"]
    assert hit["labels"]["app"] == "orders"
    fault = hit["fault"]
    assert (fault["kind"], fault["latency"], fault["correlation"], fault["duration"]) == (
        "latency", 0.1, 0.5, 30.0)
    assert runs["faults-in-place"]["output"] == 1
    [rollback] = journal["rollbacks"]
    assert (rollback["status"], rollback["output"]) == ("succeeded", 1)
    assert all(faults_of(i["url"]) == [] for i in clean)


def test_chaos_run_with_a_short_duration_lets_the_fault_expire(
    tmp_path: Path, clean: list[dict[str, Any]]
) -> None:
    result, journal = chaos_run(tmp_path, clean, "--var", "duration:int=3",
                                "--var", "observe:int=3")
    assert result.returncode == 0, result.stderr
    assert journal["status"] == "completed"
    [hit] = {r["activity"]["name"]: r for r in journal["run"]}[
        "delay-one-orders-instance"]["output"]
    assert hit["fault"]["duration"] == 3.0
    # Expired on its own before the rollback looked (3 s pause plus the probes after).
    assert journal["rollbacks"][0]["status"] == "succeeded"
    assert journal["rollbacks"][0]["output"] == 0


def test_a_failed_steady_state_skips_the_method_but_not_the_rollbacks(
    tmp_path: Path, clean: list[dict[str, Any]]
) -> None:
    orders_1 = clean[0]["url"]
    httpx.post(orders_1 + "/chaos/faults", json={"kind": "error", "duration": 60},
               headers=AUTH).raise_for_status()
    _, journal = chaos_run(tmp_path, clean, "--var", "observe:int=1")
    before = journal["steady_states"]["before"]
    assert before["steady_state_met"] is False
    assert before["probes"][1]["output"] == 0.5  # one of two orders instances fails all
    assert journal["run"] == []
    [rollback] = journal["rollbacks"]
    assert (rollback["status"], rollback["output"]) == ("succeeded", 1)
    assert faults_of(orders_1) == []


def test_rollbacks_run_when_the_experiment_is_interrupted(
    tmp_path: Path, clean: list[dict[str, Any]]
) -> None:
    # Chaos Toolkit's default strategy skips the rollbacks of an interrupted run; the
    # experiment asks for "always", so a SIGTERM (a CI timeout, say) during the
    # observation pause still cleans up. The fault lives 120 s: only the rollback can
    # have removed it.
    require_binary(str(CHAOS), "chaostoolkit (pip)")
    var_file = tmp_path / "vars.json"
    var_file.write_text(json.dumps({"configuration": {"instances": clean, "observe": 30,
                                                      "duration": 120}}))
    journal_path, log = tmp_path / "journal.json", tmp_path / "chaostoolkit.log"
    env = {**os.environ, "FOURNINES_CHAOS_TOKEN": TOKEN,
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    run = subprocess.Popen(
        [str(CHAOS), "--no-version-check", "--log-file", str(log), "run", "--journal-path",
         str(journal_path), "--var-file", str(var_file), str(EXPERIMENT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=env,
    )
    try:
        end = time.monotonic() + 60
        # A signal during an activity only fails that activity; wait for the pause.
        while not (log.exists() and "Pausing after activity" in log.read_text()):
            assert run.poll() is None and time.monotonic() < end, "the method never paused"
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 1
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    journal = json.loads(journal_path.read_text())
    assert journal["status"] == "interrupted"
    [rollback] = journal["rollbacks"]
    assert (rollback["status"], rollback["output"]) == ("succeeded", 1)
    assert all(faults_of(i["url"]) == [] for i in clean)


def test_inject_and_remove_fault_by_url_with_the_token_from_secrets(
    clean: list[dict[str, Any]]
) -> None:
    url = clean[2]["url"]
    secrets = {"chaos_token": TOKEN}
    created = actions.inject_fault(url, "error", 30, status=503, route="/status",
                                   secrets=secrets)
    assert (created["kind"], created["status"], created["route"]) == ("error", 503, "/status")
    assert httpx.get(url + "/status").status_code == 503
    assert probes.active_faults([{"url": url}], secrets=secrets) == 1
    assert actions.remove_fault(url, created["id"], secrets=secrets) == 1
    assert actions.remove_fault(url, created["id"], secrets=secrets) == 0
    assert httpx.get(url + "/status").status_code == 200


def test_actions_without_a_token_fail_and_change_nothing(clean: list[dict[str, Any]]) -> None:
    from chaoslib.exceptions import ActivityFailed  # type: ignore[import-untyped]

    with pytest.raises(ActivityFailed, match="no admin token"):
        actions.inject_fault(clean[0]["url"], "error", 30)
    with pytest.raises(ActivityFailed, match="401"):
        actions.inject_fault(clean[0]["url"], "error", 30, token="wrong")
    assert faults_of(clean[0]["url"]) == []


def test_inject_by_label_modes_pick_the_matching_instances(
    clean: list[dict[str, Any]]
) -> None:
    everyone = actions.inject_fault_by_label(clean, {"app": "orders"}, "latency", 30,
                                             mode="all", latency=0.01, token=TOKEN)
    assert sorted(h["labels"]["instance"] for h in everyone) == ["orders-1", "orders-2"]
    assert faults_of(clean[2]["url"]) == []
    assert actions.remove_faults_by_label(clean, {"app": "orders"}, token=TOKEN) == 2
    half = actions.inject_fault_by_label(clean, {}, "latency", 30, mode="fixed-percent",
                                         value=50, latency=0.01, token=TOKEN)
    assert len(half) == 2  # ceil(3 * 50 %)
    assert actions.remove_faults_by_label(clean, token=TOKEN) == 2


@pytest.mark.parametrize(("mode", "value"), [
    ("fixed", 0), ("fixed", 0.5), ("fixed-percent", 0), ("fixed-percent", 101),
    ("fixed-percent", float("nan")),
])
def test_a_mode_value_that_selects_no_instance_fails_instead_of_doing_nothing(
    mode: str, value: float
) -> None:
    # As Chaos Mesh refuses it: an experiment whose fault hits nobody proves nothing.
    from chaoslib.exceptions import ActivityFailed

    instances = [{"url": "http://127.0.0.1:9", "labels": {"app": "orders"}}]
    with pytest.raises(ActivityFailed, match="value"):
        actions.inject_fault_by_label(instances, {"app": "orders"}, "error", 30, mode=mode,
                                      value=value, token=TOKEN)


def test_availability_is_the_share_of_good_answers(clean: list[dict[str, Any]]) -> None:
    url = clean[1]["url"]
    assert probes.availability(url, requests=20) == 1.0
    actions.inject_fault(url, "error", 30, rate=1.0, token=TOKEN)
    assert probes.availability(url, requests=20) == 0.0
    orders = probes.service_availability(clean, {"app": "orders"}, requests=20)
    assert orders == 0.5  # round-robin over a healthy and a failing instance
    assert probes.health_status(url) == 200  # probes sit outside the chaos layer


def test_availability_over_a_window_spreads_the_requests(clean: list[dict[str, Any]]) -> None:
    start = time.monotonic()
    assert probes.availability(clean[0]["url"], requests=5, window=1.0) == 1.0
    # The last request goes 4/5 of the window after the first.
    assert time.monotonic() - start >= 0.8


def test_probes_of_an_unreachable_service_report_it_down() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert probes.health_status(url, timeout=1) == 0
    assert probes.availability(url, requests=3, timeout=1) == 0.0
    assert probes.service_healthy([{"url": url, "labels": {}}]) is False


def test_error_ratio_from_a_metrics_page(clean: list[dict[str, Any]]) -> None:
    url = clean[2]["url"]
    metrics = url + "/metrics"
    for _ in range(10):
        httpx.get(url + "/status")
    before = probes.error_ratio(metrics, labels={"route": "/status"})
    actions.inject_fault(url, "error", 30, route="/status", token=TOKEN)
    for _ in range(10):
        httpx.get(url + "/status")

    def errors_later() -> None:
        time.sleep(0.5)
        for _ in range(10):
            httpx.get(url + "/status")

    sender = threading.Thread(target=errors_later)
    sender.start()
    during = probes.error_ratio(metrics, window=3.0, labels={"route": "/status"})
    sender.join()
    after = probes.error_ratio(metrics, labels={"route": "/status"})
    assert during == 1.0  # only the 10 failing requests fell inside the window
    # Since start (other tests of this module send requests to /status too): the 20
    # errors added since `before` pushed the ratio up, and the 10 successes keep it < 1.
    assert before < after < 1.0


def test_error_ratio_and_burn_rate_from_prometheus() -> None:
    with service("payments", "payments-9") as app, PrometheusServer(
        targets=[f"127.0.0.1:{app.port}"]
    ) as prometheus:
        actions.inject_fault(app.url, "error", 60, route="/status", token=TOKEN)
        ratio = 0.0
        end = time.monotonic() + 30
        while ratio == 0.0 and time.monotonic() < end:
            for _ in range(5):
                httpx.get(app.url + "/")
                httpx.get(app.url + "/status")
            time.sleep(0.2)
            ratio = probes.error_ratio(prometheus.url, labels={"route": "/status"})
        assert ratio == 1.0
        assert probes.slo_burn_rate(prometheus.url, objective=99.0,
                                    labels={"route": "/status"}) == pytest.approx(100.0)
        # Every route together: the failing "/status" and the healthy "/" (a series may
        # need one more scrape to have a rate).
        mixed = probes.error_ratio(prometheus.url)
        while not 0.0 < mixed < 1.0 and time.monotonic() < end:
            httpx.get(app.url + "/")
            httpx.get(app.url + "/status")
            time.sleep(0.2)
            mixed = probes.error_ratio(prometheus.url)
        assert 0.0 < mixed < 1.0


def test_toxics_through_the_toxiproxy_api_of_the_fault_proxy(
    clean: list[dict[str, Any]]
) -> None:
    api_port, listen_port = free_port(), free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "fournines", "chaos", "proxy", "--port", str(api_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    api = f"http://127.0.0.1:{api_port}"
    try:
        end = time.monotonic() + 20
        while True:
            try:
                httpx.get(api + "/version", timeout=0.5)
                break
            except httpx.HTTPError:
                assert proxy.poll() is None and time.monotonic() < end, "proxy did not start"
                time.sleep(0.05)
        upstream = clean[2]["url"].removeprefix("http://")
        httpx.post(api + "/proxies", json={"name": "payments", "upstream": upstream,
                                           "listen": f"127.0.0.1:{listen_port}"}
                   ).raise_for_status()
        through = f"http://127.0.0.1:{listen_port}"
        toxic = actions.add_toxic("payments", "latency", {"latency": 300}, toxiproxy_url=api)
        assert (toxic["name"], toxic["type"]) == ("latency_downstream", "latency")
        start = time.monotonic()
        assert httpx.get(through + "/status", timeout=10).status_code == 200
        assert time.monotonic() - start >= 0.3
        assert actions.remove_toxic("payments", "latency_downstream", toxiproxy_url=api)
        assert not actions.remove_toxic("payments", "latency_downstream", toxiproxy_url=api)
        assert httpx.get(api + "/proxies/payments/toxics").json() == []
        down = actions.set_proxy_enabled("payments", False, toxiproxy_url=api)
        assert down["enabled"] is False
        with pytest.raises(httpx.TransportError):
            httpx.get(through + "/status", timeout=2)
        actions.set_proxy_enabled("payments", True, toxiproxy_url=api)
        assert httpx.get(through + "/status", timeout=10).status_code == 200
    finally:
        proxy.terminate()
        proxy.wait(10)


def test_toxic_actions_send_the_proxy_token_of_a_token_protected_fault_proxy(
    clean: list[dict[str, Any]]
) -> None:
    from chaoslib.exceptions import ActivityFailed

    api_port, listen_port = free_port(), free_port()
    token = "proxy-token-0123456789"
    proxy = subprocess.Popen(
        [sys.executable, "-m", "fournines", "chaos", "proxy", "--port", str(api_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"),
             "FOURNINES_CHAOS_PROXY_TOKEN": token},
    )
    api = f"http://127.0.0.1:{api_port}"
    auth = {"Authorization": f"Bearer {token}"}
    try:
        end = time.monotonic() + 20
        while True:
            try:
                httpx.get(api + "/version", timeout=0.5)
                break
            except httpx.HTTPError:
                assert proxy.poll() is None and time.monotonic() < end, "proxy did not start"
                time.sleep(0.05)
        upstream = clean[2]["url"].removeprefix("http://")
        httpx.post(api + "/proxies", headers=auth, json={
            "name": "payments", "upstream": upstream, "listen": f"127.0.0.1:{listen_port}",
        }).raise_for_status()
        with pytest.raises(ActivityFailed, match="401"):
            actions.add_toxic("payments", "latency", {"latency": 10}, toxiproxy_url=api)
        actions.add_toxic("payments", "latency", {"latency": 10}, toxiproxy_url=api,
                          secrets={"proxy_token": token})
        assert actions.remove_toxic("payments", "latency_downstream", toxiproxy_url=api,
                                    token=token)
        down = actions.set_proxy_enabled("payments", False, toxiproxy_url=api, token=token)
        assert down["enabled"] is False
    finally:
        proxy.terminate()
        proxy.wait(10)


def test_partition_and_heal_cut_and_restore_one_port(clean: list[dict[str, Any]]) -> None:
    from fournines.chaos import network

    reason = network.capabilities().missing("admin", "nft")
    if reason:
        pytest.skip(reason)
    url = clean[2]["url"]
    port = int(url.rsplit(":", 1)[1])
    name = f"ctk{port}"
    try:
        applied = actions.partition(name, "127.0.0.1", dport=port)
        assert applied["dport"] == port
        assert probes.availability(url, requests=2, timeout=0.5) == 0.0
        assert probes.availability(clean[0]["url"], requests=2) == 1.0  # other ports pass
    finally:
        assert actions.heal(name) == name
    assert probes.availability(url, requests=2, timeout=5) == 1.0
    actions.heal(name)  # healing twice is harmless
