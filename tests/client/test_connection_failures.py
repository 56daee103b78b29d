"""A downstream that drops connections, and other hostile or unlucky answers.

Specs that take ``shell`` run through both transports; cancellation, hedging and
streaming a long body while it arrives are async-only here.
The downstream (tests/client/apps/downstream.py) really closes its TCP
connection: ``close`` without a response (FIN), ``reset`` without a response
(RST), ``abort`` after the headers and part of the body; ``drip`` streams a
long body slowly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fournines import CircuitOpenError, ConsecutiveFailures, StaleCache, State
from fournines.client import STALE_HEADER, AsyncResilientTransport, ClientPolicy
from fournines.policies.backoff import Backoff

from ._helpers import control, seen
from ._shells import Shell

FAST = Backoff(initial=0.001, cap=0.005)
DROPPED = ["close", "reset"]
ROUTE = ("GET", "/payments/42/status")


@pytest.fixture
async def make_client() -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    def make(**kwargs: Any) -> tuple[httpx.AsyncClient, AsyncResilientTransport]:
        transport = AsyncResilientTransport(**kwargs)
        client = httpx.AsyncClient(transport=transport, timeout=10.0)
        clients.append(client)
        return client, transport

    yield make
    for client in clients:
        await client.aclose()


# -- connections closed without an answer ----------------------------------------------------


@pytest.mark.parametrize("mode", DROPPED)
async def test_dropped_connections_open_the_breaker(shell: Shell, host_a: str,
                                                    mode: str) -> None:
    policy = ClientPolicy(trip=ConsecutiveFailures(threshold=3), attempts=1)
    client, transport = shell.client(config=policy)
    control(host_a, mode=mode)
    for _ in range(3):
        with pytest.raises(httpx.TransportError):
            await client.get(host_a + "/x")
    with pytest.raises(CircuitOpenError):
        await client.get(host_a + "/x")
    assert len(seen(host_a)) == 3
    assert transport.policies_for(host_a).breaker.state is State.OPEN


@pytest.mark.parametrize("mode", DROPPED)
async def test_get_is_retried_when_the_connection_drops(shell: Shell, host_a: str,
                                                        mode: str) -> None:
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode=mode)
    with pytest.raises(httpx.TransportError):
        await client.get(host_a + "/x")
    assert [r["attempt"] for r in seen(host_a)] == ["1", "2", "3"]


@pytest.mark.parametrize("mode", DROPPED)
async def test_post_is_not_retried_when_the_connection_drops(shell: Shell, host_a: str,
                                                             mode: str) -> None:
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode=mode)
    with pytest.raises(httpx.TransportError):
        await client.post(host_a + "/orders", json={})
    assert [r["method"] for r in seen(host_a)] == ["POST"]


# -- connections cut in the middle of the body ------------------------------------------------


async def test_body_cut_mid_response_reaches_the_caller_and_counts_as_failure(
        shell: Shell, host_a: str) -> None:
    policy = ClientPolicy(trip=ConsecutiveFailures(threshold=2), attempts=3, backoff=FAST)
    client, transport = shell.client(config=policy)
    control(host_a, mode="abort")
    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(host_a + "/x")
    # The headers said 200, so there was nothing to retry; the cut body still counts.
    assert len(seen(host_a)) == 2
    assert transport.policies_for(host_a).breaker.state is State.OPEN


async def test_retried_answer_with_a_cut_body_is_retried_and_frees_its_slot(
        shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=2, max_concurrent=1))
    control(host_a, mode="abort", status=503)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(host_a + "/x")  # the last attempt's body is cut too
    assert [r["attempt"] for r in seen(host_a)] == ["1", "2"]
    control(host_a, mode="ok")
    assert (await client.get(host_a + "/x")).status_code == 200


async def test_stale_answer_replaces_a_body_cut_mid_response(shell: Shell,
                                                             host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(attempts=1, max_concurrent=1),
                            fallbacks={ROUTE: StaleCache(max_age=300.0)})
    control(host_a, body="paid")
    assert (await client.get(host_a + ROUTE[1])).text == "paid"
    control(host_a, mode="abort")
    stale = await client.get(host_a + ROUTE[1])
    assert (stale.text, stale.headers[STALE_HEADER]) == ("paid", "stale")
    control(host_a, mode="ok", body="refunded")  # and the slot came back
    assert (await client.get(host_a + ROUTE[1])).text == "refunded"


async def test_partial_content_is_not_kept_as_the_last_good_answer(shell: Shell,
                                                                   host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(attempts=1),
                            fallbacks={ROUTE: StaleCache(max_age=300.0)})
    control(host_a, mode="fail", status=206)
    assert (await client.get(host_a + ROUTE[1], headers={"range": "bytes=0-6"})).status_code \
        == 206
    control(host_a, mode="fail", status=503)
    assert (await client.get(host_a + ROUTE[1])).status_code == 503


# -- hostile headers and cancellation -------------------------------------------------------


async def test_retry_after_date_out_of_range_is_ignored(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=2))
    control(host_a, mode="fail", status=503,
            retry_after="Mon, 01 Jan 99999999999999999999 00:00:00 GMT")
    assert (await client.get(host_a + "/x")).status_code == 503
    assert len(seen(host_a)) == 2


async def test_cancelled_request_gives_back_its_slot_and_probe(make_client: Any,
                                                               host_a: str) -> None:
    policy = ClientPolicy(max_concurrent=1, attempts=1, trip=ConsecutiveFailures(threshold=1),
                          reset_timeout=0.0)
    client, transport = make_client(config=policy)
    breaker = transport.policies_for(host_a).breaker
    control(host_a, mode="fail", status=500)
    assert (await client.get(host_a + "/x")).status_code == 500
    assert breaker.state is not State.CLOSED  # the next call is a half-open probe
    control(host_a, mode="slow", delay=5.0)
    task = asyncio.ensure_future(client.get(host_a + "/x"))
    for _ in range(200):
        if seen(host_a):
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    control(host_a, mode="ok")
    # Neither the bulkhead slot nor the half-open probe stayed with the cancelled call.
    assert (await client.get(host_a + "/x")).status_code == 200
    assert breaker.state is State.CLOSED


async def test_hedged_request_cancelled_twice_gives_back_both_slots(make_client: Any,
                                                                    host_a: str) -> None:
    policy = ClientPolicy(max_concurrent=2, attempts=1, hedge_after=0.05)
    client, _ = make_client(config=policy)
    control(host_a, mode="slow", delay=3.0)
    task = asyncio.ensure_future(client.get(host_a + "/x"))
    for _ in range(200):
        if len(seen(host_a)) == 2:  # the first attempt and its hedge are both out
            break
        await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # again, while the losers are being cancelled
    with pytest.raises(asyncio.CancelledError):
        await task
    control(host_a, mode="ok")
    pair = await asyncio.gather(client.get(host_a + "/x"), client.get(host_a + "/x"))
    assert [r.status_code for r in pair] == [200, 200]


async def test_long_body_on_a_stale_route_is_streamed_not_buffered(make_client: Any,
                                                                   host_a: str) -> None:
    client, _ = make_client(config=ClientPolicy(attempts=1), max_stale_bytes=100,
                            fallbacks={ROUTE: StaleCache(max_age=300.0)})
    control(host_a, mode="drip", body="x" * 64, count=100, delay=0.2)  # 20 s in all
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with client.stream("GET", host_a + ROUTE[1]) as response:
        async for chunk in response.aiter_raw():
            assert chunk.startswith(b"x")
            break
    # Buffering the whole body first would take 20 s; the first bytes come at once.
    assert loop.time() - start < 10.0


async def test_long_body_on_a_stale_route_is_passed_on_in_full_and_not_kept(
        shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(attempts=1), max_stale_bytes=100,
                             fallbacks={ROUTE: StaleCache(max_age=300.0)})
    control(host_a, mode="drip", body="x" * 64, count=5, delay=0.01)
    assert (await client.get(host_a + ROUTE[1])).content == b"x" * 320
    control(host_a, mode="fail", status=503)  # too large to have been kept
    assert (await client.get(host_a + ROUTE[1])).status_code == 503


# -- request bodies that cannot be sent twice ------------------------------------------------


async def _chunks() -> AsyncIterator[bytes]:
    yield b'{"state": '
    yield b'"paid"}'


async def test_put_with_a_one_shot_body_is_not_hedged(make_client: Any, host_a: str) -> None:
    client, _ = make_client(config=ClientPolicy(attempts=1, hedge_after=0.01))
    control(host_a, mode="slow", delay=0.3)
    assert (await client.put(host_a + "/orders/1", content=_chunks())).status_code == 200
    assert [r["method"] for r in seen(host_a)] == ["PUT"]


async def test_streamed_answer_to_a_half_open_probe_frees_the_breaker_at_once(
        make_client: Any, host_a: str) -> None:
    policy = ClientPolicy(attempts=1, trip=ConsecutiveFailures(threshold=1), reset_timeout=0.0)
    client, transport = make_client(config=policy)
    control(host_a, mode="fail", status=500)
    assert (await client.get(host_a + "/x")).status_code == 500
    control(host_a, mode="drip", count=50, delay=0.1)
    async with client.stream("GET", host_a + "/x") as probe:
        assert probe.status_code == 200
        # The probe's headers closed the breaker; its body, still coming, holds nothing.
        assert transport.policies_for(host_a).breaker.state is State.CLOSED
        control(host_a, mode="ok")  # (the probe's body keeps dripping)
        assert (await client.get(host_a + "/x")).status_code == 200
