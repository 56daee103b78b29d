"""The seed's steps (deploys, the database, the queue): parsing, refusals, and one real run.

The run plays ``examples/lab/whole-seed.yaml`` shortened to 16 s of load per
variant, with a private PostgreSQL the lab starts and the machine's RabbitMQ (a
vhost of the lab's own). No timing thresholds: the report's sections, and the
invariants the steps promise (the protected ledger intact, its confirmations
exactly once).
"""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fournines import ConfigurationError
from fournines.lab import steps as steps_module
from fournines.lab.fleet import LabError, free_port
from fournines.lab.scenario import (
    STEP_KINDS,
    check_etcd,
    load_scenario,
    parse_scenario,
)
from fournines.lab.steps import check_servers

from .._servers import require_binary

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "lab"
WHOLE = EXAMPLES / "whole-seed.yaml"


def _one(kind: str, **fields: Any) -> Any:
    return parse_scenario({"faults": [{"kind": kind, "at": 1, "duration": 2, **fields}]},
                          source="s.yaml")


def test_every_step_is_in_an_example_file_of_its_own() -> None:
    for kind in STEP_KINDS:
        path = EXAMPLES / f"{kind.replace('_', '-')}.yaml"
        assert {f.kind for f in load_scenario(path).faults} == {kind}, path
    assert {f.kind for f in load_scenario(WHOLE).faults} == set(STEP_KINDS)


def test_a_rolling_deploy_names_the_service_it_deploys() -> None:
    assert _one("rolling_deploy", service="profile").faults[0].service == "profile"
    assert _one("rolling_deploy").faults[0].label() == "rolling_deploy (order)"


def test_a_rolling_deploy_of_an_unknown_service_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigurationError, match=r"faults\[0\]\.service must be one of "
                                                 r"gateway, order, payment, profile"):
        _one("rolling_deploy", service="billing")


def test_a_service_on_another_kind_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"service is only for rolling_deploy"):
        _one("db_storm", service="order")


def test_a_storm_s_concurrency_must_be_a_positive_integer() -> None:
    assert _one("db_storm", concurrency=4).faults[0].concurrency == 4
    with pytest.raises(ConfigurationError, match=r"faults\[0\]\.concurrency must be an integer"):
        _one("db_storm", concurrency=0.5)


def test_overlapping_restarts_of_the_database_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="overlaps"):
        parse_scenario({"faults": [{"kind": "db_restart", "at": 1, "duration": 3},
                                   {"kind": "db_restart", "at": 2, "duration": 3}]})


def test_a_rolling_deploy_behind_the_registry_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="run it without --etcd"):
        check_etcd(_one("rolling_deploy"), "")


def test_a_consumer_kill_without_rabbitmq_is_refused_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A port nobody listens on: the broker is missing, and the message says so.
    monkeypatch.setenv("FOURNINES_LAB_AMQP_URL", f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    with pytest.raises(LabError) as info:
        check_servers(_one("consumer_kill"))
    message = str(info.value)
    assert message.startswith("s.yaml: cannot play these steps here: consumer_kill needs "
                              "RabbitMQ: no RabbitMQ answers at amqp://guest:***@127.0.0.1:")


def test_a_database_step_without_postgresql_is_refused_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a machine without the postgresql package and no server on the URL.
    monkeypatch.setattr(steps_module, "_postgres_binaries", lambda: None)
    monkeypatch.setenv("FOURNINES_LAB_POSTGRES_URL",
                       f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    with pytest.raises(LabError, match=r"db_storm need PostgreSQL: initdb and pg_ctl are not "
                                       "installed .* no PostgreSQL answers at"):
        check_servers(_one("db_storm"))
    with pytest.raises(LabError, match="db_restart stops and starts a private PostgreSQL, but "
                                       "initdb and pg_ctl are not installed"):
        check_servers(_one("db_restart"))


def test_a_scenario_without_steps_needs_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOURNINES_LAB_AMQP_URL", f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    check_servers(_one("profile_kill"))


# -- one real run of every step --------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if steps_module._postgres_binaries() is None:
        require_binary("initdb", "postgresql")  # fails (or skips) naming the package
    out = tmp_path_factory.mktemp("lab-steps")
    done = subprocess.run(
        [sys.executable, "-m", "fournines", "lab", "--scenario", str(WHOLE),
         "--duration", "16", "--seed", "3", "--out", str(out), "--json",
         str(out / "lab.json")],
        capture_output=True, text=True, timeout=400, check=False, cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    data: dict[str, Any] = json.loads((out / "lab.json").read_text())
    data["_stdout"] = done.stdout
    data["_html"] = (out / "report.html").read_text()
    return data


def test_every_step_was_applied_and_undone_in_both_variants(report: dict[str, Any]) -> None:
    assert report["problems"] == []
    kinds = {e["fault"].partition(" ")[0] for e in report["fault_log"]}
    assert kinds == set(STEP_KINDS)
    assert not [e for e in report["fault_log"] if "error" in e]
    assert report["step_servers"]["postgres"].startswith("a private cluster the lab started")
    assert "rabbitmq" in report["step_servers"]


def test_the_rolling_deploy_counts_the_pages_served_during_it(report: dict[str, Any]) -> None:
    for variant in ("unprotected", "protected"):
        (deploy,) = report["steps"][variant]["rolling_deploy"]
        assert deploy["service"] == "order" and deploy["ok"] is True
        assert deploy["pages"] > 0
        assert deploy["served"] + deploy["failed"] == deploy["pages"]
    assert report["steps"]["protected"]["rolling_deploy"][0]["how"].startswith(
        "fournines serve: rolling reload")
    assert report["steps"]["unprotected"]["rolling_deploy"][0]["how"].startswith("stop")
    assert "rolling deploy of order" in report["_stdout"]


def test_the_protected_payment_retried_transactions_in_the_storm(report: dict[str, Any]) -> None:
    db = report["steps"]["protected"]["database"]
    storm = next(w for w in db["windows"] if w["fault"].startswith("db_storm"))
    assert db["storm_payments"] > 0
    assert storm["transaction_retries"] > 0
    assert report["steps"]["unprotected"]["database"]["transaction_retries"] == 0


def test_no_payment_was_applied_twice_or_lost_in_either_variant(report: dict[str, Any]) -> None:
    for variant in ("unprotected", "protected"):
        db = report["steps"][variant]["database"]
        assert db["applied_twice"] == 0 and db["no_payment_applied_twice"] is True
        assert db["lost"] == 0 and db["money_conserved"] is True and db["balances_off"] == 0
        assert db["applied"] >= db["acknowledged"] > 0


def test_the_restart_failed_writes_that_were_sent_again(report: dict[str, Any]) -> None:
    for variant in ("unprotected", "protected"):
        db = report["steps"][variant]["database"]
        restart = next(w for w in db["windows"] if w["fault"].startswith("db_restart"))
        assert restart["failed"] > 0
        assert db["resent"] >= db["failed_attempts"] - db["never_acknowledged"]


def test_the_protected_confirmations_are_exactly_once_after_the_kill(
        report: dict[str, Any]) -> None:
    confirmations = report["steps"]["protected"]["database"]["confirmations"]
    assert report["steps"]["protected"]["database"]["exactly_once"] is True
    assert confirmations["exactly_once"] == confirmations["payments"] > 0
    assert len(confirmations["kills"]) == 1
    assert "confirmations" in report["steps"]["unprotected"]["database"]


def test_the_report_shows_the_steps_section(report: dict[str, Any]) -> None:
    assert '<h2 id="steps">' in report["_html"]
    for text in ("ledger OK", "confirmations (outbox -> RabbitMQ -> consumer)",
                 "transaction retries by the payment service", "consumer SIGKILLed at"):
        assert text in report["_stdout"], text
        assert html.escape(text) in report["_html"], text
