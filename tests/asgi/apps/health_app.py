"""A tiny service behind HealthMiddleware, for real uvicorn tests.

Environment: ``REDIS_URL`` adds a critical ``redis_check`` (none without it);
``HEALTH_CACHE_TTL`` sets the cache (default 0: every probe looks again).
Paths: ``/`` answers 200 ``ok``, ``/status/<code>`` answers ``<code>``; the
lifespan startup marks the service ready.
"""

from __future__ import annotations

import os

from fournines.asgi import ServiceState
from fournines.asgi._types import Receive, Scope, Send
from fournines.asgi.checks import Check, redis_check
from fournines.asgi.health import HealthMiddleware

state = ServiceState(service="health-test")


async def service(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state.mark_ready()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                state.mark_stopped()
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    path: str = scope["path"]
    status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
    body = b"ok" if path == "/" else b"status"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


checks: list[Check] = []
if os.environ.get("REDIS_URL"):
    checks.append(redis_check(os.environ["REDIS_URL"]))

app = HealthMiddleware(service, checks=checks, state=state,
                       cache_ttl=float(os.environ.get("HEALTH_CACHE_TTL", "0")))
