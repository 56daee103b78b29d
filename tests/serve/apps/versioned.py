"""A tiny ASGI app for the supervisor tests: answers its PID and the VERSION it imported.

``VERSION`` is read at import from the file named by ``APP_VERSION_FILE``: a reload
that re-imports the app shows the new version. The version ``broken`` raises at
import. ``CRASH_AFTER`` (seconds) makes every worker exit by itself that long after
its startup. ``/slow?seconds=S`` answers after S seconds (noting its start in
``SLOW_STARTED_FILE``); ``/block`` blocks the event loop (a hung worker);
``/grow?mb=N`` keeps N MiB more resident memory. ``make_app`` is a factory of the
same app.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

VERSION = Path(os.environ["APP_VERSION_FILE"]).read_text().strip()
if VERSION == "broken":
    raise RuntimeError("this version is broken at import")


_KEPT: list[bytes] = []


def _crash_later(seconds: float) -> None:
    time.sleep(seconds)
    os._exit(17)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                crash_after = os.environ.get("CRASH_AFTER")
                if crash_after:
                    threading.Thread(target=_crash_later, args=(float(crash_after),),
                                     daemon=True).start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/slow":
        query = dict(part.split("=") for part in scope["query_string"].decode().split("&") if part)
        started = os.environ.get("SLOW_STARTED_FILE")
        if started:  # so a test knows its request is in flight
            with open(started, "a") as file:
                file.write(f"{os.getpid()}\n")
        await asyncio.sleep(float(query.get("seconds", "1")))
    elif path == "/block":
        time.sleep(3600)
    elif path == "/grow":
        query = dict(part.split("=") for part in scope["query_string"].decode().split("&") if part)
        # Written, so the pages are resident, not just reserved.
        _KEPT.append(b"x" * (int(query.get("mb", "1")) * 1024 * 1024))
    body = json.dumps({"pid": os.getpid(), "version": VERSION}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def make_app() -> Any:
    """An app factory (``--factory``); ``FACTORY_FAILS`` set makes it raise."""
    if os.environ.get("FACTORY_FAILS"):
        raise RuntimeError("the factory could not build the app")
    return app
