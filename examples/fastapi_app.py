"""An order service protected by one call: ``protect(app)``.

Run it with the draining shutdown::

    PORT=8000 python examples/fastapi_app.py

or under plain uvicorn (no readiness-first draining; see the README)::

    uvicorn examples.fastapi_app:service --timeout-graceful-shutdown 20

It answers ``/orders/{order_id}``, the probes (``/livez``, ``/readyz``,
``/startupz``, ``/healthz``), ``/metrics``, honours ``x-request-timeout-ms``,
sheds load adaptively and limits each client to 100 requests per second. Set
``REDIS_URL`` to make Redis a readiness dependency.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI

from fournines import Retry, Timeout, TokenBucket, current_deadline
from fournines.asgi import protect, redis_check, serve

app = FastAPI(title="orders")


@app.get("/orders/{order_id}")
async def get_order(order_id: str) -> dict[str, object]:
    """One order; the lookup respects the request's deadline and retries briefly."""
    lookup = Retry(attempts=2).awrap(Timeout(0.5).awrap(_lookup))
    status = await lookup(order_id)
    deadline = current_deadline()
    left = None if deadline is None else round(deadline.remaining(), 3)
    return {"order": order_id, "status": status, "budget_left_s": left}


async def _lookup(order_id: str) -> str:
    await asyncio.sleep(0.001)  # stands in for a database query
    return "paid"


redis_url = os.environ.get("REDIS_URL")
service = protect(
    app,
    service="orders",
    version="1.0.0",
    checks=[redis_check(redis_url)] if redis_url else [],
    rate_limit=lambda: TokenBucket(rate=100, capacity=200),
    rate_limit_key="header:x-api-key",
)

if __name__ == "__main__":
    serve(service)
