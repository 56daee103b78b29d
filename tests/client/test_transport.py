"""Both resilient transports against real uvicorn downstreams (no network mocks).

Every spec that takes ``shell`` runs once through ``AsyncResilientTransport`` and
once through ``ResilientTransport``: the two shells make the same decisions.
Hedging and cancellation are async-only (tests/client/test_hedging.py and the
cancellation specs in test_connection_failures.py).
"""

from __future__ import annotations

import asyncio
import email.utils
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
from fournines.client import P2CBalancer
from fournines.client.transport import (
    AsyncResilientTransport,
    ClientPolicy,
    ResilientTransport,
    parse_retry_after,
)
from fournines.policies.backoff import Backoff
from fournines.testing import RecordingListener, set_testing

from .._servers import free_port
from ._helpers import control, seen
from ._shells import Shell

FAST = Backoff(initial=0.001, cap=0.005)


# -- pure parts --------------------------------------------------------------------------


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7", 0.0) == 7.0
    assert parse_retry_after(" 0 ", 0.0) == 0.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(30.0, abs=1.0)
    past = email.utils.formatdate(now - 100, usegmt=True)
    assert parse_retry_after(past, now) == 0.0
    for bad in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(bad, now) is None


@pytest.mark.parametrize(("field", "value"), [
    ("attempts", 0), ("reset_timeout", -1.0), ("attempt_timeout", 0.0),
    ("max_concurrent", 0), ("budget_ratio", -0.1), ("budget_ttl", 0.0),
    ("max_retry_after", float("nan")), ("retry_statuses", frozenset({99})),
    ("trip", "five"), ("backoff", 0.1),
])
def test_config_errors_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"ClientPolicy.{field}"):
        ClientPolicy(**{field: value})


def test_registry_is_per_host_and_bounded() -> None:
    transport = AsyncResilientTransport(max_hosts=2)
    a = transport.policies_for("http://a.example/x")
    assert transport.policies_for("http://a.example:80/y") is a
    assert transport.policies_for("https://a.example/x") is not a
    transport.policies_for("http://b.example/")
    assert transport.policies_for("http://a.example/") is not a  # evicted: least recent


def test_per_route_override_has_its_own_policies() -> None:
    route = ClientPolicy(attempts=1)
    transport = AsyncResilientTransport(per_route={("GET", "/pay"): route,
                                                   "http://c.example:80": ClientPolicy(attempts=5)})
    assert transport.policies_for("http://a.example/pay").config is route
    assert transport.policies_for("http://a.example/other").config.attempts == 3
    assert transport.policies_for("http://c.example/other").config.attempts == 5


def test_per_route_keys_match_as_fallback_keys_and_origins_do() -> None:
    # Written as people write them: a lower-case method, an origin without its port.
    route = ClientPolicy(attempts=1)
    host = ClientPolicy(attempts=5)
    transport = AsyncResilientTransport(per_route={("get", "/pay"): route,
                                                   "http://C.example/": host})
    assert transport.policies_for("http://a.example/pay", "GET").config is route
    assert transport.policies_for("http://c.example:80/other").config is host


@pytest.mark.parametrize("cls", [AsyncResilientTransport, ResilientTransport])
@pytest.mark.parametrize("key", ["payments", "http://", ("GET",), 7])
def test_per_route_keys_that_name_nothing_are_refused(cls: Any, key: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"{cls.__name__}\.per_route keys"):
        cls(per_route={key: ClientPolicy()})


@pytest.mark.parametrize("cls", [AsyncResilientTransport, ResilientTransport])
def test_transport_config_errors_name_the_transport(cls: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"{cls.__name__}\.max_hosts"):
        cls(max_hosts=0)
    with pytest.raises(ConfigurationError, match=rf"{cls.__name__}\.config"):
        cls(config="fast")


# -- breaker per host ----------------------------------------------------------------------


async def test_breaker_opens_per_host_and_recovers(shell: Shell, host_a: str,
                                                   host_b: str) -> None:
    recorder = RecordingListener()
    policy = ClientPolicy(trip=ConsecutiveFailures(threshold=3), reset_timeout=0.5, attempts=1)
    client, transport = shell.client(config=policy, listeners=[recorder])
    control(host_a, mode="fail", status=500)
    for _ in range(3):
        assert (await client.get(host_a + "/work")).status_code == 500
    with pytest.raises(CircuitOpenError):
        await client.get(host_a + "/work")
    assert len(seen(host_a)) == 3  # the open breaker did not touch the network
    assert (await client.get(host_b + "/work")).status_code == 200
    assert transport.policies_for(host_b).breaker.state is State.CLOSED

    control(host_a, mode="ok")
    for _ in range(100):
        try:
            response = await client.get(host_a + "/work")
        except CircuitOpenError:
            await asyncio.sleep(0.1)
            continue
        assert response.status_code == 200
        break
    assert transport.policies_for(host_a).breaker.state is State.CLOSED
    assert [e.new for e in recorder.events if hasattr(e, "new")] == \
        ["open", "half_open", "closed"]


async def test_4xx_and_429_are_not_failures(shell: Shell, host_a: str) -> None:
    policy = ClientPolicy(trip=ConsecutiveFailures(threshold=2), attempts=1)
    client, transport = shell.client(config=policy)
    for status in (404, 400, 429, 429, 429):
        control(host_a, mode="fail", status=status)
        assert (await client.get(host_a + "/x")).status_code == status
    assert transport.policies_for(host_a).breaker.state is State.CLOSED


async def test_connect_error_counts_as_failure(shell: Shell) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    policy = ClientPolicy(trip=ConsecutiveFailures(threshold=2), attempts=1)
    client, _ = shell.client(config=policy)
    for _ in range(2):
        with pytest.raises(httpx.ConnectError):
            await client.get(closed + "/x")
    with pytest.raises(CircuitOpenError):
        await client.get(closed + "/x")


# -- retries -------------------------------------------------------------------------------


async def test_post_is_never_retried(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(backoff=FAST))
    control(host_a, mode="fail", status=503)
    assert (await client.post(host_a + "/orders", json={})).status_code == 503
    assert (await client.patch(host_a + "/orders", json={})).status_code == 503
    assert [r["method"] for r in seen(host_a)] == ["POST", "PATCH"]


async def test_get_503_is_retried_up_to_attempts(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode="fail", status=503)
    response = await client.get(host_a + "/items")
    assert response.status_code == 503  # exhausted: the last response is returned
    assert response.text == "failing"
    assert [r["attempt"] for r in seen(host_a)] == ["1", "2", "3"]


async def test_post_with_idempotency_key_is_retried(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode="fail", status=502)
    response = await client.post(host_a + "/orders", json={},
                                 headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 502
    assert [r["method"] for r in seen(host_a)] == ["POST"] * 3


async def test_connect_error_is_retried_for_get(shell: Shell) -> None:
    recorder = RecordingListener()
    closed = f"http://127.0.0.1:{free_port()}"
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=3), listeners=[recorder])
    with pytest.raises(httpx.ConnectError):
        await client.get(closed + "/x")
    assert len(recorder.of(RetryScheduled)) == 2
    assert recorder.of(RetriesExhausted)[0].reason == "attempts"


async def test_retry_after_seconds_is_honoured(shell: Shell, host_a: str) -> None:
    recorder = RecordingListener()
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=2), listeners=[recorder])
    control(host_a, mode="fail", status=503, retry_after="1")
    assert (await client.get(host_a + "/x")).status_code == 503
    assert len(seen(host_a)) == 2
    [scheduled] = recorder.of(RetryScheduled)
    assert scheduled.delay >= 1.0


@pytest.mark.parametrize("hint", ["999999999", "Fri, 01 Jan 2999 00:00:00 GMT", "3600"])
async def test_a_retry_after_beyond_the_cap_ends_retrying_at_once(shell: Shell, host_a: str,
                                                                  hint: str) -> None:
    # "Not soon" from the host: waiting the cap instead would stall the caller for nothing.
    recorder = RecordingListener()
    policy = ClientPolicy(backoff=FAST, attempts=3, max_retry_after=30.0)
    client, _ = shell.client(config=policy, listeners=[recorder])
    control(host_a, mode="fail", status=503, retry_after=hint)
    assert (await client.get(host_a + "/x")).status_code == 503
    assert len(seen(host_a)) == 1
    assert recorder.of(RetryScheduled) == []
    assert recorder.of(RetriesExhausted)[0].reason == "retry_after"


async def test_testing_mode_attempts_reach_the_transport(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode="fail", status=503)
    with set_testing(True, attempts=1):
        assert (await client.get(host_a + "/x")).status_code == 503
    assert len(seen(host_a)) == 1


async def test_testing_mode_skips_the_transports_backoff(shell: Shell, host_a: str) -> None:
    recorder = RecordingListener()
    slow = Backoff(initial=20.0, cap=20.0, jitter="none")
    client, _ = shell.client(config=ClientPolicy(backoff=slow, attempts=2),
                             listeners=[recorder])
    control(host_a, mode="fail", status=503)
    with set_testing(True):
        assert (await client.get(host_a + "/x")).status_code == 503
    assert len(seen(host_a)) == 2
    assert [e.delay for e in recorder.of(RetryScheduled)] == [0.0]


async def test_empty_budget_stops_retries(shell: Shell, host_a: str) -> None:
    recorder = RecordingListener()
    budget = RetryBudget(ratio=0.0, min_per_second=0.0)
    client, _ = shell.client(config=ClientPolicy(backoff=FAST), budget=budget,
                            listeners=[recorder])
    control(host_a, mode="fail", status=503)
    assert (await client.get(host_a + "/x")).status_code == 503
    assert len(seen(host_a)) == 1
    assert recorder.of(RetriesExhausted)[0].reason == "budget"


# -- deadlines -----------------------------------------------------------------------------


async def test_deadline_header_shrinks_across_retries(shell: Shell, host_a: str) -> None:
    backoff = Backoff(initial=0.05, cap=0.05, jitter="none")
    client, _ = shell.client(config=ClientPolicy(backoff=backoff, attempts=3))
    control(host_a, mode="fail", status=503)
    async with deadline_after(2.0):
        await client.get(host_a + "/x")
    requests = seen(host_a)
    budgets = [int(r["timeout_ms"]) for r in requests]
    assert [r["attempt"] for r in requests] == ["1", "2", "3"]
    assert 0 < budgets[0] <= 2000
    assert budgets[0] > budgets[1] > budgets[2] > 0


async def test_attempt_timeout_is_sent_without_deadline(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(attempt_timeout=1.5))
    await client.get(host_a + "/x")
    [request] = seen(host_a)
    assert request["timeout_ms"] == "1500"
    assert request["attempt"] == "1"


async def test_sending_a_request_does_not_change_it(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(attempts=1))
    request = client.raw.build_request("GET", host_a + "/x")
    headers, extensions = list(request.headers.raw), dict(request.extensions)
    async with deadline_after(1.0):
        await client.send(request)
    assert (list(request.headers.raw), request.extensions) == (headers, extensions)
    await client.send(request)  # again, with no deadline: no budget of the first send
    first, second = seen(host_a)
    assert first["timeout_ms"] is not None
    assert second["timeout_ms"] is None


async def test_no_budget_left_fails_without_touching_network(shell: Shell,
                                                             host_a: str) -> None:
    client, _ = shell.client()
    async with deadline_after(0.0):
        with pytest.raises(DeadlineExceededError):
            await client.get(host_a + "/x")
    assert seen(host_a) == []


async def test_slow_call_is_cut_at_the_deadline(shell: Shell, host_a: str) -> None:
    policy = ClientPolicy(trip=ConsecutiveFailures(threshold=1), attempts=3)
    client, transport = shell.client(config=policy)
    control(host_a, mode="slow", delay=3.0)
    async with deadline_after(0.3):
        with pytest.raises(DeadlineExceededError):
            await client.get(host_a + "/x")
    assert len(seen(host_a)) == 1  # no retry: nothing left of the budget
    assert transport.policies_for(host_a).breaker.state is State.OPEN


async def test_waiting_for_a_pooled_connection_past_the_deadline_is_no_failure(
        shell: Shell, host_a: str) -> None:
    # The wait is for our own connection pool: it says nothing about the host.
    limits = httpx.Limits(max_connections=1)
    inner = (httpx.AsyncHTTPTransport(limits=limits) if shell.is_async
             else httpx.HTTPTransport(limits=limits))
    client, transport = shell.client(inner, config=ClientPolicy(
        trip=ConsecutiveFailures(threshold=1), attempts=1))
    async with client.held(host_a + "/x"):  # the only connection, taken
        async with deadline_after(0.1):
            with pytest.raises(DeadlineExceededError):
                await client.get(host_a + "/x")
    assert len(seen(host_a)) == 1  # the second request never left
    assert transport.policies_for(host_a).breaker.state is State.CLOSED


async def test_waiting_for_a_pooled_connection_is_no_failure_of_the_balanced_endpoint(
        shell: Shell, host_a: str) -> None:
    limits = httpx.Limits(max_connections=1)
    inner = (httpx.AsyncHTTPTransport(limits=limits) if shell.is_async
             else httpx.HTTPTransport(limits=limits))
    balancing = shell.balancing([host_a], transport=inner)
    client = shell.wrap(balancing)
    (endpoint,) = balancing.balancer.endpoints
    async with client.held("http://orders/x"):  # the only connection, taken
        with pytest.raises(httpx.PoolTimeout):
            await client.get("http://orders/x", timeout=0.1)
    assert (endpoint.failures, endpoint.successes, endpoint.in_flight) == (0, 1, 0)


# -- bulkhead and fallback -----------------------------------------------------------------


async def test_bulkhead_per_host(shell: Shell, host_a: str, host_b: str) -> None:
    client, _ = shell.client(config=ClientPolicy(max_concurrent=1, attempts=1))
    control(host_a, mode="slow", delay=0.5)
    results = await asyncio.gather(client.get(host_a + "/x"), client.get(host_a + "/x"),
                                   client.get(host_b + "/x"), return_exceptions=True)
    kinds = sorted(type(r).__name__ for r in results)
    assert kinds == ["Response", "Response", "TransportBulkheadFullError"]
    assert isinstance(results[0], httpx.Response) or isinstance(results[1], httpx.Response)
    assert len(seen(host_a)) == 1
    # The slot came back when the body was read: the next call is admitted.
    control(host_a, mode="ok")
    assert (await client.get(host_a + "/x")).status_code == 200


async def test_bulkhead_error_type(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(max_concurrent=1, attempts=1))
    control(host_a, mode="slow", delay=0.5)
    async with client.held(host_a + "/x"):
        with pytest.raises(BulkheadFullError):
            await client.get(host_a + "/x")
    assert (await client.get(host_a + "/x")).status_code == 200


async def test_fallback_answers_for_route(shell: Shell, host_a: str) -> None:
    recorder = RecordingListener()
    errors: list[BaseException] = []

    def cached(request: httpx.Request, exc: BaseException) -> httpx.Response:
        errors.append(exc)
        return httpx.Response(200, text="cached status")

    client, _ = shell.client(config=ClientPolicy(attempts=1), listeners=[recorder],
                            fallbacks={("GET", "/payments/status"): cached})
    control(host_a, mode="fail", status=503)
    response = await client.get(host_a + "/payments/status")
    assert response.text == "cached status"
    assert isinstance(errors[0], httpx.HTTPStatusError)
    assert len(recorder.of(FallbackUsed)) == 1
    assert (await client.get(host_a + "/other")).status_code == 503  # no hook there
    closed = f"http://127.0.0.1:{free_port()}"
    assert (await client.get(closed + "/payments/status")).text == "cached status"
    assert isinstance(errors[1], httpx.ConnectError)


async def test_retry_pushback_from_downstream_is_honoured(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode="fail", status=503, no_retry=True)
    assert (await client.get(host_a + "/x")).status_code == 503
    assert len(seen(host_a)) == 1


async def test_balancing_retries_onto_a_live_endpoint(shell: Shell, host_a: str,
                                                      host_b: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    balancer = P2CBalancer([host_a, host_b, dead])
    client, _ = shell.client(shell.balancing(balancer),
                             config=ClientPolicy(backoff=FAST, attempts=3))
    for _ in range(40):
        assert (await client.get("http://service/x")).status_code == 200
    assert len(seen(host_a)) > 0 and len(seen(host_b)) > 0
    assert len(seen(host_a)) + len(seen(host_b)) >= 40
    dead_endpoint = next(e for e in balancer.endpoints if e.url == dead)
    assert 1 <= dead_endpoint.failures <= 10


def test_hedging_is_not_done_by_the_sync_transport(host_a: str) -> None:
    # Async only: a losing sync attempt could not be cancelled (see fournines.Hedge).
    transport = ResilientTransport(config=ClientPolicy(hedge_after=0.01, attempts=1))
    control(host_a, mode="slow", delay=0.2)
    with httpx.Client(transport=transport, timeout=10.0) as client:
        assert client.get(host_a + "/x").status_code == 200
    assert len(seen(host_a)) == 1
