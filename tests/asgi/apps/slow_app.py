"""A ``protect()``-ed service with default shedding, for slow-client tests (``python -m``).

Paths:

- ``/upload``: reads the whole request body, answers its length;
- ``/work``: answers ``done`` at once;
- ``/stats``: the shedder's counters as JSON, answered before the protection
  (never shed, not counted);
- the probes and ``/metrics`` of ``protect()``.

Environment: ``PORT`` (required); ``BODY_TIMEOUT`` and ``LAG_FLOOR``, when set,
are passed to ``protect()``; ``HTTP`` (``h11`` or ``httptools``) to ``serve()``.
"""

from __future__ import annotations

import json
import os

from fournines.asgi import GracefulShutdown, LifecycleMiddleware, LoadShedder, protect, serve
from fournines.asgi._types import Receive, Scope, Send, respond


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/upload":
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        await respond(send, 200, str(size).encode())
    else:
        await respond(send, 200, b"done")


_options: dict[str, float] = {}
if os.environ.get("BODY_TIMEOUT"):
    _options["body_timeout"] = float(os.environ["BODY_TIMEOUT"])
if os.environ.get("LAG_FLOOR"):
    _options["lag_floor"] = int(os.environ["LAG_FLOOR"])



class _StatsFirst:
    def __init__(self, app: LifecycleMiddleware) -> None:
        self.app = app
        shedder = app.app
        assert isinstance(shedder, LoadShedder)
        self.shedder = shedder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/stats":
            await respond(send, 200, json.dumps({
                name: getattr(self.shedder, name) for name in (
                    "limit", "in_flight", "waiting_for_body", "admitted", "shed_overload",
                    "shed_loop_lag", "body_timeouts", "lag_unrelieved", "loop_lag")
            }).encode(), content_type=b"application/json")
            return
        await self.app(scope, receive, send)


app = _StatsFirst(protect(_app, service="slow-app", metrics=False, loop_lag_check=False,
                          **_options))

if __name__ == "__main__":
    # No drain delay: no load balancer to wait for, and tests stop it often.
    serve(app, port=int(os.environ["PORT"]), access_log=False,
          shutdown=GracefulShutdown(drain_delay=0.0), http=os.environ.get("HTTP", "auto"))
