"""Bad input to ``fournines serve``: one clear line, a non-zero exit, never a traceback.

Each case runs the real CLI in a subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from ._supervisor import ROOT, Served, run_cli


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    errors = [line for line in result.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stdout
    return errors[0]


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return run_cli(tmp_path, "--bind", "127.0.0.1:0", "--app-dir", str(ROOT),
                   "--drain-delay", "0", *args, env=env)


def test_an_unknown_app_module(tmp_path: Path) -> None:
    line = _error_line(_serve(tmp_path, "no_such_module_here:app"))
    assert line.startswith("fournines serve: error: worker failed to start: cannot load "
                           "no_such_module_here:app: ModuleNotFoundError")


def test_an_unknown_app_attribute(tmp_path: Path) -> None:
    line = _error_line(_serve(tmp_path, "tests.serve.apps.versioned:nope"))
    assert "has no attribute 'nope'" in line


def test_an_app_path_without_attribute(tmp_path: Path) -> None:
    result = _serve(tmp_path, "tests.serve.apps.versioned")
    assert result.returncode == 2
    assert "must be 'module:attribute'" in _error_line(result)


def test_an_app_factory_that_raises(tmp_path: Path) -> None:
    line = _error_line(_serve(tmp_path, "--factory", "tests.serve.apps.versioned:make_app",
                              env={"FACTORY_FAILS": "1"}))
    assert "RuntimeError: the factory could not build the app" in line


def test_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(tmp_path, "tests.serve.apps.versioned:app", "--bind",
                         f"127.0.0.1:{port}")
    line = _error_line(result)
    assert line == (f"fournines serve: error: cannot bind 127.0.0.1:{port}: "
                    "Address already in use")


def test_a_malformed_bind(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "tests.serve.apps.versioned:app", "--bind", "localhost")
    assert result.returncode == 2
    assert "must be HOST:PORT" in _error_line(result)


def test_drain_settings_longer_than_the_grace_period(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "tests.serve.apps.versioned:app", "--drain-delay", "20",
                     "--drain-timeout", "20", "--grace-period", "30")
    assert result.returncode == 2
    assert "grace_period" in _error_line(result)


def test_a_control_socket_in_use_by_a_running_supervisor(tmp_path: Path) -> None:
    control = Path("/tmp") / f"fn-ctl-{os.getpid()}-inuse.sock"
    with Served(tmp_path, workers=1, args=("--control", str(control))) as served:
        served.wait_ready()
        line = _error_line(_serve(tmp_path, "tests.serve.apps.versioned:app",
                                  "--control", str(control)))
    assert line == (f"fournines serve: error: control socket {control} is in use by a "
                    "running supervisor")


def test_a_control_path_that_is_not_a_socket_is_refused_and_kept(tmp_path: Path) -> None:
    control = tmp_path / "precious.txt"
    control.write_text("keep me")
    line = _error_line(_serve(tmp_path, "tests.serve.apps.versioned:app",
                              "--control", str(control)))
    assert "exists and is not a socket" in line
    assert control.read_text() == "keep me"
