"""A small ASGI app for graceful-shutdown tests, run as ``python -m tests.asgi.apps.shutdown_app``.

- ``/readyz``: 200 while ``state.ready``, else 503 (a stand-in for the health
  middleware, which is tested on its own);
- ``/work?ms=N``: sleeps N ms, answers ``done``; prints ``work cancelled`` to
  stderr when cancelled;
- lifespan per ``SHUTDOWN_APP_LIFESPAN``: ``on`` (default; a 0.2 s startup),
  ``ignore`` (returns at once) or ``unsupported`` (raises).

Environment: ``PORT`` (required), ``DRAIN_DELAY``, ``DRAIN_TIMEOUT``, ``GRACE_PERIOD``
(``none`` for no limit).
"""

from __future__ import annotations

import asyncio
import os
import sys
from urllib.parse import parse_qs

from fournines.asgi._state import ServiceState
from fournines.asgi._types import Receive, Scope, Send, respond
from fournines.asgi.server import serve
from fournines.asgi.shutdown import GracefulShutdown, LifecycleMiddleware

state = ServiceState(service="shutdown-app")


async def _lifespan(receive: Receive, send: Send) -> None:
    mode = os.environ.get("SHUTDOWN_APP_LIFESPAN", "on")
    if mode == "unsupported":
        raise RuntimeError("this app does not speak lifespan")
    if mode == "ignore":
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await asyncio.sleep(0.2)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/readyz":
        ready = state.ready
        await respond(send, 200 if ready else 503, state.phase.value.encode())
    elif path == "/work":
        query = parse_qs(scope.get("query_string", b"").decode())
        ms = int(query.get("ms", ["0"])[0])
        try:
            await asyncio.sleep(ms / 1000)
        except asyncio.CancelledError:
            print("work cancelled", file=sys.stderr, flush=True)
            raise
        await respond(send, 200, b"done")
    else:
        await respond(send, 404, b"not found")


app = LifecycleMiddleware(_app, state=state, instance_header=True)


def _grace_period() -> float | None:
    text = os.environ.get("GRACE_PERIOD", "30")
    return None if text == "none" else float(text)


if __name__ == "__main__":
    serve(
        app,
        port=int(os.environ["PORT"]),
        shutdown=GracefulShutdown(
            drain_delay=float(os.environ.get("DRAIN_DELAY", "5")),
            drain_timeout=float(os.environ.get("DRAIN_TIMEOUT", "20")),
            grace_period=_grace_period(),
        ),
        access_log=False,
    )
