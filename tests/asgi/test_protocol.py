"""ShedHttpToolsProtocol on a real uvicorn server: shedding on arrival, head limits.

The server runs in the test's event loop on a free loopback port; clients are raw
sockets, so what goes over the wire is what the test reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from fournines import ConfigurationError
from fournines.asgi import protect
from fournines.asgi._types import Receive, Scope, Send, respond
from fournines.asgi.protocol import ShedHttpToolsProtocol, find_shedder
from fournines.asgi.server import _choose_protocol
from fournines.asgi.shedding import LoadShedder
from fournines.policies.adaptive import FixedLimit

from .._servers import free_port


class Gate:
    """An app holding ``/hold`` requests until released; counting the calls it saw."""

    def __init__(self) -> None:
        self.calls = 0
        self.inside = 0
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        if scope["path"] == "/hold":
            self.inside += 1
            await self.release.wait()
            self.inside -= 1
        while (await receive()).get("more_body"):
            pass
        await respond(send, 200, b"ok")


class Served:
    def __init__(self, server: uvicorn.Server, port: int) -> None:
        self.server = server
        self.port = port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


async def run(app: Any, protocol: type[ShedHttpToolsProtocol] = ShedHttpToolsProtocol,
              ) -> AsyncIterator[Served]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol,
                            lifespan="off", log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield Served(server, port)
    finally:
        server.should_exit = True
        await task


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  path: str = "/work", extra: bytes = b"", body: bytes = b"",
                  method: bytes = b"GET") -> tuple[int, dict[bytes, bytes], bytes]:
    length = b"content-length: %d\r\n" % len(body) if body else b""
    writer.write(method + b" " + path.encode() + b" HTTP/1.1\r\nhost: t\r\n" + length
                 + extra + b"\r\n" + body)
    await writer.drain()
    return await response(reader)


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


class Outer:
    """A middleware outside the shedder, counting the ASGI calls that reach it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.calls += 1
        await self.app(scope, receive, send)


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def outer(gate: Gate) -> Outer:
    return Outer(LoadShedder(gate, limit=FixedLimit(1), max_loop_lag=None))


@pytest.fixture
async def shedded(outer: Outer) -> AsyncIterator[tuple[Served, LoadShedder]]:
    async for served in run(outer):
        yield served, outer.app


async def hold_one(served: Served, gate: Gate) -> asyncio.StreamWriter:
    _, writer = await served.connect()
    writer.write(b"GET /hold HTTP/1.1\r\nhost: t\r\n\r\n")
    await writer.drain()
    while gate.inside < 1:
        await asyncio.sleep(0.01)
    return writer


async def test_a_request_over_the_limit_is_answered_503_on_arrival_without_an_asgi_call(
    shedded: tuple[Served, LoadShedder], gate: Gate, outer: Outer,
) -> None:
    served, shedder = shedded
    held = await hold_one(served, gate)
    reader, writer = await served.connect()
    status, headers, body = await request(reader, writer)
    assert status == 503
    assert headers[b"retry-after"] == b"1"
    assert headers[b"content-type"] == b"application/problem+json"
    assert b"overloaded" in body
    assert outer.calls == 1  # only the held request became an ASGI call
    assert shedder.shed_overload == 1
    gate.release.set()
    held.close()
    writer.close()


async def test_the_connection_of_a_shed_request_serves_its_retry(
    shedded: tuple[Served, LoadShedder], gate: Gate,
) -> None:
    served, _ = shedded
    held = await hold_one(served, gate)
    reader, writer = await served.connect()
    assert (await request(reader, writer, body=b"x" * 5000, method=b"POST"))[0] == 503
    gate.release.set()
    while gate.inside:
        await asyncio.sleep(0.01)
    assert (await request(reader, writer))[0] == 200
    held.close()
    writer.close()


async def test_health_probes_are_answered_while_every_other_request_is_shed(
) -> None:
    gate = Gate()
    app = protect(gate, concurrency_limit=FixedLimit(1), metrics=False, loop_lag_check=False)
    async for served in run(app):
        held = await hold_one(served, gate)
        reader, writer = await served.connect()
        assert (await request(reader, writer))[0] == 503
        assert (await request(reader, writer, "/livez"))[0] == 200
        assert (await request(reader, writer, "/readyz"))[0] == 200
        gate.release.set()
        held.close()
        writer.close()


async def test_admitted_requests_are_counted_once_and_released(
    shedded: tuple[Served, LoadShedder],
) -> None:
    served, shedder = shedded
    reader, writer = await served.connect()
    for _ in range(5):
        assert (await request(reader, writer))[0] == 200
    assert shedder.admitted == 5
    assert shedder.in_flight == 0
    writer.close()


def slow_heads(timeout: float) -> type[ShedHttpToolsProtocol]:
    return type("Quick", (ShedHttpToolsProtocol,), {"header_timeout": timeout})


async def test_a_request_head_that_does_not_arrive_in_time_gets_408_and_a_close(
    gate: Gate,
) -> None:
    shedder = LoadShedder(gate, max_loop_lag=None)
    async for served in run(shedder, slow_heads(0.3)):
        reader, writer = await served.connect()
        writer.write(b"GET /work HTTP/1.1\r\nhost: t\r\nx-slow: ")
        await writer.drain()
        status, headers, _ = await response(reader)
        assert status == 408
        assert headers[b"connection"] == b"close"
        assert await reader.read() == b""
        assert shedder.header_timeouts == 1
        assert gate.calls == 0


async def test_a_connection_that_never_sends_a_request_is_closed_after_the_timeout(
    gate: Gate,
) -> None:
    async for served in run(gate, slow_heads(0.3)):
        reader, _ = await served.connect()
        status, _, _ = await response(reader)
        assert status == 408
        assert await reader.read() == b""


async def test_a_request_head_that_came_whole_is_not_timed(gate: Gate) -> None:
    async for served in run(gate, slow_heads(0.3)):
        reader, writer = await served.connect()
        assert (await request(reader, writer))[0] == 200
        await asyncio.sleep(0.5)  # idle between requests: keep-alive's business
        assert (await request(reader, writer))[0] == 200
        writer.close()


async def test_a_request_head_above_the_size_limit_gets_431(gate: Gate) -> None:
    async for served in run(gate):
        reader, writer = await served.connect()
        writer.write(b"GET /work HTTP/1.1\r\nhost: t\r\n")
        for _ in range(40):
            writer.write(b"x-big: " + b"a" * 2000 + b"\r\n")
        await writer.drain()
        status, _, body = await response(reader)
        assert status == 431
        assert b"larger" in body
        assert gate.calls == 0


async def test_a_request_head_sent_in_many_reads_is_held_to_the_size_limit(gate: Gate) -> None:
    async for served in run(gate):
        reader, writer = await served.connect()
        writer.write(b"GET /work HTTP/1.1\r\nhost: t\r\n")
        await writer.drain()
        status = 0
        for _ in range(100):
            try:
                writer.write(b"x-big: " + b"a" * 2000 + b"\r\n")
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.002)  # one read each
            if reader.at_eof() or len(reader._buffer) > 0:  # type: ignore[attr-defined]
                break
        status, _, _ = await response(reader)
        assert status == 431
        assert gate.calls == 0


def protected(gate: Gate) -> Any:
    return protect(gate, metrics=False, concurrency_limit=FixedLimit(1), max_loop_lag=None,
                   queue_target=None)


async def test_a_request_shed_on_arrival_carries_the_instance_header(gate: Gate) -> None:
    app = protected(gate)
    app.state.mark_ready()
    async for served in run(app):
        held = await hold_one(served, gate)
        reader, writer = await served.connect()
        status, headers, _ = await request(reader, writer)
        gate.release.set()
        held.close()
        writer.close()
        assert status == 503
        assert headers[b"x-instance-id"] == app.state.instance.encode()
        assert find_shedder(app).shed_overload == 1  # type: ignore[union-attr]


async def test_while_draining_a_shed_request_is_answered_by_the_middleware_with_a_close(
    gate: Gate,
) -> None:
    app = protected(gate)
    app.state.mark_ready()
    async for served in run(app):
        held = await hold_one(served, gate)
        app.state.mark_draining()
        reader, writer = await served.connect()
        status, headers, _ = await request(reader, writer)
        gate.release.set()
        held.close()
        writer.close()
        assert (status, headers.get(b"connection")) == (503, b"close")


def test_find_shedder_follows_the_middleware_chain() -> None:
    app = protect(Gate(), metrics=False)
    shedder = find_shedder(app)
    assert isinstance(shedder, LoadShedder)
    assert find_shedder(Gate()) is None


def test_serve_runs_the_shedding_protocol_unless_told_otherwise() -> None:
    options: dict[str, Any] = {}
    _choose_protocol(options, 10.0)
    assert options["http"] is ShedHttpToolsProtocol
    options = {}
    _choose_protocol(options, 2.5)
    assert issubclass(options["http"], ShedHttpToolsProtocol)
    assert options["http"].header_timeout == 2.5
    options = {"http": "h11"}
    _choose_protocol(options, 10.0)
    assert options == {"http": "h11"}


def test_a_header_timeout_with_another_protocol_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match=r"header_timeout .*http='h11'"):
        _choose_protocol({"http": "h11"}, 5.0)
