"""MetricsMiddleware: golden request metrics, the /metrics endpoint, multi-process mode.

Unit tests drive a small Starlette app through httpx.ASGITransport; the
integration tests run the app in real uvicorn processes and a real Prometheus.
"""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import fournines
from fournines import CircuitBreaker, CircuitOpenError, ConfigurationError
from fournines.asgi._state import ServiceState
from fournines.asgi._types import Receive, Scope, Send
from fournines.asgi.metrics import MetricsMiddleware
from fournines.asgi.routes import UNMATCHED

from .._prometheus import PrometheusServer
from ._uvicorn import UvicornProcess

ORDERS = "/orders/{order_id}"

async def order(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.path_params["order_id"])


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


async def slow(request: Request) -> PlainTextResponse:
    request.app.state.started.set()
    await request.app.state.release.wait()
    return PlainTextResponse("slow")


async def livez(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def guarded(request: Request) -> PlainTextResponse:
    breaker = CircuitBreaker("payments-metrics")
    breaker.force_open()
    try:
        breaker.call(lambda: None)
    except CircuitOpenError:
        return PlainTextResponse("fallback", status_code=503)
    return PlainTextResponse("ok")


def starlette_app() -> Starlette:
    return Starlette(routes=[
        Route(ORDERS, order, methods=["GET", "POST"]),
        Route("/boom", boom),
        Route("/slow", slow),
        Route("/livez", livez),
        Route("/guarded", guarded),
    ])


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def middleware(registry: CollectorRegistry) -> MetricsMiddleware:
    return MetricsMiddleware(starlette_app(), registry=registry)


def client_for(app: object, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app,  # type: ignore[arg-type]
                                    raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.fixture
async def client(middleware: MetricsMiddleware) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(middleware) as c:
        yield c


def requests_total(registry: CollectorRegistry, method: str, route: str, status: int) -> float:
    value = registry.get_sample_value(
        "http_requests_total", {"method": method, "route": route, "status": str(status)})
    return value or 0.0


def route_labels(registry: CollectorRegistry) -> set[str]:
    return {sample.labels["route"] for metric in registry.collect()
            if metric.name == "http_requests" for sample in metric.samples}


async def test_requests_are_counted_by_method_route_and_status(
        client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
    await client.get("/orders/1")
    await client.get("/orders/2")
    await client.post("/orders/3")
    await client.delete("/orders/4")
    assert requests_total(registry, "GET", ORDERS, 200) == 2
    assert requests_total(registry, "POST", ORDERS, 200) == 1
    assert requests_total(registry, "DELETE", ORDERS, 405) == 1


async def test_duration_histogram_counts_match_the_counter(
        client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
    for i in range(3):
        await client.get(f"/orders/{i}")
    labels = {"method": "GET", "route": ORDERS, "status": "200"}
    assert registry.get_sample_value("http_request_duration_seconds_count", labels) == 3
    assert registry.get_sample_value(
        "http_request_duration_seconds_bucket", {**labels, "le": "+Inf"}) == 3
    assert (registry.get_sample_value("http_request_duration_seconds_sum", labels) or 0) > 0


async def test_custom_buckets_are_the_histogram_bounds(registry: CollectorRegistry) -> None:
    app = MetricsMiddleware(starlette_app(), registry=registry, buckets=(0.1, 60.0))
    async with client_for(app) as client:
        await client.get("/orders/1")
        body = (await client.get("/metrics")).text
    bounds = {sample.labels["le"] for family in text_string_to_metric_families(body)
              if family.name == "http_request_duration_seconds"
              for sample in family.samples if "le" in sample.labels}
    assert bounds == {"0.1", "60.0", "+Inf"}
    labels = {"method": "GET", "route": ORDERS, "status": "200", "le": "60.0"}
    assert registry.get_sample_value("http_request_duration_seconds_bucket", labels) == 1


async def test_random_unmatched_paths_share_one_route_label(
        client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
    rng = random.Random(7)
    for _ in range(300):
        path = "/" + "/".join("".join(rng.choices(string.ascii_lowercase, k=8))
                              for _ in range(rng.randint(1, 4)))
        await client.get(path)
    assert route_labels(registry) == {UNMATCHED}
    assert requests_total(registry, "GET", UNMATCHED, 404) == 300


async def test_nonstandard_methods_share_one_method_label(
        client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
    for method in ("FOO", "BAR", "PROPFIND"):
        await client.request(method, "/orders/1")
    assert requests_total(registry, "_OTHER", ORDERS, 405) == 3


async def test_app_exception_counts_as_500_and_is_reraised(
        client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        await client.get("/boom")
    assert requests_total(registry, "GET", "/boom", 500) == 1


async def test_exception_before_any_response_counts_as_500(registry: CollectorRegistry) -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError("no response at all")

    app = MetricsMiddleware(failing, registry=registry, route_of=lambda scope: "/failing")
    async with client_for(app) as client:
        with pytest.raises(ValueError):
            await client.get("/anything")
    assert requests_total(registry, "GET", "/failing", 500) == 1


async def test_plain_asgi_app_is_labelled_by_route_of(registry: CollectorRegistry) -> None:
    async def plain(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def route_of(scope: Scope) -> str:
        return "/items/{id}" if scope["path"].startswith("/items/") else UNMATCHED

    app = MetricsMiddleware(plain, registry=registry, route_of=route_of)
    async with client_for(app) as client:
        await client.get("/items/1")
        await client.get("/items/2")
        await client.get("/other")
    assert requests_total(registry, "GET", "/items/{id}", 204) == 2
    assert requests_total(registry, "GET", UNMATCHED, 204) == 1


async def test_metrics_endpoint_serves_the_text_format(client: httpx.AsyncClient) -> None:
    await client.get("/orders/1")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"http_requests", "http_request_duration_seconds", "http_requests_in_flight",
            "event_loop_lag_seconds", "asyncio_tasks"} <= names


async def test_metrics_endpoint_speaks_openmetrics_when_asked(
        client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_metrics_endpoint_is_not_counted_itself(
        client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
    await client.get("/metrics")
    await client.get("/metrics")
    assert route_labels(registry) == set()


async def test_metrics_endpoint_refuses_other_methods(client: httpx.AsyncClient) -> None:
    response = await client.post("/metrics")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_probe_paths_are_not_counted(
        client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
    assert (await client.get("/livez")).status_code == 200
    assert route_labels(registry) == set()


async def test_in_flight_gauge_rises_during_a_request_and_returns_to_zero(
        middleware: MetricsMiddleware, client: httpx.AsyncClient,
        registry: CollectorRegistry) -> None:
    state = middleware.app.state  # type: ignore[attr-defined]
    started = state.started = asyncio.Event()
    release = state.release = asyncio.Event()
    request = asyncio.create_task(client.get("/slow"))
    await started.wait()
    assert registry.get_sample_value("http_requests_in_flight") == 1
    release.set()
    assert (await request).status_code == 200
    assert registry.get_sample_value("http_requests_in_flight") == 0


async def test_in_flight_gauge_ignores_what_the_state_counts(registry: CollectorRegistry) -> None:
    state = ServiceState(service="orders")
    app = MetricsMiddleware(starlette_app(), registry=registry, state=state)
    state.in_flight = 7  # LifecycleMiddleware's count: probes, scrapes and sheds included
    async with client_for(app) as client:
        await client.get("/orders/1")
    assert registry.get_sample_value("http_requests_in_flight") == 0


async def test_runtime_gauges_are_read_at_scrape(
        client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
    await client.get("/orders/1")
    body = (await client.get("/metrics")).text
    values = {sample.name: sample.value for family in text_string_to_metric_families(body)
              for sample in family.samples}
    assert values["asyncio_tasks"] >= 1  # this test's own task at least
    assert values["event_loop_lag_seconds"] >= 0


async def test_process_metrics_are_on_a_private_registry(client: httpx.AsyncClient) -> None:
    body = (await client.get("/metrics")).text
    names = {family.name for family in text_string_to_metric_families(body)}
    assert {"process_cpu_seconds", "python_info"} <= names


async def test_resilience_events_are_counted_on_the_same_registry(
        registry: CollectorRegistry) -> None:
    app = MetricsMiddleware(starlette_app(), registry=registry, resilience_events=True)
    assert app.events_listener is not None
    try:
        async with client_for(app) as client:
            assert (await client.get("/guarded")).status_code == 503
    finally:
        fournines.remove_listener(app.events_listener)
    labels = {"policy": "circuit_breaker", "name": "payments-metrics",
              "reason": "forced_open"}
    assert registry.get_sample_value("fournines_rejections_total", labels) == 1


def test_a_second_middleware_on_the_same_registry_is_a_configuration_error(
        registry: CollectorRegistry) -> None:
    MetricsMiddleware(starlette_app(), registry=registry)
    with pytest.raises(ConfigurationError, match="already registered"):
        MetricsMiddleware(starlette_app(), registry=registry)


@pytest.mark.parametrize("buckets", [(), (0.5, 0.1), (0.1, 0.1), (-1.0, 1.0), (float("inf"),)])
def test_bad_buckets_are_a_configuration_error(
        registry: CollectorRegistry, buckets: tuple[float, ...]) -> None:
    with pytest.raises(ConfigurationError, match=r"MetricsMiddleware\.buckets"):
        MetricsMiddleware(starlette_app(), registry=registry, buckets=buckets)


def test_multiprocess_without_the_directory_is_a_configuration_error(
        registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with pytest.raises(ConfigurationError, match="PROMETHEUS_MULTIPROC_DIR"):
        MetricsMiddleware(starlette_app(), registry=registry, multiprocess=True)


# -- integration: real uvicorn, real Prometheus -------------------------------------------


@pytest.fixture
def uvicorn_app() -> Iterator[UvicornProcess]:
    with UvicornProcess("tests.asgi.apps.metrics_app:app") as server:
        yield server


def test_prometheus_scrapes_request_counts_by_route_template(
        uvicorn_app: UvicornProcess) -> None:
    with PrometheusServer([f"127.0.0.1:{uvicorn_app.port}"]) as prometheus:
        with httpx.Client(base_url=uvicorn_app.url) as client:
            for order_id in range(5):
                assert client.get(f"/orders/{order_id}").status_code == 200
            for _ in range(3):
                assert client.get("/no/such/page").status_code == 404
        prometheus.wait_for('sum(http_requests_total{route="/orders/{order_id}"})',
                            lambda value: value == 5)
        prometheus.wait_for('sum(http_requests_total{route="<unmatched>",status="404"})',
                            lambda value: value == 3)
        # Every series of the job: the raw paths never became label values.
        routes = {series["metric"]["route"]
                  for series in prometheus.query("http_requests_total")}
        assert routes == {ORDERS, UNMATCHED}


def scrape_orders_total(url: str) -> float:
    body = httpx.get(url + "/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(body)
               if family.name == "http_requests" for sample in family.samples
               if sample.name == "http_requests_total" and sample.labels["route"] == ORDERS)


def test_multiprocess_workers_are_all_counted(tmp_path: Path) -> None:
    multiproc_dir = tmp_path / "prometheus-multiproc"
    multiproc_dir.mkdir()
    server = UvicornProcess("tests.asgi.apps.metrics_app:app",
                            env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)},
                            args=["--workers", "2"])
    with server:
        # A new connection per request, until both workers have answered (kernel
        # accept order decides; the deadline only bounds a broken setup).
        pids: set[int] = set()
        sent = 0
        deadline = time.monotonic() + 30
        while len(pids) < 2 or sent < 20:
            response = httpx.get(f"{server.url}/orders/{sent}", timeout=5)
            pids.add(response.json()["pid"])
            sent += 1
            if time.monotonic() > deadline:
                break
        assert len(pids) == 2, f"all {sent} requests went to one worker:\n{server.log()}"
        # Whichever worker answers the scrape reports every worker's requests.
        for _ in range(6):
            assert scrape_orders_total(server.url) == sent
