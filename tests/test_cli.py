"""Specification of the command line (the lab's options; the lab itself: tests/lab)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fournines.cli import main


def test_lab_help_lists_every_option() -> None:
    done = subprocess.run([sys.executable, "-m", "fournines", "lab", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    for option in ("--duration", "--rate", "--seed", "--scenario", "--out", "--json",
                   "--redis", "--prometheus", "--etcd"):
        assert option in done.stdout


def test_lab_rejects_a_duration_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["lab", "--duration", "0"])
    assert info.value.code == 2
    assert "--duration must be between" in capsys.readouterr().err


def test_lab_says_plainly_that_etcd_discovery_is_not_built(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["lab", "--etcd", "http://127.0.0.1:2379"])
    assert info.value.code == 2
    assert "--etcd: service discovery is not built yet" in capsys.readouterr().err


def test_lab_names_a_broken_scenario_file_and_starts_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text("faults:\n  - {kind: meteor, at: 1, duration: 1}\n")
    with pytest.raises(SystemExit) as info:
        main(["lab", "--scenario", str(scenario), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{scenario}: faults[0].kind must be one of" in err


def test_lab_with_an_unreachable_redis_stops_before_starting_anything(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fournines", "lab", "--redis", "redis://127.0.0.1:1/0",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "--redis: no Redis answers at redis://127.0.0.1:1/0" in done.stdout
    assert not (tmp_path / "report.html").exists()


def test_lab_rejects_a_rate_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    for rate in ("0", "nan", "1e9"):
        with pytest.raises(SystemExit) as info:
            main(["lab", "--rate", rate])
        assert info.value.code == 2
        assert "--rate must be between" in capsys.readouterr().err


def test_lab_names_an_output_folder_it_cannot_create_before_running(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        main(["lab", "--out", str(taken / "report")])
    assert info.value.code == 2
    assert f"--out {taken / 'report'}: cannot create the folder" in capsys.readouterr().err
