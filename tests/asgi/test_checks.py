"""Built-in checks against real servers: PostgreSQL, Redis, RabbitMQ, HTTP, the event loop.

PostgreSQL (127.0.0.1:5432, trust auth) and RabbitMQ (127.0.0.1:5672, guest/guest)
are the machine's servers; Redis and the HTTP dependency are started by the tests.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
import redis
import redis.asyncio

from fournines import ConfigurationError
from fournines.asgi.checks import (
    Check,
    CheckFailed,
    event_loop_lag_check,
    http_check,
    postgres_check,
    rabbitmq_check,
    redis_check,
)
from fournines.asgi.health import CheckResult, HealthMiddleware
from fournines.testing import FakeClock

from .._servers import RedisServer, free_port
from ._uvicorn import UvicornProcess

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
# Generous: these tests are about outcomes, never about speed.
TIMEOUT = 5.0


async def run(check: Check) -> CheckResult:
    [result] = await HealthMiddleware(checks=[check]).results()
    return result


async def readyz(app: HealthMiddleware) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
        return await http.get("/readyz")


def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


# --- PostgreSQL ------------------------------------------------------------------------


async def test_postgres_check_passes_against_a_live_server() -> None:
    result = await run(postgres_check(POSTGRES_DSN, timeout=TIMEOUT))
    assert (result.status, result.output) == ("pass", None)
    assert result.check.component_type == "datastore"


async def test_postgres_check_passes_with_a_pool() -> None:
    pool = await asyncpg.create_pool(POSTGRES_DSN, min_size=1, max_size=1)
    try:
        result = await run(postgres_check(pool=pool, timeout=TIMEOUT))
    finally:
        await pool.close()
    assert result.status == "pass"


async def test_postgres_check_fails_against_a_closed_port() -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    result = await run(postgres_check(dsn, timeout=TIMEOUT))
    assert (result.status, result.output) == ("fail", "unreachable")


async def test_postgres_dsn_never_appears_in_the_response() -> None:
    dsn = f"postgresql://app:hunter2@127.0.0.1:{closed_port()}/orders"
    response = await readyz(HealthMiddleware(checks=[postgres_check(dsn, timeout=TIMEOUT)]))
    assert response.status_code == 503
    assert "hunter2" not in response.text
    assert "127.0.0.1" not in response.text


def test_postgres_check_needs_exactly_one_of_dsn_and_pool() -> None:
    with pytest.raises(ConfigurationError, match="exactly one of dsn and pool"):
        postgres_check()


def test_postgres_check_names_the_extra_when_asyncpg_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # makes `import asyncpg` fail
    with pytest.raises(ConfigurationError, match=r"fournines\[checks\]"):
        postgres_check(POSTGRES_DSN)


# --- Redis -------------------------------------------------------------------------------


async def test_redis_check_follows_redis_down_and_up(private_redis: RedisServer,
                                                      clock: FakeClock) -> None:
    app = HealthMiddleware(checks=[redis_check(private_redis.url, timeout=TIMEOUT)],
                           cache_ttl=1.0, clock=clock)
    assert (await readyz(app)).status_code == 200

    private_redis.kill()
    clock.advance(1.0)  # past the cache
    response = await readyz(app)
    assert response.status_code == 503
    [result] = response.json()["checks"]["redis:responseTime"]
    assert (result["status"], result["output"]) == ("fail", "unreachable")

    private_redis.start()
    clock.advance(1.0)
    assert (await readyz(app)).status_code == 200


async def test_redis_check_reuses_a_given_client(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        check = redis_check(client, timeout=TIMEOUT)
        first, second = await run(check), await run(check)
    finally:
        await client.aclose()
    assert (first.status, second.status) == ("pass", "pass")


async def test_redis_check_fails_against_a_closed_port() -> None:
    result = await run(redis_check(f"redis://127.0.0.1:{closed_port()}/0", timeout=TIMEOUT))
    assert (result.status, result.output) == ("fail", "unreachable")


def test_redis_check_refuses_a_blocking_client() -> None:
    with pytest.raises(ConfigurationError, match=r"redis\.asyncio\.Redis"):
        redis_check(redis.Redis())


# --- RabbitMQ ----------------------------------------------------------------------------


async def test_rabbitmq_check_passes_against_a_live_broker() -> None:
    result = await run(rabbitmq_check(RABBITMQ_URL, timeout=TIMEOUT))
    assert (result.status, result.output) == ("pass", None)


async def test_rabbitmq_check_fails_against_a_closed_port() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{closed_port()}/"
    result = await run(rabbitmq_check(url, timeout=TIMEOUT))
    assert (result.status, result.output) == ("fail", "unreachable")


async def test_rabbitmq_check_with_wrong_credentials_fails_without_showing_them() -> None:
    check = rabbitmq_check("amqp://guest:not-the-password@127.0.0.1:5672/", timeout=TIMEOUT)
    response = await readyz(HealthMiddleware(checks=[check]))
    assert response.status_code == 503
    assert response.json()["checks"]["rabbitmq:responseTime"][0]["output"] == "error"
    assert "not-the-password" not in response.text


# --- HTTP --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_dependency() -> Iterator[UvicornProcess]:
    """A real uvicorn app: ``/`` answers 200, ``/status/<code>`` answers ``<code>``."""
    with UvicornProcess("tests.asgi.apps.health_app:app") as server:
        yield server


async def test_http_check_passes_on_a_2xx(http_dependency: UvicornProcess) -> None:
    result = await run(http_check(http_dependency.url + "/", timeout=TIMEOUT))
    assert result.status == "pass"


async def test_http_check_fails_on_an_unexpected_status(http_dependency: UvicornProcess) -> None:
    result = await run(http_check(http_dependency.url + "/status/500", timeout=TIMEOUT))
    assert (result.status, result.output) == ("fail", "unexpected status")


async def test_http_check_accepts_the_statuses_it_is_told_to(
        http_dependency: UvicornProcess) -> None:
    check = http_check(http_dependency.url + "/status/404", expect_status={404},
                       timeout=TIMEOUT)
    assert (await run(check)).status == "pass"


async def test_http_check_reuses_a_given_client(http_dependency: UvicornProcess) -> None:
    async with httpx.AsyncClient() as client:
        check = http_check(http_dependency.url + "/", client=client, timeout=TIMEOUT)
        results = [await run(check), await run(check)]
    assert [r.status for r in results] == ["pass", "pass"]


async def test_http_check_fails_against_a_closed_port() -> None:
    result = await run(http_check(f"http://127.0.0.1:{closed_port()}/", timeout=TIMEOUT))
    assert (result.status, result.output) == ("fail", "unreachable")


def test_http_check_refuses_a_blocking_client() -> None:
    with httpx.Client() as blocking, \
            pytest.raises(ConfigurationError, match=r"httpx\.AsyncClient"):
        http_check("http://127.0.0.1/", client=blocking)


# --- event-loop lag ----------------------------------------------------------------------


async def test_event_loop_lag_check_reports_the_lag_in_ms() -> None:
    result = await run(event_loop_lag_check(max_lag=TIMEOUT))
    assert result.status == "pass"
    assert result.check.key == "eventLoop:lag"
    assert isinstance(result.observed_value, float) and result.observed_value >= 0
    assert result.to_json()["observedUnit"] == "ms"


async def test_event_loop_lag_check_fails_when_the_loop_is_blocked() -> None:
    check = event_loop_lag_check(max_lag=0.01)
    probe: asyncio.Task[Any] = asyncio.ensure_future(check.probe())
    await asyncio.sleep(0)  # the probe schedules its timer
    time.sleep(0.05)  # blocks the loop, so the timer fires at least 40 ms late
    with pytest.raises(CheckFailed) as failed:
        await probe
    assert failed.value.output == "lag"
    assert isinstance(failed.value.observed_value, float)
    assert failed.value.observed_value > 10


def test_event_loop_lag_is_not_critical_by_default() -> None:
    assert event_loop_lag_check().critical is False


def test_event_loop_lag_check_needs_a_positive_max_lag() -> None:
    with pytest.raises(ConfigurationError,
                       match=r"^event_loop_lag_check.max_lag must be > 0, got 0$"):
        event_loop_lag_check(max_lag=0)


def test_built_in_checks_default_to_the_200_ms_timeout() -> None:
    assert redis_check("redis://127.0.0.1:6379/0").timeout == 0.2


def test_check_failed_is_a_fournines_error() -> None:
    from fournines import FourNinesError
    from fournines.asgi import CheckFailed

    assert issubclass(CheckFailed, FourNinesError)
    assert CheckFailed("unreachable").output == "unreachable"
