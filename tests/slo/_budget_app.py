"""A protected Starlette app for SLO integration tests: ``/ok`` answers 200, ``/fail`` 500.

Run by uvicorn in its own process; Prometheus scrapes its ``/metrics``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from fournines.asgi import protect


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def fail(request: Request) -> PlainTextResponse:
    return PlainTextResponse("injected error", status_code=500)


app = protect(Starlette(routes=[Route("/ok", ok), Route("/fail", fail)]), service="payment",
              shedding=False)
