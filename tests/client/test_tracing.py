"""OpenTelemetry client spans: one per request, trace context sent downstream, events on it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fournines import CircuitOpenError, ConsecutiveFailures, StaleCache
from fournines.client import AsyncResilientTransport, ClientPolicy
from fournines.policies.backoff import Backoff

from ..asgi._uvicorn import ROOT
from ._helpers import control, seen
from ._shells import Shell

FAST = Backoff(initial=0.001, cap=0.005)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def make_client(provider: TracerProvider, shell: Shell) -> Any:
    """A traced client of each shell in turn."""

    def make(**kwargs: Any) -> Any:
        return shell.client(tracer_provider=provider, **kwargs)[0]

    return make


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [span.name for span in spans]
    return spans[0]


def ids_of(span: ReadableSpan) -> tuple[str, str]:
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def sent_ids(url: str) -> list[tuple[str, str]]:
    """(trace id, parent span id) of the W3C traceparent each request carried."""
    parts = [r["traceparent"].split("-") for r in seen(url)]
    assert all(len(p) == 4 and p[0] == "00" for p in parts), parts
    return [(p[1], p[2]) for p in parts]


def event_names(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]


async def test_one_client_span_per_request_with_http_attributes(
        make_client: Any, exporter: InMemorySpanExporter, host_a: str) -> None:
    client = make_client()
    await client.get(host_a + "/orders/7?expand=1")
    span = only_span(exporter)
    port = int(host_a.rsplit(":", 1)[1])
    assert (span.name, span.kind) == ("GET", SpanKind.CLIENT)
    assert span.attributes is not None
    assert dict(span.attributes) == {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": port,
        "url.full": f"{host_a}/orders/7?expand=1",
        "url.scheme": "http",
        "http.response.status_code": 200,
    }
    assert span.status.status_code is StatusCode.UNSET


async def test_traceparent_of_the_client_span_reaches_downstream_on_every_attempt(
        make_client: Any, exporter: InMemorySpanExporter, provider: TracerProvider,
        host_a: str) -> None:
    client = make_client(config=ClientPolicy(attempts=3, backoff=FAST))
    control(host_a, mode="fail", status=503)
    with provider.get_tracer("test").start_as_current_span("handler") as parent:
        await client.get(host_a + "/x")
    spans = {span.name: span for span in exporter.get_finished_spans()}
    span = spans["GET"]
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert sent_ids(host_a) == [ids_of(span)] * 3
    assert event_names(span).count("RetryScheduled") == 2
    assert "RetriesExhausted" in event_names(span)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "503"


async def test_breaker_rejection_is_a_span_event_and_an_error(
        make_client: Any, exporter: InMemorySpanExporter, host_a: str) -> None:
    policy = ClientPolicy(attempts=1, trip=ConsecutiveFailures(threshold=1), reset_timeout=60,
                          initial_reset_timeout=None)
    client = make_client(config=policy)
    control(host_a, mode="fail", status=500)
    await client.get(host_a + "/x")
    exporter.clear()
    with pytest.raises(CircuitOpenError):
        await client.get(host_a + "/x")
    span = only_span(exporter)
    assert "CallRejected" in event_names(span)
    assert span.attributes is not None
    assert span.attributes["error.type"] == "TransportCircuitOpenError"
    assert span.status.status_code is StatusCode.ERROR
    assert len(seen(host_a)) == 1


async def test_fallbacks_are_span_events(
        make_client: Any, exporter: InMemorySpanExporter, host_a: str) -> None:
    def answer(request: httpx.Request, exc: BaseException) -> httpx.Response:
        return httpx.Response(200, text="fallback")

    client = make_client(
        config=ClientPolicy(attempts=1),
        fallbacks={("GET", "/answer"): answer, ("GET", "/stale"): StaleCache(max_age=60.0)},
    )
    await client.get(host_a + "/stale")
    control(host_a, mode="fail", status=503)
    assert (await client.get(host_a + "/answer")).text == "fallback"
    assert (await client.get(host_a + "/stale")).text == "ok"
    first, answered, stale = exporter.get_finished_spans()
    assert event_names(first) == []
    assert event_names(answered) == ["FallbackUsed"]
    assert event_names(stale) == ["FallbackUsed"]
    assert stale.events[0].attributes is not None
    assert stale.events[0].attributes["fournines.stale_age"] >= 0


async def test_hedges_are_span_events(provider: TracerProvider,
                                      exporter: InMemorySpanExporter, host_b: str) -> None:
    # Async only: the sync transport does not hedge.
    transport = AsyncResilientTransport(
        tracer_provider=provider, config=ClientPolicy(attempts=1, hedge_after=0.05))
    control(host_b, mode="slow", delay=0.3)
    async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
        await client.get(host_b + "/x")
    [hedged] = exporter.get_finished_spans()
    [hedge] = [e for e in hedged.events if e.name == "RetryScheduled"]
    assert hedge.attributes is not None and hedge.attributes["fournines.policy"] == "hedge"
    assert len(seen(host_b)) == 2


def test_without_tracing_opentelemetry_is_never_imported(host_a: str) -> None:
    code = (
        "import sys, httpx\n"
        "from fournines.client import ResilientTransport\n"
        "with httpx.Client(transport=ResilientTransport()) as client:\n"
        f"    assert client.get({host_a + '/x'!r}).status_code == 200\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env={"PYTHONPATH": str(ROOT / "src")}, check=True)
    assert result.stdout.strip() == "[]"
    assert seen(host_a)[0]["traceparent"] is None


class _PropagatorThatFails(TraceContextTextMapPropagator):
    def inject(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("propagator is broken")


@pytest.fixture
def broken_propagator() -> Any:
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(_PropagatorThatFails())
    yield
    propagate.set_global_textmap(previous)


@pytest.mark.usefixtures("broken_propagator")
async def test_a_span_whose_context_cannot_be_sent_leaves_no_trace_behind(
        make_client: Any, exporter: InMemorySpanExporter, host_a: str) -> None:
    client = make_client(config=ClientPolicy(attempts=1))
    assert (await client.get(host_a + "/x")).status_code == 200
    [request] = seen(host_a)
    assert request["traceparent"] is None
    assert not trace.get_current_span().get_span_context().is_valid  # context given back
    assert all(span.end_time is not None for span in exporter.get_finished_spans())
