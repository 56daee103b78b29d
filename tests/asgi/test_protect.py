"""Specification of protect(): one call, every part, in the right order."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fournines import ConfigurationError, TokenBucket, current_deadline
from fournines.asgi import Phase, RateLimitRule, ServiceState, protect
from fournines.asgi.server import find_state

from .._servers import free_port
from ._uvicorn import ROOT


async def order(request: Request) -> JSONResponse:
    deadline = current_deadline()
    return JSONResponse({
        "order": request.path_params["order_id"],
        "budget": None if deadline is None else deadline.remaining(),
    })


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/orders/{order_id}", order)])


def client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                             base_url="http://test")


async def test_probes_metrics_and_app_answer_through_one_call() -> None:
    service = protect(starlette_app(), service="orders", registry=CollectorRegistry())
    async with client(service) as http:
        assert (await http.get("/orders/7")).json()["order"] == "7"
        assert (await http.get("/livez")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        health = await http.get("/healthz")
        assert health.headers["content-type"].startswith("application/health+json")
        metrics = (await http.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/orders/{order_id}",status="200"} 1.0' \
        in metrics


async def test_responses_carry_the_instance_id() -> None:
    state = ServiceState(service="orders", instance="orders-7f9c")
    service = protect(starlette_app(), state=state, registry=CollectorRegistry())
    async with client(service) as http:
        assert (await http.get("/orders/1")).headers["x-instance-id"] == "orders-7f9c"


async def test_deadline_header_reaches_the_handler() -> None:
    service = protect(starlette_app(), registry=CollectorRegistry(), max_timeout=5)
    async with client(service) as http:
        budget = (await http.get("/orders/1", headers={"x-request-timeout-ms": "800"})).json()
    assert 0 < budget["budget"] <= 0.8


async def test_expired_deadline_is_answered_504_and_counted() -> None:
    registry = CollectorRegistry()
    service = protect(starlette_app(), registry=registry)
    async with client(service) as http:
        response = await http.get("/orders/1", headers={"x-request-timeout-ms": "0"})
        metrics = (await http.get("/metrics")).text
    assert response.status_code == 504
    assert 'status="504"' in metrics


async def test_rate_limit_factory_limits_each_client() -> None:
    service = protect(starlette_app(), registry=CollectorRegistry(),
                      rate_limit=lambda: TokenBucket(rate=0.001, capacity=2),
                      rate_limit_key="header:x-api-key")
    async with client(service) as http:
        alice = [await http.get("/orders/1", headers={"x-api-key": "alice"}) for _ in range(3)]
        bob = await http.get("/orders/1", headers={"x-api-key": "bob"})
    assert [r.status_code for r in alice] == [200, 200, 429]
    assert "retry-after" in alice[2].headers
    assert bob.status_code == 200


async def test_probes_are_never_rate_limited() -> None:
    rule = RateLimitRule(name="everyone", limiter=lambda: TokenBucket(rate=0.001, capacity=1),
                         key="global")
    service = protect(starlette_app(), registry=CollectorRegistry(), rate_limit=[rule])
    async with client(service) as http:
        await http.get("/orders/1")
        assert (await http.get("/orders/1")).status_code == 429
        assert (await http.get("/readyz")).status_code == 200


async def test_draining_state_fails_readiness_but_keeps_serving() -> None:
    state = ServiceState()
    service = protect(starlette_app(), state=state, registry=CollectorRegistry())
    async with client(service) as http:
        await http.get("/livez")  # first request marks a lifespan-less app ready
        state.mark_draining()
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get("/orders/1")).status_code == 200


def test_serve_finds_the_shared_state() -> None:
    state = ServiceState()
    assert find_state(protect(starlette_app(), state=state,
                              registry=CollectorRegistry())) is state


def test_bad_rate_limit_names_the_parameter() -> None:
    with pytest.raises(ConfigurationError, match=r"protect\.rate_limit"):
        protect(starlette_app(), registry=CollectorRegistry(), rate_limit=[42])  # type: ignore[list-item]


async def test_state_turns_ready_after_lifespan_startup() -> None:
    state = ServiceState()
    service = protect(starlette_app(), state=state, registry=CollectorRegistry())
    messages = iter([{"type": "lifespan.startup"}])
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        try:
            return next(messages)
        except StopIteration:
            await asyncio.sleep(3600)
            raise

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    task = asyncio.create_task(service({"type": "lifespan", "asgi": {"version": "3.0"}},
                                       receive, send))  # type: ignore[arg-type]
    for _ in range(100):
        if sent:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert sent[0]["type"] == "lifespan.startup.complete"
    assert state.phase is Phase.READY


def test_example_fastapi_app_serves_and_drains_on_sigterm() -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "examples/fastapi_app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < end, "the example never became ready"
            time.sleep(0.05)
        answer = httpx.get(base + "/orders/42", headers={"x-request-timeout-ms": "900"})
        assert answer.json()["order"] == "42"
        assert 0 < answer.json()["budget_left_s"] <= 0.9
        health = json.loads(httpx.get(base + "/healthz").text)
        assert health["serviceId"] == "orders"
        assert "http_requests_total" in httpx.get(base + "/metrics").text
        proc.send_signal(signal.SIGTERM)
        saw_503 = False
        while proc.poll() is None and not saw_503:
            try:
                saw_503 = httpx.get(base + "/readyz", timeout=1).status_code == 503
            except httpx.HTTPError:
                break
        assert saw_503, "readiness never turned 503 after SIGTERM"
        assert proc.wait(40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_instance_log_filter_names_the_instance(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from fournines.asgi import InstanceLogFilter

    state = ServiceState(service="orders", instance="orders-1")
    logger = logging.getLogger("test.instance")
    logger.addFilter(InstanceLogFilter(state))
    with caplog.at_level(logging.INFO, logger="test.instance"):
        logger.info("hello")
    assert caplog.records[0].instance_id == "orders-1"  # type: ignore[attr-defined]
    assert caplog.records[0].service == "orders"  # type: ignore[attr-defined]


async def test_metrics_survive_a_malformed_accept_header() -> None:
    service = protect(starlette_app(), registry=CollectorRegistry())
    async with client(service) as http:
        for accept in ("text/plain;version=abc", "application/openmetrics-text; version=1.x"):
            response = await http.get("/metrics", headers={"accept": accept})
            assert response.status_code == 200
            assert "http_requests_in_flight" in response.text


async def test_a_reused_response_message_is_not_mutated() -> None:
    start = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"text/plain")]}

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        await send(start)  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    service = protect(app, registry=CollectorRegistry())  # type: ignore[arg-type]
    async with client(service) as http:
        for _ in range(3):
            assert (await http.get("/x")).headers["x-instance-id"]
    assert start["headers"] == [(b"content-type", b"text/plain")]


async def test_idle_scrape_reports_no_request_in_flight() -> None:
    service = protect(starlette_app(), registry=CollectorRegistry())
    async with client(service) as http:
        text = (await http.get("/metrics")).text
    assert "http_requests_in_flight 0.0" in text


def test_closing_the_metrics_removes_their_event_listener() -> None:
    from fournines._events import global_listeners
    from fournines.asgi.metrics import MetricsMiddleware

    before = len(global_listeners())
    metrics = MetricsMiddleware(starlette_app(), registry=CollectorRegistry(),
                                resilience_events=True)
    assert len(global_listeners()) == before + 1
    metrics.close()
    assert len(global_listeners()) == before


def test_a_new_event_loop_gets_a_fresh_lag_signal() -> None:
    from fournines.asgi import LoadShedder

    async def blocking(scope: dict[str, object], receive: object, send: object) -> None:
        time.sleep(0.3)  # wedges the loop: the sampler sees lag
        await asyncio.sleep(0.1)
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    shedder = LoadShedder(blocking, max_loop_lag=0.1, lag_interval=0.01)  # type: ignore[arg-type]

    async def one() -> int:
        async with client(shedder) as http:
            return (await http.get("/x")).status_code

    first = asyncio.new_event_loop()
    assert first.run_until_complete(one()) == 200
    first.close()  # without cancelling the sampler task
    second = asyncio.new_event_loop()
    try:
        assert second.run_until_complete(one()) == 200
    finally:
        second.close()


def test_a_non_ascii_instance_id_is_made_header_safe() -> None:
    assert ServiceState(instance="节点-1").instance == "%E8%8A%82%E7%82%B9-1"
