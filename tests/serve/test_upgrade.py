"""SIGUSR2: the supervisor replaces itself without dropping a request."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import httpx

from fournines.serve import status

from ._supervisor import Load, Served, wait_for

UPGRADES = 3


def _control(tmp_path: Path) -> Path:
    directory = Path("/tmp") / f"fn-up-{os.getpid()}-{tmp_path.name}"
    directory.mkdir(exist_ok=True)
    return directory / "c.sock"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; its new parent may not have reaped it yet


def test_three_supervisor_upgrades_under_load_fail_no_request(tmp_path: Path) -> None:
    control = _control(tmp_path)
    served = Served(tmp_path, workers=2, drain_delay=0.2, args=("--control", str(control)))
    supervisors: list[int] = []
    try:
        with served:
            served.wait_ready()
            assert served.proc is not None
            supervisors.append(served.proc.pid)
            with Load(served.url) as load:
                wait_for(lambda: load.served() > 50, what="load running")
                for number in range(1, UPGRADES + 1):
                    old = supervisors[-1]
                    os.kill(old, signal.SIGUSR2)
                    wait_for(lambda o=old: not _alive(o), what=f"supervisor {old} replaced")
                    supervisors.append(int(status(str(control))["pid"]))
                    assert served.log().count("Upgrade complete") == number
                seen = load.served()
                wait_for(lambda: load.served() > seen + 50, what="load after the upgrades")
            assert served.proc.wait(30) == 0  # the first supervisor handed over and exited
    finally:
        if len(supervisors) > 1 and _alive(supervisors[-1]):
            os.kill(supervisors[-1], signal.SIGTERM)
            wait_for(lambda: not _alive(supervisors[-1]), what="the last supervisor stopped")
    assert load.failures == []
    assert len(set(supervisors)) == UPGRADES + 1
    assert not control.exists()  # the last supervisor removed it; no predecessor did


def test_an_upgrade_whose_new_supervisor_cannot_start_keeps_the_old_one(
        tmp_path: Path) -> None:
    with Served(tmp_path, workers=2, drain_delay=0.2) as served:
        served.wait_ready()
        with Load(served.url) as load:
            wait_for(lambda: load.served() > 50, what="load running")
            served.version_file.write_text("broken")
            served.signal(signal.SIGUSR2)
            wait_for(lambda: "Upgrade aborted" in served.log(), what="upgrade aborted")
            seen = load.served()
            wait_for(lambda: load.served() > seen + 50, what="load after the refusal")
        assert served.proc is not None and served.proc.poll() is None
        log = served.log()
    assert load.failures == []
    assert "before its workers were ready; this supervisor keeps serving" in log
    assert "this version is broken at import" in log
    assert load.versions == ["v1"]


def test_the_supervisor_endpoint_passes_to_the_new_supervisor(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}/livez"
    served = Served(tmp_path, workers=1, drain_delay=0.2,
                    args=("--metrics-bind", f"127.0.0.1:{port}"))
    successor = None
    try:
        with served:
            served.wait_ready()
            assert served.proc is not None
            old = served.proc.pid
            assert httpx.get(endpoint, timeout=30).json()["pid"] == old
            os.kill(old, signal.SIGUSR2)
            assert served.proc.wait(60) == 0
            # The same socket, inherited: no new bind, so no port conflict with the old one.
            successor = int(httpx.get(endpoint, timeout=30).json()["pid"])
            assert successor != old
            assert "cannot bind the metrics endpoint" not in served.log()
    finally:
        if successor is not None and _alive(successor):
            os.kill(successor, signal.SIGTERM)
            wait_for(lambda: not _alive(successor), what="the new supervisor stopped")
