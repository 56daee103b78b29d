"""Specification of the command line and the policy demo behind `make lab`."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from fournines.cli import main
from fournines.lab import run_demo


def test_demo_shows_the_breaker_opening_on_failures() -> None:
    out = io.StringIO()
    result = run_demo(2.0, out=out)
    assert "closed->open" in result.transitions
    assert result.calls == result.full + result.degraded + sum(result.failed.values())
    assert result.degraded > 0  # the stale cache answered while payment was down
    assert "summary" in out.getvalue()


def test_lab_command_runs_the_demo_end_to_end() -> None:
    done = subprocess.run([sys.executable, "-m", "fournines", "lab", "--duration", "1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "circuit_breaker 'payment': closed -> open" in done.stdout


def test_lab_rejects_a_duration_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["lab", "--duration", "0"])
    assert info.value.code == 2
    assert "--duration must be between" in capsys.readouterr().err
