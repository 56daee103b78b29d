"""The control socket: ``fournines serve --status`` / ``--reload`` against a real supervisor."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

from ._supervisor import Served, run_cli, wait_for


def _control(tmp_path: Path) -> Path:
    # A short path: unix socket paths are limited to 107 bytes, pytest's tmp_path is long.
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"fn-ctl-{os.getpid()}-{tmp_path.name}"
    directory.mkdir(exist_ok=True)
    return directory / "c.sock"


def test_status_reports_the_supervisor_and_its_ready_workers(tmp_path: Path) -> None:
    control = _control(tmp_path)
    with Served(tmp_path, workers=2, args=("--control", str(control))) as served:
        served.wait_ready()
        result = run_cli(tmp_path, "--status", "--control", str(control))
        assert result.returncode == 0, result.stdout
        status = json.loads(result.stdout)
        assert served.proc is not None
        assert status["pid"] == served.proc.pid
        assert [w["ready"] for w in status["workers"]] == [True, True]
        assert {w["pid"] for w in status["workers"]} == served.pids_serving()


def test_the_control_socket_is_only_for_its_user(tmp_path: Path) -> None:
    control = _control(tmp_path)
    with Served(tmp_path, workers=1, args=("--control", str(control))) as served:
        served.wait_ready()
        assert stat.S_IMODE(os.stat(control).st_mode) == 0o600


def test_reload_waits_for_the_new_workers_and_exits_0(tmp_path: Path) -> None:
    control = _control(tmp_path)
    with Served(tmp_path, workers=2, args=("--control", str(control))) as served:
        served.wait_ready()
        served.version_file.write_text("v2")
        result = run_cli(tmp_path, "--reload", "--control", str(control))
        assert result.returncode == 0, result.stdout
        assert "Reload complete" in result.stdout
        assert {served.get()["version"] for _ in range(20)} == {"v2"}


def test_a_refused_reload_exits_1_with_the_reason(tmp_path: Path) -> None:
    control = _control(tmp_path)
    with Served(tmp_path, workers=2, args=("--control", str(control))) as served:
        served.wait_ready()
        served.version_file.write_text("broken")
        result = run_cli(tmp_path, "--reload", "--control", str(control))
        assert result.returncode == 1
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("fournines serve: error: Reload aborted")
        assert "this version is broken at import" in lines[0]
        assert {served.get()["version"] for _ in range(20)} == {"v1"}


def test_a_stale_control_socket_is_replaced(tmp_path: Path) -> None:
    control = _control(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(control))
    stale.close()  # the file stays, nobody listens: what a killed supervisor leaves
    with Served(tmp_path, workers=1, args=("--control", str(control))) as served:
        served.wait_ready()
        assert run_cli(tmp_path, "--status", "--control", str(control)).returncode == 0


def test_status_without_a_supervisor_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--status", "--control", str(_control(tmp_path)))
    assert result.returncode == 1
    assert result.stdout.startswith("fournines serve: error: no supervisor answers on")
    assert len(result.stdout.strip().splitlines()) == 1


def test_serving_stops_after_workers_are_gone_and_removes_the_control_socket(
        tmp_path: Path) -> None:
    control = _control(tmp_path)
    with Served(tmp_path, workers=1, args=("--control", str(control))) as served:
        served.wait_ready()
    wait_for(lambda: not control.exists(), what="control socket removed")
