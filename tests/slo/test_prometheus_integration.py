"""A real Prometheus scraping a real protected app: injected errors burn the budget,
``fournines slo budget`` sees it and the gate flips from 0 (proceed) to 1 (forbidden).

The SLO has a 7-day period, so the few seconds of data Prometheus holds are the whole
period: the traffic-weighted error ratio is that of those seconds, and half the
requests failing overspends a 1 % budget fifty times.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fournines._errors import ConfigurationError
from fournines.cli import main
from fournines.slo.prometheus import (
    PrometheusClient,
    PrometheusQueryError,
    PrometheusUnreachableError,
)
from fournines.slo.spec import error_ratio_query, load_spec

from .._prometheus import PrometheusServer
from .._servers import free_port
from ..asgi._uvicorn import UvicornProcess
from ._broken_prometheus import BODIES, RAW

SPEC = """
service: payment
slos:
  - name: availability
    objective: 99
    period: 7d
    sli:
      availability:
        selector: job="payment"
"""


class Traffic:
    """Steady requests on a thread; ``fail_share`` of them go to ``/fail``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fail_share = 0.0
        self.sent = {"/ok": 0, "/fail": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        owed = 0.0
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                owed += self.fail_share
                path = "/fail" if owed >= 1 else "/ok"
                owed -= 1 if path == "/fail" else 0
                client.get(path)
                self.sent[path] += 1
                time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def stack() -> Iterator[tuple[Traffic, PrometheusServer]]:
    with UvicornProcess("tests.slo._budget_app:app") as app, \
            PrometheusServer(targets=[f"127.0.0.1:{app.port}"], job="payment") as prometheus, \
            Traffic(app.url) as traffic:
        yield traffic, prometheus


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    status = main(list(argv))
    return status, capsys.readouterr().out


def test_injected_errors_burn_the_budget_and_close_the_gate(
        tmp_path: Path, stack: tuple[Traffic, PrometheusServer],
        capsys: pytest.CaptureFixture[str]) -> None:
    traffic, prometheus = stack
    spec_path = tmp_path / "slo.yaml"
    spec_path.write_text(SPEC)
    ratio_7d = error_ratio_query(load_spec(spec_path).slos[0], "7d")
    budget = ("slo", "budget", str(spec_path), "--prometheus", prometheus.url, "--json")
    gate = ("slo", "gate", str(spec_path), "--prometheus", prometheus.url)

    prometheus.wait_for(ratio_7d, lambda value: value is not None, timeout=20)
    status, out = run(capsys, *gate)
    assert status == 0, out
    assert "PROCEED" in out
    status, out = run(capsys, *budget)
    [healthy] = json.loads(out)["slos"]
    assert healthy["remaining_ratio"] == pytest.approx(1.0)
    assert healthy["requests"] > 0

    traffic.fail_share = 0.5
    prometheus.wait_for(ratio_7d, lambda value: value is not None and value > 0.05, timeout=20)
    status, out = run(capsys, *budget)
    [burnt] = json.loads(out)["slos"]
    assert burnt["remaining_ratio"] < -4  # over 5 % errors against a 1 % budget
    assert burnt["consumed_requests"] > 0
    assert burnt["burn_rates"]["5m"] > 5
    status, out = run(capsys, *gate)
    assert status == 1, out
    assert "BLOCKED" in out
    assert traffic.sent["/fail"] > 0


# --- the Prometheus reader against a real server --------------------------------------------


@pytest.fixture(scope="module")
def idle_prometheus() -> Iterator[PrometheusServer]:
    with PrometheusServer(targets=[]) as prometheus:
        yield prometheus


def test_reader_returns_one_value_or_none_for_nothing(idle_prometheus: PrometheusServer) -> None:
    with PrometheusClient(idle_prometheus.url) as client:
        assert client.value("vector(0.25)") == 0.25
        assert client.value("scalar(vector(3))") == 3.0
        assert client.value('http_requests_total{job="nothing"}') is None


def test_reader_treats_nan_from_zero_traffic_as_no_data(
        idle_prometheus: PrometheusServer) -> None:
    with PrometheusClient(idle_prometheus.url) as client:
        [sample] = client.query("vector(0) / vector(0)")
        assert sample.value != sample.value  # NaN as Prometheus sent it
        assert client.value("vector(0) / vector(0)") is None


def test_reader_refuses_several_series_where_one_is_expected(
        idle_prometheus: PrometheusServer) -> None:
    two = 'label_replace(vector(1), "a", "x", "", "") or label_replace(vector(2), "a", "y", "", "")'
    with PrometheusClient(idle_prometheus.url) as client, \
            pytest.raises(PrometheusQueryError, match=r"returned 2 series.*sum"):
        client.value(two)


def test_reader_names_the_query_prometheus_refused(idle_prometheus: PrometheusServer) -> None:
    with PrometheusClient(idle_prometheus.url) as client, \
            pytest.raises(PrometheusQueryError, match=r"refused the query 'rate\(': bad_data"):
        client.value("rate(")


def test_reader_refuses_range_vectors(idle_prometheus: PrometheusServer) -> None:
    with PrometheusClient(idle_prometheus.url) as client, \
            pytest.raises(PrometheusQueryError, match="matrix"):
        client.query("vector(1)[5m:1m]")


def test_reader_reports_a_server_that_is_not_prometheus() -> None:
    with UvicornProcess("tests.slo._budget_app:app") as app, PrometheusClient(app.url) as client, \
            pytest.raises(PrometheusUnreachableError, match=r"is .* a Prometheus server"):
        client.value("vector(1)")


def test_reader_reports_a_closed_port_as_unreachable() -> None:
    with PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=2) as client, \
            pytest.raises(PrometheusUnreachableError, match="cannot reach Prometheus"):
        client.value("vector(1)")


@pytest.fixture(scope="module")
def broken_prometheus() -> Iterator[str]:
    with UvicornProcess("tests.slo._broken_prometheus:app") as server:
        yield server.url


@pytest.mark.parametrize("case", sorted(BODIES))
def test_reader_reports_a_malformed_success_body_as_unusable(broken_prometheus: str,
                                                           case: str) -> None:
    with PrometheusClient(f"{broken_prometheus}/{case}") as client, \
            pytest.raises(PrometheusUnreachableError, match="malformed"):
        client.value("vector(1)")


@pytest.mark.parametrize(("case", "message"), [
    ("nested-100000-deep", "without a Prometheus API body"),
    ("17-mib", "answered more than 16777216 bytes"),
])
def test_reader_reports_a_hostile_answer_as_no_answer_without_recursing_or_hoarding(
        broken_prometheus: str, case: str, message: str) -> None:
    assert case in RAW
    with PrometheusClient(f"{broken_prometheus}/{case}") as client, \
            pytest.raises(PrometheusUnreachableError, match=message):
        client.value("vector(1)")


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:9/\x01", "http://:9090",
                                 "http://127.0.0.1:99999", "http://h:9090/?q=1", "ftp://h"])
def test_reader_refuses_a_url_it_cannot_use_before_any_request(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"PrometheusClient\.url must be"):
        PrometheusClient(url)


def test_gate_exits_2_on_a_malformed_answer(broken_prometheus: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "slo.yml"
    spec.write_text(SPEC)
    url = f"{broken_prometheus}/value-not-a-number"
    assert main(["slo", "gate", str(spec), "--prometheus", url]) == 2
    assert "NO DECISION" in capsys.readouterr().err


@pytest.mark.parametrize("timeout", [math.nan, math.inf, 0, -1])
def test_reader_refuses_a_timeout_that_is_not_a_positive_number(timeout: float) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        PrometheusClient("http://127.0.0.1:9090", timeout=timeout)
