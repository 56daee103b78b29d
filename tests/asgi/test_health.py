"""HealthMiddleware: probe semantics, body format, caching, timeouts, pass-through."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from fournines import ConfigurationError
from fournines.asgi import ServiceState
from fournines.asgi._types import Message, Scope
from fournines.asgi.checks import Check, CheckFailed
from fournines.asgi.health import HealthMiddleware, health_app
from fournines.testing import FakeClock

from .._servers import RedisServer
from ._uvicorn import UvicornProcess

HEALTH_JSON = "application/health+json"


async def inner_app(scope: Scope, receive: Any, send: Any) -> None:
    """The protected app: answers 200 "app" and records the scopes it sees."""
    inner_app.scopes.append(scope)  # type: ignore[attr-defined]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"app"})


inner_app.scopes = []  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _clear_scopes() -> None:
    inner_app.scopes.clear()  # type: ignore[attr-defined]


def ready_state() -> ServiceState:
    state = ServiceState(service="orders", instance="orders-1")
    state.mark_ready()
    return state


class Counter:
    """A probe that counts its calls and passes (or raises ``error``)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.calls = 0
        self.error = error

    async def __call__(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


async def passing() -> None:
    return None


async def refused() -> None:
    raise ConnectionRefusedError("connection refused to db.internal:5432")


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


async def get(app: Any, path: str, method: str = "GET") -> httpx.Response:
    async with client(app) as http:
        return await http.request(method, path)


def entry(response: httpx.Response, key: str) -> dict[str, Any]:
    [value] = response.json()["checks"][key]
    return value  # type: ignore[no-any-return]


# --- status codes and body shape -------------------------------------------------------


async def test_livez_passes_with_health_json() -> None:
    app = HealthMiddleware(inner_app)
    response = await get(app, "/livez")
    assert response.status_code == 200
    assert response.headers["content-type"] == HEALTH_JSON
    assert response.json() == {"status": "pass"}


async def test_livez_never_runs_dependency_checks() -> None:
    probe = Counter(ConnectionRefusedError())
    app = HealthMiddleware(inner_app, checks=[Check("db", probe)])
    response = await get(app, "/livez")
    assert response.status_code == 200
    assert probe.calls == 0


async def test_readyz_passes_when_every_check_passes() -> None:
    app = HealthMiddleware(inner_app, checks=[Check("db", passing, component_type="datastore")],
                           state=ready_state())
    response = await get(app, "/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "pass"
    result = entry(response, "db:responseTime")
    assert result["status"] == "pass"
    assert result["componentType"] == "datastore"
    assert result["observedUnit"] == "ms"
    assert isinstance(result["observedValue"], float)
    assert result["time"].endswith("Z")
    assert "output" not in result


async def test_readyz_fails_with_503_when_a_critical_check_fails() -> None:
    app = HealthMiddleware(inner_app, checks=[Check("db", refused), Check("cache", passing)])
    response = await get(app, "/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["output"] == "unreachable"
    assert entry(response, "db:responseTime")["status"] == "fail"
    assert entry(response, "cache:responseTime")["status"] == "pass"


async def test_non_critical_failure_warns_with_200() -> None:
    app = HealthMiddleware(inner_app, checks=[Check("db", passing),
                                              Check("search", refused, critical=False)])
    response = await get(app, "/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "warn"
    assert entry(response, "search:responseTime")["status"] == "warn"
    assert entry(response, "search:responseTime")["output"] == "unreachable"


async def test_healthz_reports_live_ready_phase_and_each_check() -> None:
    app = HealthMiddleware(inner_app, checks=[Check("db", passing)], state=ready_state(),
                           version="1.2.3", description="orders API")
    response = await get(app, "/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "pass"
    assert body["version"] == "1.2.3"
    assert body["serviceId"] == "orders"
    assert body["description"] == "orders API"
    assert body["live"] is True
    assert body["ready"] is True
    assert body["phase"] == "ready"
    assert set(body["checks"]) == {"db:responseTime"}


async def test_healthz_fails_with_503_when_a_critical_check_fails() -> None:
    app = HealthMiddleware(inner_app, checks=[Check("db", refused)], state=ready_state())
    response = await get(app, "/healthz")
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["live"], body["ready"]) == ("fail", True, False)


async def test_custom_measurement_reports_the_probe_value() -> None:
    async def depth() -> int:
        return 42

    check = Check("queue", depth, measurement="depth", observed_unit="messages")
    response = await get(HealthMiddleware(inner_app, checks=[check]), "/readyz")
    result = entry(response, "queue:depth")
    assert (result["observedValue"], result["observedUnit"]) == (42, "messages")


async def test_check_failed_output_is_shown_as_given() -> None:
    async def disk() -> None:
        raise CheckFailed("disk full", observed_value=97)

    check = Check("disk", disk, measurement="utilization", observed_unit="percent")
    response = await get(HealthMiddleware(inner_app, checks=[check]), "/readyz")
    result = entry(response, "disk:utilization")
    assert (result["status"], result["output"], result["observedValue"]) == (
        "fail", "disk full", 97)


async def test_checks_run_concurrently() -> None:
    # Each check waits for the other to start: run one after the other, both time out.
    first, second = asyncio.Event(), asyncio.Event()

    async def a() -> None:
        first.set()
        await second.wait()

    async def b() -> None:
        second.set()
        await first.wait()

    app = HealthMiddleware(inner_app, checks=[Check("a", a, timeout=5), Check("b", b, timeout=5)])
    response = await get(app, "/readyz")
    assert response.status_code == 200


# --- lifecycle ---------------------------------------------------------------------------


async def test_readyz_is_503_while_starting_without_running_checks() -> None:
    probe = Counter()
    app = HealthMiddleware(inner_app, checks=[Check("db", probe)], state=ServiceState())
    response = await get(app, "/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "fail", "output": "starting", "serviceId": "service"}
    assert probe.calls == 0


async def test_readyz_is_503_while_draining() -> None:
    state = ready_state()
    state.mark_draining()
    app = HealthMiddleware(inner_app, checks=[Check("db", passing)], state=state)
    response = await get(app, "/readyz")
    assert response.status_code == 503
    assert response.json()["output"] == "draining"


async def test_healthz_while_draining_fails_but_shows_the_checks() -> None:
    state = ready_state()
    state.mark_draining()
    app = HealthMiddleware(inner_app, checks=[Check("db", passing)], state=state)
    response = await get(app, "/healthz")
    assert response.status_code == 503
    body = response.json()
    assert (body["live"], body["ready"], body["phase"]) == (True, False, "draining")
    assert entry(response, "db:responseTime")["status"] == "pass"


async def test_livez_passes_while_draining() -> None:
    state = ready_state()
    state.mark_draining()
    response = await get(HealthMiddleware(inner_app, state=state), "/livez")
    assert response.status_code == 200


async def test_startupz_fails_until_startup_finishes() -> None:
    state = ServiceState()
    app = HealthMiddleware(inner_app, state=state)
    assert (await get(app, "/startupz")).status_code == 503
    state.mark_ready()
    assert (await get(app, "/startupz")).status_code == 200


async def test_startupz_keeps_passing_while_draining() -> None:
    state = ready_state()
    state.mark_draining()
    assert (await get(HealthMiddleware(inner_app, state=state), "/startupz")).status_code == 200


# --- caching and single flight ---------------------------------------------------------


async def test_results_are_cached_for_cache_ttl(clock: FakeClock) -> None:
    probe = Counter()
    app = HealthMiddleware(inner_app, checks=[Check("db", probe)], cache_ttl=5.0, clock=clock)
    await get(app, "/readyz")
    clock.advance(4.9)
    await get(app, "/healthz")
    assert probe.calls == 1
    clock.advance(0.1)
    await get(app, "/readyz")
    assert probe.calls == 2


async def test_cache_ttl_zero_runs_the_checks_on_every_probe() -> None:
    probe = Counter()
    app = HealthMiddleware(inner_app, checks=[Check("db", probe)], cache_ttl=0)
    for _ in range(3):
        await get(app, "/readyz")
    assert probe.calls == 3


async def test_a_recovered_check_passes_once_the_cache_expires(clock: FakeClock) -> None:
    probe = Counter(ConnectionRefusedError())
    app = HealthMiddleware(inner_app, checks=[Check("db", probe)], cache_ttl=1.0, clock=clock)
    assert (await get(app, "/readyz")).status_code == 503
    probe.error = None
    assert (await get(app, "/readyz")).status_code == 503
    clock.advance(1.0)
    assert (await get(app, "/readyz")).status_code == 200


async def test_concurrent_probes_share_one_refresh() -> None:
    calls = 0
    release = asyncio.Event()

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await release.wait()

    app = HealthMiddleware(inner_app, checks=[Check("db", slow, timeout=30)], cache_ttl=0)
    async with client(app) as http:
        requests = [asyncio.create_task(http.get("/readyz")) for _ in range(20)]
        while calls == 0:
            await asyncio.sleep(0)
        for _ in range(20):  # let every request reach the refresh
            await asyncio.sleep(0)
        release.set()
        responses = await asyncio.gather(*requests)
    assert [r.status_code for r in responses] == [200] * 20
    assert calls == 1


async def test_a_probe_that_gives_up_does_not_cancel_the_shared_refresh() -> None:
    calls = 0
    release = asyncio.Event()

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await release.wait()

    app = HealthMiddleware(inner_app, checks=[Check("db", slow, timeout=30)], cache_ttl=60)
    impatient = asyncio.create_task(app.results())
    while calls == 0:
        await asyncio.sleep(0)
    impatient.cancel()
    release.set()
    [result] = await app.results()
    assert result.status == "pass"
    assert calls == 1


async def test_checks_do_not_inherit_the_request_context() -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
    seen: list[str] = []

    async def probe() -> None:
        seen.append(request_id.get())

    app = HealthMiddleware(inner_app, checks=[Check("db", probe)])
    request_id.set("request-1")
    await app.results()
    assert seen == ["-"]


# --- timeouts and failures --------------------------------------------------------------


async def test_hanging_check_times_out_and_fails() -> None:
    cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    app = HealthMiddleware(inner_app, checks=[Check("db", hang, timeout=0.05)])
    response = await get(app, "/readyz")
    assert response.status_code == 503
    assert entry(response, "db:responseTime")["output"] == "timeout"
    await cancelled.wait()


async def test_check_ignoring_cancellation_still_times_out() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)  # swallows the first cancellation

    app = HealthMiddleware(inner_app, checks=[Check("db", stubborn, timeout=0.05)])
    response = await get(app, "/readyz")
    assert response.status_code == 503
    assert entry(response, "db:responseTime")["output"] == "timeout"


async def test_exception_text_is_not_in_the_response() -> None:
    async def leaky() -> None:
        raise RuntimeError("could not connect to postgresql://app:hunter2@db.internal/orders")

    app = HealthMiddleware(inner_app, checks=[Check("db", leaky)])
    response = await get(app, "/healthz")
    assert response.status_code == 503
    assert entry(response, "db:responseTime")["output"] == "error"
    for secret in ("hunter2", "postgresql://", "db.internal", "RuntimeError"):
        assert secret not in response.text


async def test_a_failing_check_is_logged_with_its_exception(
        caplog: pytest.LogCaptureFixture) -> None:
    error = RuntimeError("password=hunter2")

    async def broken() -> None:
        raise error

    app = HealthMiddleware(inner_app, checks=[Check("db", broken)])
    with caplog.at_level(logging.WARNING, logger="fournines"):
        await get(app, "/readyz")
    [record] = [r for r in caplog.records if r.name == "fournines"]
    assert record.exc_info is not None and record.exc_info[1] is error


async def test_a_check_that_keeps_failing_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    app = HealthMiddleware(inner_app, checks=[Check("db", refused)], cache_ttl=0)
    with caplog.at_level(logging.WARNING, logger="fournines"):
        for _ in range(3):
            await get(app, "/readyz")
    assert len([r for r in caplog.records if r.name == "fournines"]) == 1


async def test_probe_that_is_not_a_coroutine_function_fails_with_error() -> None:
    check = Check("db", lambda: None)  # type: ignore[arg-type, return-value]
    response = await get(HealthMiddleware(inner_app, checks=[check]), "/readyz")
    assert response.status_code == 503
    assert entry(response, "db:responseTime")["output"] == "error"


# --- HTTP details and pass-through ------------------------------------------------------


async def test_head_answers_status_and_headers_without_body() -> None:
    app = HealthMiddleware(inner_app, checks=[Check("db", refused)])
    response = await get(app, "/readyz", method="HEAD")
    assert response.status_code == 503
    assert response.headers["content-type"] == HEALTH_JSON
    assert int(response.headers["content-length"]) > 0
    assert response.content == b""


async def test_probe_responses_are_not_cacheable() -> None:
    response = await get(HealthMiddleware(inner_app), "/livez")
    assert response.headers["cache-control"] == "no-store"


async def test_post_to_a_probe_path_is_405() -> None:
    response = await get(HealthMiddleware(inner_app), "/readyz", method="POST")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_other_paths_pass_through_to_the_app() -> None:
    response = await get(HealthMiddleware(inner_app), "/orders/livez")
    assert response.text == "app"
    assert [s["path"] for s in inner_app.scopes] == ["/orders/livez"]  # type: ignore[attr-defined]


async def call(app: Callable[..., Awaitable[None]], scope: Scope,
               messages: list[Message]) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_lifespan_scope_passes_through_to_the_app() -> None:
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await call(HealthMiddleware(inner_app), scope, [])
    assert inner_app.scopes == [scope]  # type: ignore[attr-defined]


async def test_websocket_scope_on_a_probe_path_passes_through() -> None:
    scope = {"type": "websocket", "path": "/livez", "headers": []}
    await call(HealthMiddleware(inner_app), scope, [])
    assert inner_app.scopes == [scope]  # type: ignore[attr-defined]


async def test_health_app_answers_404_for_other_paths() -> None:
    response = await get(health_app(), "/orders")
    assert response.status_code == 404


async def test_health_app_completes_the_lifespan() -> None:
    sent = await call(health_app(), {"type": "lifespan"},
                      [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                        "lifespan.shutdown.complete"]


async def test_paths_can_be_renamed_and_turned_off() -> None:
    app = HealthMiddleware(inner_app, paths={"health": "/health", "startup": None})
    assert (await get(app, "/health")).headers["content-type"] == HEALTH_JSON
    assert (await get(app, "/healthz")).text == "app"
    assert (await get(app, "/startupz")).text == "app"


# --- configuration ------------------------------------------------------------------------


def test_check_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match=r"^Check.timeout must be > 0, got 0$"):
        Check("db", passing, timeout=0)


def test_check_name_must_not_contain_a_colon() -> None:
    with pytest.raises(ConfigurationError, match=r"Check\.name"):
        Check("db:main", passing)


def test_cache_ttl_must_not_be_negative() -> None:
    with pytest.raises(ConfigurationError, match=r"HealthMiddleware.cache_ttl must be >= 0"):
        HealthMiddleware(inner_app, cache_ttl=-1)


def test_two_checks_with_one_key_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="'db:responseTime'"):
        HealthMiddleware(inner_app, checks=[Check("db", passing), Check("db", refused)])


def test_unknown_path_endpoint_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"HealthMiddleware\.paths"):
        HealthMiddleware(inner_app, paths={"alive": "/alive"})


def test_one_path_for_two_endpoints_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="'/ping'"):
        HealthMiddleware(inner_app, paths={"live": "/ping", "ready": "/ping"})


# --- a real uvicorn process ------------------------------------------------------------


def test_uvicorn_service_follows_its_redis(private_redis: RedisServer) -> None:
    env = {"REDIS_URL": private_redis.url, "HEALTH_CACHE_TTL": "0"}
    with UvicornProcess("tests.asgi.apps.health_app:app", env=env) as server, \
            httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/readyz").status_code == 200
        assert http.get("/healthz").json()["checks"]["redis:responseTime"][0]["status"] == "pass"

        private_redis.kill()
        assert http.get("/livez").status_code == 200
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis:responseTime"][0]["status"] == "fail"
        health = http.get("/healthz")
        assert health.status_code == 503
        assert (health.json()["live"], health.json()["ready"]) == (True, False)
        assert http.get("/").text == "ok"

        private_redis.start()
        assert http.get("/readyz").status_code == 200
