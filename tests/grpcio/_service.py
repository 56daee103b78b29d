"""A small real gRPC service for the specs: raw-bytes messages, no generated code.

``grpc.method_handlers_generic_handler`` with no serializers sends the request
and response bytes as they are, so the service needs no .proto file: the
interceptors see exactly what they see for generated stubs (method names,
metadata, deadlines, status codes). The health service uses the real
``grpc.health.v1`` messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio

from fournines import DeadlineExceededError, current_deadline, deadline_after

SERVICE = "test.Echo"


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


class Echo:
    """The handlers, and what they saw."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.remaining: list[float | None] = []
        self.failures: list[grpc.StatusCode] = []  # popped by Flaky, one per call
        self.pushback: str | None = None
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.downstream: Any = None  # an aio channel Echo/Forward calls

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self._count("Echo")
        return request

    async def remaining_deadline(self, request: bytes,
                                 context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """Answers the fournines deadline the handler runs under, in seconds."""
        self._count("Remaining")
        deadline = current_deadline()
        self.remaining.append(None if deadline is None else deadline.remaining())
        return b"none" if deadline is None else repr(deadline.remaining()).encode()

    async def forward(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """Records its own deadline, then asks the downstream for its own.

        A request naming seconds (``b"1.5"``) forwards inside ``deadline_after`` of them.
        """
        self._count("Forward")
        deadline = current_deadline()
        self.remaining.append(None if deadline is None else deadline.remaining())
        downstream = self.downstream.unary_unary(method("Remaining"))
        if request:
            with deadline_after(float(request)):
                answer: bytes = await downstream(b"")
        else:
            answer = await downstream(b"")
        return answer

    async def flaky(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """Fails with the next code of ``failures`` (then succeeds)."""
        self._count("Flaky")
        if self.failures:
            code = self.failures.pop(0)
            if self.pushback is not None:
                context.set_trailing_metadata((("grpc-retry-pushback-ms", self.pushback),))
            await context.abort(code, "flaky")
        return b"ok"

    async def hold(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """Stays in flight until ``release`` is set."""
        self._count("Hold")
        self.entered.set()
        await self.release.wait()
        return b"released"

    async def expire(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self._count("Expire")
        raise DeadlineExceededError("the work ran out of time")

    async def stream(self, request: bytes,
                     context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        self._count("Stream")
        for i in range(3):
            yield b"%d" % i

    def handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Echo": unary(self.echo),
            "Remaining": unary(self.remaining_deadline),
            "Forward": unary(self.forward),
            "Flaky": unary(self.flaky),
            "Hold": unary(self.hold),
            "Expire": unary(self.expire),
            "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
        })


@asynccontextmanager
async def aio_server(echo: Echo, *, interceptors: Sequence[Any] = (), health: Any = None,
                     ) -> AsyncIterator[tuple[grpc.aio.Server, str]]:
    """A real grpc.aio server on a free loopback port: (server, target)."""
    server = grpc.aio.server(interceptors=list(interceptors))
    server.add_generic_rpc_handlers((echo.handler(),))
    if health is not None:
        health.add_to_aio_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
