"""Specification of the command line (the lab's options; the lab itself: tests/lab)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import fournines
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


def test_lab_refuses_the_registry_scenario_without_etcd_and_starts_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = Path(__file__).resolve().parents[1] / "examples" / "lab" / "registry.yaml"
    with pytest.raises(SystemExit) as info:
        main(["lab", "--scenario", str(scenario), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{scenario}: faults[0] is instance_kill, which needs the fleet behind the " \
           "registry" in err
    assert "run `fournines lab --etcd`" in err
    assert not (tmp_path / "out").exists()


def test_lab_refuses_an_etcd_url_it_cannot_use(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["lab", "--etcd", "ftp://127.0.0.1:2379"])
    assert info.value.code == 2
    assert "must be etcd client URLs like 'http://127.0.0.1:2379'" in capsys.readouterr().err


def test_lab_with_an_unreachable_etcd_stops_before_starting_anything(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fournines", "lab", "--etcd", "http://127.0.0.1:1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "--etcd: no etcd answers at http://127.0.0.1:1" in done.stdout
    assert not (tmp_path / "report.html").exists()


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


# -- every command family: version, usage of the subcommand, flag names, exit codes ------
#
# The convention (README §"Exit status"): 0 done; 1 the command ran and its check failed or
# its work could not be done (the gate forbids, the lab's fleet did not run, a server
# could not listen); 2 the command line or an input file is wrong (and, for the SLO
# commands, Prometheus could not tell: a gate that cannot see never says yes).


def _environment() -> dict[str, str]:
    source = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": source}


def test_version_prints_the_package_version() -> None:
    done = subprocess.run([sys.executable, "-m", "fournines", "--version"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env=_environment())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"fournines {fournines.__version__}"


def test_a_lab_usage_error_prints_the_lab_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["lab", "--duration", "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("usage: fournines lab ")


def test_a_chaos_proxy_usage_error_prints_the_proxy_usage(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["chaos", "proxy", "--port", "99999"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fournines chaos proxy ")
    assert "--port must be between 0 and 65535, got 99999" in err


@pytest.mark.parametrize(("argv", "prog"), [
    (["lab", "--bogus"], "fournines lab"),
    (["slo", "check", "spec.yml", "--bogus"], "fournines slo check"),
    (["chaos", "proxy", "--bogus"], "fournines chaos proxy"),
])
def test_an_unknown_flag_is_named_with_the_subcommands_usage(
        argv: list[str], prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {prog} ")
    assert f"{prog}: error: unrecognized arguments: --bogus" in err


def test_chaos_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["chaos"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("usage: fournines chaos ")


def test_slo_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["slo"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("usage: fournines slo ")


def test_gate_thresholds_out_of_order_name_the_flags(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["slo", "gate", str(tmp_path / "spec.yaml"), "--prometheus", "http://127.0.0.1:1",
              "--proceed-at", "10", "--block-below", "15"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fournines slo gate ")
    assert "--block-below (15) must be at most --proceed-at (10)" in err
    assert "GatePolicy" not in err
    assert "_percent" not in err


def test_gate_threshold_out_of_range_names_the_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["slo", "gate", str(tmp_path / "spec.yaml"), "--prometheus", "http://127.0.0.1:1",
              "--approval-below", "-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--approval-below must be between 0 and 100, got -1" in err
    assert "GatePolicy" not in err


@pytest.mark.parametrize("command", ["budget", "gate"])
def test_a_bad_prometheus_timeout_names_the_flag(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["slo", command, str(tmp_path / "spec.yaml"), "--prometheus",
              "http://127.0.0.1:1", "--timeout", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: fournines slo {command} ")
    assert "--timeout must be a positive number of seconds, got 0" in err
    assert "PrometheusClient" not in err


def test_slo_check_of_a_missing_spec_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["slo", "check", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_remediate_with_a_bad_listen_names_the_flag_and_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["remediate", "--config", str(tmp_path / "missing.yaml"), "--listen", "nope"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fournines remediate ")
    assert "--listen must be HOST:PORT, got 'nope'" in err


def test_chaos_proxy_on_a_port_in_use_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["chaos", "proxy", "--port", str(port)]) == 1
    assert "fournines chaos proxy:" in capsys.readouterr().err


def test_the_labs_error_is_a_fournines_error_and_still_a_runtime_error() -> None:
    from fournines.lab.fleet import LabError

    assert issubclass(LabError, fournines.FourNinesError)
    assert issubclass(LabError, RuntimeError)


def test_chaos_proxy_with_a_bad_config_entry_names_the_flag_and_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "proxies.json"
    config.write_text('[{"name": "x"}]')
    assert main(["chaos", "proxy", "--port", "0", "--config", str(config)]) == 2
    assert f"--config {config}: missing required field: upstream" in capsys.readouterr().err


def test_a_broken_spec_is_named_by_the_subcommand_and_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("service: [unclosed\n")
    assert main(["slo", "dashboard", str(spec)]) == 2
    assert capsys.readouterr().err.startswith(f"fournines slo dashboard: {spec}")
