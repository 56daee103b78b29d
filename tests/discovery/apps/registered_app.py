"""A protected service that registers itself in etcd (run with ``python -m``).

``protect(..., hooks=[RegistrationHook(...)])`` under :func:`fournines.asgi.serve`:
instance ``INSTANCE_ID`` of service ``payment`` at ``http://127.0.0.1:PORT``,
registered in the etcd at ``ETCD_URL`` under ``PREFIX`` with a lease of ``TTL``
seconds once ready, deregistered on SIGTERM before readiness fails. Its lifespan
startup takes ``STARTUP_DELAY`` seconds (1 by default), so that registering too
early would show; the drain delay is ``DRAIN_DELAY`` (1 s).
"""

from __future__ import annotations

import asyncio
import os

from fournines.asgi import GracefulShutdown, protect, serve
from fournines.asgi._types import Receive, Scope, Send, respond
from fournines.discovery import EtcdRegistry, Instance, RegistrationHook

PORT = int(os.environ["PORT"])


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.sleep(float(os.environ.get("STARTUP_DELAY", "1")))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await respond(send, 200, b"paid")


registry = EtcdRegistry(os.environ["ETCD_URL"], ttl=float(os.environ.get("TTL", "2")),
                        prefix=os.environ["PREFIX"])
instance = Instance(service="payment", id=os.environ.get("INSTANCE_ID", "p1"),
                    address=f"http://127.0.0.1:{PORT}")
app = protect(_app, service="payment", metrics=False,
              hooks=[RegistrationHook(registry, instance)])

if __name__ == "__main__":
    serve(app, port=PORT, access_log=False,
          shutdown=GracefulShutdown(drain_delay=float(os.environ.get("DRAIN_DELAY", "1")),
                                    drain_timeout=5))
