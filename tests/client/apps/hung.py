"""A dependency that hangs: it accepts every request and never answers (``/livez`` aside).

Each request is counted; ``GET /livez`` answers ``200`` with the count so far, so a
test can tell how many requests reached it (and the server can be seen to be up).
"""

from __future__ import annotations

from typing import Any

_received = 0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _received
    if scope["type"] != "http":
        return
    if scope["path"] == "/livez":
        body = str(_received).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    _received += 1
    # Never answer; give the connection up only when the caller went away.
    while (await receive())["type"] != "http.disconnect":
        pass
