"""ResilientTransport (sync) against real uvicorn downstreams: the same rules as the async one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fournines import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    ConsecutiveFailures,
    DeadlineExceededError,
    FallbackUsed,
    RetriesExhausted,
    RetryBudget,
    RetryScheduled,
    State,
    deadline_after,
)
from fournines.client import BalancingTransport, ClientPolicy, P2CBalancer, ResilientTransport
from fournines.policies.backoff import Backoff
from fournines.testing import RecordingListener

from .._servers import free_port
from ._helpers import control, seen

FAST = Backoff(initial=0.001, cap=0.005)


@pytest.fixture
def make_client() -> Iterator[Any]:
    clients: list[httpx.Client] = []

    def make(**kwargs: Any) -> tuple[httpx.Client, ResilientTransport]:
        transport = ResilientTransport(**kwargs)
        client = httpx.Client(transport=transport, timeout=10.0)
        clients.append(client)
        return client, transport

    yield make
    for client in clients:
        client.close()


def test_config_errors_name_the_sync_transport() -> None:
    with pytest.raises(ConfigurationError, match=r"ResilientTransport\.max_hosts"):
        ResilientTransport(max_hosts=0)
    with pytest.raises(ConfigurationError, match=r"ResilientTransport\.config"):
        ResilientTransport(config="fast")  # type: ignore[arg-type]


def test_breaker_opens_per_host_and_recovers(make_client: Any, host_a: str,
                                             host_b: str) -> None:
    policy = ClientPolicy(trip=ConsecutiveFailures(threshold=3), reset_timeout=0.3, attempts=1)
    client, transport = make_client(config=policy)
    control(host_a, mode="fail", status=500)
    for _ in range(3):
        assert client.get(host_a + "/work").status_code == 500
    with pytest.raises(CircuitOpenError):
        client.get(host_a + "/work")
    assert len(seen(host_a)) == 3  # the open breaker did not touch the network
    assert client.get(host_b + "/work").status_code == 200

    control(host_a, mode="ok")
    for _ in range(100):
        try:
            response = client.get(host_a + "/work")
        except CircuitOpenError:
            time.sleep(0.1)
            continue
        assert response.status_code == 200
        break
    assert transport.policies_for(host_a).breaker.state is State.CLOSED


def test_4xx_and_429_are_not_failures(make_client: Any, host_a: str) -> None:
    client, transport = make_client(
        config=ClientPolicy(trip=ConsecutiveFailures(threshold=2), attempts=1))
    for status in (404, 400, 429, 429, 429):
        control(host_a, mode="fail", status=status)
        assert client.get(host_a + "/x").status_code == status
    assert transport.policies_for(host_a).breaker.state is State.CLOSED


def test_connect_errors_are_failures_and_retried_for_get(make_client: Any) -> None:
    recorder = RecordingListener()
    closed = f"http://127.0.0.1:{free_port()}"
    policy = ClientPolicy(trip=ConsecutiveFailures(threshold=3), attempts=3, backoff=FAST)
    client, _ = make_client(config=policy, listeners=[recorder])
    with pytest.raises(httpx.ConnectError):
        client.get(closed + "/x")
    assert len(recorder.of(RetryScheduled)) == 2
    with pytest.raises(CircuitOpenError):
        client.get(closed + "/x")


def test_post_is_never_retried(make_client: Any, host_a: str) -> None:
    client, _ = make_client(config=ClientPolicy(backoff=FAST))
    control(host_a, mode="fail", status=503)
    assert client.post(host_a + "/orders", json={}).status_code == 503
    assert [r["method"] for r in seen(host_a)] == ["POST"]


def test_post_with_idempotency_key_is_retried(make_client: Any, host_a: str) -> None:
    client, _ = make_client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode="fail", status=502)
    client.post(host_a + "/orders", json={}, headers={"Idempotency-Key": "k-1"})
    assert [r["attempt"] for r in seen(host_a)] == ["1", "2", "3"]


def test_retry_after_is_honoured(make_client: Any, host_a: str) -> None:
    recorder = RecordingListener()
    client, _ = make_client(config=ClientPolicy(backoff=FAST, attempts=2), listeners=[recorder])
    control(host_a, mode="fail", status=503, retry_after="1")
    started = time.monotonic()
    assert client.get(host_a + "/x").status_code == 503
    assert time.monotonic() - started >= 1.0
    assert len(seen(host_a)) == 2
    assert recorder.of(RetryScheduled)[0].delay >= 1.0


def test_empty_budget_stops_retries(make_client: Any, host_a: str) -> None:
    recorder = RecordingListener()
    client, _ = make_client(config=ClientPolicy(backoff=FAST), listeners=[recorder],
                            budget=RetryBudget(ratio=0.0, min_per_second=0.0))
    control(host_a, mode="fail", status=503)
    assert client.get(host_a + "/x").status_code == 503
    assert len(seen(host_a)) == 1
    assert recorder.of(RetriesExhausted)[0].reason == "budget"


def test_retry_pushback_from_downstream_is_honoured(make_client: Any, host_a: str) -> None:
    client, _ = make_client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode="fail", status=503, no_retry=True)
    assert client.get(host_a + "/x").status_code == 503
    assert len(seen(host_a)) == 1


def test_deadline_header_shrinks_across_retries(make_client: Any, host_a: str) -> None:
    backoff = Backoff(initial=0.05, cap=0.05, jitter="none")
    client, _ = make_client(config=ClientPolicy(backoff=backoff, attempts=3))
    control(host_a, mode="fail", status=503)
    with deadline_after(2.0):
        client.get(host_a + "/x")
    requests = seen(host_a)
    budgets = [int(r["timeout_ms"]) for r in requests]
    assert [r["attempt"] for r in requests] == ["1", "2", "3"]
    assert 2000 >= budgets[0] > budgets[1] > budgets[2] > 0


def test_no_budget_left_fails_without_touching_network(make_client: Any, host_a: str) -> None:
    client, _ = make_client()
    with deadline_after(0.0), pytest.raises(DeadlineExceededError):
        client.get(host_a + "/x")
    assert seen(host_a) == []


def test_slow_call_is_cut_at_the_deadline_and_counts_as_failure(make_client: Any,
                                                                 host_a: str) -> None:
    client, transport = make_client(
        config=ClientPolicy(trip=ConsecutiveFailures(threshold=1), attempts=3))
    control(host_a, mode="slow", delay=3.0)
    with deadline_after(0.3), pytest.raises(DeadlineExceededError):
        client.get(host_a + "/x")
    assert len(seen(host_a)) == 1
    assert transport.policies_for(host_a).breaker.state is State.OPEN


def test_bulkhead_slot_is_held_until_the_body_is_closed(make_client: Any, host_a: str) -> None:
    client, _ = make_client(config=ClientPolicy(max_concurrent=1, attempts=1))
    with client.stream("GET", host_a + "/x") as held:
        with pytest.raises(BulkheadFullError):
            client.get(host_a + "/x")
        held.read()
    assert client.get(host_a + "/x").status_code == 200


def test_fallback_function_answers_for_route(make_client: Any, host_a: str) -> None:
    recorder = RecordingListener()

    def cached(request: httpx.Request, exc: BaseException) -> httpx.Response:
        return httpx.Response(200, text="cached status")

    client, _ = make_client(config=ClientPolicy(attempts=1), listeners=[recorder],
                            fallbacks={("GET", "/payments/status"): cached})
    control(host_a, mode="fail", status=503)
    assert client.get(host_a + "/payments/status").text == "cached status"
    assert client.get(host_a + "/other").status_code == 503
    assert len(recorder.of(FallbackUsed)) == 1


def test_hedging_is_not_done_by_the_sync_transport(make_client: Any, host_a: str) -> None:
    client, _ = make_client(config=ClientPolicy(hedge_after=0.01, attempts=1))
    control(host_a, mode="slow", delay=0.2)
    assert client.get(host_a + "/x").status_code == 200
    assert len(seen(host_a)) == 1


def test_sync_balancing_retries_onto_a_live_endpoint(make_client: Any, host_a: str,
                                                     host_b: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    balancer = P2CBalancer([host_a, host_b, dead])
    client, _ = make_client(transport=BalancingTransport(balancer),
                            config=ClientPolicy(backoff=FAST, attempts=3))
    for _ in range(40):
        assert client.get("http://service/x").status_code == 200
    assert len(seen(host_a)) + len(seen(host_b)) >= 40
    assert len(seen(host_a)) > 0 and len(seen(host_b)) > 0
    dead_endpoint = next(e for e in balancer.endpoints if e.url == dead)
    assert 1 <= dead_endpoint.failures <= 10
