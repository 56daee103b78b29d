"""Reproduction (issue 13): a hung dependency, called through the client transport, opens
its host's breaker; a caller that goes away does not count against the host.

On the issue's main, ``Pipeline(Timeout(0.05), Retry(attempts=3, ...))`` around a call
that never returns raised ``DeadlineExceededError`` 50 times out of 50 and the breaker
stayed closed: the enclosing ``Timeout`` cancels the call, and a cancellation was "not a
failure". The dependency here is a real uvicorn process that accepts every request and
never answers (tests/client/apps/hung.py); each request that reached it is counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from fournines import (
    Backoff,
    CircuitOpenError,
    DeadlineExceededError,
    Pipeline,
    Retry,
    State,
    Timeout,
)
from fournines.client import (
    AsyncResilientTransport,
    ClientPolicy,
    ResilientTransport,
    TransportCircuitOpenError,
)

from ..asgi._uvicorn import UvicornProcess

CALLS = 50
THRESHOLD = 5  # ClientPolicy's default trip: ConsecutiveFailures(5)


@pytest.fixture(scope="module")
def hung() -> Iterator[UvicornProcess]:
    server = UvicornProcess("tests.client.apps.hung:app",
                            args=["--timeout-graceful-shutdown", "1"]).start()
    try:
        yield server
    finally:
        server.stop()


def received(server: UvicornProcess) -> int:
    return int(httpx.get(server.url + "/livez").text)


def readme_order() -> Pipeline:
    return Pipeline(Timeout(0.05), Retry(attempts=3, backoff=Backoff(initial=0.001, cap=0.002)))


def outcomes(errors: list[BaseException]) -> list[str]:
    return ["open" if isinstance(e, CircuitOpenError) else
            "deadline" if isinstance(e, DeadlineExceededError) else type(e).__name__
            for e in errors]


def opened_within_the_threshold(kinds: list[str]) -> bool:
    """Deadlines first (at most THRESHOLD of them), then nothing but an open breaker."""
    first_open = kinds.index("open") if "open" in kinds else len(kinds)
    return (1 <= first_open <= THRESHOLD and set(kinds[:first_open]) == {"deadline"}
            and set(kinds[first_open:]) == {"open"})


async def test_an_enclosing_timeout_opens_the_breaker_of_a_hung_host(
        hung: UvicornProcess) -> None:
    before = received(hung)
    transport = AsyncResilientTransport(config=ClientPolicy())
    pipeline = readme_order()
    errors: list[BaseException] = []
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(CALLS):
            try:
                await pipeline.acall(client.get, hung.url + "/pay")
            except Exception as exc:
                errors.append(exc)
    kinds = outcomes(errors)
    assert opened_within_the_threshold(kinds), kinds
    assert all(isinstance(e, TransportCircuitOpenError) for e in errors if
               isinstance(e, CircuitOpenError))
    assert received(hung) - before <= THRESHOLD  # the rest never reached the hung host


def test_a_sync_timeout_opens_the_breaker_of_a_hung_host(hung: UvicornProcess) -> None:
    # Sync code cannot be cancelled: the Timeout's deadline becomes httpx's timeouts.
    before = received(hung)
    transport = ResilientTransport(config=ClientPolicy())
    pipeline = readme_order()
    errors: list[BaseException] = []
    with httpx.Client(transport=transport) as client:
        for _ in range(CALLS):
            try:
                pipeline.call(client.get, hung.url + "/pay")
            except Exception as exc:
                errors.append(exc)
    kinds = outcomes(errors)
    assert opened_within_the_threshold(kinds), kinds
    assert received(hung) - before <= THRESHOLD


async def test_callers_that_go_away_do_not_open_the_breaker(hung: UvicornProcess) -> None:
    transport = AsyncResilientTransport(config=ClientPolicy(max_concurrent=1))
    pipeline = Pipeline(Timeout(60.0))
    hp = transport.policies_for(hung.url + "/pay")
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(THRESHOLD * 2):
            task = asyncio.ensure_future(pipeline.acall(client.get, hung.url + "/pay"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert hp.breaker.state is State.CLOSED
    assert hp.bulkhead is not None and hp.bulkhead.active == 0
