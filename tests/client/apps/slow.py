"""A tiny downstream for balancing tests: answers 200 after ``DELAY_MS`` milliseconds.

Environment: ``DELAY_MS`` (default 0) delays every path but ``/livez``;
``SERVED_BY`` (default ``?``) is sent back in the ``x-served-by`` header, so a
test can count which endpoint answered.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

DELAY = float(os.environ.get("DELAY_MS", "0")) / 1000
NAME = os.environ.get("SERVED_BY", "?").encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] != "/livez" and DELAY > 0:
        await asyncio.sleep(DELAY)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2"),
                            (b"x-served-by", NAME)]})
    await send({"type": "http.response.body", "body": b"ok"})
