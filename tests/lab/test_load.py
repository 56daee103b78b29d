"""Specification of the open-loop load generator: its schedule and how it measures.

The servers here are real asyncio HTTP servers on loopback ports, started by
each test, so what is measured is what went over a socket.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from fournines.lab.load import arrivals, run_load
from fournines.lab.scenario import Fault, Scenario

Answer = Callable[[int], Awaitable[bytes]]


@asynccontextmanager
async def http_server(answer: Answer) -> AsyncIterator[tuple[str, list[float]]]:
    """Answers every request with ``await answer(n)``; yields (url, arrival times)."""
    arrived: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                arrived.append(time.perf_counter())
                writer.write(await answer(len(arrived)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", arrived
    finally:
        server.close()


def response(status: int = 200, headers: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\n{headers}\r\nok").encode()


def test_the_schedule_is_a_constant_rate_with_every_order_visited_first() -> None:
    schedule = arrivals(Scenario(duration=2, orders=10), rate=50, capacity=100, seed=1)
    assert len(schedule) == 100
    gaps = {round(b.at - a.at, 9) for a, b in itertools.pairwise(schedule)}
    assert gaps == {0.02}
    assert [a.order for a in schedule[:10]] == list(range(10))


def test_the_schedule_rises_to_factor_times_capacity_in_an_overload_window() -> None:
    scenario = Scenario(duration=3, faults=(Fault(kind="overload", at=1, duration=1, factor=3),))
    schedule = arrivals(scenario, rate=10, capacity=40, seed=1)
    per_second = [sum(1 for a in schedule if s <= a.at < s + 1) for s in range(3)]
    assert per_second[0] == 10
    assert 119 <= per_second[1] <= 121
    assert per_second[2] <= 11


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    scenario = Scenario(duration=2, orders=5)
    assert arrivals(scenario, 50, 100, seed=3) == arrivals(scenario, 50, 100, seed=3)
    assert arrivals(scenario, 50, 100, seed=3) != arrivals(scenario, 50, 100, seed=4)


async def test_requests_leave_on_schedule_even_while_earlier_answers_are_slow() -> None:
    async def slow(n: int) -> bytes:
        await asyncio.sleep(1.0)
        return response()

    schedule = arrivals(Scenario(duration=0.4, orders=5), rate=50, capacity=100, seed=1)
    async with http_server(slow) as (url, arrived):
        started = time.perf_counter()
        outcomes = await run_load(url, schedule, timeout=5)
    assert len(outcomes) == len(schedule) == 20
    assert all(o.status == 200 for o in outcomes)
    # open loop: every request had arrived before the first answer (1 s) was sent
    assert max(arrived) - started < 0.9


async def test_latency_is_measured_from_the_intended_send_time() -> None:
    # The server holds every answer until 0.6 s after the first request arrived, so a
    # request intended for time t waits about 0.6 - t: later ones wait less, and their
    # latency must say so, not the time since they happened to leave.
    release = asyncio.Event()

    async def held(n: int) -> bytes:
        if n == 1:
            asyncio.get_running_loop().call_later(0.6, release.set)
        await release.wait()
        return response()

    schedule = arrivals(Scenario(duration=0.5, orders=5), rate=10, capacity=100, seed=1)
    async with http_server(held) as (url, _):
        outcomes = await run_load(url, schedule, timeout=5)
    first, last = outcomes[0], outcomes[-1]
    assert last.at - first.at == 0.4
    assert first.latency >= 0.6
    assert first.latency - last.latency > 0.3  # the later request waited less
    for o in outcomes:
        assert abs((o.at + o.latency) - (first.at + first.latency)) < 0.15


async def test_an_unanswered_request_times_out_as_a_failure_with_its_timeout_as_latency() -> None:
    async def never(n: int) -> bytes:
        await asyncio.sleep(30)
        return response()

    schedule = arrivals(Scenario(duration=0.1, orders=1), rate=20, capacity=100, seed=1)
    async with http_server(never) as (url, _):
        outcomes = await run_load(url, schedule, timeout=0.3)
    assert [o.status for o in outcomes] == [0, 0]
    assert all(o.error == "timeout" and not o.ok for o in outcomes)
    assert all(0.29 <= o.latency < 2.0 for o in outcomes)


async def test_degraded_answers_and_gateway_errors_are_recorded() -> None:
    async def mixed(n: int) -> bytes:
        if n % 2:
            return response(200, "x-lab-degraded: payment-status,profile\r\n")
        return response(502, "x-lab-error: order 502\r\n")

    schedule = arrivals(Scenario(duration=0.1, orders=1), rate=20, capacity=100, seed=1)
    async with http_server(mixed) as (url, _):
        outcomes = await run_load(url, schedule, timeout=5)
    statuses = sorted((o.status, o.degraded, o.sources, o.error) for o in outcomes)
    assert statuses == [(200, True, "payment-status,profile", ""),
                        (502, False, "", "order 502")]


async def test_a_refused_connection_is_a_failure_not_a_crash() -> None:
    async with http_server(lambda n: asyncio.sleep(0, response())) as (url, _):
        pass  # closed: nothing listens on its port any more
    schedule = arrivals(Scenario(duration=0.1, orders=1), rate=20, capacity=100, seed=1)
    outcomes = await run_load(url, schedule, timeout=1)
    assert [o.status for o in outcomes] == [0, 0]
    assert all(o.error for o in outcomes)


async def test_every_scheduled_request_is_recorded_even_when_the_answer_is_unreadable() -> None:
    # A head longer than the stream limit makes the reader raise LimitOverrunError, which is
    # neither an OSError nor a ValueError: the request must still be counted, as a failure.
    async def huge_head(n: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nx-junk: " + b"a" * 100_000 + b"\r\ncontent-length: 0\r\n\r\n"

    schedule = arrivals(Scenario(duration=0.1, orders=1), rate=20, capacity=100, seed=1)
    async with http_server(huge_head) as (url, _):
        outcomes = await run_load(url, schedule, timeout=2)
    assert len(outcomes) == len(schedule) == 2
    assert all(o.status == 0 and not o.ok and o.error for o in outcomes)



@pytest.mark.parametrize(("rate", "capacity"), [(0.0, 100.0), (10.0, 0.0), (math.nan, 100.0)])
def test_a_schedule_needs_a_positive_rate_and_capacity(rate: float, capacity: float) -> None:
    # a capacity probe that measured nothing must stop the lab, not divide by zero
    scenario = Scenario(duration=2, faults=(Fault(kind="overload", at=0, duration=1),))
    with pytest.raises(ValueError, match="must be > 0"):
        arrivals(scenario, rate=rate, capacity=capacity, seed=1)


async def test_a_chunked_answer_is_read_whole_and_does_not_poison_the_next_request() -> None:
    async def chunked(n: int) -> bytes:
        if n == 1:
            return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        return response()

    schedule = arrivals(Scenario(duration=0.3, orders=1), rate=10, capacity=100, seed=1)
    async with http_server(chunked) as (url, arrived):
        outcomes = await run_load(url, schedule, timeout=2)
    assert [o.status for o in outcomes] == [200, 200, 200]
    assert len(arrived) == 3
