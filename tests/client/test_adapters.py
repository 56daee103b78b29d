"""The requests adapter and the aiohttp client middleware against real uvicorn downstreams.

Every spec runs once through ``ResilientAdapter`` on a ``requests.Session`` and
once through ``ResilientMiddleware`` on an ``aiohttp.ClientSession``: the httpx
transport's matrix (breaker, idempotent retries, budget, deadline, fallback,
``Retry-After``), with the rejections raised as the client's own errors too.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from fournines import (
    BulkheadFullError,
    CircuitOpenError,
    ClientRequestFinished,
    ClientRequestStarted,
    ConfigurationError,
    ConsecutiveFailures,
    DeadlineExceededError,
    FallbackUsed,
    RetriesExhausted,
    RetryBudget,
    RetryScheduled,
    StaleCache,
    State,
    deadline_after,
)
from fournines.client import ClientPolicy, ResilientAdapter
from fournines.policies.backoff import Backoff
from fournines.testing import RecordingListener

from .._servers import free_port
from ._adapters import KINDS, Adapter, fallback_hook
from ._helpers import control, seen

FAST = Backoff(initial=0.001, cap=0.005)


@pytest.fixture(params=KINDS)
async def adapter(request: pytest.FixtureRequest) -> AsyncIterator[Adapter]:
    """Each client integration in turn: requests, then aiohttp."""
    made = Adapter(request.param)
    yield made
    await made.close()


# -- breaker -------------------------------------------------------------------------------


async def test_breaker_opens_per_host_and_fails_fast(adapter: Adapter, host_a: str,
                                                     host_b: str) -> None:
    policy = ClientPolicy(trip=ConsecutiveFailures(threshold=3), attempts=1)
    client = adapter.client(config=policy)
    control(host_a, mode="fail", status=500)
    for _ in range(3):
        assert (await client.get(host_a + "/work")).status == 500
    with pytest.raises(CircuitOpenError) as caught:
        await client.get(host_a + "/work")
    # Also the client's own error: existing `except` clauses keep working.
    assert isinstance(caught.value, adapter.connection_error)
    assert len(seen(host_a)) == 3  # the open breaker did not touch the network
    assert (await client.get(host_b + "/work")).status == 200
    assert client.transport.policies_for(host_b).breaker.state is State.CLOSED


async def test_refused_connections_open_the_breaker(adapter: Adapter) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    client = adapter.client(config=ClientPolicy(trip=ConsecutiveFailures(threshold=2),
                                                attempts=1))
    for _ in range(2):
        with pytest.raises(adapter.connection_error) as caught:
            await client.get(closed + "/x")
        assert not isinstance(caught.value, CircuitOpenError)  # the client's own error
    with pytest.raises(CircuitOpenError):
        await client.get(closed + "/x")


async def test_4xx_are_not_failures(adapter: Adapter, host_a: str) -> None:
    client = adapter.client(config=ClientPolicy(trip=ConsecutiveFailures(threshold=2),
                                                attempts=1))
    for status in (404, 400, 429):
        control(host_a, mode="fail", status=status)
        assert (await client.get(host_a + "/x")).status == status
    assert client.transport.policies_for(host_a).breaker.state is State.CLOSED


# -- retries -------------------------------------------------------------------------------


async def test_get_503_is_retried_up_to_attempts(adapter: Adapter, host_a: str) -> None:
    client = adapter.client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode="fail", status=503)
    answer = await client.get(host_a + "/items")
    assert (answer.status, answer.text) == (503, "failing")  # the last answer, body intact
    assert [r["attempt"] for r in seen(host_a)] == ["1", "2", "3"]


async def test_post_is_never_retried(adapter: Adapter, host_a: str) -> None:
    client = adapter.client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode="fail", status=503)
    assert (await client.post(host_a + "/orders", json={})).status == 503
    assert [r["method"] for r in seen(host_a)] == ["POST"]


async def test_post_with_idempotency_key_is_retried(adapter: Adapter, host_a: str) -> None:
    client = adapter.client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode="fail", status=502)
    answer = await client.post(host_a + "/orders", json={"n": 1},
                               headers={"Idempotency-Key": "k-1"})
    assert answer.status == 502
    requests = seen(host_a)
    assert [r["method"] for r in requests] == ["POST"] * 3
    assert {r["length"] for r in requests} == {len('{"n": 1}')}  # the body each time


async def test_connect_error_is_retried_for_get(adapter: Adapter) -> None:
    recorder = RecordingListener()
    closed = f"http://127.0.0.1:{free_port()}"
    client = adapter.client(config=ClientPolicy(backoff=FAST, attempts=3),
                            listeners=[recorder])
    with pytest.raises(adapter.connection_error):
        await client.get(closed + "/x")
    assert len(recorder.of(RetryScheduled)) == 2
    assert recorder.of(RetriesExhausted)[0].reason == "attempts"


async def test_retry_after_is_honoured(adapter: Adapter, host_a: str) -> None:
    recorder = RecordingListener()
    client = adapter.client(config=ClientPolicy(backoff=FAST, attempts=2),
                            listeners=[recorder])
    control(host_a, mode="fail", status=503, retry_after="1")
    assert (await client.get(host_a + "/x")).status == 503
    assert len(seen(host_a)) == 2
    [scheduled] = recorder.of(RetryScheduled)
    assert scheduled.delay >= 1.0


async def test_retry_after_beyond_the_cap_ends_retrying(adapter: Adapter, host_a: str) -> None:
    recorder = RecordingListener()
    client = adapter.client(config=ClientPolicy(backoff=FAST, attempts=3, max_retry_after=5.0),
                            listeners=[recorder])
    control(host_a, mode="fail", status=503, retry_after="3600")
    assert (await client.get(host_a + "/x")).status == 503
    assert len(seen(host_a)) == 1
    assert recorder.of(RetriesExhausted)[0].reason == "retry_after"


async def test_budget_limits_retry_amplification(adapter: Adapter, host_a: str) -> None:
    # Without the budget, 30 failing GETs with 3 attempts each would be 90 requests.
    budget = RetryBudget(ratio=0.1, min_per_second=0.0)
    policy = ClientPolicy(backoff=FAST, attempts=3, trip=ConsecutiveFailures(threshold=1000))
    client = adapter.client(config=policy, budget=budget)
    control(host_a, mode="fail", status=503)
    for _ in range(30):
        assert (await client.get(host_a + "/x")).status == 503
    assert 30 <= len(seen(host_a)) <= 30 + 3


# -- deadlines -----------------------------------------------------------------------------


async def test_deadline_is_sent_downstream_and_shrinks(adapter: Adapter, host_a: str) -> None:
    backoff = Backoff(initial=0.05, cap=0.05, jitter="none")
    client = adapter.client(config=ClientPolicy(backoff=backoff, attempts=3))
    control(host_a, mode="fail", status=503)
    async with deadline_after(2.0):
        await client.get(host_a + "/x")
    requests = seen(host_a)
    budgets = [int(r["timeout_ms"]) for r in requests]
    assert [r["attempt"] for r in requests] == ["1", "2", "3"]
    assert 0 < budgets[0] <= 2000
    assert budgets[0] > budgets[1] > budgets[2] > 0


async def test_no_header_without_a_deadline(adapter: Adapter, host_a: str) -> None:
    client = adapter.client(config=ClientPolicy(attempts=1))
    await client.get(host_a + "/x")
    async with deadline_after(1.0):
        await client.get(host_a + "/x")
    await client.get(host_a + "/x")  # the first deadline is not carried over
    assert [r["timeout_ms"] is None for r in seen(host_a)] == [True, False, True]


async def test_a_spent_deadline_fails_without_touching_the_network(adapter: Adapter,
                                                                   host_a: str) -> None:
    client = adapter.client()
    async with deadline_after(0.0):
        with pytest.raises(DeadlineExceededError) as caught:
            await client.get(host_a + "/x")
    assert isinstance(caught.value, adapter.timeout_error)
    assert seen(host_a) == []


async def test_deadline_bounds_the_timeout_of_a_slow_call(adapter: Adapter,
                                                          host_a: str) -> None:
    policy = ClientPolicy(trip=ConsecutiveFailures(threshold=1), attempts=3)
    client = adapter.client(config=policy)
    control(host_a, mode="slow", delay=3.0)
    async with deadline_after(0.3):
        with pytest.raises(DeadlineExceededError) as caught:
            await client.get(host_a + "/x")
    assert isinstance(caught.value, adapter.timeout_error)
    assert len(seen(host_a)) == 1  # no retry: nothing left of the budget
    assert client.transport.policies_for(host_a).breaker.state is State.OPEN


# -- fallbacks -----------------------------------------------------------------------------


async def test_fallback_is_served_for_its_route(adapter: Adapter, host_a: str) -> None:
    recorder = RecordingListener()
    errors: list[BaseException] = []
    client = adapter.client(
        config=ClientPolicy(attempts=1), listeners=[recorder],
        fallbacks={("GET", "/payments/{id}"): fallback_hook(adapter.kind, "cached", errors)})
    control(host_a, mode="fail", status=503)
    assert (await client.get(host_a + "/payments/7")).text == "cached"
    assert isinstance(errors[0], adapter.base_error)  # the 5xx, as the client's error
    assert len(recorder.of(FallbackUsed)) == 1
    assert (await client.get(host_a + "/other")).status == 503  # no hook there
    closed = f"http://127.0.0.1:{free_port()}"
    assert (await client.get(closed + "/payments/8")).text == "cached"
    assert isinstance(errors[1], adapter.connection_error)


async def test_settings_errors_name_the_integration(adapter: Adapter) -> None:
    name = "ResilientAdapter" if adapter.kind == "requests" else "ResilientMiddleware"
    with pytest.raises(ConfigurationError, match=f"{name}.max_hosts"):
        adapter.client(max_hosts=0)


# -- bodies --------------------------------------------------------------------------------


async def test_an_answer_holds_its_bulkhead_slot_until_its_body_is_done(
        adapter: Adapter, host_a: str) -> None:
    client = adapter.client(config=ClientPolicy(max_concurrent=1, attempts=1))
    control(host_a, mode="drip", delay=0.05, count=4)  # a body still coming
    async with client.held(host_a + "/x") as status:
        assert status == 200
        with pytest.raises(BulkheadFullError) as caught:
            await client.get(host_a + "/x")
        assert isinstance(caught.value, adapter.connection_error)
    assert (await client.get(host_a + "/x")).status == 200


async def test_a_body_cut_mid_response_is_a_breaker_failure(adapter: Adapter,
                                                            host_a: str) -> None:
    client = adapter.client(config=ClientPolicy(trip=ConsecutiveFailures(threshold=1),
                                                attempts=1))
    control(host_a, mode="abort")  # headers promise 1000 bytes; 10 come, then the close
    # The client's own error for a cut body: requests' ChunkedEncodingError, aiohttp's
    # ClientPayloadError.
    with pytest.raises(adapter.payload_error):
        await client.get(host_a + "/x")
    assert client.transport.policies_for(host_a).breaker.state is State.OPEN


async def test_a_stale_answer_is_served_when_the_host_fails(adapter: Adapter,
                                                            host_a: str) -> None:
    cache: StaleCache[object] = StaleCache(max_age=60)
    client = adapter.client(config=ClientPolicy(attempts=1),
                            fallbacks={("GET", "/payments/{id}"): cache})
    control(host_a, mode="ok", body="paid")
    assert (await client.get(host_a + "/payments/1")).text == "paid"
    control(host_a, mode="fail", status=503)
    stale = await client.get(host_a + "/payments/1")
    assert (stale.status, stale.text) == (200, "paid")
    assert stale.headers["x-fournines-degraded"] == "stale"
    assert (await client.get(host_a + "/payments/2")).status == 503  # nothing kept for it


# -- observation ---------------------------------------------------------------------------


async def test_each_request_is_measured_once_by_host(adapter: Adapter, host_a: str) -> None:
    recorder = RecordingListener()
    client = adapter.client(config=ClientPolicy(backoff=FAST, attempts=2),
                            listeners=[recorder])
    control(host_a, mode="fail", status=503)
    await client.get(host_a + "/x")
    [finished] = recorder.of(ClientRequestFinished)
    assert (finished.name, finished.method, finished.status_code) == (host_a, "GET", 503)
    assert len(recorder.of(ClientRequestStarted)) == 1


async def test_the_aiohttp_middleware_does_not_hedge(host_a: str) -> None:
    # One aiohttp request object cannot be sent twice at once; retries send it in turn.
    adapter = Adapter("aiohttp")
    client = adapter.client(config=ClientPolicy(hedge_after=0.01, attempts=1))
    control(host_a, mode="slow", delay=0.2)
    try:
        assert (await client.get(host_a + "/x")).status == 200
    finally:
        await adapter.close()
    assert len(seen(host_a)) == 1


def test_a_streamed_requests_body_read_to_the_end_gives_its_slot_back(host_a: str) -> None:
    session = requests.Session()
    session.mount("http://", ResilientAdapter(ClientPolicy(max_concurrent=1, attempts=1)))
    control(host_a, mode="drip", delay=0.01, count=3)
    try:
        streamed = session.get(host_a + "/x", stream=True, timeout=10)
        with pytest.raises(BulkheadFullError):
            session.get(host_a + "/x", timeout=10)
        chunks = list(streamed.iter_content(chunk_size=1))  # read to the end, not closed
        assert chunks == [b"o", b"k"] * 3
        assert session.get(host_a + "/x", timeout=10).status_code == 200
    finally:
        session.close()


class _Redirecting(BaseHTTPRequestHandler):
    """``/old`` answers 302 to ``/new``, which answers ``new``."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        moved = self.path == "/old"
        body = b"moved" if moved else b"new"
        self.send_response(302 if moved else 200)
        if moved:
            self.send_header("location", "/new")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def redirecting() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_redirects_are_followed_and_each_hop_gives_its_slot_back(
        adapter: Adapter, redirecting: str) -> None:
    client = adapter.client(config=ClientPolicy(max_concurrent=1, attempts=1))
    for _ in range(2):
        answer = await client.get(redirecting + "/old")
        assert (answer.status, answer.text) == (200, "new")
