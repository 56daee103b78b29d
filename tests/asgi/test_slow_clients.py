"""LoadShedder and slow clients: waiting on a client is not service time (issue 14).

A request whose app waits in ``receive()`` for body bytes is not in flight while
it waits; its body has a read timeout answered 408; event-loop lag alone never
sheds below ``lag_floor``, and the lag it cannot relieve is counted.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fournines import CallRejected, ConfigurationError, LoopLagUnrelieved
from fournines.asgi._types import Message, Receive, Scope, Send, respond
from fournines.asgi.shedding import LoadShedder, RequestBodyTimeout
from fournines.policies.adaptive import FixedLimit
from fournines.testing import FakeClock, RecordingListener

CRITICAL = [(b"x-priority", b"critical")]


def http_scope(method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None,
               path: str = "/work") -> Scope:
    return {"type": "http", "method": method, "path": path, "headers": headers or [],
            "http_version": "1.1", "scheme": "http", "query_string": b""}


def upload_scope(length: int = 10) -> Scope:
    return http_scope("POST", [(b"content-length", str(length).encode())])


class Client:
    """One request's client side: body chunks the test feeds, the answer it records."""

    def __init__(self) -> None:
        self.chunks: asyncio.Queue[Message] = asyncio.Queue()
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        return await self.chunks.get()

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def feed(self, body: bytes, *, more: bool = False) -> None:
        self.chunks.put_nowait({"type": "http.request", "body": body, "more_body": more})

    @property
    def status(self) -> int | None:
        for message in self.sent:
            if message["type"] == "http.response.start":
                return int(message["status"])
        return None

    @property
    def headers(self) -> dict[bytes, bytes]:
        for message in self.sent:
            if message["type"] == "http.response.start":
                return dict(message["headers"])
        return {}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent
                        if m["type"] == "http.response.body")


async def reads_body(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads the whole body, then answers its length."""
    size = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await respond(send, 200, str(size).encode())


def shedder_of(app: Any, limit: int = 2, **kwargs: Any) -> LoadShedder:
    """A shedder with a fixed limit whose lag the test sets (the sampler never wakes)."""
    kwargs.setdefault("lag_interval", 3600.0)
    return LoadShedder(app, limit=FixedLimit(limit), **kwargs)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# --- requests waiting for their body ---------------------------------------------------

async def test_a_request_waiting_for_its_body_is_not_in_flight() -> None:
    shedder = shedder_of(reads_body)
    slow = Client()
    task = asyncio.ensure_future(shedder(upload_scope(), slow.receive, slow.send))
    await settle()
    counts = (shedder.in_flight, shedder.waiting_for_body)
    slow.feed(b"0123456789")
    await task
    assert counts == (0, 1)
    assert (shedder.in_flight, shedder.waiting_for_body, slow.status) == (0, 0, 200)


async def test_slow_bodies_do_not_fill_the_concurrency_limit() -> None:
    shedder = shedder_of(reads_body, limit=2)
    slow = [Client() for _ in range(10)]
    tasks = [asyncio.ensure_future(shedder(upload_scope(), c.receive, c.send)) for c in slow]
    await settle()
    normal = Client()
    normal.feed(b"")
    await shedder(http_scope(), normal.receive, normal.send)
    for client in slow:
        client.feed(b"0123456789")
    await asyncio.gather(*tasks)
    assert normal.status == 200
    assert [c.status for c in slow] == [200] * 10
    assert shedder.shed == 0


async def test_a_request_counts_as_in_flight_again_once_its_body_arrived() -> None:
    inside: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        inside.append(shedder.in_flight)
        await respond(send, 200, b"ok")

    shedder = shedder_of(app)
    client = Client()
    client.feed(b"0123456789")
    await shedder(upload_scope(), client.receive, client.send)
    assert inside == [1]


async def test_the_wait_for_the_body_is_not_fed_to_the_limit_as_service_time(
    clock: FakeClock,
) -> None:
    samples: list[float] = []

    class Recording(FixedLimit):
        def on_sample(self, rtt: float, inflight: int, dropped: bool) -> None:
            samples.append(rtt)

    async def client_takes_five_seconds() -> Message:
        clock.advance(5.0)
        return {"type": "http.request", "body": b"0123456789", "more_body": False}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        clock.advance(0.25)
        await respond(send, 200, b"ok")

    shedder = LoadShedder(app, limit=Recording(10), max_loop_lag=None, clock=clock)
    await shedder(upload_scope(), client_takes_five_seconds, Client().send)
    assert samples == [0.25]


async def test_after_the_whole_body_receive_passes_through_untimed_and_counted() -> None:
    # A streaming response waits in receive() for the disconnect: that is service time.
    observed: list[tuple[int, int]] = []

    async def streams(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        waiter = asyncio.ensure_future(receive())
        await settle()
        observed.append((shedder.in_flight, shedder.waiting_for_body))
        await asyncio.sleep(0.2)  # past the body timeout
        observed.append((int(waiter.done()), shedder.body_timeouts))
        waiter.cancel()
        await respond(send, 200, b"streamed")

    shedder = shedder_of(streams, body_timeout=0.05)
    client = Client()
    client.feed(b"0123456789")
    await shedder(upload_scope(), client.receive, client.send)
    assert observed == [(1, 0), (0, 0)]
    assert client.status == 200


async def test_a_request_without_a_body_gets_the_servers_own_receive_and_send() -> None:
    seen: list[tuple[object, object]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((receive, send))
        await respond(send, 200, b"ok")

    shedder = shedder_of(app)
    client = Client()
    await shedder(http_scope("POST", [(b"content-length", b"0")]), client.receive, client.send)
    await shedder(http_scope(), client.receive, client.send)
    # GET and HEAD bodies are not read by apps: not watched, no header scan.
    await shedder(http_scope("GET", [(b"content-length", b"10")]), client.receive, client.send)
    assert seen == [(client.receive, client.send)] * 3


async def test_a_chunked_body_is_watched_too() -> None:
    shedder = shedder_of(reads_body, body_timeout=0.05)
    client = Client()
    await shedder(http_scope("POST", [(b"transfer-encoding", b"chunked")]),
                  client.receive, client.send)
    assert (client.status, shedder.body_timeouts) == (408, 1)


# --- the body read timeout -------------------------------------------------------------

async def test_a_body_that_does_not_arrive_in_time_gets_408_problem_json(
    recorder: RecordingListener,
) -> None:
    shedder = shedder_of(reads_body, body_timeout=0.05, listeners=[recorder], name="api")
    client = Client()
    client.feed(b"01", more=True)
    await shedder(upload_scope(), client.receive, client.send)
    assert client.status == 408
    assert client.headers[b"content-type"] == b"application/problem+json"
    assert client.headers[b"connection"] == b"close"
    assert json.loads(client.body)["status"] == 408
    assert (shedder.body_timeouts, shedder.in_flight, shedder.waiting_for_body) == (1, 0, 0)
    assert recorder.of(CallRejected) == [
        CallRejected(policy="load_shedder", name="api", reason="body_timeout"),
    ]


async def test_the_app_sees_request_body_timeout_and_its_own_answer_is_dropped() -> None:
    raised: list[BaseException] = []

    async def catches(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await receive()
        except RequestBodyTimeout as exc:
            raised.append(exc)
            await respond(send, 500, b"my own error page")

    shedder = shedder_of(catches, body_timeout=0.05)
    client = Client()
    await shedder(upload_scope(), client.receive, client.send)
    assert len(raised) == 1
    assert [m.get("status") for m in client.sent] == [408, None]


async def test_a_body_timeout_teaches_the_limit_nothing() -> None:
    samples: list[float] = []

    class Recording(FixedLimit):
        def on_sample(self, rtt: float, inflight: int, dropped: bool) -> None:
            samples.append(rtt)

    shedder = LoadShedder(reads_body, limit=Recording(10), max_loop_lag=None,
                          body_timeout=0.05)
    client = Client()
    await shedder(upload_scope(), client.receive, client.send)
    assert (client.status, samples) == (408, [])


async def test_a_body_arriving_at_the_minimum_rate_is_not_cut() -> None:
    # Each 100-byte chunk earns a second at 100 bytes/s: waits of 0.1 s never run out
    # of time, though together they exceed body_timeout.
    shedder = shedder_of(reads_body, body_timeout=0.15, min_body_rate=100.0)
    client = Client()
    task = asyncio.ensure_future(shedder(upload_scope(400), client.receive, client.send))
    for last in (False, False, False, True):
        await asyncio.sleep(0.1)
        client.feed(b"x" * 100, more=not last)
    await task
    assert (client.status, client.body, shedder.body_timeouts) == (200, b"400", 0)


async def test_without_a_body_timeout_a_slow_body_is_only_uncounted() -> None:
    shedder = shedder_of(reads_body, body_timeout=None)
    client = Client()
    task = asyncio.ensure_future(shedder(upload_scope(), client.receive, client.send))
    await asyncio.sleep(0.1)
    waiting = shedder.waiting_for_body
    client.feed(b"0123456789")
    await task
    assert (waiting, client.status) == (1, 200)


async def test_a_response_begun_before_the_body_timed_out_is_not_followed_by_408() -> None:
    async def answers_first(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await receive()

    shedder = shedder_of(answers_first, body_timeout=0.05)
    client = Client()
    await shedder(upload_scope(), client.receive, client.send)
    assert ([m.get("status") for m in client.sent], shedder.body_timeouts) == ([202], 1)


# --- loop lag and its floor ------------------------------------------------------------

class Gate:
    """An app that holds every request until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.release.wait()
        await respond(send, 200, b"ok")


async def hold(shedder: LoadShedder, count: int) -> list[asyncio.Future[None]]:
    tasks = [asyncio.ensure_future(shedder(http_scope(), Client().receive, Client().send))
             for _ in range(count)]
    await settle()
    return tasks


async def test_lag_alone_never_sheds_below_the_floor(clock: FakeClock) -> None:
    gate = Gate()
    shedder = shedder_of(gate, limit=100, lag_floor=4, clock=clock)
    held = await hold(shedder, 3)
    shedder.observe_loop_lag(0.5)
    fourth = await hold(shedder, 1)  # 3 in flight: below the floor, admitted
    fifth = Client()
    await shedder(http_scope(), fifth.receive, fifth.send)  # 4 in flight: shed
    gate.release.set()
    await asyncio.gather(*held, *fourth)
    assert (shedder.admitted, fifth.status) == (4, 503)
    assert (shedder.shed_loop_lag, shedder.shed_overload) == (1, 0)


async def test_below_the_floor_a_lagging_shedder_still_sheds_above_its_limit(
    clock: FakeClock,
) -> None:
    gate = Gate()
    shedder = shedder_of(gate, limit=1, lag_floor=4, clock=clock)
    held = await hold(shedder, 1)
    shedder.observe_loop_lag(0.5)
    second = Client()
    await shedder(http_scope(), second.receive, second.send)
    critical = Client()
    task = asyncio.ensure_future(
        shedder(http_scope(headers=CRITICAL), critical.receive, critical.send))
    await settle()
    gate.release.set()
    await asyncio.gather(*held, task)
    # Below the floor the lag changes nothing: the critical headroom stays.
    assert (second.status, critical.status) == (503, 200)
    assert (shedder.shed_overload, shedder.shed_loop_lag) == (1, 0)


async def test_lag_seen_below_the_floor_is_counted_and_sent_as_unrelieved(
    clock: FakeClock, recorder: RecordingListener,
) -> None:
    gate = Gate()
    shedder = shedder_of(gate, limit=100, lag_floor=2, clock=clock, listeners=[recorder],
                         name="api")
    shedder.observe_loop_lag(0.5)   # nothing in flight: unrelieved
    shedder.observe_loop_lag(0.01)  # no lag
    held = await hold(shedder, 2)
    shedder.observe_loop_lag(0.5)   # at the floor: the shedder acts on it
    gate.release.set()
    await asyncio.gather(*held)
    assert shedder.lag_unrelieved == 1
    assert recorder.of(LoopLagUnrelieved) == [
        LoopLagUnrelieved(policy="load_shedder", name="api", lag=0.5, in_flight=0),
    ]


async def test_a_sequential_client_on_a_lagging_loop_is_never_shed(clock: FakeClock) -> None:
    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, b"ok")

    shedder = shedder_of(ok, limit=20, clock=clock)  # the default floor
    statuses = []
    for _ in range(50):
        shedder.observe_loop_lag(0.5)
        client = Client()
        await shedder(http_scope(), client.receive, client.send)
        statuses.append(client.status)
    assert statuses == [200] * 50
    assert (shedder.lag_floor, shedder.lag_unrelieved, shedder.shed) == (4, 50, 0)


def test_unrelieved_lag_is_a_prometheus_counter() -> None:
    from prometheus_client import CollectorRegistry

    from fournines.instrumentation.prometheus import PrometheusListener

    registry = CollectorRegistry()
    shedder = shedder_of(Gate(), listeners=[PrometheusListener(registry)], name="api")
    shedder.observe_loop_lag(0.5)
    shedder.observe_loop_lag(0.5)
    value = registry.get_sample_value("fournines_loop_lag_unrelieved_total", {"name": "api"})
    assert value == 2.0


# --- settings --------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "field"), [
    ({"lag_floor": -1}, "lag_floor"),
    ({"lag_floor": 1.5}, "lag_floor"),
    ({"body_timeout": 0}, "body_timeout"),
    ({"min_body_rate": 0}, "min_body_rate"),
])
def test_bad_slow_client_settings_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=f"LoadShedder.{field}"):
        LoadShedder(reads_body, **kwargs)


def test_slow_client_settings_are_read_only() -> None:
    shedder = LoadShedder(reads_body, lag_floor=2, body_timeout=3.0, min_body_rate=10.0)
    assert (shedder.lag_floor, shedder.body_timeout, shedder.min_body_rate) == (2, 3.0, 10.0)
    with pytest.raises(AttributeError):
        shedder.lag_floor = 5  # type: ignore[misc]


async def test_a_body_timeout_is_a_408_in_the_golden_metrics_not_a_500() -> None:
    from prometheus_client import CollectorRegistry

    from fournines.asgi import protect

    registry = CollectorRegistry()
    app = protect(reads_body, registry=registry, body_timeout=0.05, loop_lag_check=False)
    client = Client()
    await app(upload_scope(), client.receive, client.send)
    statuses = {sample.labels["status"] for metric in registry.collect()
                if metric.name == "http_requests" for sample in metric.samples}
    rejected = registry.get_sample_value(
        "fournines_rejections_total",
        {"policy": "load_shedder", "name": "load_shedder", "reason": "body_timeout"})
    await app.app.aclose()
    assert (client.status, statuses, rejected) == (408, {"408"}, 1.0)
