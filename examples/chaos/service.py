"""A small labelled service for chaos experiments, wrapped in ChaosMiddleware.

Run one instance per process, e.g.::

    CHAOS_TOKEN=secret SERVICE=orders INSTANCE=orders-1 \
        uvicorn examples.chaos.service:app --port 8001

Environment: ``SERVICE`` and ``INSTANCE`` (shown by ``/status``),
``CHAOS_TOKEN`` (turns the fault admin API on at ``/chaos/faults``; unset: off),
``CHAOS_ALLOW_FROM`` (comma-separated networks allowed to use it; default
loopback), ``CHAOS_SEED`` (reproducible faults). Paths: ``/`` answers ``ok``,
``/status`` a JSON identity, ``/livez``/``/readyz`` the health probes and
``/metrics`` Prometheus metrics (when prometheus_client is installed; ``route``
is ``/``, ``/status``, ``/chaos/faults`` or ``<unmatched>``). Probes and metrics
sit outside the chaos layer, so faults never hide them; injected errors are
counted in ``http_requests_total`` like real ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fournines import ConfigurationError
from fournines.asgi import HealthMiddleware
from fournines.chaos import ChaosMiddleware

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SERVICE = os.environ.get("SERVICE", "service")
INSTANCE = os.environ.get("INSTANCE", f"{SERVICE}-{os.getpid()}")


async def respond(send: Send, status: int, body: bytes,
                  content_type: bytes = b"text/plain; charset=utf-8") -> None:
    """Send a whole response."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def service(scope: Scope, receive: Receive, send: Send) -> None:
    """The service itself: ``/`` and ``/status``; 404 elsewhere."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/":
        await respond(send, 200, b"ok\n")
    elif path == "/status":
        body = json.dumps({"service": SERVICE, "instance": INSTANCE}).encode()
        await respond(send, 200, body, content_type=b"application/json")
    else:
        await respond(send, 404, b"not found\n")


def route_of(scope: Scope) -> str:
    """The route label for metrics: the service's own paths, the admin API, or unmatched."""
    path: str = scope["path"]
    if path in ("/", "/status"):
        return path
    if path == "/chaos/faults" or path.startswith("/chaos/faults/"):
        return "/chaos/faults"
    return "<unmatched>"


def build() -> ASGIApp:
    """The service behind chaos, health probes and metrics, configured from the environment."""
    allow = os.environ.get("CHAOS_ALLOW_FROM")
    seed = os.environ.get("CHAOS_SEED")
    chaos = ChaosMiddleware(
        service,
        admin_token=os.environ.get("CHAOS_TOKEN") or None,
        allow_from=tuple(a.strip() for a in allow.split(",")) if allow else
        ("127.0.0.0/8", "::1/128"),
        seed=int(seed) if seed else None,
    )
    app: ASGIApp = HealthMiddleware(chaos)
    try:
        from fournines.asgi.metrics import MetricsMiddleware  # noqa: PLC0415 - optional

        app = MetricsMiddleware(app, route_of=route_of)
    except (ImportError, ConfigurationError):  # pragma: no cover - no prometheus_client
        pass
    return app


app = build()
