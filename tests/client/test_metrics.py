"""Client golden metrics: PrometheusListener on the transport, scraped after real calls."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fournines import BulkheadFullError, CircuitOpenError, ConsecutiveFailures
from fournines.client import AsyncResilientTransport, ClientPolicy
from fournines.instrumentation.prometheus import PrometheusListener
from fournines.policies.backoff import Backoff

from .._servers import free_port
from ._helpers import control
from ._shells import Shell

FAST = Backoff(initial=0.001, cap=0.005)
DURATION = "http_client_request_duration_seconds_count"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def make_client(registry: CollectorRegistry, shell: Shell) -> Any:
    """A client of each shell in turn, measured into ``registry``."""
    listener = PrometheusListener(registry)

    def make(**kwargs: Any) -> Any:
        return shell.client(listeners=[listener], **kwargs)[0]

    return make


def value(registry: CollectorRegistry, metric: str, **labels: str) -> float:
    sample = registry.get_sample_value(metric, labels)
    return 0.0 if sample is None else sample


async def test_duration_histogram_by_host_method_and_status_class(
        make_client: Any, registry: CollectorRegistry, host_a: str, host_b: str) -> None:
    client = make_client(config=ClientPolicy(attempts=1))
    for _ in range(3):
        await client.get(host_a + "/x")
    control(host_b, mode="fail", status=503)
    await client.post(host_b + "/orders", json={})
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(httpx.ConnectError):
        await client.get(closed + "/x")

    assert value(registry, DURATION, host=host_a, method="GET", status_class="2xx") == 3
    assert value(registry, DURATION, host=host_b, method="POST", status_class="5xx") == 1
    assert value(registry, DURATION, host=closed, method="GET", status_class="error") == 1
    assert value(registry, "http_client_request_duration_seconds_sum",
                 host=host_a, method="GET", status_class="2xx") > 0
    text = generate_latest(registry).decode()
    assert f'http_client_requests_in_flight{{host="{host_a}"}} 0.0' in text


async def test_in_flight_gauge_counts_requests_in_progress(
        make_client: Any, registry: CollectorRegistry, host_a: str) -> None:
    client = make_client(config=ClientPolicy(attempts=1))
    control(host_a, mode="slow", delay=1.0)
    calls = [asyncio.ensure_future(client.get(host_a + "/x")) for _ in range(2)]
    for _ in range(200):
        if value(registry, "http_client_requests_in_flight", host=host_a) == 2:
            break
        await asyncio.sleep(0.01)
    assert value(registry, "http_client_requests_in_flight", host=host_a) == 2
    await asyncio.gather(*calls)
    assert value(registry, "http_client_requests_in_flight", host=host_a) == 0


class _TracerThatFails:
    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tracing backend is broken")


class _ProviderThatFails:
    """An OpenTelemetry tracer provider whose spans cannot start (a broken SDK or exporter)."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> _TracerThatFails:
        return _TracerThatFails()


async def test_a_span_that_cannot_start_neither_fails_the_request_nor_drifts_the_gauge(
        make_client: Any, registry: CollectorRegistry, host_a: str) -> None:
    client = make_client(config=ClientPolicy(attempts=1), tracer_provider=_ProviderThatFails())
    assert (await client.get(host_a + "/x")).status_code == 200
    assert value(registry, "http_client_requests_in_flight", host=host_a) == 0
    assert value(registry, DURATION, host=host_a, method="GET", status_class="2xx") == 1


async def test_retries_are_counted_once_per_retry_and_requests_once(
        make_client: Any, registry: CollectorRegistry, host_a: str) -> None:
    client = make_client(config=ClientPolicy(attempts=3, backoff=FAST))
    control(host_a, mode="fail", status=503)
    await client.get(host_a + "/x")
    assert value(registry, "fournines_retries_total", name=host_a) == 2
    assert value(registry, DURATION, host=host_a, method="GET", status_class="5xx") == 1
    assert value(registry, "http_client_requests_in_flight", host=host_a) == 0


async def test_retries_and_hedges_are_counted_apart(
        registry: CollectorRegistry, host_a: str, host_b: str) -> None:
    # Async only: the sync transport does not hedge.
    transport = AsyncResilientTransport(
        listeners=[PrometheusListener(registry)],
        config=ClientPolicy(attempts=3, backoff=FAST),
        per_route={host_b: ClientPolicy(attempts=1, hedge_after=0.05)})
    client = httpx.AsyncClient(transport=transport, timeout=10.0)
    control(host_a, mode="fail", status=503)
    await client.get(host_a + "/x")
    control(host_b, mode="slow", delay=0.3)
    await client.get(host_b + "/x")
    await client.aclose()
    assert value(registry, "fournines_retries_total", name=host_a) == 2
    assert value(registry, "fournines_client_hedges_total", name=host_b) == 1
    assert value(registry, "fournines_retries_total", name=host_b) == 0
    # One request each, however many attempts it took.
    assert value(registry, DURATION, host=host_a, method="GET", status_class="5xx") == 1
    assert value(registry, DURATION, host=host_b, method="GET", status_class="2xx") == 1


async def test_rejections_by_reason_and_breaker_state(
        make_client: Any, registry: CollectorRegistry, host_a: str, host_b: str) -> None:
    policy = ClientPolicy(attempts=1, trip=ConsecutiveFailures(threshold=1), reset_timeout=60,
                          initial_reset_timeout=None)
    client = make_client(config=policy, per_route={
        host_b: ClientPolicy(attempts=1, max_concurrent=1)})
    control(host_a, mode="fail", status=500)
    await client.get(host_a + "/x")
    with pytest.raises(CircuitOpenError):
        await client.get(host_a + "/x")
    control(host_b, mode="slow", delay=0.3)
    async with client.held(host_b + "/x"):
        with pytest.raises(BulkheadFullError):
            await client.get(host_b + "/x")

    assert value(registry, "fournines_circuit_breaker_state", name=host_a, state="open") == 1
    assert value(registry, "fournines_rejections_total", policy="circuit_breaker",
                 name=host_a, reason="open") == 1
    assert value(registry, "fournines_rejections_total", policy="bulkhead",
                 name=host_b, reason="full") == 1
    assert value(registry, DURATION, host=host_a, method="GET", status_class="error") == 1


async def test_unknown_methods_share_one_label_value(make_client: Any, registry: CollectorRegistry,
                                                     host_a: str) -> None:
    # A service that forwards its callers' methods must not let them mint label values.
    client = make_client(config=ClientPolicy(attempts=1))
    for method in ("BREW", "WHEN", "x" * 40):
        await client.request(method, host_a + "/x")
    assert value(registry, DURATION, host=host_a, method="_OTHER", status_class="4xx") == 3
    assert "BREW" not in generate_latest(registry).decode()
