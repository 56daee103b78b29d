"""The apps the ASGI benchmarks serve, one per variant (``BENCH_VARIANT``).

Every variant serves the same handler, ``GET /orders/{order_id}`` answering a
small JSON body, behind different middleware stacks:

- ``bare``: Starlette alone, the reference;
- ``fournines``: ``fournines.asgi.protect`` with metrics, health, deadlines,
  shedding and a rate limit that is never reached;
- ``fournines_traced``: the same plus one OpenTelemetry span per request
  (SDK with a no-op exporter);
- ``exporter``: starlette-exporter alone;
- ``otel``: OpenTelemetry's own ASGI middleware alone (SDK, no-op exporter);
- ``usual``: starlette-exporter + slowapi + OpenTelemetry ASGI middleware;
- ``overload_bare`` / ``overload_fournines``: a handler with ~5 ms of await and
  ~1 ms of CPU, unprotected and behind fournines' load shedder.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


async def order(request: Request) -> JSONResponse:
    return JSONResponse({"order": request.path_params["order_id"], "status": "paid"})


async def work(request: Request) -> PlainTextResponse:
    await asyncio.sleep(0.005)
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    return PlainTextResponse("done")


def _noop_tracer_provider() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class NoopExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(NoopExporter()))
    return provider


async def hello(scope: Any, receive: Any, send: Any) -> None:
    """The cheapest ASGI app: the floor a rejection's cost is compared with."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


async def hang(request: Request) -> PlainTextResponse:
    # Holds the one slot of a FixedLimit(1) so that every other request is shed.
    await asyncio.sleep(3600)
    return PlainTextResponse("late")


def build(variant: str) -> Any:
    if variant == "hello":
        return hello
    if variant.startswith("reject_fournines"):
        from fournines.asgi import protect
        from fournines.policies.adaptive import FixedLimit

        inner = Starlette(routes=[Route("/work", hang), Route("/ready", work)])
        return protect(inner, service="bench", concurrency_limit=FixedLimit(1),
                       queue_target=None)
    if variant.startswith("overload"):
        app: Any = Starlette(routes=[Route("/work", work)])
    else:
        app = Starlette(routes=[Route("/orders/{order_id}", order)])
    if variant in ("bare", "overload_bare"):
        return app
    if variant in ("fournines", "fournines_traced", "overload_fournines",
                   "overload_fournines_asgi"):
        from fournines import TokenBucket
        from fournines.asgi import protect

        kwargs: dict[str, Any] = {}
        if variant == "fournines_traced":
            kwargs["tracer_provider"] = _noop_tracer_provider()
        if not variant.startswith("overload_fournines"):
            kwargs["rate_limit"] = lambda: TokenBucket(rate=1e9, capacity=1e9)
        elif os.environ.get("BENCH_MAX_LOOP_LAG"):
            # For trying the shedder's settings; the reported runs use the defaults.
            lag = os.environ["BENCH_MAX_LOOP_LAG"]
            kwargs["max_loop_lag"] = None if lag == "none" else float(lag)
        return protect(app, service="bench", **kwargs)
    if variant in ("exporter", "usual"):
        from starlette_exporter import PrometheusMiddleware, handle_metrics

        app.add_middleware(PrometheusMiddleware)
        app.add_route("/metrics", handle_metrics)
    if variant == "usual":
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded
        from slowapi.middleware import SlowAPIMiddleware
        from slowapi.util import get_remote_address

        limiter = Limiter(key_func=get_remote_address, default_limits=["1000000000/second"])
        app.state.limiter = limiter
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
        app.add_middleware(SlowAPIMiddleware)
    if variant in ("otel", "usual"):
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        return OpenTelemetryMiddleware(app, tracer_provider=_noop_tracer_provider())
    if variant not in ("exporter", "usual"):
        raise SystemExit(f"unknown BENCH_VARIANT {variant!r}")
    return app


app = build(os.environ.get("BENCH_VARIANT", "bare"))
