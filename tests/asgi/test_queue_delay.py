"""LoadShedder's queueing-delay rule (CoDel), arrival tickets and batched shed events.

Time comes from a FakeClock; the waits are synthetic: a ticket's arrival is
stamped by ``arrive()`` and the clock is moved before the middleware runs.
"""

from __future__ import annotations

from typing import Any

import pytest

from fournines import CallRejected, ConfigurationError
from fournines.asgi._types import Message, Receive, Scope, Send, respond
from fournines.asgi.shedding import TICKET, LoadShedder
from fournines.policies.adaptive import FixedLimit
from fournines.testing import FakeClock, RecordingListener

CRITICAL = [(b"x-priority", b"critical")]


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await respond(send, 200, b"ok")


def shedder(clock: FakeClock, **kwargs: Any) -> LoadShedder:
    kwargs.setdefault("limit", FixedLimit(100))
    return LoadShedder(ok, max_loop_lag=None, clock=clock, **kwargs)


def scope_for(path: str = "/work", headers: list[tuple[bytes, bytes]] | None = None,
              ticket: Any = None) -> Scope:
    scope: Scope = {"type": "http", "method": "GET", "path": path,
                    "headers": headers or [], "query_string": b""}
    if ticket is not None:
        scope["extensions"] = {TICKET: ticket}
    return scope


async def start_after(shed: LoadShedder, clock: FakeClock, waited: float,
                      headers: list[tuple[bytes, bytes]] | None = None) -> int:
    """One request arriving now and starting ``waited`` seconds later: its status."""
    ticket = shed.arrive("/work", headers or [])
    assert ticket
    clock.advance(waited)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await shed(scope_for(headers=headers, ticket=ticket), receive, send)
    return int(sent[0]["status"])


async def test_a_request_that_starts_within_the_target_is_served(clock: FakeClock) -> None:
    shed = shedder(clock)
    assert await start_after(shed, clock, 0.004) == 200
    assert shed.shed_queue_delay == 0


async def test_a_request_that_waited_longer_than_the_interval_is_shed_at_its_start(
    clock: FakeClock,
) -> None:
    shed = shedder(clock)
    assert await start_after(shed, clock, 0.15) == 503
    assert shed.shed_queue_delay == 1
    assert shed.in_flight == 0


async def test_a_short_burst_above_the_target_is_not_shed(clock: FakeClock) -> None:
    shed = shedder(clock)
    statuses = [await start_after(shed, clock, 0.02) for _ in range(4)]
    assert statuses == [200] * 4  # 80 ms above target: less than one interval
    assert not shed.dropping


async def test_a_standing_queue_for_an_interval_sheds_what_waited_beyond_the_target(
    clock: FakeClock,
) -> None:
    shed = shedder(clock)
    statuses = [await start_after(shed, clock, 0.02) for _ in range(7)]
    assert statuses[:5] == [200] * 5
    assert shed.dropping
    assert statuses[-1] == 503


async def test_a_request_that_starts_within_the_target_ends_the_overload(
    clock: FakeClock,
) -> None:
    shed = shedder(clock)
    for _ in range(7):
        await start_after(shed, clock, 0.02)
    assert shed.dropping
    assert await start_after(shed, clock, 0.001) == 200
    assert not shed.dropping
    assert await start_after(shed, clock, 0.02) == 200


async def test_critical_requests_are_held_to_the_interval_only(clock: FakeClock) -> None:
    shed = shedder(clock)
    for _ in range(7):
        await start_after(shed, clock, 0.02)
    assert shed.dropping
    assert await start_after(shed, clock, 0.02, CRITICAL) == 200
    assert await start_after(shed, clock, 0.2, CRITICAL) == 503


async def test_no_queue_target_means_no_queue_delay_shedding(clock: FakeClock) -> None:
    shed = shedder(clock, queue_target=None)
    assert await start_after(shed, clock, 5.0) == 200


async def test_a_served_request_is_timed_from_its_arrival(clock: FakeClock) -> None:
    samples: list[float] = []

    class Recording(FixedLimit):
        def on_sample(self, rtt: float, inflight: int, dropped: bool) -> None:
            samples.append(rtt)

    shed = shedder(clock, limit=Recording(100))
    await start_after(shed, clock, 0.004)
    assert samples == [pytest.approx(0.004)]


def test_arrive_admits_and_counts_the_request_in_flight(clock: FakeClock) -> None:
    shed = shedder(clock)
    ticket = shed.arrive("/work", [])
    assert ticket == (shed, 1, clock.monotonic())
    assert shed.in_flight == 1
    assert shed.admitted == 1


def test_arrive_sheds_above_the_limit_and_counts_it(clock: FakeClock) -> None:
    shed = shedder(clock, limit=FixedLimit(1))
    assert shed.arrive("/work", [])
    assert shed.arrive("/work", []) is None
    assert shed.shed_overload == 1
    assert shed.in_flight == 1


def test_arrive_admits_critical_requests_into_the_headroom(clock: FakeClock) -> None:
    shed = shedder(clock, limit=FixedLimit(2))
    assert shed.arrive("/work", []) and shed.arrive("/work", [])
    assert shed.arrive("/work", []) is None
    assert shed.arrive("/work", CRITICAL)
    assert shed.arrive("/work", [(b"x-priority", b"low")]) is None


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics"])
def test_arrive_leaves_health_and_metrics_to_the_middleware_while_shedding(
    clock: FakeClock, path: str,
) -> None:
    shed = shedder(clock, limit=FixedLimit(1))
    shed.arrive("/work", [])
    assert shed.arrive(path, []) == ()
    assert shed.in_flight == 1


def test_arrive_does_not_decide_when_priority_needs_the_scope(clock: FakeClock) -> None:
    shed = shedder(clock, limit=FixedLimit(1), priority=lambda scope: False)
    assert shed.arrive("/work", []) == ()
    assert shed.in_flight == 0


def test_sheds_are_reported_in_batches_with_their_count(clock: FakeClock) -> None:
    recorder = RecordingListener()
    shed = shedder(clock, limit=FixedLimit(1), listeners=[recorder], name="api")
    shed.arrive("/work", [])
    for _ in range(5):
        assert shed.arrive("/work", []) is None
    assert [e.count for e in recorder.of(CallRejected)] == [1]
    clock.advance(0.1)
    shed.arrive("/work", [])
    assert [e.count for e in recorder.of(CallRejected)] == [1, 5]
    assert shed.shed == 6


def test_report_sends_the_sheds_not_yet_reported(clock: FakeClock) -> None:
    recorder = RecordingListener()
    shed = shedder(clock, limit=FixedLimit(1), listeners=[recorder])
    shed.arrive("/work", [])
    for _ in range(3):
        shed.arrive("/work", [])
    shed.report()
    assert sum(e.count for e in recorder.of(CallRejected)) == 3
    shed.report()
    assert sum(e.count for e in recorder.of(CallRejected)) == 3


def test_shed_response_is_a_complete_503_with_retry_after(clock: FakeClock) -> None:
    shed = shedder(clock, retry_after=2)
    date = [(b"date", b"Wed, 02 Dec 2026 23:00:00 GMT")]
    answer = shed.shed_response(date)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"date: Wed, 02 Dec 2026 23:00:00 GMT" in lines
    assert b"retry-after: 2" in lines
    assert b"content-type: application/problem+json" in lines
    assert f"content-length: {len(body)}".encode() in lines
    assert shed.shed_response(date) is answer


def test_a_target_not_shorter_than_the_interval_is_refused(clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError, match="queue_target"):
        shedder(clock, queue_target=0.2, queue_interval=0.1)



def test_protect_passes_its_queue_target_to_the_shedder() -> None:
    from fournines.asgi import protect

    with pytest.raises(ConfigurationError, match="queue_target"):
        protect(ok, queue_target=0.2, queue_interval=0.1, metrics=False)


def test_a_refused_protect_leaves_no_metrics_behind() -> None:
    from prometheus_client import CollectorRegistry

    from fournines.asgi import protect

    registry = CollectorRegistry()
    with pytest.raises(ConfigurationError, match="queue_target"):
        protect(ok, queue_target=0.2, queue_interval=0.1, registry=registry)
    assert protect(ok, queue_target=None, registry=registry).state.service == "service"
