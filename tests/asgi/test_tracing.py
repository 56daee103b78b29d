"""TracingMiddleware: one OpenTelemetry server span per request, with fournines events."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import fournines
from fournines import CircuitBreaker, CircuitOpenError
from fournines.asgi.tracing import TraceContextFilter, TracingMiddleware, inject_headers

from ._uvicorn import ROOT

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"

app_log = logging.getLogger("tests.tracing.app")


async def order(request: Request) -> PlainTextResponse:
    app_log.warning("handling order %s", request.path_params["order_id"])
    return PlainTextResponse("ok")


async def unavailable(request: Request) -> PlainTextResponse:
    return PlainTextResponse("down", status_code=503)


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


async def guarded(request: Request) -> PlainTextResponse:
    breaker = CircuitBreaker("payments-tracing")
    breaker.force_open()
    try:
        breaker.call(lambda: None)
    except CircuitOpenError:
        return PlainTextResponse("fallback")
    return PlainTextResponse("ok")


async def livez(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app() -> Starlette:
    return Starlette(routes=[
        Route("/orders/{order_id}", order),
        Route("/unavailable", unavailable),
        Route("/boom", boom),
        Route("/guarded", guarded),
        Route("/livez", livez),
    ])


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def middleware(provider: TracerProvider) -> Iterator[TracingMiddleware]:
    middleware = TracingMiddleware(starlette_app(), tracer_provider=provider)
    yield middleware
    if middleware.events_listener is not None:
        fournines.remove_listener(middleware.events_listener)


@pytest.fixture
async def client(middleware: TracingMiddleware) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://orders.test:8080") as c:
        yield c


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [span.name for span in spans]
    return spans[0]


async def test_one_server_span_per_request(
        client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    await client.get("/orders/42?expand=items", headers={"user-agent": "test-agent"})
    span = only_span(exporter)
    assert span.kind is SpanKind.SERVER
    assert span.name == "GET /orders/{order_id}"
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/orders/42",
        "url.query": "expand=items",
        "network.protocol.version": "1.1",
        "server.address": "orders.test",
        "server.port": 8080,
        "client.address": "127.0.0.1",
        "client.port": 123,
        "user_agent.original": "test-agent",
        "http.route": "/orders/{order_id}",
        "http.response.status_code": 200,
    }
    assert span.status.status_code is StatusCode.UNSET


async def test_incoming_traceparent_is_the_parent(
        client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    await client.get("/orders/1",
                     headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"})
    span = only_span(exporter)
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_SPAN_ID
    assert span.parent.is_remote


async def test_response_carries_the_trace_id(
        client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    response = await client.get("/orders/1")
    span = only_span(exporter)
    assert response.headers["x-trace-id"] == format(span.context.trace_id, "032x")


async def test_server_error_status_sets_span_error(
        client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    assert (await client.get("/unavailable")).status_code == 503
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 503
    assert span.attributes["error.type"] == "503"


async def test_client_error_status_leaves_span_status_unset(
        client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    assert (await client.get("/no/such/page")).status_code == 404
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.UNSET
    assert span.name == "GET"
    assert span.attributes is not None
    assert "http.route" not in span.attributes


async def test_exception_is_recorded_and_reraised(
        client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        await client.get("/boom")
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 500


async def test_fournines_events_become_span_events(
        client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    await client.get("/guarded")
    span = only_span(exporter)
    events = {event.name: dict(event.attributes or {}) for event in span.events}
    assert events["StateChanged"] == {
        "fournines.policy": "circuit_breaker", "fournines.name": "payments-tracing",
        "fournines.old": "closed", "fournines.new": "forced_open",
    }
    assert events["CallRejected"]["fournines.name"] == "payments-tracing"
    assert events["CallRejected"]["fournines.reason"] == "forced_open"


async def test_log_records_carry_the_trace_id(
        client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(TraceContextFilter())
    app_log.addHandler(handler)
    try:
        await client.get("/orders/1")
        app_log.warning("outside any request")
    finally:
        app_log.removeHandler(handler)
    span = only_span(exporter)
    assert records[0].trace_id == format(span.context.trace_id, "032x")  # type: ignore[attr-defined]
    assert records[0].span_id == format(span.context.span_id, "016x")  # type: ignore[attr-defined]
    assert records[1].trace_id == ""  # type: ignore[attr-defined]


async def test_probe_paths_get_no_span(
        client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    response = await client.get("/livez")
    assert response.status_code == 200
    assert "x-trace-id" not in response.headers
    assert exporter.get_finished_spans() == ()


def test_inject_headers_writes_the_current_context(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("client call") as span:
        headers = inject_headers({"accept": "application/json"})
    context = span.get_span_context()
    assert headers["accept"] == "application/json"
    assert headers["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}")


def run_without_site_packages(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a Python that sees fournines' sources but no installed packages."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True,
                          text=True, timeout=30, check=False)


def test_without_opentelemetry_construction_names_the_extra() -> None:
    result = run_without_site_packages(
        "import sys\n"
        "from fournines.asgi import tracing\n"
        "assert 'opentelemetry' not in sys.modules, 'imported at module import'\n"
        "try:\n"
        "    tracing.TracingMiddleware(lambda *a: None)\n"
        "except tracing.ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "fournines[otel]" in result.stdout


def test_module_import_does_not_import_opentelemetry() -> None:
    result = subprocess.run(
        [sys.executable, "-c",
         "import sys, fournines.asgi.tracing, fournines.asgi.metrics\n"
         "print(sorted(m for m in sys.modules if m.split('.')[0] in "
         "('opentelemetry', 'starlette')))"],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def test_exception_type_wins_over_the_status_as_error_type(
        client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError):
        await client.get("/boom")  # Starlette answers 500, then re-raises
    span = only_span(exporter)
    assert span.attributes is not None
    assert span.attributes["error.type"] == "RuntimeError"
    assert span.status.description == "RuntimeError: boom"
