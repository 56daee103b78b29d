"""A service that overloads easily, behind LoadShedder, for real uvicorn tests.

``/work`` awaits ~5 ms (a database call) and then burns ~1 ms of CPU (building
the answer); ``/livez`` answers at once; ``/stats`` reports the shedder's
counters as JSON. Both are never shed. Requests with ``x-priority: critical``
are critical.
"""

from __future__ import annotations

import asyncio
import json
import time

from fournines.asgi._types import Receive, Scope, Send, respond
from fournines.asgi.shedding import LoadShedder
from fournines.policies.adaptive import Gradient2Limit


async def service(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path: str = scope["path"]
    if path == "/stats":
        await respond(send, 200, json.dumps({
            "limit": app.limit, "admitted": app.admitted, "shed_overload": app.shed_overload,
            "shed_loop_lag": app.shed_loop_lag, "in_flight": app.in_flight,
        }).encode(), content_type=b"application/json")
        return
    if path == "/work":
        await asyncio.sleep(0.005)
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass
    await respond(send, 200, b"done")


app = LoadShedder(
    service,
    limit=Gradient2Limit(initial_limit=20, min_limit=10, max_limit=200),
    never_shed_paths=("/livez", "/stats"),
)
