"""LoadShedder: admission by an adaptive limit, priorities, loop lag, and a real overload."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
import pytest

from fournines import CallRejected, ConfigurationError
from fournines.asgi._types import Receive, Scope, Send, respond
from fournines.asgi.shedding import LoadShedder
from fournines.policies.adaptive import AimdLimit, FixedLimit
from fournines.testing import FakeClock, RecordingListener

from ._uvicorn import UvicornProcess

CRITICAL = {"x-priority": "critical"}


class Gate:
    """An app that holds every request until released, counting those it saw."""

    def __init__(self) -> None:
        self.calls = 0
        self.inside = 0
        self.release = asyncio.Event()
        self._changed = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        self.inside += 1
        self._changed.set()
        try:
            await self.release.wait()
        finally:
            self.inside -= 1
        await respond(send, 200, b"ok")

    async def until_inside(self, count: int) -> None:
        while self.inside < count:
            self._changed.clear()
            await self._changed.wait()


class Held:
    """Requests started against a shedder and held inside the app until ``release``."""

    def __init__(self, shedder: LoadShedder, gate: Gate) -> None:
        self.shedder = shedder
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=shedder),
                                        base_url="http://test")
        self.gate = gate
        self.tasks: list[asyncio.Task[httpx.Response]] = []

    async def hold(self, count: int, headers: dict[str, str] | None = None) -> None:
        target = self.gate.inside + count
        for _ in range(count):
            self.tasks.append(asyncio.ensure_future(self.client.get("/work", headers=headers)))
        await self.gate.until_inside(target)

    async def get(self, path: str = "/work", headers: dict[str, str] | None = None,
                  ) -> httpx.Response:
        return await self.client.get(path, headers=headers)

    async def close(self) -> list[httpx.Response]:
        self.gate.release.set()
        responses = list(await asyncio.gather(*self.tasks))
        await self.client.aclose()
        await self.shedder.aclose()
        return responses


@pytest.fixture
async def gate() -> Gate:
    return Gate()


def shedder_of(app: Any, limit: int = 2, **kwargs: Any) -> LoadShedder:
    """A shedder with a fixed limit whose lag the test sets (the sampler never wakes)."""
    kwargs.setdefault("lag_interval", 3600.0)
    return LoadShedder(app, limit=FixedLimit(limit), **kwargs)


async def test_a_request_above_the_limit_gets_503_with_retry_after_without_the_app(
    gate: Gate,
) -> None:
    held = Held(shedder_of(gate, limit=2), gate)
    await held.hold(2)
    response = await held.get()  # answered while the first two are still held
    responses = await held.close()
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert gate.calls == 2
    assert [r.status_code for r in responses] == [200, 200]


async def test_a_shed_response_is_complete_and_keeps_the_connection_open(gate: Gate) -> None:
    held = Held(shedder_of(gate, limit=1), gate)
    await held.hold(1)
    response = await held.get()
    await held.close()
    assert response.headers["content-length"] == str(len(response.content))
    assert "connection" not in response.headers


async def test_retry_after_is_rounded_up_to_whole_seconds(gate: Gate) -> None:
    held = Held(shedder_of(gate, limit=1, retry_after=2.2), gate)
    await held.hold(1)
    response = await held.get()
    await held.close()
    assert response.headers["retry-after"] == "3"


async def test_a_critical_request_is_admitted_where_a_non_critical_one_is_shed(
    gate: Gate,
) -> None:
    held = Held(shedder_of(gate, limit=2), gate)
    await held.hold(2)
    normal = await held.get()
    await held.hold(1, headers=CRITICAL)  # admitted: 2 < ceil(2 * 1.5)
    responses = await held.close()
    assert normal.status_code == 503
    assert [r.status_code for r in responses] == [200, 200, 200]


async def test_a_critical_request_is_shed_above_the_headroom(gate: Gate) -> None:
    held = Held(shedder_of(gate, limit=2, critical_headroom=1.5), gate)
    await held.hold(3, headers=CRITICAL)
    response = await held.get(headers=CRITICAL)
    await held.close()
    assert response.status_code == 503


async def test_critical_paths_mark_requests_critical(gate: Gate) -> None:
    held = Held(shedder_of(gate, limit=1, critical_paths=("/checkout",)), gate)
    await held.hold(1)
    held.tasks.append(asyncio.ensure_future(held.client.get("/checkout/pay")))
    await gate.until_inside(2)
    responses = await held.close()
    assert [r.status_code for r in responses] == [200, 200]


async def test_a_priority_function_marks_requests_critical(gate: Gate) -> None:
    def vip(scope: Scope) -> bool:
        return bool(scope["query_string"] == b"vip=1")

    held = Held(shedder_of(gate, limit=1, priority=vip), gate)
    await held.hold(1)
    held.tasks.append(asyncio.ensure_future(held.client.get("/work?vip=1")))
    await gate.until_inside(2)
    responses = await held.close()
    assert [r.status_code for r in responses] == [200, 200]


async def test_another_priority_value_is_not_critical(gate: Gate) -> None:
    held = Held(shedder_of(gate, limit=1), gate)
    await held.hold(1)
    response = await held.get(headers={"x-priority": "low"})
    await held.close()
    assert response.status_code == 503


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz", "/startupz", "/metrics"])
async def test_health_and_metrics_paths_are_never_shed(gate: Gate, path: str) -> None:
    async def probe(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/work":
            await gate(scope, receive, send)
        else:
            await respond(send, 200, b"ok")

    shedder = shedder_of(probe, limit=1)
    held = Held(shedder, gate)
    await held.hold(1)
    shedder.observe_loop_lag(10.0)  # even while the loop lags
    response = await held.get(path)
    in_flight = shedder.in_flight
    await held.close()
    assert (response.status_code, in_flight) == (200, 1)


async def test_loop_lag_sheds_non_critical_requests_below_the_limit() -> None:
    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, b"ok")

    shedder = shedder_of(ok, limit=100, lag_floor=0)
    shedder.observe_loop_lag(0.5)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=shedder),
                                 base_url="http://test") as client:
        normal = await client.get("/work")
        critical = await client.get("/work", headers=CRITICAL)
    await shedder.aclose()
    assert (normal.status_code, critical.status_code) == (503, 200)
    assert (shedder.shed_loop_lag, shedder.shed_overload) == (1, 0)


async def test_loop_lag_withdraws_the_critical_headroom(gate: Gate) -> None:
    shedder = shedder_of(gate, limit=2, lag_floor=2)
    held = Held(shedder, gate)
    await held.hold(2, headers=CRITICAL)
    shedder.observe_loop_lag(0.5)
    response = await held.get(headers=CRITICAL)
    await held.close()
    assert response.status_code == 503


async def test_a_blocked_event_loop_is_measured_and_sheds() -> None:
    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, b"ok")

    shedder = LoadShedder(ok, limit=FixedLimit(100), max_loop_lag=0.1, lag_interval=0.2,
                          lag_floor=0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=shedder),
                                 base_url="http://test") as client:
        first = await client.get("/work")  # starts the sampler
        await asyncio.sleep(0)
        time.sleep(0.6)  # a CPU-bound handler holding the loop
        while not shedder.lagging:  # the sampler's overdue wake-up runs now
            await asyncio.sleep(0)
        lagging = await client.get("/work")
    await shedder.aclose()
    assert (first.status_code, lagging.status_code) == (200, 503)
    assert shedder.loop_lag > 0.1


async def test_a_lag_below_the_threshold_sheds_nothing() -> None:
    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, b"ok")

    shedder = shedder_of(ok, limit=100)
    shedder.observe_loop_lag(0.05)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=shedder),
                                 base_url="http://test") as client:
        response = await client.get("/work")
    await shedder.aclose()
    assert (response.status_code, shedder.lagging) == (200, False)


async def test_shedding_sends_call_rejected_events(
    gate: Gate, recorder: RecordingListener
) -> None:
    shedder = shedder_of(gate, limit=1, listeners=[recorder], name="api", lag_floor=1)
    held = Held(shedder, gate)
    await held.hold(1)
    await held.get()
    shedder.observe_loop_lag(1.0)
    await held.get()
    await held.close()
    assert recorder.of(CallRejected) == [
        CallRejected(policy="load_shedder", name="api", reason="overload", retry_after=1.0),
        CallRejected(policy="load_shedder", name="api", reason="loop_lag", retry_after=1.0),
    ]


async def test_counters_report_admitted_shed_and_in_flight(gate: Gate) -> None:
    shedder = shedder_of(gate, limit=1)
    held = Held(shedder, gate)
    await held.hold(1)
    await held.get()
    await held.get()
    during = (shedder.in_flight, shedder.admitted, shedder.shed, shedder.limit)
    await held.close()
    assert during == (1, 1, 2, 1)
    assert shedder.in_flight == 0


class Samples:
    """A limit algorithm that records its samples and keeps a fixed limit."""

    def __init__(self, limit: int = 10) -> None:
        self.samples: list[tuple[float, int, bool]] = []
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        self.samples.append((rtt, inflight, dropped))


async def test_completed_requests_feed_their_duration_to_the_limit(clock: FakeClock) -> None:
    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        clock.advance(0.25)
        await respond(send, 200, b"ok")

    samples = Samples()
    shedder = LoadShedder(slow, limit=samples, max_loop_lag=None, clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=shedder),
                                 base_url="http://test") as client:
        await client.get("/work")
    assert samples.samples == [(0.25, 1, False)]


async def test_a_timeout_in_the_app_is_fed_as_a_drop(clock: FakeClock) -> None:
    async def times_out(scope: Scope, receive: Receive, send: Send) -> None:
        clock.advance(1.0)
        raise TimeoutError

    samples = Samples()
    shedder = LoadShedder(times_out, limit=samples, max_loop_lag=None, clock=clock)
    with pytest.raises(TimeoutError):
        await shedder({"type": "http", "path": "/work", "headers": []}, _receive, _send)
    assert (samples.samples, shedder.in_flight) == ([(1.0, 1, True)], 0)


async def test_other_app_errors_teach_the_limit_nothing() -> None:
    async def fails(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("bug")

    samples = Samples()
    shedder = LoadShedder(fails, limit=samples, max_loop_lag=None)
    with pytest.raises(RuntimeError):
        await shedder({"type": "http", "path": "/work", "headers": []}, _receive, _send)
    assert (samples.samples, shedder.in_flight) == ([], 0)


async def test_the_shedder_follows_the_limit_the_algorithm_learns() -> None:
    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, b"ok")

    shedder = LoadShedder(ok, limit=AimdLimit(initial_limit=1, min_limit=1, max_limit=10),
                          max_loop_lag=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=shedder),
                                 base_url="http://test") as client:
        for _ in range(3):
            await client.get("/work")
    assert shedder.limit == 3  # 1 -> 2 -> 3, then one request in flight is under half of 3


async def test_non_http_scopes_pass_through_uncounted() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    shedder = LoadShedder(app, limit=FixedLimit(1))
    await shedder({"type": "lifespan"}, _receive, _send)
    assert (seen, shedder.admitted) == (["lifespan"], 0)


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 5}, "limit"),
        ({"max_loop_lag": 0}, "max_loop_lag"),
        ({"lag_interval": 0}, "lag_interval"),
        ({"critical_headroom": 0.5}, "critical_headroom"),
        ({"retry_after": -1}, "retry_after"),
        ({"never_shed_paths": "/healthz"}, "never_shed_paths"),
        ({"critical_paths": [1]}, "critical_paths"),
        ({"priority": "high"}, "priority"),
        ({"critical_header": 3}, "critical_header"),
    ],
)
def test_bad_settings_raise_configuration_error_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError, match=rf"LoadShedder\.{field} "):
        LoadShedder(_send, **kwargs)  # type: ignore[arg-type]


# --- a real server under overload ------------------------------------------------------------


async def test_overload_sheds_non_critical_first_and_keeps_connections_open() -> None:
    """200 requests at once on 100 keep-alive connections to a real uvicorn process."""
    requests, connections = 200, 100
    connects = 0

    async def trace(event: str, info: dict[str, Any]) -> None:
        nonlocal connects
        if event == "connection.connect_tcp.complete":
            connects += 1

    critical = [i % 4 == 0 for i in range(requests)]
    random.Random(3).shuffle(critical)
    with UvicornProcess("tests.asgi.apps.overload_app:app") as server:
        limits = httpx.Limits(max_connections=connections,
                              max_keepalive_connections=connections)
        async with httpx.AsyncClient(base_url=server.url, limits=limits,
                                     timeout=30.0) as client:
            responses = await asyncio.gather(*(
                client.get("/work", headers=CRITICAL if is_critical else None,
                           extensions={"trace": trace})
                for is_critical in critical
            ))
            stats = (await client.get("/stats")).json()

    statuses = [r.status_code for r in responses]
    shed = [r for r in responses if r.status_code == 503]
    assert set(statuses) <= {200, 503}, statuses  # every request got an answer
    assert shed, stats  # the overload was real
    assert all(r.headers.get("retry-after") == "1" for r in shed)
    assert not any(r.headers.get("connection") == "close" for r in responses)
    assert connects <= connections  # no connection was closed and reopened

    def success_rate(want_critical: bool) -> float:
        mine = [s for s, c in zip(statuses, critical, strict=True) if c is want_critical]
        return sum(s == 200 for s in mine) / len(mine)

    assert success_rate(True) > success_rate(False), stats
    assert stats["shed_overload"] + stats["shed_loop_lag"] == len(shed)
