"""``fournines config get|set|watch|history`` end to end against a real etcd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fournines.cli import main

from .._servers import EtcdServer
from ._helpers import etcdctl, etcdctl_revision

SCHEMA = """
from dataclasses import dataclass, field

@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    per_second: float = 10.0

    def __post_init__(self) -> None:
        if self.per_second <= 0:
            raise ValueError(f"Rate.per_second must be > 0, got {self.per_second!r}")

@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    rate: Rate = field(default_factory=Rate)
    retry_attempts: int = 3
"""


@pytest.fixture
def key() -> str:
    return f"test-{uuid.uuid4().hex[:12]}/payment/limits"


@pytest.fixture
def schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A schema module in the working directory, as an operator would have it."""
    name = f"limits_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(SCHEMA)
    monkeypatch.chdir(tmp_path)
    return f"{name}:Limits"


def run(*argv: str) -> int:
    return main(["config", *argv])


def test_set_then_get_round_trips_the_value(
    etcd: EtcdServer, key: str, schema: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("set", key, '{"rate": {"per_second": 5}}', "--endpoints", etcd.url,
               "--schema", schema) == 0
    revision = capsys.readouterr().out.strip()

    assert run("get", key, "--endpoints", etcd.url, "--schema", schema) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {"rate": {"per_second": 5.0}, "retry_attempts": 3}
    assert out.err.strip() == revision


@pytest.mark.parametrize(("value", "message"), [
    ('{"rate": {"per_second": "fast"}}', "field 'rate.per_second': expected float, got str"),
    ('{"rate": {"per_second": 0}}', "field 'rate.per_second': must be > 0"),
    ('{"rate": ', "invalid JSON at line 1"),
    ("rate: [\n", "invalid YAML at line"),
], ids=["wrong-type", "out-of-range", "invalid-json", "invalid-yaml"])
def test_set_refuses_a_bad_value_with_one_line_naming_key_and_field(
    etcd: EtcdServer, key: str, schema: str, capsys: pytest.CaptureFixture[str],
    value: str, message: str,
) -> None:
    assert run("set", key, value, "--endpoints", etcd.url, "--schema", schema) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert key in err and message in err
    assert run("get", key, "--endpoints", etcd.url) == 1  # nothing was written


def test_set_reads_the_value_from_a_file(
    etcd: EtcdServer, key: str, schema: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "limits.yaml").write_text("rate:\n  per_second: 2\nretry_attempts: 5\n")

    assert run("set", key, "--file", "limits.yaml", "--endpoints", etcd.url,
               "--schema", schema) == 0
    capsys.readouterr()
    assert run("get", key, "--endpoints", etcd.url, "--schema", schema) == 0
    assert json.loads(capsys.readouterr().out)["retry_attempts"] == 5


def test_history_lists_the_revisions_newest_first(
    etcd: EtcdServer, key: str, capsys: pytest.CaptureFixture[str],
) -> None:
    for n in (1, 2, 3):
        assert run("set", key, f'{{"retry_attempts": {n}}}', "--endpoints", etcd.url) == 0
    revisions = [line.split()[1] for line in capsys.readouterr().out.splitlines()]

    assert run("history", key, "--endpoints", etcd.url) == 0

    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == revisions[::-1]
    assert lines[0].split("\t")[1] == '{"retry_attempts": 3}'


def test_history_marks_past_values_the_schema_refuses(
    etcd: EtcdServer, key: str, schema: str, capsys: pytest.CaptureFixture[str],
) -> None:
    run("set", key, '{"retry_attempts": "x"}', "--endpoints", etcd.url)
    run("set", key, '{"retry_attempts": 4}', "--endpoints", etcd.url)
    capsys.readouterr()

    assert run("history", key, "--endpoints", etcd.url, "--schema", schema) == 0

    lines = capsys.readouterr().out.splitlines()
    assert "invalid" not in lines[0]
    assert "(invalid: expected int, got str 'x')" in lines[1]


def test_history_of_a_prefix_lists_each_state_deletions_included(
    etcd: EtcdServer, key: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("set", key, '{"rate": {"per_second": 5}, "retry_attempts": 2}', "--prefix",
               "--endpoints", etcd.url) == 0
    etcdctl(etcd.url, "put", f"{key}/retry_attempts", "4")
    etcdctl(etcd.url, "del", f"{key}/rate/per_second")
    deleted = etcdctl_revision(etcd.url)
    capsys.readouterr()

    assert run("history", key, "--prefix", "--endpoints", etcd.url) == 0

    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [json.loads(value) for _, value in lines] == [
        {"retry_attempts": 4},
        {"rate": {"per_second": 5}, "retry_attempts": 4},
        {"rate": {"per_second": 5}, "retry_attempts": 2},
    ]
    assert int(lines[0][0]) == deleted
    assert [int(revision) for revision, _ in lines] == sorted(
        (int(revision) for revision, _ in lines), reverse=True)


def test_history_of_a_prefix_starts_at_the_state_kept_by_the_last_compaction(
    etcd: EtcdServer, key: str, capsys: pytest.CaptureFixture[str],
) -> None:
    for n in range(1, 6):
        etcdctl(etcd.url, "put", f"{key}/retry_attempts", str(n))
    etcdctl(etcd.url, "put", f"{key}/rate/per_second", "7")
    etcdctl(etcd.url, "compact", str(etcdctl_revision(etcd.url) - 1))
    etcdctl(etcd.url, "put", f"{key}/retry_attempts", "6")

    assert run("history", key, "--prefix", "--limit", "5", "--endpoints", etcd.url) == 0

    values = [json.loads(line.split("\t")[1])
              for line in capsys.readouterr().out.splitlines()]
    assert values == [{"rate": {"per_second": 7}, "retry_attempts": 6},
                      {"rate": {"per_second": 7}, "retry_attempts": 5},
                      {"retry_attempts": 5}]


def test_history_of_an_empty_prefix_says_so_with_status_1(
    etcd: EtcdServer, key: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("history", key, "--prefix", "--endpoints", etcd.url) == 1
    assert "no key under the prefix" in capsys.readouterr().err


def test_an_unreachable_etcd_is_one_line_and_status_1(
    key: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("get", key, "--endpoints", "http://127.0.0.1:1", "--timeout", "0.5") == 1

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "etcd cannot be reached" in err


def test_a_bad_schema_flag_is_one_line_and_status_2(
    etcd: EtcdServer, key: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("set", key, "{}", "--endpoints", etcd.url, "--schema", "no_such_module:X") == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot import 'no_such_module'" in err


def test_watch_prints_the_value_then_each_change_and_refusals(
    etcd: EtcdServer, key: str, schema: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run("set", key, '{"retry_attempts": 1}', "--endpoints", etcd.url)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fournines", "config", "watch", key, "--endpoints", etcd.url,
         "--schema", schema, "--count", "2"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert first.split("\t")[1].strip() == '{"rate":{"per_second":10.0},"retry_attempts":1}'

        run("set", key, '{"retry_attempts": "many"}', "--endpoints", etcd.url)
        assert "refused" in proc.stderr.readline()
        run("set", key, '{"retry_attempts": 2}', "--endpoints", etcd.url)

        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert json.loads(out.split("\t")[1])["retry_attempts"] == 2
    assert proc.returncode == 0


def test_set_and_get_with_prefix_store_one_key_per_field(
    etcd: EtcdServer, key: str, schema: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("set", key, '{"rate": {"per_second": 5}}', "--prefix", "--endpoints", etcd.url,
               "--schema", schema) == 0
    capsys.readouterr()
    assert run("get", f"{key}/rate/per_second", "--endpoints", etcd.url) == 0
    assert json.loads(capsys.readouterr().out) == 5

    assert run("get", key, "--prefix", "--endpoints", etcd.url, "--schema", schema) == 0

    assert json.loads(capsys.readouterr().out) == {"rate": {"per_second": 5.0},
                                                  "retry_attempts": 3}
