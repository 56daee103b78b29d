"""``fournines remediate``: alerts to allowlisted actions under guardrails, with a real
Alertmanager sending the webhook."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fournines._errors import ConfigurationError
from fournines.slo.remediate import Remediator, parse_config
from fournines.testing import FakeClock

from .._prometheus import PrometheusServer
from .._servers import free_port, require_binary

TOKEN = "s3cret-token-for-tests-0123456789"
# Appends its second argument to the file named by its first: a harmless, countable action.
SCRIPT = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"


def config_data(marker: Path, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "token_env": "FOURNINES_TEST_REMEDIATE_TOKEN",
        "allow": [[sys.executable, "-c", SCRIPT]],
        "actions": [{
            "name": "restart",
            "match": {"alertname": "ErrorBudgetBurn"},
            "command": [sys.executable, "-c", SCRIPT, str(marker), "deployment/{service}"],
            "target": "deployment/{service}",
            "cooldown": "10m",
        }],
    }
    data.update(overrides)
    return data


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOURNINES_TEST_REMEDIATE_TOKEN", TOKEN)


class Audit:
    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []

    def __call__(self, line: dict[str, object]) -> None:
        self.lines.append(line)

    def decisions(self) -> list[object]:
        return [line["decision"] for line in self.lines]


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "status": "firing", "receiver": "remediate", "alerts": list(alerts)}


def alert(status: str = "firing", **labels: str) -> dict[str, Any]:
    return {"status": status, "fingerprint": "f1",
            "labels": {"alertname": "ErrorBudgetBurn", "service": "payment-svc", **labels}}


def remediator(marker: Path, clock: FakeClock | None = None,
               **overrides: Any) -> tuple[Remediator, Audit]:
    audit = Audit()
    config = parse_config(config_data(marker, **overrides), source="remediate.yaml")
    return Remediator(config, clock=clock or FakeClock(), audit=audit), audit


def ran(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


def test_a_firing_alert_runs_its_command_with_label_values(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    rem, audit = remediator(marker)
    [decision] = rem.handle(notification(alert()))
    assert (decision.decision, decision.returncode) == ("executed", 0)
    assert ran(marker) == ["deployment/payment-svc"]
    assert audit.lines[0]["target"] == "deployment/payment-svc"
    assert audit.lines[0]["alertname"] == "ErrorBudgetBurn"


def test_repeats_within_the_cooldown_are_refused_then_allowed_after(tmp_path: Path) -> None:
    marker, clock = tmp_path / "ran", FakeClock()
    rem, audit = remediator(marker, clock)
    rem.handle(notification(alert()))
    clock.advance(599)
    [refused] = rem.handle(notification(alert()))
    assert refused.decision == "refused" and refused.reason.startswith("cooldown")
    clock.advance(1)
    rem.handle(notification(alert()))
    assert ran(marker) == ["deployment/payment-svc"] * 2
    assert audit.decisions() == ["executed", "refused", "executed"]


def test_cooldown_is_per_target(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    rem, _ = remediator(marker)
    rem.handle(notification(alert(service="a"), alert(service="b"), alert(service="a")))
    assert ran(marker) == ["deployment/a", "deployment/b"]


def test_max_actions_per_hour_holds_across_targets(tmp_path: Path) -> None:
    marker, clock = tmp_path / "ran", FakeClock()
    rem, audit = remediator(marker, clock, max_actions_per_hour=2)
    rem.handle(notification(*(alert(service=f"s{i}") for i in range(3))))
    assert len(ran(marker)) == 2
    assert "max_actions_per_hour" in str(audit.lines[-1]["reason"])
    clock.advance(3600)
    rem.handle(notification(alert(service="s2")))
    assert len(ran(marker)) == 3


def test_dry_run_decides_and_logs_but_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    rem, audit = remediator(marker, dry_run=True)
    rem.handle(notification(alert(), alert()))
    assert not marker.exists()
    assert audit.decisions() == ["dry-run", "refused"]
    assert audit.lines[0]["dry_run"] is True


@pytest.mark.parametrize("value", ["--kubeconfig=/tmp/evil", "a b", "x;rm", ""])
def test_unsafe_label_values_never_reach_a_command(tmp_path: Path, value: str) -> None:
    marker = tmp_path / "ran"
    rem, _ = remediator(marker)
    [decision] = rem.handle(notification(alert(service=value)))
    assert decision.decision == "refused" and "not safe" in decision.reason
    assert not marker.exists()


def test_a_missing_label_is_refused_by_name(tmp_path: Path) -> None:
    rem, _ = remediator(tmp_path / "ran")
    labels = {"alertname": "ErrorBudgetBurn"}
    [decision] = rem.handle(notification({"status": "firing", "labels": labels}))
    assert decision.decision == "refused" and "'service'" in decision.reason


def test_resolved_and_unmatched_alerts_are_ignored(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    rem, audit = remediator(marker)
    rem.handle(notification(alert("resolved"), alert(alertname="Other")))
    assert audit.decisions() == ["ignored", "ignored"]
    assert not marker.exists()


def test_a_failing_command_is_logged_as_failed_with_its_status(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "raise SystemExit(3)"]
    rem, audit = remediator(tmp_path / "ran", allow=[command], actions=[
        {"match": {"alertname": "ErrorBudgetBurn"}, "command": command}])
    [decision] = rem.handle(notification(alert()))
    assert (decision.decision, decision.returncode) == ("failed", 3)
    assert audit.lines[0]["reason"] == "exit status 3"


def test_only_the_bearer_token_is_authorized(tmp_path: Path) -> None:
    rem, _ = remediator(tmp_path / "ran")
    assert rem.authorized(f"Bearer {TOKEN}")
    assert not rem.authorized(None)
    assert not rem.authorized(f"Basic {TOKEN}")
    assert not rem.authorized(f"Bearer {TOKEN}x")


@pytest.mark.parametrize(("change", "message"), [
    ({"allow": [["kubectl", "rollout", "restart"]]}, r"actions\[0\].command: .* allowed prefix"),
    ({"token": TOKEN}, "token: secrets do not belong"),
    ({"token_env": "FOURNINES_TEST_UNSET_VARIABLE"}, "token_env: .* not set"),
    ({"max_actions_per_hour": 0}, "max_actions_per_hour: must be an int >= 1"),
    ({"listen": "9095"}, "listen: must be HOST:PORT"),
    ({"listen": "127.0.0.1:" + "9" * 5000}, "listen: must be HOST:PORT"),
    ({"actions": [{"match": {}, "command": ["x"]}]}, r"actions\[0\].match"),
    ({"actions": [{"match": {"a": "b"}, "command": "kubectl rollout restart"}]},
     r"actions\[0\].command: must be a non-empty list"),
    ({"surprise": 1}, "surprise: unknown key"),
    # A NUL byte cannot be in an argv: every run would fail without running anything.
    ({"allow": [["kubectl\0"]]}, r"allow\[0\]: must be a non-empty list"),
    # Zero seconds kills every command the moment it starts.
    ({"command_timeout": 0}, "command_timeout: must be > 0"),
])
def test_bad_configs_name_the_file_and_the_field(tmp_path: Path, change: dict[str, Any],
                                                 message: str) -> None:
    data = config_data(tmp_path / "ran", **change)
    with pytest.raises(ConfigurationError, match=f"remediate.yaml: {message}"):
        parse_config(data, source="remediate.yaml")


def test_a_token_without_a_source_is_refused(tmp_path: Path) -> None:
    data = config_data(tmp_path / "ran")
    del data["token_env"]
    with pytest.raises(ConfigurationError, match="a token is required"):
        parse_config(data, source="remediate.yaml")


# --- with the real Alertmanager -------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               details: Callable[[], str] = str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{details()}")
        time.sleep(0.2)


class Alertmanager:
    def __init__(self, receiver_url: str) -> None:
        self.binary = require_binary("prometheus-alertmanager", "prometheus-alertmanager")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fournines-alertmanager-"))
        webhook = {"url": receiver_url, "send_resolved": False}
        config = {
            "route": {"receiver": "remediate", "group_by": ["alertname"], "group_wait": "1s",
                      "group_interval": "1s", "repeat_interval": "1s"},
            "receivers": [{"name": "remediate", "webhook_configs": [
                {**webhook, "http_config": {"authorization": {"type": "Bearer",
                                                              "credentials": TOKEN}}},
                webhook,  # no credentials: the receiver must refuse it
            ]}],
        }
        (self.dir / "alertmanager.yml").write_text(json.dumps(config))
        self.log = (self.dir / "alertmanager.log").open("wb")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.dir / 'alertmanager.yml'}",
             f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.path={self.dir}",
             "--cluster.listen-address="],  # no gossip port: tests run side by side
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self.ready, 20, "alertmanager to be ready")

    def ready(self) -> bool:
        assert self.proc.poll() is None, (self.dir / "alertmanager.log").read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/-/ready", timeout=1).is_success
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


class AlertingPrometheus(PrometheusServer):
    """Resends firing alerts every second: Prometheus finds its Alertmanager a few
    seconds after start, drops what fired before that, and by default resends only
    after a minute."""

    def start(self, timeout: float = 20.0) -> PrometheusServer:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config_path}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             f"--storage.tsdb.path={self.dir / 'data'}", "--rules.alert.resend-delay=1s"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.dir)

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                return httpx.get(self.url + "/-/ready", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, "prometheus to be ready", self.log)
        return self


def start_receiver(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, Path, Path]:
    """``fournines remediate`` as its own process, listening: (process, port, marker, audit)."""
    marker, audit = tmp_path / "ran", tmp_path / "audit.jsonl"
    port = free_port()
    config = config_data(marker, listen=f"127.0.0.1:{port}", audit_log=str(audit),
                         command_timeout="20s")
    path = tmp_path / "remediate.yaml"
    path.write_text(json.dumps(config))
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "fournines", "remediate", "--config",
                             str(path)], env=env, stderr=subprocess.PIPE)

    def up() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 20, "fournines remediate to listen")
    except BaseException:
        proc.kill()
        raise
    return proc, port, marker, audit


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """``fournines remediate`` as its own process: (webhook URL, marker file, audit log)."""
    proc, port, marker, audit = start_receiver(tmp_path)
    try:
        yield f"http://127.0.0.1:{port}/alerts", marker, audit
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_remediate_interrupted_by_ctrl_c_exits_130(tmp_path: Path) -> None:
    proc, _, _, _ = start_receiver(tmp_path)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_real_alertmanager_webhook_runs_the_action_once_and_refuses_no_token(
        receiver: tuple[str, Path, Path]) -> None:
    url, marker, audit = receiver
    alertmanager = Alertmanager(url)
    prometheus = AlertingPrometheus(targets=[])
    rules = prometheus.dir / "rules.yml"
    rules.write_text(json.dumps({"groups": [{"name": "slo", "rules": [{
        "alert": "ErrorBudgetBurn", "expr": "vector(1)",
        "labels": {"service": "payment-svc", "severity": "page"}}]}]}))
    config = json.loads(prometheus.config_path.read_text())
    config["rule_files"] = [str(rules)]
    config["alerting"] = {"alertmanagers": [
        {"static_configs": [{"targets": [f"127.0.0.1:{alertmanager.port}"]}]}]}
    prometheus.config_path.write_text(json.dumps(config))
    try:
        prometheus.start()

        def repeated() -> bool:
            lines = audit_lines(audit)
            cooldowns = [x for x in lines if str(x.get("reason", "")).startswith("cooldown")]
            return len(cooldowns) >= 2 and any(x["decision"] == "executed" for x in lines)

        def details() -> str:
            log = (alertmanager.dir / "alertmanager.log").read_text()
            return f"audit: {audit_lines(audit)}\nalertmanager:\n{log}\n{prometheus.log()}"

        wait_until(repeated, 40, "an executed action and two repeats refused by the cooldown",
                   details)
    finally:
        prometheus.stop()
        alertmanager.stop()
    lines = audit_lines(audit)
    assert ran(marker) == ["deployment/payment-svc"]
    [executed] = [x for x in lines if x["decision"] == "executed"]
    assert executed["returncode"] == 0 and executed["alertname"] == "ErrorBudgetBurn"
    unauthorized = [x for x in lines if x.get("reason") == "unauthorized"]
    assert unauthorized and all(x["decision"] == "refused" for x in unauthorized)
    # sampled: a line names its remote, or the remotes of the refusals it counts
    assert all(x.get("remote", "127.0.0.1") == "127.0.0.1"
               and set(x.get("suppressed_remotes", [])) <= {"127.0.0.1"} for x in unauthorized)


def test_requests_without_the_token_are_answered_401(receiver: tuple[str, Path, Path]) -> None:
    url, marker, audit = receiver
    response = httpx.post(url, json=notification(alert()),
                          headers={"authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert not marker.exists()
    assert audit_lines(audit)[-1]["reason"] == "unauthorized"


def test_the_example_config_loads_in_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from fournines.slo.remediate import load_config

    monkeypatch.setenv("FOURNINES_REMEDIATE_TOKEN", TOKEN)
    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "examples" / "remediate" / "remediate.yaml")
    assert config.dry_run and (config.host, config.port) == ("127.0.0.1", 9095)
    assert config.actions[0].command[:3] == ("kubectl", "rollout", "restart")


def test_the_example_alertmanager_config_is_valid_for_amtool(tmp_path: Path) -> None:
    amtool = require_binary("amtool", "prometheus-alertmanager")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([amtool, "check-config",
                             str(root / "examples" / "remediate" / "alertmanager.yml")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_refuses_a_bad_config_with_the_file_and_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fournines.cli import main

    path = tmp_path / "remediate.yaml"
    path.write_text(json.dumps(config_data(tmp_path / "ran", allow=[["kubectl"]])))
    assert main(["remediate", "--config", str(path)]) == 2
    assert f"{path}: actions[0].command" in capsys.readouterr().err


def test_the_receiver_answers_404_elsewhere_and_400_to_bad_json(
        receiver: tuple[str, Path, Path]) -> None:
    url, _, audit = receiver
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert httpx.post(url + "x", json={}, headers=auth).status_code == 404
    assert httpx.post(url, content=b"{not json", headers=auth).status_code == 400
    assert audit_lines(audit)[-1]["reason"] == "body is not JSON"
    response = httpx.post(url, json=notification(alert(service="web")), headers=auth)
    assert response.status_code == 200
    assert response.json()["decisions"][0]["decision"] == "executed"


def test_an_audit_log_that_cannot_be_opened_stops_the_receiver_from_starting(
        tmp_path: Path) -> None:
    config = parse_config(config_data(tmp_path / "ran",
                                      audit_log=str(tmp_path / "missing" / "audit.jsonl")),
                          source="remediate.yaml")
    with pytest.raises(ConfigurationError, match=r"remediate\.yaml: audit_log: cannot open"):
        Remediator(config)


def _raw_post(url: str, content_length: str) -> bytes:
    """Headers with a hand-written Content-Length and no body, the connection left open.

    The answer must come without waiting for EOF. No body is sent, so the receiver's
    closing the connection unread cannot reset it before the answer arrives.
    """
    parsed = httpx.URL(url)
    with socket.create_connection((parsed.host, parsed.port), timeout=15) as sock:
        sock.sendall(f"POST {parsed.path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}"
                     f"\r\nContent-Length: {content_length}\r\n\r\n".encode())
        try:
            return sock.recv(65536)
        except TimeoutError:
            return b"(no answer)"


@pytest.mark.parametrize("content_length", ["-1", "many", "1e3"])
def test_a_content_length_that_is_not_a_size_is_answered_400_and_runs_nothing(
        receiver: tuple[str, Path, Path], content_length: str) -> None:
    # -1 would make the server read to EOF: a body of any size, past the 1 MiB limit.
    url, marker, audit = receiver
    answer = _raw_post(url, content_length)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert not marker.exists()
    assert audit_lines(audit)[-1]["reason"] == "bad Content-Length"


def test_a_client_that_stalls_is_disconnected_after_the_request_timeout(tmp_path: Path) -> None:
    # Without a socket timeout each silent connection holds a thread forever, before any
    # token is checked: a handful of idle sockets would pin the receiver's threads.
    import threading

    from fournines.slo.remediate import WebhookServer

    config = parse_config(config_data(tmp_path / "ran", listen=f"127.0.0.1:{free_port()}"),
                          source="remediate.yaml")
    remediator = Remediator(config, audit=Audit())
    server = WebhookServer(remediator, request_timeout=1.0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        with socket.create_connection(server.server_address[:2], timeout=20) as sock:
            sock.sendall(b"POST /alerts HTTP/1.1\r\nHost: x\r\n")  # and then nothing
            try:
                closed = sock.recv(1024) == b""
            except TimeoutError:
                closed = False
        assert closed, "the receiver kept a stalled connection open for 20 s"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_body_over_the_limit_is_answered_413_and_audited(
        receiver: tuple[str, Path, Path]) -> None:
    # A notification dropped for its size is a decision too: the audit log must show that
    # remediation did not run, not stay silent.
    url, marker, audit = receiver
    # Announced, not sent: the receiver refuses on the header alone, so no client write
    # can race its closing the connection.
    answer = _raw_post(url, str((1 << 20) + 1))
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert not marker.exists()
    assert audit_lines(audit)[-1]["reason"] == "body too large"


# --- unauthenticated refusals are sampled ---------------------------------------------------


def test_refusals_for_the_token_are_audited_once_per_ten_seconds_with_a_count(
        tmp_path: Path) -> None:
    clock = FakeClock()
    rem, audit = remediator(tmp_path / "ran", clock)
    for i in range(5):
        rem.unauthorized(f"10.0.0.{i}")
    assert [(x["reason"], x["remote"]) for x in audit.lines] == [("unauthorized", "10.0.0.0")]
    clock.advance(10)
    rem.unauthorized("10.0.0.9")
    assert audit.lines[-1]["remote"] == "10.0.0.9"
    assert audit.lines[-1]["suppressed"] == 4
    assert audit.lines[-1]["suppressed_remotes"] == ["10.0.0.1", "10.0.0.2", "10.0.0.3",
                                                     "10.0.0.4"]


def test_a_flood_that_stops_gets_its_count_written_by_flush(tmp_path: Path) -> None:
    clock = FakeClock()
    rem, audit = remediator(tmp_path / "ran", clock)
    for _ in range(3):
        rem.unauthorized("10.0.0.1")
    rem.flush()
    assert len(audit.lines) == 1  # within the interval: nothing yet
    clock.advance(10)
    rem.flush()
    assert audit.lines[-1]["suppressed"] == 2
    rem.flush()
    assert len(audit.lines) == 2  # counted once


def test_closing_writes_the_count_of_refusals_not_yet_audited(tmp_path: Path) -> None:
    rem, audit = remediator(tmp_path / "ran")
    rem.unauthorized("10.0.0.1")
    rem.unauthorized("10.0.0.1")
    rem.close()
    assert [x.get("suppressed") for x in audit.lines] == [None, 1]


# --- the HTTP server in process ----------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Any, Audit]]:
    """A :class:`WebhookServer` on a thread; parametrize indirectly with its keywords."""
    import threading

    from fournines.slo.remediate import WebhookServer

    config = parse_config(config_data(tmp_path / "ran", listen=f"127.0.0.1:{free_port()}"),
                          source="remediate.yaml")
    audit = Audit()
    rem = Remediator(config, audit=audit)
    srv = WebhookServer(rem, **getattr(request, "param", {}))
    thread = threading.Thread(target=srv.serve_forever)
    thread.start()
    try:
        yield srv, audit
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)
        rem.close()


def _stalled(address: tuple[Any, ...], head: bytes = b"POST /alerts HTTP/1.1\r\n",
             ) -> socket.socket:
    sock = socket.create_connection(address[:2], timeout=20)
    sock.sendall(head)
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_request_without_the_token_is_refused_before_its_body_is_read(
        server: tuple[Any, Audit]) -> None:
    # Announcing a body over the limit earns a 413 and an audit line only with the token:
    # without it, the answer is 401 from the headers alone.
    srv, audit = server
    with socket.create_connection(srv.server_address[:2], timeout=15) as sock:
        sock.sendall(b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 401")
    assert [x["reason"] for x in audit.lines] == ["unauthorized"]


@pytest.mark.parametrize("head", [
    b"POST /alerts HTTP/1.1\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
    b"POST /alerts HTTP/1.1\r\n" + b"X-Many: a\r\n" * 101 + b"\r\n",
])
def test_an_oversized_request_head_is_answered_431_and_logs_nothing(
        server: tuple[Any, Audit], head: bytes, caplog: pytest.LogCaptureFixture) -> None:
    srv, audit = server
    with socket.create_connection(srv.server_address[:2], timeout=15) as sock:
        sock.sendall(head)
        assert sock.recv(65536).startswith(b"HTTP/1.1 431")
    assert audit.lines == []
    assert not [r for r in caplog.records if r.name == "fournines.remediate"]


@pytest.mark.parametrize("server", [{"request_timeout": 1.0}], indirect=True)
def test_a_client_that_sends_a_byte_at_a_time_is_cut_off_at_the_request_deadline(
        server: tuple[Any, Audit]) -> None:
    # A per-read timeout would let a byte every 0.5 s hold the connection forever; the
    # deadline covers the whole request.
    srv, _ = server
    with _stalled(srv.server_address, b"P") as sock:
        sock.settimeout(0.5)
        closed = False
        for byte in b"OST /alerts HTTP/1.1\r\nHost: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx":
            try:
                sock.send(bytes([byte]))
            except OSError:
                closed = True
                break
            if _closed_by_peer(sock):
                closed = True
                break
        assert closed, "the receiver let a dribbling client hold its connection for 30 s"


@pytest.mark.parametrize("server", [{"max_connections": 3}], indirect=True)
def test_at_the_connection_limit_the_oldest_stalled_client_makes_way(
        server: tuple[Any, Audit]) -> None:
    srv, _ = server
    stalled = [_stalled(srv.server_address) for _ in range(3)]
    try:
        url = srv.url
        response = httpx.post(url, json=notification(alert()), timeout=15,
                              headers={"authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        assert _closed_by_peer(stalled[0])
        stalled[1].settimeout(0.2)
        assert not _closed_by_peer(stalled[1])
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize(("keywords", "message"), [
    ({"max_connections": 0}, "WebhookServer.max_connections must be an int >= 1, got 0"),
    ({"request_timeout": 0}, "WebhookServer.request_timeout must be > 0 seconds, got 0"),
])
def test_bad_server_settings_name_the_field(tmp_path: Path, keywords: dict[str, Any],
                                            message: str) -> None:
    from fournines.slo.remediate import WebhookServer

    config = parse_config(config_data(tmp_path / "ran", listen="127.0.0.1:0"),
                          source="remediate.yaml")
    with pytest.raises(ConfigurationError, match=message):
        WebhookServer(Remediator(config, audit=Audit()), **keywords)
