"""Metrics and probes with N workers: the supervisor's own endpoint, and protect()'s."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

import httpx

from ._supervisor import Load, Served, run_cli, wait_for

PROTECTED = "tests.serve.apps.protected:app"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert match is not None, f"{name}{labels} missing from:\n{text}"
    return float(match.group(1))


def test_the_supervisor_counts_workers_restarts_by_cause_and_reloads(tmp_path: Path) -> None:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with Served(tmp_path, workers=2, drain_delay=0.2,
                args=("--metrics-bind", f"127.0.0.1:{port}")) as served:
        served.wait_ready()
        metrics = httpx.get(endpoint + "/metrics", timeout=30)
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert _sample(metrics.text, "fournines_serve_workers", '{state="ready"}') == 2
        assert _sample(metrics.text, "fournines_serve_worker_restarts_total",
                       '{cause="crash"}') == 0
        victim = int(str(served.get()["pid"]))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: _sample(httpx.get(endpoint + "/metrics", timeout=30).text,
                                 "fournines_serve_worker_restarts_total",
                                 '{cause="crash"}') == 1, what="the crash counted")
        served.version_file.write_text("v2")
        served.signal(signal.SIGHUP)
        wait_for(lambda: "Reload complete" in served.log(), timeout=60, what="reload")
        # The old workers' exits are counted once they are reaped, after the reload ended.
        wait_for(lambda: _sample(httpx.get(endpoint + "/metrics", timeout=30).text,
                                 "fournines_serve_worker_restarts_total",
                                 '{cause="reload"}') == 2, what="the reload's replacements")
        text = httpx.get(endpoint + "/metrics", timeout=30).text
        assert _sample(text, "fournines_serve_reloads_total", '{outcome="completed"}') == 1
        assert _sample(text, "fournines_serve_reloads_total", '{outcome="aborted"}') == 0
        assert _sample(text, "fournines_serve_generation") == 1
        assert _sample(text, "fournines_serve_worker_restarts_total", '{cause="crash"}') == 1


def test_the_supervisor_livez_and_readyz_answer_from_its_loop(tmp_path: Path) -> None:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with Served(tmp_path, workers=1, args=("--metrics-bind", f"127.0.0.1:{port}")) as served:
        served.wait_ready()
        assert served.proc is not None
        live = httpx.get(endpoint + "/livez", timeout=30)
        assert live.status_code == 200
        assert live.json()["pid"] == served.proc.pid
        assert httpx.get(endpoint + "/readyz", timeout=30).json() == {
            "status": "ready", "workers_ready": 1}
        assert httpx.get(endpoint + "/nope", timeout=30).status_code == 404
        assert httpx.post(endpoint + "/metrics", timeout=30).status_code == 405
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            raw.sendall(b"\x00garbage\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 400 ")
        # A client that never finishes its request does not block the loop.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
            idle.sendall(b"GET /livez HTTP/1.1\r\n")
            assert httpx.get(endpoint + "/livez", timeout=30).status_code == 200
            assert served.get()["version"] == "v1"


def test_a_metrics_bind_that_is_not_host_and_port_is_refused(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "tests.serve.apps.versioned:app", "--bind", "127.0.0.1:0",
                     "--metrics-bind", "unix:/tmp/x.sock")
    assert result.returncode == 2
    assert result.stdout.strip().splitlines()[-1] == (
        "fournines serve: error: serve.run metrics_bind must be HOST:PORT, "
        "got 'unix:/tmp/x.sock'")


def _series_total(text: str) -> float:
    return sum(float(value) for value in re.findall(
        r'^http_requests_total\{[^}]*\} (\S+)$', text, re.M))


def test_protect_metrics_merge_every_worker_whichever_answers(tmp_path: Path) -> None:
    with Served(tmp_path, workers=2, app=PROTECTED) as served:
        served.wait_ready()
        pids = set()
        for _ in range(60):  # new connections: both workers serve some
            pids.add(int(httpx.get(served.url + "/", timeout=30).json()["pid"]))
        assert len(pids) == 2
        # Each scrape, on a new connection, reaches either worker; every one sees all 60.
        totals = {_series_total(httpx.get(served.url + "/metrics", timeout=30).text)
                  for _ in range(20)}
        assert totals == {60.0}
        directory = re.search(r"Workers share the metrics directory (\S+)", served.log())
        assert directory is not None
        assert Path(directory.group(1)).is_dir()
    # The directory the supervisor created is gone with it.
    assert not Path(directory.group(1)).exists()


def test_protect_health_and_instance_id_hold_across_workers(tmp_path: Path) -> None:
    with Served(tmp_path, workers=2, app=PROTECTED, env={"POD_NAME": "serve-pod-7"}) as served:
        served.wait_ready()
        answers = [httpx.get(served.url + "/", timeout=30) for _ in range(40)]
        assert len({a.json()["pid"] for a in answers}) == 2
        # One pod, one instance id, whichever worker answers.
        assert {a.headers["x-instance-id"] for a in answers} == {"serve-pod-7"}
        for path in ("/livez", "/readyz", "/startupz"):
            assert {httpx.get(served.url + path, timeout=30).status_code
                    for _ in range(10)} == {200}, path
        with Load(served.url) as load:
            wait_for(lambda: load.served() > 50, what="load running")
            served.signal(signal.SIGHUP)
            wait_for(lambda: "Reload complete" in served.log(), timeout=60, what="reload")
        assert load.failures == []
