"""What a transport refuses is a fournines error AND an httpx error, through both shells.

Each spec catches the same refusal twice, once with the fournines class and once
with the httpx class that existing ``except`` clauses name.
"""

from __future__ import annotations

import pickle
from typing import Any

import httpx
import pytest

from fournines import (
    BulkheadFullError,
    CircuitOpenError,
    ConsecutiveFailures,
    DeadlineExceededError,
    FourNinesError,
    NoEndpointsError,
    RateLimitedError,
    RejectedError,
    TokenBucket,
    deadline_after,
)
from fournines.client import (
    ClientPolicy,
    P2CBalancer,
    TransportCircuitOpenError,
    TransportDeadlineExceededError,
    TransportRejectedError,
)
from fournines.testing import FakeClock

from .._servers import free_port
from ._helpers import control
from ._shells import Shell


class RateLimited(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """A transport of the user's own that sends at most ``rate`` requests a second."""

    def __init__(self, limiter: TokenBucket) -> None:
        self.limiter = limiter
        self.sync = httpx.HTTPTransport()
        self.inner = httpx.AsyncHTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.limiter.try_acquire()
        return self.sync.handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.limiter.try_acquire()
        return await self.inner.handle_async_request(request)


async def open_breaker(shell: Shell) -> Any:
    closed = f"http://127.0.0.1:{free_port()}"
    client, _ = shell.client(config=ClientPolicy(trip=ConsecutiveFailures(threshold=1),
                                                 attempts=1))
    with pytest.raises(httpx.ConnectError):
        await client.get(closed + "/x")
    return client, closed


@pytest.mark.parametrize("kind", [CircuitOpenError, httpx.TransportError, httpx.HTTPError])
async def test_an_open_breaker_is_caught_by_fournines_and_httpx_excepts(
        shell: Shell, kind: type[Exception]) -> None:
    client, closed = await open_breaker(shell)
    with pytest.raises(kind) as caught:
        await client.get(closed + "/x")
    assert isinstance(caught.value, TransportCircuitOpenError)
    assert caught.value.request.url == closed + "/x"  # set by httpx, as for its own errors
    assert caught.value.name == f"{closed}"


@pytest.mark.parametrize("kind", [DeadlineExceededError, TimeoutError, httpx.TimeoutException,
                                  httpx.TransportError])
async def test_a_spent_deadline_is_caught_by_fournines_and_httpx_excepts(
        shell: Shell, host_a: str, kind: type[Exception]) -> None:
    client, _ = shell.client()
    async with deadline_after(0.0):
        with pytest.raises(kind) as caught:
            await client.get(host_a + "/x")
    assert isinstance(caught.value, TransportDeadlineExceededError)


@pytest.mark.parametrize("kind", [DeadlineExceededError, httpx.TimeoutException])
async def test_a_deadline_passing_mid_call_is_caught_by_both_excepts(
        shell: Shell, host_a: str, kind: type[Exception]) -> None:
    client, _ = shell.client(config=ClientPolicy(attempts=1))
    control(host_a, mode="slow", delay=3.0)
    async with deadline_after(0.2):
        with pytest.raises(kind):
            await client.get(host_a + "/x")


@pytest.mark.parametrize("kind", [BulkheadFullError, httpx.TransportError])
async def test_a_full_bulkhead_is_caught_by_fournines_and_httpx_excepts(
        shell: Shell, host_a: str, kind: type[Exception]) -> None:
    client, _ = shell.client(config=ClientPolicy(max_concurrent=1, attempts=1))
    async with client.held(host_a + "/x"):
        with pytest.raises(kind) as caught:
            await client.get(host_a + "/x")
    assert isinstance(caught.value, BulkheadFullError)
    assert isinstance(caught.value, httpx.TransportError)


@pytest.mark.parametrize("kind", [RateLimitedError, httpx.TransportError])
async def test_a_rate_limit_below_the_transport_is_caught_by_both_excepts(
        shell: Shell, host_a: str, kind: type[Exception]) -> None:
    limiter = TokenBucket(rate=1.0, capacity=1, clock=FakeClock())
    client, _ = shell.client(RateLimited(limiter), config=ClientPolicy(attempts=3))
    assert (await client.get(host_a + "/x")).status_code == 200
    with pytest.raises(kind) as caught:
        await client.get(host_a + "/x")
    assert isinstance(caught.value, RateLimitedError)
    assert isinstance(caught.value, httpx.TransportError)
    assert caught.value.retry_after == pytest.approx(1.0)


@pytest.mark.parametrize("kind", [NoEndpointsError, httpx.TransportError])
async def test_no_endpoints_is_caught_by_both_excepts(shell: Shell,
                                                      kind: type[Exception]) -> None:
    balancing = shell.balancing(P2CBalancer([]))
    for client in (shell.wrap(balancing), shell.client(balancing)[0]):
        with pytest.raises(kind) as caught:
            await client.get("http://service/x")
        assert isinstance(caught.value, NoEndpointsError)
        assert isinstance(caught.value, httpx.TransportError)


def test_the_twins_keep_the_fournines_tree() -> None:
    error = TransportCircuitOpenError("http://a:80", 2.5)
    assert isinstance(error, CircuitOpenError | RejectedError | FourNinesError)
    assert isinstance(error, TransportRejectedError)
    assert (error.name, error.retry_after) == ("http://a:80", 2.5)
    assert str(error) == "circuit open: 'http://a:80' (retry after 2.500s)"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.name, copy.retry_after) == (TransportCircuitOpenError,
                                                         "http://a:80", 2.5)
    deadline = TransportDeadlineExceededError("no time left")
    assert isinstance(deadline, DeadlineExceededError | TimeoutError | httpx.TimeoutException)
    assert str(deadline) == "no time left"


async def test_a_refusal_below_the_balancer_is_not_the_endpoints_failure(
        shell: Shell, host_a: str) -> None:
    limiter = TokenBucket(rate=1.0, capacity=1, clock=FakeClock())
    balancer = P2CBalancer([host_a])
    client = shell.wrap(shell.balancing(balancer, transport=RateLimited(limiter)))
    assert (await client.get("http://service/x")).status_code == 200
    with pytest.raises(RateLimitedError):
        await client.get("http://service/x")
    [endpoint] = balancer.endpoints
    assert (endpoint.failures, endpoint.in_flight) == (0, 0)
