"""Hostile input to every CLI: one line naming the problem, the documented exit code, no traceback.

Each test runs the real command (``python -m fournines ...``, this worktree's sources first
on ``PYTHONPATH``) as a CI job or an operator would, and reads its exit status and stderr.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")

SPEC = """\
service: payment
slos:
  - name: availability
    objective: 99.9
    sli:
      availability:
        selector: job="payment"
"""


def fournines(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "fournines", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": path, "COLUMNS": "200"})


def refused(done: subprocess.CompletedProcess[str], status: int, *words: str) -> str:
    """The command exited ``status`` with one stderr line that contains ``words``."""
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.returncode == status, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def deep_yaml(levels: int) -> str:
    return "a: " + "[" * levels + "]" * levels + "\n"


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:9/\x01", "http://127.0.0.1:99999"])
def test_the_gate_given_a_prometheus_url_it_cannot_use_makes_no_decision(
        tmp_path: Path, spec: Path, url: str) -> None:
    done = fournines("slo", "gate", str(spec), "--prometheus", url, cwd=tmp_path)
    refused(done, 2, "NO DECISION", "--prometheus")


def test_budget_given_a_prometheus_url_it_cannot_use_names_the_flag(
        tmp_path: Path, spec: Path) -> None:
    done = fournines("slo", "budget", str(spec), "--prometheus", "http://[::1", cwd=tmp_path)
    refused(done, 2, "--prometheus")


def test_the_gate_refuses_a_spec_nested_1000_levels_deep_without_deciding(tmp_path: Path) -> None:
    bomb = tmp_path / "deep.yaml"
    bomb.write_text(deep_yaml(1000))
    done = fournines("slo", "gate", str(bomb), "--prometheus", "http://127.0.0.1:9",
                     cwd=tmp_path)
    refused(done, 2, "NO DECISION", str(bomb), "nested")


@pytest.mark.parametrize("command", [["slo", "check"], ["slo", "rules"], ["slo", "dashboard"],
                                     ["slo", "budget"]])
def test_every_slo_command_refuses_a_deeply_nested_spec(tmp_path: Path,
                                                        command: list[str]) -> None:
    bomb = tmp_path / "deep.yaml"
    bomb.write_text(deep_yaml(1000))
    extra = ["--prometheus", "http://127.0.0.1:9"] if command[-1] == "budget" else []
    refused(fournines(*command, str(bomb), *extra, cwd=tmp_path), 2, str(bomb), "nested")


def test_a_spec_larger_than_the_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(SPEC + "# " + "x" * (2 * 1024 * 1024) + "\n")
    refused(fournines("slo", "check", str(big), cwd=tmp_path), 2, str(big), "larger than")


def test_the_lab_refuses_a_deeply_nested_scenario_and_starts_nothing(tmp_path: Path) -> None:
    bomb = tmp_path / "deep.yaml"
    bomb.write_text(deep_yaml(1000))
    done = fournines("lab", "--scenario", str(bomb), "--out", str(tmp_path / "out"),
                     cwd=tmp_path)
    refused(done, 2, str(bomb), "nested")
    assert not (tmp_path / "out" / "logs").exists()


def test_the_lab_refuses_a_scenario_larger_than_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n# " + "x" * (2 * 1024 * 1024) + "\n")
    done = fournines("lab", "--scenario", str(big), "--out", str(tmp_path / "out"),
                     cwd=tmp_path)
    refused(done, 2, str(big), "larger than")


def test_the_lab_refuses_overlapping_profile_kills_before_starting(tmp_path: Path) -> None:
    scenario = tmp_path / "kills.yaml"
    scenario.write_text("duration: 20\nfaults:\n"
                        "  - {kind: profile_kill, at: 2, duration: 6}\n"
                        "  - {kind: profile_kill, at: 5, duration: 6}\n")
    done = fournines("lab", "--scenario", str(scenario), "--out", str(tmp_path / "out"),
                     cwd=tmp_path)
    refused(done, 2, str(scenario), "faults[1]", "overlaps faults[0]")


def test_the_lab_refuses_a_load_this_machine_cannot_offer(tmp_path: Path) -> None:
    scenario = tmp_path / "flood.yaml"
    scenario.write_text("duration: 20\nrate: 5000\n"
                        "faults:\n  - {kind: overload, at: 2, duration: 5, factor: 20}\n")
    done = fournines("lab", "--scenario", str(scenario), "--out", str(tmp_path / "out"),
                     cwd=tmp_path)
    refused(done, 2, str(scenario), "rate")


def test_the_chaos_proxy_refuses_a_deeply_nested_config(tmp_path: Path) -> None:
    bomb = tmp_path / "deep.json"
    bomb.write_text("[" * 100_000 + "]" * 100_000)
    done = fournines("chaos", "proxy", "--port", "0", "--config", str(bomb), cwd=tmp_path)
    refused(done, 2, "--config", str(bomb), "nested")


def test_the_chaos_proxy_refuses_a_config_larger_than_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text("[" + " " * (2 * 1024 * 1024) + "]")
    done = fournines("chaos", "proxy", "--port", "0", "--config", str(big), cwd=tmp_path)
    refused(done, 2, "--config", str(big), "larger than")


def test_remediate_refuses_a_deeply_nested_config(tmp_path: Path) -> None:
    bomb = tmp_path / "deep.yaml"
    bomb.write_text(deep_yaml(1000))
    done = fournines("remediate", "--config", str(bomb), cwd=tmp_path)
    refused(done, 2, str(bomb), "nested")


def test_remediate_refuses_a_config_larger_than_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("listen: 127.0.0.1:0\n# " + "x" * (2 * 1024 * 1024) + "\n")
    done = fournines("remediate", "--config", str(big), cwd=tmp_path)
    refused(done, 2, str(big), "larger than")


def test_an_interrupted_gate_exits_130_without_a_traceback(tmp_path: Path, spec: Path) -> None:
    # A Prometheus that accepts the connection and never answers: the gate waits.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)
        gate = subprocess.Popen(
            [sys.executable, "-m", "fournines", "slo", "gate", str(spec), "--prometheus",
             f"http://127.0.0.1:{port}", "--timeout", "30"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": path})
        try:
            connection, _ = silent.accept()  # the gate is now waiting for its answer
            time.sleep(0.2)
            gate.send_signal(signal.SIGINT)
            out, err = gate.communicate(timeout=30)
            connection.close()
        finally:
            if gate.poll() is None:
                gate.kill()
                gate.wait()
    assert "Traceback" not in out + err
    assert gate.returncode == 130, err
    assert err.strip() == "fournines slo gate: interrupted"


def laughs() -> str:
    """A "billion laughs": nine aliases of nine aliases ..., 9 ** 9 values in a few lines."""
    anchors = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 9):
        anchors.append(f"&a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "[" + ", ".join(anchors) + "]"


@pytest.mark.parametrize(("command", "text"), [
    (["slo", "check"], "service: {bomb}\nslos: []\n"),
    (["lab", "--scenario"], "name: {bomb}\n"),
])
def test_an_alias_bomb_is_refused_before_anything_prints_it(
        tmp_path: Path, command: list[str], text: str) -> None:
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(text.format(bomb=laughs()))
    refused(fournines(*command, str(bomb), cwd=tmp_path), 2, str(bomb),
            "aliases are expanded")
