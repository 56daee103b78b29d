"""Django and Flask apps under real gunicorn (sync and gthread workers), protected by fournines."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._gunicorn import Gunicorn, Reply, Sent, get, open_loop

MATRIX = [(app, worker) for app in ("flask", "django") for worker in ("sync", "gthread")]


@pytest.fixture(scope="module", params=MATRIX, ids=[f"{a}-{w}" for a, w in MATRIX])
def server(request: pytest.FixtureRequest) -> Iterator[Gunicorn]:
    app, worker = request.param
    with Gunicorn(app, worker=worker) as running:
        yield running


def test_health_probes_answer(server: Gunicorn) -> None:
    for path in ("/livez", "/readyz", "/startupz", "/healthz"):
        reply = get(server.port, path)
        assert reply.status == 200, (path, reply)
        assert reply.headers["content-type"] == "application/health+json"
    assert json.loads(get(server.port, "/healthz").body)["phase"] == "ready"


def test_metrics_carry_the_frameworks_route_template(server: Gunicorn) -> None:
    assert get(server.port, "/orders/7").status == 200
    assert get(server.port, "/orders/8").status == 200
    text = get(server.port, "/metrics").body.decode()
    line = next(line for line in text.splitlines()
                if line.startswith('http_requests_total{method="GET",'
                                   'route="/orders/<int:order_id>",status="200"}'))
    assert float(line.split()[-1]) >= 2
    assert "/orders/7" not in text
    assert "http_request_duration_seconds_bucket" in text


def test_the_view_sees_the_callers_deadline(server: Gunicorn) -> None:
    reply = get(server.port, "/orders/7", {"x-request-timeout-ms": "2000"})
    remaining = json.loads(reply.body)["remaining"]
    assert 0 < remaining <= 2.0
    assert json.loads(get(server.port, "/orders/7").body)["remaining"] is None


def test_an_expired_request_is_dropped_with_504(server: Gunicorn) -> None:
    reply = get(server.port, "/orders/7", {"x-request-timeout-ms": "0"})
    assert reply.status == 504
    assert reply.headers["content-type"] == "application/problem+json"
    assert json.loads(reply.body)["status"] == 504


def test_every_response_names_the_instance(server: Gunicorn) -> None:
    assert get(server.port, "/orders/1").headers.get("x-instance-id")
    assert get(server.port, "/livez").headers.get("x-instance-id")


def test_metrics_of_several_workers_are_merged(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with Gunicorn("flask", worker="gthread", workers=2, env=env) as server:
        for n in range(20):
            assert get(server.port, f"/orders/{n}").status == 200
        # Whichever worker answers the scrape, it reports every worker's requests.
        for _ in range(4):
            text = get(server.port, "/metrics").body.decode()
            line = next(line for line in text.splitlines()
                        if line.startswith('http_requests_total{method="GET",'
                                           'route="/orders/<int:order_id>",status="200"}'))
            assert float(line.split()[-1]) == 20


# -- shedding under open-loop overload ----------------------------------------------

def _overload(server: Gunicorn, *, stamp: str | None = None) -> list[Sent]:
    # /work holds a thread for 20 ms: 2 threads serve about 100/s; 300/s is 3x that.
    return open_loop(server.port, "/work?ms=20", rate=300, seconds=2.0, stamp=stamp)


@pytest.mark.parametrize("app", ["flask", "django"])
def test_gthread_sheds_overload_with_503_and_keeps_serving(app: str) -> None:
    with Gunicorn(app, worker="gthread", threads=2) as server:
        sent = _overload(server)
        statuses = [s.reply.status for s in sent]
        shed = [s.reply for s in sent if s.reply.status == 503]
        assert shed, "3x overload shed nothing"
        assert all(r.headers.get("retry-after") == "1" for r in shed)
        assert all(json.loads(r.body)["status"] == 503 for r in shed)
        assert statuses.count(200) > 0  # goodput under overload
        assert set(statuses) <= {200, 503}
        # Below the limit again: every request is served.
        assert [get(server.port, "/work?ms=1").status for _ in range(20)] == [200] * 20
        text = get(server.port, "/metrics").body.decode()
        assert 'fournines_rejections_total{' in text and 'policy="load_shedder"' in text


def test_sync_workers_shed_on_the_proxys_request_start_stamp() -> None:
    env = {"REQUEST_START_HEADER": "x-request-start"}
    with Gunicorn("flask", worker="sync", workers=2, env=env) as server:
        sent = _overload(server, stamp="x-request-start")
        statuses = [s.reply.status for s in sent]
        assert statuses.count(503) > 0
        assert statuses.count(200) > 0
        assert set(statuses) <= {200, 503}
        assert [get(server.port, "/work?ms=1", {"x-request-start": f"t={time.time():.6f}"})
                .status for _ in range(10)] == [200] * 10


# -- SIGTERM under load -------------------------------------------------------------

@pytest.mark.parametrize(("app", "worker"), MATRIX, ids=[f"{a}-{w}" for a, w in MATRIX])
def test_sigterm_under_load_fails_no_request_that_arrived_before_readiness_failed(
        app: str, worker: str) -> None:
    server = Gunicorn(app, worker=worker, workers=2, threads=4,
                      env={"DRAIN_DELAY": "1.5"}).start()
    try:
        stop = threading.Event()
        readiness_failed: list[float] = []
        results: list[Sent] = []

        def load() -> None:
            results.extend(open_loop(server.port, "/work?ms=10", rate=60, seconds=15.0,
                                     stop=stop))

        def probe() -> None:
            while not stop.is_set():
                at = time.monotonic()
                reply: Reply = get(server.port, "/readyz", timeout=2.0)
                if reply.status != 200:
                    readiness_failed.append(at)
                    return
                time.sleep(0.02)

        loader = threading.Thread(target=load)
        prober = threading.Thread(target=probe)
        loader.start()
        prober.start()
        time.sleep(1.0)
        server.terminate()
        assert server.proc is not None
        server.proc.wait(timeout=20)
        stop.set()
        loader.join()
        prober.join()
        assert readiness_failed, "readiness never failed"
        before = [s for s in results if s.at < readiness_failed[0]]
        assert len(before) > 30
        failed = [s for s in before if s.reply.status != 200]
        assert failed == [], server.log()
        # Readiness failed first: the workers went on serving while load balancers
        # would take them out.
        after = [s for s in results if s.at > readiness_failed[0]]
        assert any(s.reply.status == 200 for s in after)
        assert server.proc.returncode == 0
    finally:
        server.stop()
