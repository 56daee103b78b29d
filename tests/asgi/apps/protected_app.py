"""A ``protect()``-ed service run by ``serve()``, for hostile-input tests (``python -m``).

Paths:

- ``/limited/whoami``: rate limited per client IP (``TokenBucket(capacity=5)``
  refilling one token an hour, so a test's requests see no refill); answers the
  client address the app was given (``scope["client"][0]``);
- ``/budget``: not limited; answers the request's remaining deadline in whole
  milliseconds, or ``none``;
- the probes and ``/metrics`` of ``protect()``.

Environment: ``PORT`` (required); ``PROXIES``, when set, is passed to ``serve()``
as ``forwarded_allow_ips``. Shedding is off: a loaded test machine must not turn
a 200 into a 503.
"""

from __future__ import annotations

import os

from fournines import TokenBucket, current_deadline
from fournines.asgi import RateLimitRule, protect, serve
from fournines.asgi._types import Receive, Scope, Send, respond


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/limited/whoami":
        client = scope.get("client")
        await respond(send, 200, (client[0] if client else "unknown").encode())
    elif scope["path"] == "/budget":
        deadline = current_deadline()
        body = "none" if deadline is None else str(round(deadline.remaining() * 1000))
        await respond(send, 200, body.encode())
    else:
        await respond(send, 404, b"not found")


app = protect(
    _app,
    service="protected-app",
    shedding=False,
    rate_limit=[RateLimitRule(name="per-ip", path="/limited",
                              limiter=lambda: TokenBucket(rate=1 / 3600, capacity=5))],
)


if __name__ == "__main__":
    proxies = os.environ.get("PROXIES")
    serve(app, port=int(os.environ["PORT"]), access_log=False,
          **({} if proxies is None else {"forwarded_allow_ips": proxies}))
