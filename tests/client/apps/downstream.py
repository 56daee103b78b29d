"""Downstream test services, run under real uvicorn processes.

``app`` is a downstream whose behaviour is set at runtime with
``POST /control`` (JSON: ``mode`` ``"ok"``/``"fail"``/``"slow"``, ``status``
(fail status, 503), ``retry_after`` (header value sent with failures),
``no_retry`` (true: failures carry ``x-no-retry: 1``), ``delay`` (seconds, for
``slow``), ``body`` (the ``ok`` answer, default ``"ok"``), ``first_delay``
(seconds the first request served after this call waits before its mode applies,
so that a hedge of it wins)); the control call also forgets what was seen.
``GET /seen`` returns every request seen since: method, path, body ``length``
(served routes only) and the ``x-request-timeout-ms`` / ``x-request-attempt`` /
``traceparent`` headers it carried.

Three more modes close the connection instead of answering (the request is
still recorded): ``"close"`` closes it without a response, ``"reset"`` resets
it (TCP RST) without a response, ``"abort"`` sends the headers of a ``status``
(default 200) answer promising 1000 bytes, 10 of them, then closes it.
``"drip"`` streams ``body`` ``count`` times (10), ``delay`` seconds apart (0.1).

``chain_app`` is one link of a service chain: it records what it sees like
``app`` and forwards each request to ``CHAIN_NEXT`` through an
``AsyncResilientTransport`` (``CHAIN_RATIO``, ``CHAIN_MIN_PER_SECOND``,
``CHAIN_ATTEMPTS`` configure it), answering 503 when the next hop failed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fournines import ConsecutiveFailures
from fournines.asgi.deadline import DeadlineMiddleware
from fournines.client.transport import AsyncResilientTransport, ClientPolicy
from fournines.policies.backoff import Backoff

_control: dict[str, Any] = {"mode": "ok"}
_seen: list[dict[str, Any]] = []


async def control(request: Request) -> Response:
    body = await request.json()
    _control.clear()
    _control.update({"mode": "ok", **body})
    _seen.clear()
    return JSONResponse({"ok": True})


async def seen(request: Request) -> Response:
    return JSONResponse({"count": len(_seen), "requests": _seen})


def _record(request: Request) -> None:
    _seen.append({
        "method": request.method,
        "path": request.url.path,
        "timeout_ms": request.headers.get("x-request-timeout-ms"),
        "attempt": request.headers.get("x-request-attempt"),
        "traceparent": request.headers.get("traceparent"),
    })


async def serve(request: Request) -> Response:
    _record(request)
    _seen[-1]["length"] = len(await request.body())
    first_delay = _control.pop("first_delay", None)  # popped: the first request only
    if first_delay is not None:
        await asyncio.sleep(float(first_delay))
    mode = _control.get("mode", "ok")
    if mode == "slow":
        await asyncio.sleep(float(_control.get("delay", 1.0)))
    if mode == "fail":
        headers = {}
        if _control.get("retry_after") is not None:
            headers["retry-after"] = str(_control["retry_after"])
        if _control.get("no_retry"):
            headers["x-no-retry"] = "1"
        return Response("failing", status_code=int(_control.get("status", 503)),
                        headers=headers)
    if mode == "drip":
        return StreamingResponse(_drip(str(_control.get("body", "ok")),
                                       int(_control.get("count", 10)),
                                       float(_control.get("delay", 0.1))))
    return Response(str(_control.get("body", "ok")))


async def _drip(chunk: str, count: int, delay: float) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield chunk.encode()
        await asyncio.sleep(delay)


_ROUTES = [
    Route("/control", control, methods=["POST"]),
    Route("/seen", seen, methods=["GET"]),
]
_ANY = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

_app = Starlette(routes=[*_ROUTES, Route("/{path:path}", serve, methods=_ANY)])

_CLOSING = frozenset({"close", "reset", "abort"})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``_app``, except that the closing modes cut the connection instead of answering."""
    mode = _control.get("mode")
    if scope["type"] != "http" or mode not in _CLOSING or scope["path"] in ("/control", "/seen"):
        await _app(scope, receive, send)
        return
    _record(Request(scope))
    # uvicorn's send is a method of its request cycle, which holds the connection's
    # transport: the only way for an ASGI app to drop a connection on purpose.
    transport = send.__self__.transport
    if mode == "abort":
        await send({"type": "http.response.start", "status": int(_control.get("status", 200)),
                    "headers": [(b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
        transport.close()
    elif mode == "reset":
        # Linger 0: close() sends a RST instead of a FIN.
        transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
    # Wait until uvicorn saw the connection go, so it does not answer 500 for us.
    while (await receive())["type"] != "http.disconnect":
        pass

_client: httpx.AsyncClient | None = None


def _chain_client() -> httpx.AsyncClient:
    global _client
    if _client is None:
        policy = ClientPolicy(
            # Only the retry budget is under test: a breaker would cut calls on its own.
            trip=ConsecutiveFailures(threshold=1_000_000),
            attempts=int(os.environ.get("CHAIN_ATTEMPTS", "3")),
            backoff=Backoff(initial=0.001, cap=0.005),
            budget_ratio=float(os.environ.get("CHAIN_RATIO", "0.2")),
            budget_min_per_second=float(os.environ.get("CHAIN_MIN_PER_SECOND", "0.5")),
            budget_ttl=float(os.environ.get("CHAIN_TTL", "10")),
        )
        _client = httpx.AsyncClient(transport=AsyncResilientTransport(config=policy),
                                    timeout=10.0)
    return _client


async def forward(request: Request) -> Response:
    _record(request)
    target = os.environ["CHAIN_NEXT"] + request.url.path
    response = await _chain_client().get(target)
    if response.status_code >= 500:
        return Response("next hop failed", status_code=503)
    return Response(response.content, status_code=response.status_code)


# Served as a fournines service serves: the deadline middleware also sends retry
# pushback (x-no-retry) when this link's own retries to the next hop gave up.
chain_app_plain = Starlette(routes=[*_ROUTES, Route("/{path:path}", forward, methods=_ANY)])
chain_app = DeadlineMiddleware(chain_app_plain)
