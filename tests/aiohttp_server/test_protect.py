"""``protect_aiohttp`` on a real aiohttp server on loopback, called over the network.

Health probes, golden metrics labelled by the resource's canonical path, the
caller's deadline in the handler's contextvar (and 504 for a spent one), and
shedding under a concurrency limit, all decided by the ASGI parts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from fournines import ConfigurationError, TokenBucket, current_deadline
from fournines.aiohttp import AiohttpProtection, protect_aiohttp
from fournines.asgi import Check, CheckFailed, RateLimitRule
from fournines.policies.adaptive import FixedLimit

Served = Callable[..., Awaitable[tuple[str, AiohttpProtection]]]


async def order(request: web.Request) -> web.Response:
    deadline = current_deadline()
    return web.json_response({
        "id": request.match_info["id"],
        "remaining": None if deadline is None else deadline.remaining(),
    })


async def teapot(request: web.Request) -> web.Response:
    raise web.HTTPConflict()


@pytest.fixture
async def serve() -> AsyncIterator[Served]:
    """Starts an aiohttp app with extra routes under ``protect_aiohttp(**options)``."""
    runners: list[web.AppRunner] = []

    async def start(routes: list[web.RouteDef] = (), **options: object
                    ) -> tuple[str, AiohttpProtection]:  # type: ignore[assignment]
        app = web.Application()
        app.add_routes([web.get("/orders/{id}", order), web.get("/teapot", teapot),
                        *routes])
        options.setdefault("registry", CollectorRegistry())
        protection = protect_aiohttp(app, **options)  # type: ignore[arg-type]
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}", protection

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_health_probes_answer_with_the_checks(serve: Served) -> None:
    async def database() -> None:
        raise CheckFailed("no connection")

    url, _ = await serve(checks=[Check(name="postgres", probe=database)])
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/livez")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["postgres:responseTime"][0]["output"] == "no connection"


async def test_readiness_fails_once_the_app_shuts_down(serve: Served) -> None:
    url, protection = await serve()
    assert protection.state.ready  # on_startup ran
    protection.state.mark_draining()  # what on_shutdown does
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/livez")).status_code == 200


async def test_metrics_have_the_asgi_names_and_the_route_template(serve: Served) -> None:
    url, _ = await serve()
    async with httpx.AsyncClient(base_url=url) as client:
        for path in ("/orders/1", "/orders/2", "/nowhere", "/teapot"):
            await client.get(path)
        text = (await client.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/orders/{id}",status="200"} 2.0' in text
    assert 'http_requests_total{method="GET",route="<unmatched>",status="404"} 1.0' in text
    assert 'http_requests_total{method="GET",route="/teapot",status="409"} 1.0' in text
    assert "http_requests_in_flight" in text


async def test_the_callers_deadline_is_the_handlers_deadline(serve: Served) -> None:
    url, _ = await serve()
    async with httpx.AsyncClient(base_url=url) as client:
        answer = await client.get("/orders/3", headers={"x-request-timeout-ms": "1500"})
        assert 0 < answer.json()["remaining"] <= 1.5
        assert (await client.get("/orders/3")).json()["remaining"] is None


async def test_a_spent_deadline_is_answered_504_without_the_handler(serve: Served) -> None:
    url, _ = await serve()
    async with httpx.AsyncClient(base_url=url) as client:
        answer = await client.get("/orders/4", headers={"x-request-timeout-ms": "0"})
        assert answer.status_code == 504
        assert answer.headers["content-type"] == "application/problem+json"
        text = (await client.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/orders/{id}",status="504"} 1.0' in text


async def test_over_the_limit_requests_are_shed_and_probes_are_not(serve: Served) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(text="done")

    url, protection = await serve([web.get("/hold", hold)], concurrency_limit=FixedLimit(1),
                                  max_loop_lag=None)
    async with httpx.AsyncClient(base_url=url) as client:
        held = asyncio.create_task(client.get("/hold"))
        await entered.wait()
        shed = await client.get("/orders/5")
        assert shed.status_code == 503
        assert "retry-after" in shed.headers
        assert (await client.get("/livez")).status_code == 200
        release.set()
        assert (await held).text == "done"
        assert (await client.get("/orders/5")).status_code == 200
        text = (await client.get("/metrics")).text
    assert protection.shedder is not None and protection.shedder.shed == 1
    # Shed before the metrics layer (as in protect()): counted as a rejection.
    assert 'policy="load_shedder"' in text


def test_a_running_app_is_refused() -> None:
    app = web.Application()
    app.freeze()
    with pytest.raises(ConfigurationError, match=r"protect_aiohttp\.app"):
        protect_aiohttp(app)


async def test_clients_over_their_quota_get_429(serve: Served) -> None:
    rule = RateLimitRule(name="orders", limiter=lambda: TokenBucket(rate=0.001, capacity=2),
                         path="/orders")
    url, _ = await serve(rate_limits=[rule])
    async with httpx.AsyncClient(base_url=url) as client:
        statuses = [(await client.get("/orders/1")).status_code for _ in range(3)]
        limited = await client.get("/orders/1")
        text = (await client.get("/metrics")).text
    assert statuses == [200, 200, 429]
    assert limited.headers["ratelimit"].startswith('"orders";r=0')
    assert 'http_requests_total{method="GET",route="/orders/{id}",status="429"} 2.0' in text


async def test_a_registration_hook_withdraws_the_instance_before_readiness_fails_on_shutdown(
) -> None:
    from fournines.asgi import Phase, ServiceState
    from fournines.discovery import Instance, RegistrationHook, StaticRegistry

    registry = StaticRegistry()
    me = Instance(service="orders", id="o1", address="http://127.0.0.1:8080")
    state = ServiceState(service="orders")
    state.add_hook(RegistrationHook(registry, me))
    phases: list[Phase] = []

    class Witness:
        async def on_ready(self, state: ServiceState) -> None:
            pass

        async def on_drain(self, state: ServiceState) -> None:
            await asyncio.sleep(0.01)  # after the registration hook's deregister
            phases.append(state.phase)

    state.add_hook(Witness())
    app = web.Application()
    protect_aiohttp(app, state=state, registry=CollectorRegistry())
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert registry.instances("orders") == (me,)

    await runner.cleanup()  # on_shutdown

    assert registry.instances("orders") == ()
    assert phases == [Phase.READY] and state.phase is Phase.DRAINING
