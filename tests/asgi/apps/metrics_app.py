"""A Starlette app behind MetricsMiddleware, served by uvicorn in integration tests.

``/orders/{order_id}`` answers with the worker's pid, so a test can tell that
requests reached more than one worker. With ``PROMETHEUS_MULTIPROC_DIR`` set the
middleware runs in multi-process mode.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from fournines.asgi.metrics import MetricsMiddleware


async def livez(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def order(request: Request) -> JSONResponse:
    return JSONResponse({"order_id": request.path_params["order_id"], "pid": os.getpid()})


app = MetricsMiddleware(Starlette(routes=[
    Route("/livez", livez),
    Route("/orders/{order_id}", order),
]))
