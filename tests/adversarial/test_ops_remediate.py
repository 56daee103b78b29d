"""``fournines remediate`` under hostile clients: resets, stalls and floods without the token.

Each test runs the real command as its own process and talks to it over real sockets; what
the process logs (its stderr and its audit log) and what it holds (its threads and open
file descriptors, from ``/proc``) are what is checked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .._servers import free_port

TOKEN = "adversarial-remediate-token-0123456789"
SCRIPT = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Receiver:
    proc: subprocess.Popen[bytes]
    port: int
    audit: Path
    stderr: Path
    marker: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def log_lines(self) -> list[str]:
        """Everything the receiver wrote: its stderr and its audit log."""
        lines = self.stderr.read_text().splitlines()
        if self.audit.exists():
            lines += self.audit.read_text().splitlines()
        return lines

    def status(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")

    def sockets(self) -> int:
        """Open socket descriptors of the receiver (its listener and its connections)."""
        count = 0
        for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
            try:
                if os.readlink(f"/proc/{self.proc.pid}/fd/{fd}").startswith("socket:"):
                    count += 1
            except OSError:
                continue  # closed while we looked
        return count


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    marker, audit, stderr = tmp_path / "ran", tmp_path / "audit.jsonl", tmp_path / "stderr"
    port = free_port()
    config = {
        "listen": f"127.0.0.1:{port}", "token_env": "ADVERSARIAL_REMEDIATE_TOKEN",
        "audit_log": str(audit), "allow": [[sys.executable, "-c", SCRIPT]],
        "actions": [{"name": "restart", "match": {"alertname": "ErrorBudgetBurn"},
                     "command": [sys.executable, "-c", SCRIPT, str(marker),
                                 "deployment/{service}"],
                     "target": "deployment/{service}", "cooldown": "10m"}],
    }
    path = tmp_path / "remediate.yaml"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ADVERSARIAL_REMEDIATE_TOKEN": TOKEN}
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fournines", "remediate", "--config",
                                 str(path)], env=env, stderr=err, stdout=subprocess.DEVNULL)
    rec = Receiver(proc, port, audit, stderr, marker)
    try:
        def up() -> bool:
            assert proc.poll() is None, stderr.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_until(up, 20, "fournines remediate to listen")
        yield rec
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def alertmanager_payload(service: str = "payment-svc") -> dict[str, object]:
    """A webhook notification as Alertmanager 0.2x sends it (version 4)."""
    labels = {"alertname": "ErrorBudgetBurn", "service": service, "severity": "page"}
    return {
        "version": "4", "groupKey": '{}:{alertname="ErrorBudgetBurn"}', "truncatedAlerts": 0,
        "status": "firing", "receiver": "remediate",
        "groupLabels": {"alertname": "ErrorBudgetBurn"}, "commonLabels": labels,
        "commonAnnotations": {"summary": "the error budget burns fast"},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [{"status": "firing", "labels": labels,
                    "annotations": {"summary": "the error budget burns fast"},
                    "startsAt": "2026-12-02T16:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus.example:9090/graph",
                    "fingerprint": "a1b2c3d4e5f60718"}],
    }


def authorised_post(rec: Receiver, service: str = "payment-svc") -> httpx.Response:
    return httpx.post(rec.url, json=alertmanager_payload(service), timeout=15,
                      headers={"authorization": f"Bearer {TOKEN}",
                               "user-agent": "Alertmanager/0.27.0"})


def test_fifty_clients_that_reset_mid_request_log_no_traceback(receiver: Receiver) -> None:
    baseline = receiver.sockets()
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", receiver.port), timeout=5)
        sock.sendall(b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Le")
        # linger on, timeout 0: close() sends RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    # Every reset connection handled (closed on the receiver's side) before the logs are read.
    wait_until(lambda: receiver.sockets() <= baseline, 20,
               "the receiver to close the reset connections")
    assert authorised_post(receiver).status_code == 200
    lines = receiver.log_lines()
    assert not [line for line in lines if "Traceback" in line], "\n".join(lines[:40])
    # the startup line, the executed action: a reset is not worth a line
    assert len(lines) <= 5, "\n".join(lines[:40])


def test_three_hundred_stalled_connections_hold_no_threads_and_alerts_still_land(
        receiver: Receiver) -> None:
    stalled = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", receiver.port), timeout=5)
            sock.sendall(b"POST /alerts HTTP/1.1\r\nHost: x\r\n")  # and then nothing
            stalled.append(sock)
        # Accepted in order: once this answer is in, all 300 were accepted before it.
        response = authorised_post(receiver)
        assert response.status_code == 200, response.text
        assert response.json()["decisions"][0]["decision"] == "executed"
        threads, sockets = receiver.status("Threads"), receiver.sockets()
    finally:
        for sock in stalled:
            sock.close()
    assert threads <= 8, f"{threads} threads for 300 stalled connections"
    assert sockets <= 160, f"{sockets} sockets held open for 300 stalled connections"
    wait_until(receiver.marker.exists, 20, "the action to run")
    assert receiver.marker.read_text().splitlines() == ["deployment/payment-svc"]


def test_two_hundred_requests_without_the_token_log_a_few_lines_only(
        receiver: Receiver) -> None:
    with httpx.Client(timeout=10) as client:
        statuses = {client.post(receiver.url, json=alertmanager_payload(),
                                headers={"authorization": f"Bearer wrong-{i}"}).status_code
                    for i in range(200)}
    assert statuses == {401}
    assert not receiver.marker.exists()
    lines = receiver.log_lines()
    assert len(lines) <= 5, f"{len(lines)} lines:\n" + "\n".join(lines[:20])
    unauthorized = [json.loads(line) for line in lines if '"unauthorized"' in line]
    assert unauthorized and unauthorized[0]["remote"] == "127.0.0.1"
