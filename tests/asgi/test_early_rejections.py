"""Early rejections (504 expired deadline, 429 rate limited, 503 shed) under protect().

They answer without running the app, yet keep the route template the router would have
chosen in the metrics labels, and share one body format: an RFC 9457 problem.
Malformed deadline headers are counted in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from fournines import ConfigurationError, LoadShedError, RejectedError, TokenBucket
from fournines.asgi import LoadShedder, RateLimitRule, protect
from fournines.asgi.metrics import MetricsMiddleware
from fournines.policies.adaptive import FixedLimit

PROBLEM = "application/problem+json"


async def order(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.path_params["order_id"])


def starlette_app() -> Starlette:
    return Starlette(routes=[
        Route("/orders/{order_id}", order),
        Mount("/api", routes=[Route("/orders/{order_id:int}", order)]),
    ])


def fastapi_app() -> FastAPI:
    app = FastAPI()
    router = APIRouter(prefix="/orders")

    @router.get("/{order_id}")
    async def get_order(order_id: int) -> dict[str, int]:
        return {"order": order_id}

    app.include_router(router, prefix="/v2")
    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def scrape(http: httpx.AsyncClient) -> str:
    return (await http.get("/metrics")).text


def counted(route: str, status: int, value: float = 1.0) -> str:
    return f'http_requests_total{{method="GET",route="{route}",status="{status}"}} {value}'


EXPIRED = {"x-request-timeout-ms": "0"}


@pytest.mark.parametrize(("path", "route"), [
    ("/orders/7", "/orders/{order_id}"),
    ("/api/orders/7", "/api/orders/{order_id}"),
])
async def test_an_expired_deadline_keeps_the_route_template(path: str, route: str) -> None:
    service = protect(starlette_app(), registry=CollectorRegistry())
    async with client(service) as http:
        assert (await http.get(path, headers=EXPIRED)).status_code == 504
        metrics = await scrape(http)
    assert counted(route, 504) in metrics
    assert "<unmatched>" not in metrics


async def test_an_expired_deadline_keeps_a_fastapi_included_route_template() -> None:
    service = protect(fastapi_app(), registry=CollectorRegistry())
    async with client(service) as http:
        assert (await http.get("/v2/orders/7", headers=EXPIRED)).status_code == 504
        metrics = await scrape(http)
    assert counted("/v2/orders/{order_id}", 504) in metrics


async def test_an_expired_deadline_on_no_route_is_unmatched() -> None:
    service = protect(starlette_app(), registry=CollectorRegistry())
    async with client(service) as http:
        await http.get("/scanner/probe", headers=EXPIRED)
        metrics = await scrape(http)
    assert counted("<unmatched>", 504) in metrics


async def test_a_rate_limited_request_keeps_the_route_template() -> None:
    service = protect(starlette_app(), registry=CollectorRegistry(),
                      rate_limit=lambda: TokenBucket(rate=0.001, capacity=1))
    async with client(service) as http:
        assert (await http.get("/orders/1")).status_code == 200
        assert (await http.get("/orders/2")).status_code == 429
        metrics = await scrape(http)
    assert counted("/orders/{order_id}", 200) in metrics
    assert counted("/orders/{order_id}", 429) in metrics


class Hold:
    """An endpoint that holds its request until released."""

    def __init__(self) -> None:
        self.inside = asyncio.Event()
        self.release = asyncio.Event()

    async def endpoint(self, request: Request) -> PlainTextResponse:
        self.inside.set()
        await self.release.wait()
        return PlainTextResponse("done")


async def test_a_shed_request_inside_the_metrics_keeps_the_route_template() -> None:
    hold = Hold()
    app = Starlette(routes=[Route("/orders/{order_id}", hold.endpoint)])
    registry = CollectorRegistry()
    metrics = MetricsMiddleware(LoadShedder(app, limit=FixedLimit(1), max_loop_lag=None),
                                registry=registry, process_metrics=False)
    async with client(metrics) as http:
        held = asyncio.ensure_future(http.get("/orders/1"))
        await hold.inside.wait()
        assert (await http.get("/orders/2")).status_code == 503
        hold.release.set()
        await held
        text = await scrape(http)
    assert counted("/orders/{order_id}", 503) in text


# -- one body format for every early rejection -------------------------------------------


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == PROBLEM
    body = json.loads(response.content)
    assert isinstance(body, dict)
    assert body["status"] == response.status_code
    assert {"type", "title", "status", "detail"} <= body.keys()
    return body


async def test_a_shed_503_is_a_problem_like_the_429() -> None:
    hold = Hold()
    shedder = LoadShedder(Starlette(routes=[Route("/work", hold.endpoint)]), limit=FixedLimit(1),
                          max_loop_lag=None)
    async with client(shedder) as http:
        held = asyncio.ensure_future(http.get("/work"))
        await hold.inside.wait()
        response = await http.get("/work")
        hold.release.set()
        await held
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    body = problem(response)
    assert body["type"] == "about:blank"
    assert body["title"] == "Service Unavailable"


async def test_a_429_is_a_problem_with_its_status_and_detail() -> None:
    service = protect(starlette_app(), registry=CollectorRegistry(),
                      rate_limit=lambda: TokenBucket(rate=0.001, capacity=1))
    async with client(service) as http:
        await http.get("/orders/1")
        body = problem(await http.get("/orders/1"))
    assert body["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    assert body["violated-policies"] == ["default"]


async def test_an_expired_deadline_504_is_a_problem() -> None:
    service = protect(starlette_app(), registry=CollectorRegistry())
    async with client(service) as http:
        body = problem(await http.get("/orders/1", headers=EXPIRED))
    assert body["type"] == "about:blank"
    assert body["title"] == "Gateway Timeout"


# -- malformed deadline headers are a metric ---------------------------------------------


async def test_malformed_deadline_headers_are_counted_in_metrics() -> None:
    service = protect(starlette_app(), registry=CollectorRegistry())
    async with client(service) as http:
        assert (await http.get("/orders/1", headers={"x-request-timeout-ms": "abc"})
                ).status_code == 200
        await http.get("/orders/1", headers={"x-request-timeout-ms": "1e3"})
        await http.get("/orders/1", headers={"grpc-timeout": "5x"})
        metrics = await scrape(http)
    assert ('fournines_malformed_headers_total{header="x-request-timeout-ms",'
            'name="deadline"} 2.0') in metrics
    assert 'fournines_malformed_headers_total{header="grpc-timeout",name="deadline"} 1.0' \
        in metrics


# -- the shedder's sans-I/O decision raises LoadShedError ---------------------------------


def scope(path: str = "/work") -> dict[str, Any]:
    return {"type": "http", "path": path, "method": "GET", "headers": []}


def test_the_shedders_decision_raises_load_shed_error_above_the_limit() -> None:
    shedder = LoadShedder(PlainTextResponse("x"), limit=FixedLimit(1), max_loop_lag=None,
                          retry_after=2)
    permit = shedder.try_acquire(scope())
    with pytest.raises(LoadShedError) as info:
        shedder.try_acquire(scope())
    assert isinstance(info.value, RejectedError)
    assert info.value.retry_after == 2
    assert shedder.shed_overload == 1
    shedder.release(permit, 0.01, dropped=False)
    shedder.release(shedder.try_acquire(scope()), 0.01, dropped=False)
    assert shedder.in_flight == 0


# -- protect() refuses settings that could never act --------------------------------------


def test_a_rate_limit_key_without_a_rate_limit_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"protect\.rate_limit_key 'header:x-api-key'"):
        protect(starlette_app(), rate_limit_key="header:x-api-key", metrics=False)


def test_a_malformed_rate_limit_key_names_protect() -> None:
    with pytest.raises(ConfigurationError, match=r"protect\.rate_limit_key must be"):
        protect(starlette_app(), rate_limit=lambda: TokenBucket(rate=1, capacity=1),
                rate_limit_key="header", metrics=False)


def test_a_rate_limit_key_with_a_list_of_rules_is_refused() -> None:
    rule = RateLimitRule(name="api", limiter=lambda: TokenBucket(rate=1, capacity=1))
    with pytest.raises(ConfigurationError, match=r"protect\.rate_limit_key"):
        protect(starlette_app(), rate_limit=[rule], rate_limit_key="global", metrics=False)


@pytest.mark.parametrize("option", [
    {"critical_paths": ["/checkout"]},
    {"concurrency_limit": FixedLimit(10)},
])
def test_shedding_options_without_shedding_are_refused(option: dict[str, Any]) -> None:
    (name,) = option
    with pytest.raises(ConfigurationError, match=rf"protect\.{name} .*shedding=False"):
        protect(starlette_app(), shedding=False, metrics=False, **option)


def test_a_registry_without_metrics_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"protect\.registry .*metrics=False"):
        protect(starlette_app(), metrics=False, registry=CollectorRegistry())


@pytest.mark.parametrize("field", ["critical_paths", "never_shed_paths"])
def test_a_shedder_path_without_a_leading_slash_is_refused(field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"LoadShedder\.{field} .*'checkout'"):
        LoadShedder(PlainTextResponse("x"), **{field: ["checkout"]})
