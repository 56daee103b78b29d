"""Specification: a request cut by a fournines deadline or ``Timeout`` is a failure of its
host; a request its caller cancelled is no outcome at all. Both give back what they held.

A request that hangs (the downstream's ``slow`` mode, real uvicorn) is cut in two ways:
an enclosing ``Timeout`` runs out (the README's pipelines), or code cancels it through
its deadline (:meth:`fournines.Deadline.cancel`, deterministic: no race with httpx's
own timeouts). Cancellation needs an async caller: these specs use the async shell.
Sync code cannot be cancelled; there the deadline becomes httpx's timeouts, whose
errors are failures through both shells (the last specs here, and
``test_slow_call_is_cut_at_the_deadline`` in test_transport.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from fournines import (
    Backoff,
    ConsecutiveFailures,
    DeadlineExceededError,
    Pipeline,
    Retry,
    State,
    Timeout,
    deadline_after,
)
from fournines.client import (
    AsyncBalancingTransport,
    AsyncResilientTransport,
    ClientPolicy,
    TransportCircuitOpenError,
)
from fournines.testing import FakeClock

from ._helpers import control, seen
from ._shells import Shell

HUNG = 10.0  # how long the downstream sits on each request: longer than any test waits
TICK = 0.05  # the enclosing Timeout: long enough to reach the server, short to wait out
FAST = Backoff(initial=0.001, cap=0.002)


def hung_policy(threshold: int, **kwargs: Any) -> ClientPolicy:
    # A fixed reset: the breaker must still be open however slow the machine is.
    return ClientPolicy(trip=ConsecutiveFailures(threshold=threshold), attempts=1,
                        reset_timeout=60.0, initial_reset_timeout=None, **kwargs)


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., tuple[httpx.AsyncClient,
                                                             AsyncResilientTransport]]]:
    clients: list[httpx.AsyncClient] = []

    def make(**kwargs: Any) -> tuple[httpx.AsyncClient, AsyncResilientTransport]:
        transport = AsyncResilientTransport(**kwargs)
        client = httpx.AsyncClient(transport=transport, timeout=30.0)
        clients.append(client)
        return client, transport

    yield make
    for client in clients:
        await client.aclose()


async def arrived(url: str, count: int) -> None:
    """Wait until the downstream has seen ``count`` requests (they are in flight)."""
    for _ in range(500):
        if len(seen(url)) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} requests never reached {url}")


async def cut_by_deadline(call: Callable[[], Awaitable[object]], url: str,
                          in_flight: int = 1) -> None:
    """Start ``call`` under a deadline and cancel it through the deadline once in flight."""
    before = len(seen(url))
    async with deadline_after(60.0) as deadline:
        task = asyncio.ensure_future(call())
        await arrived(url, before + in_flight)
        deadline.cancel(task)
        with pytest.raises(asyncio.CancelledError):
            await task


# -- cut by a fournines deadline: a failure ----------------------------------------------------

ORDERS: dict[str, Callable[[], Pipeline]] = {
    "timeout": lambda: Pipeline(Timeout(TICK)),
    "timeout-retry": lambda: Pipeline(Timeout(TICK), Retry(attempts=3, backoff=FAST)),
}


@pytest.mark.parametrize("order", ORDERS)
async def test_requests_cut_by_an_enclosing_timeout_open_the_host_breaker(
        make_client: Any, host_a: str, order: str) -> None:
    client, transport = make_client(config=hung_policy(3))
    pipeline = ORDERS[order]()
    control(host_a, mode="slow", delay=HUNG)
    for _ in range(3):
        with pytest.raises(DeadlineExceededError):
            await pipeline.acall(client.get, host_a + "/x")
    assert transport.policies_for(host_a).breaker.state is State.OPEN
    with pytest.raises(TransportCircuitOpenError):
        await pipeline.acall(client.get, host_a + "/x")
    assert len(seen(host_a)) == 3  # the open breaker kept the fourth off the network


async def test_a_request_its_deadline_cancels_is_a_failure_and_frees_its_slot(
        make_client: Any, host_a: str) -> None:
    client, transport = make_client(config=hung_policy(2, max_concurrent=1))
    hp = transport.policies_for(host_a)
    control(host_a, mode="slow", delay=HUNG)
    await cut_by_deadline(lambda: client.get(host_a + "/x"), host_a)
    assert hp.bulkhead is not None and hp.bulkhead.active == 0
    assert hp.breaker.state is State.CLOSED
    await cut_by_deadline(lambda: client.get(host_a + "/x"), host_a)
    assert hp.breaker.state is State.OPEN
    assert hp.bulkhead.active == 0


async def test_a_body_its_deadline_cuts_is_a_failure(make_client: Any, host_a: str) -> None:
    client, transport = make_client(config=hung_policy(1, max_concurrent=1))
    hp = transport.policies_for(host_a)
    control(host_a, mode="drip", body="x", count=3, delay=HUNG)  # the headers, then a hang
    async with deadline_after(60.0) as deadline:
        async with client.stream("GET", host_a + "/x") as response:
            reading = asyncio.ensure_future(response.aread())
            await asyncio.sleep(TICK)
            deadline.cancel(reading)
            with pytest.raises(asyncio.CancelledError):
                await reading
    assert hp.breaker.state is State.OPEN
    assert hp.bulkhead is not None and hp.bulkhead.active == 0


async def test_a_half_open_probe_its_deadline_cancels_reopens_the_breaker(
        make_client: Any, host_a: str) -> None:
    clock = FakeClock()
    client, transport = make_client(config=hung_policy(1), clock=clock)
    breaker = transport.policies_for(host_a).breaker
    control(host_a, mode="fail", status=500)
    await client.get(host_a + "/x")
    clock.advance(61.0)
    assert breaker.state is State.HALF_OPEN
    control(host_a, mode="slow", delay=HUNG)
    await cut_by_deadline(lambda: client.get(host_a + "/x"), host_a)
    assert breaker.state is State.OPEN


async def test_a_hedged_request_its_deadline_cancels_fails_both_attempts_and_frees_both_slots(
        make_client: Any, host_a: str) -> None:
    client, transport = make_client(config=hung_policy(2, max_concurrent=2, hedge_after=0.02))
    hp = transport.policies_for(host_a)
    control(host_a, mode="slow", delay=HUNG)
    # Both attempts hung until the deadline: two failures of the host.
    await cut_by_deadline(lambda: client.get(host_a + "/x"), host_a, in_flight=2)
    assert hp.breaker.state is State.OPEN
    assert hp.bulkhead is not None and hp.bulkhead.active == 0


async def test_a_winning_hedge_whose_body_its_deadline_cuts_is_a_failure(
        make_client: Any, host_a: str) -> None:
    client, transport = make_client(config=hung_policy(1, max_concurrent=2, hedge_after=0.02))
    hp = transport.policies_for(host_a)
    # The first attempt hangs, so its hedge wins: the hedge's headers, then a hang.
    control(host_a, mode="drip", body="x", count=3, delay=HUNG, first_delay=HUNG)
    async with deadline_after(60.0) as deadline:
        async with client.stream("GET", host_a + "/x") as response:
            assert [r["attempt"] for r in seen(host_a)] == ["1", "2"]
            reading = asyncio.ensure_future(response.aread())
            await asyncio.sleep(TICK)
            deadline.cancel(reading)
            with pytest.raises(asyncio.CancelledError):
                await reading
    assert hp.breaker.state is State.OPEN
    assert hp.bulkhead is not None and hp.bulkhead.active == 0


# -- cancelled by the caller: no outcome -------------------------------------------------------


async def _under_deadline(call: Callable[[], Awaitable[object]]) -> object:
    async with deadline_after(60.0):
        return await call()


SCOPES: dict[str, Callable[[Callable[[], Awaitable[object]]], Awaitable[object]]] = {
    "bare": lambda call: call(),
    "timeout": lambda call: Timeout(60.0).acall(call),
    "deadline": _under_deadline,
}


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("hedged", [False, True], ids=["single", "hedged"])
async def test_a_request_its_caller_cancels_is_no_failure_and_frees_its_slots(
        make_client: Any, host_a: str, scope: str, hedged: bool) -> None:
    policy = hung_policy(1, max_concurrent=2, hedge_after=0.02 if hedged else None)
    client, transport = make_client(config=policy)
    hp = transport.policies_for(host_a)
    control(host_a, mode="slow", delay=HUNG)
    for n in range(1, 4):
        task = asyncio.ensure_future(SCOPES[scope](lambda: client.get(host_a + "/x")))
        await arrived(host_a, n * (2 if hedged else 1))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert hp.breaker.state is State.CLOSED
    assert hp.bulkhead is not None and hp.bulkhead.active == 0
    control(host_a, mode="ok")
    assert (await client.get(host_a + "/x")).status_code == 200


# -- the balancer's endpoints: the same rule --------------------------------------------------


@pytest.mark.parametrize("by", ["deadline", "caller"])
async def test_a_balanced_attempt_is_an_endpoint_failure_only_when_its_deadline_cuts_it(
        host_a: str, by: str) -> None:
    transport = AsyncBalancingTransport([host_a])
    (endpoint,) = transport.balancer.endpoints
    control(host_a, mode="slow", delay=HUNG)
    async with httpx.AsyncClient(transport=transport, timeout=30.0) as client:
        if by == "deadline":
            await cut_by_deadline(lambda: client.get("http://orders/x"), host_a)
        else:
            task = asyncio.ensure_future(client.get("http://orders/x"))
            await arrived(host_a, 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert endpoint.failures == (1 if by == "deadline" else 0)
    assert (endpoint.successes, endpoint.in_flight) == (0, 0)


# -- sync code cannot be cancelled: httpx's own timeouts are the failures -----------------------


async def test_httpx_read_timeouts_open_the_host_breaker(shell: Shell, host_a: str) -> None:
    client, transport = shell.client(config=hung_policy(3))
    control(host_a, mode="slow", delay=HUNG)
    for _ in range(3):
        with pytest.raises(httpx.ReadTimeout):
            await client.get(host_a + "/x", timeout=TICK)
    assert transport.policies_for(host_a).breaker.state is State.OPEN
    with pytest.raises(TransportCircuitOpenError):
        await client.get(host_a + "/x", timeout=TICK)
    assert len(seen(host_a)) == 3
