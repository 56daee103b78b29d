"""Dependency checks for health probes: the ``Check`` config and the built-in checks.

A :class:`Check` names one dependency and holds a ``probe``: a coroutine
function that raises when the dependency is unhealthy. The health middleware
(:mod:`fournines.asgi.health`) runs every check concurrently, each under its
own timeout, and caches the results.

The built-in checks import their client library only when they are built, so
fournines itself needs none of them; a missing one raises
:class:`~fournines.ConfigurationError` naming the extra to install
(``pip install 'fournines[checks]'``).

What a probe raises never reaches the public response: it is logged on the
``"fournines"`` logger, and the response only says ``"timeout"``,
``"unreachable"`` or ``"error"`` (or the ``output`` of a :class:`CheckFailed`
the probe raised on purpose). Connection strings, host names and passwords
stay out of probe responses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Container
from dataclasses import KW_ONLY, dataclass
from typing import Any

from .._errors import ConfigurationError, FourNinesError, check_number

__all__ = [
    "Check",
    "CheckFailed",
    "event_loop_lag_check",
    "http_check",
    "postgres_check",
    "rabbitmq_check",
    "redis_check",
]

DEFAULT_TIMEOUT = 0.2
"""Seconds a check may take by default (the seed's 200 ms)."""

_EXTRA = "pip install 'fournines[checks]'"


class CheckFailed(FourNinesError):
    """Raised by a probe to fail with a chosen public ``output`` and observed value.

    Unlike any other exception, whose text is only logged, ``output`` is shown
    in the health response as it is: keep it short, fixed and free of secrets
    (``"unreachable"``, ``"unexpected status"``, ``"lag"``). ``observed_value``
    is reported for checks whose measurement is not ``"responseTime"`` (for
    those, the observed value is always the probe's duration).
    """

    def __init__(self, output: str, *, observed_value: object = None) -> None:
        super().__init__(output)
        self.output = output
        self.observed_value = observed_value


@dataclass(frozen=True, slots=True)
class Check:
    """One dependency check: a name, a probe, and how much it matters.

    :param name: the component name; the response key is ``"name:measurement"``.
    :param probe: a coroutine function that raises when the dependency is unhealthy.
    :param timeout: seconds the probe may take; it is cancelled after that and fails
        with ``"timeout"``.
    :param critical: whether a failure fails readiness (``fail``, HTTP 503). A failing
        non-critical check only warns (``warn``, HTTP 200).
    :param component_type: ``"datastore"``, ``"component"``, ``"system"``... (IETF draft).
    :param measurement: with the default ``"responseTime"``, the observed value is the
        probe's duration in milliseconds; with any other measurement it is what the
        probe returned (a number, string or bool; anything else is left out).
    :param observed_unit: the unit of the observed value.
    """

    name: str
    probe: Callable[[], Awaitable[object]]
    _: KW_ONLY
    timeout: float = DEFAULT_TIMEOUT
    critical: bool = True
    component_type: str = "component"
    measurement: str = "responseTime"
    observed_unit: str = "ms"

    def __post_init__(self) -> None:
        # The name and measurement form the key "name:measurement", so neither may
        # be empty or contain the separator.
        for field in ("name", "measurement"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value or ":" in value:
                raise ConfigurationError(
                    f"Check.{field} must be a non-empty string without ':', got {value!r}"
                )
        if not callable(self.probe):
            raise ConfigurationError(f"Check.probe must be callable, got {self.probe!r}")
        check_number("Check", "timeout", self.timeout, minimum=0, exclusive_minimum=True)
        if not isinstance(self.critical, bool):
            raise ConfigurationError(f"Check.critical must be a bool, got {self.critical!r}")
        for field in ("component_type", "observed_unit"):
            if not isinstance(getattr(self, field), str):
                raise ConfigurationError(
                    f"Check.{field} must be a string, got {getattr(self, field)!r}"
                )

    @property
    def key(self) -> str:
        """The key of this check in the response's ``checks`` map."""
        return f"{self.name}:{self.measurement}"


def _missing(owner: str, module: str, exc: ImportError) -> ConfigurationError:
    error = ConfigurationError(f"{owner} needs {module}: {_EXTRA}")
    error.__cause__ = exc
    return error


def _timeout(owner: str, timeout: float) -> float:
    check_number(owner, "timeout", timeout, minimum=0, exclusive_minimum=True)
    return timeout


def postgres_check(
    dsn: str | None = None,
    *,
    pool: Any = None,
    name: str = "postgres",
    timeout: float = DEFAULT_TIMEOUT,
    critical: bool = True,
) -> Check:
    """Check PostgreSQL with ``SELECT 1`` (asyncpg).

    Give either ``dsn`` (each check opens a connection and closes it; results
    are cached, so that is at most one connection per ``cache_ttl``) or
    ``pool``, an ``asyncpg.Pool`` to borrow a connection from: the check then
    also notices an exhausted pool.
    """
    if (dsn is None) == (pool is None):
        raise ConfigurationError("postgres_check needs exactly one of dsn and pool")
    if dsn is not None and (not isinstance(dsn, str) or not dsn):
        # Never echo the value: a DSN carries the password.
        raise ConfigurationError("postgres_check.dsn must be a non-empty string")
    _timeout("postgres_check", timeout)
    try:
        import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise _missing("postgres_check", "asyncpg", exc) from exc

    if pool is not None:
        async def probe() -> None:
            async with pool.acquire(timeout=timeout) as conn:
                await conn.fetchval("SELECT 1")
    else:
        async def probe() -> None:
            conn = await asyncpg.connect(dsn, timeout=timeout)
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await _close_postgres(conn, timeout)

    return Check(name, probe, timeout=timeout, critical=critical, component_type="datastore")


async def _close_postgres(conn: Any, timeout: float) -> None:
    # A polite close sends Terminate so the server logs no "unexpected EOF"; if
    # that fails or is cancelled (the check timed out), drop the socket instead.
    try:
        await conn.close(timeout=timeout)
    except Exception:
        conn.terminate()
    except BaseException:
        conn.terminate()
        raise


def redis_check(
    url_or_client: Any,
    *,
    name: str = "redis",
    timeout: float = DEFAULT_TIMEOUT,
    critical: bool = True,
) -> Check:
    """Check Redis with ``PING`` (redis-py asyncio).

    ``url_or_client`` is a ``redis://`` URL (each check opens a client without
    retries and closes it) or a ``redis.asyncio.Redis`` client of yours, which
    is reused (configure its timeouts and retries: redis-py's default retries
    can outlast the check's ``timeout``, which then fails it).
    """
    _timeout("redis_check", timeout)
    try:
        import redis  # noqa: PLC0415 - optional dependency
        import redis.asyncio  # noqa: PLC0415
        from redis.asyncio.retry import Retry  # noqa: PLC0415
        from redis.backoff import NoBackoff  # noqa: PLC0415
    except ImportError as exc:
        raise _missing("redis_check", "redis", exc) from exc

    if isinstance(url_or_client, str):
        if not url_or_client:
            raise ConfigurationError("redis_check.url_or_client must not be empty")
        url = url_or_client

        async def probe() -> None:
            client = redis.asyncio.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            try:
                await client.ping()
            except redis.ConnectionError as exc:
                raise CheckFailed("unreachable") from exc
            finally:
                await client.aclose()
    elif isinstance(url_or_client, redis.asyncio.Redis):
        client = url_or_client

        async def probe() -> None:
            try:
                await client.ping()
            except redis.ConnectionError as exc:
                raise CheckFailed("unreachable") from exc
    else:
        # A blocking client would stall the event loop for every probe.
        raise ConfigurationError(
            "redis_check.url_or_client must be a redis:// URL or a redis.asyncio.Redis, "
            f"got {type(url_or_client).__name__}"
        )
    return Check(name, probe, timeout=timeout, critical=critical, component_type="datastore")


def rabbitmq_check(
    url: str,
    *,
    name: str = "rabbitmq",
    timeout: float = DEFAULT_TIMEOUT,
    critical: bool = True,
) -> Check:
    """Check RabbitMQ with an AMQP connection handshake (aio-pika), closed at once.

    The handshake proves the broker accepts connections and the credentials
    and virtual host in ``url``; no channel is opened.
    """
    _timeout("rabbitmq_check", timeout)
    if not isinstance(url, str) or not url:
        raise ConfigurationError("rabbitmq_check.url must be a non-empty string")
    try:
        import aio_pika  # noqa: PLC0415 - optional dependency
        from aiormq.exceptions import ProbableAuthenticationError  # noqa: PLC0415
    except ImportError as exc:
        raise _missing("rabbitmq_check", "aio-pika", exc) from exc

    async def probe() -> None:
        try:
            connection = await aio_pika.connect(url, timeout=timeout)
        except ProbableAuthenticationError as exc:
            # An OSError too, but the broker answered: "unreachable" would mislead.
            raise CheckFailed("error") from exc
        await connection.close()

    return Check(name, probe, timeout=timeout, critical=critical, component_type="component")


def http_check(
    url: str,
    *,
    name: str = "http",
    expect_status: Container[int] = range(200, 400),
    client: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
    critical: bool = True,
) -> Check:
    """Check an HTTP dependency with a ``GET`` (httpx); fails unless the status is expected.

    Redirects are not followed: a 3xx is the answer. Pass ``client`` (an
    ``httpx.AsyncClient``) to reuse its connections; otherwise each check
    opens a client and closes it.
    """
    _timeout("http_check", timeout)
    if not isinstance(url, str) or not url:
        raise ConfigurationError("http_check.url must be a non-empty string")
    try:
        import httpx  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise _missing("http_check", "httpx", exc) from exc
    if client is not None and not isinstance(client, httpx.AsyncClient):
        raise ConfigurationError(
            f"http_check.client must be an httpx.AsyncClient, got {type(client).__name__}"
        )

    async def get(http: httpx.AsyncClient) -> None:
        try:
            response = await http.get(url, timeout=timeout, follow_redirects=False)
        except httpx.TransportError as exc:
            output = "timeout" if isinstance(exc, httpx.TimeoutException) else "unreachable"
            raise CheckFailed(output) from exc
        if response.status_code not in expect_status:
            raise CheckFailed("unexpected status")

    async def probe() -> None:
        if client is not None:
            await get(client)
        else:
            async with httpx.AsyncClient() as http:
                await get(http)

    return Check(name, probe, timeout=timeout, critical=critical, component_type="component")


_LAG_SAMPLE = 0.005
"""Seconds the lag probe asks to sleep; how much later it wakes up is the lag."""


def event_loop_lag_check(
    max_lag: float = 0.1,
    *,
    name: str = "eventLoop",
    critical: bool = False,
    timeout: float | None = None,
) -> Check:
    """Measure event-loop lag: how late a ``loop.call_later`` callback fires.

    The observed value is the lag in milliseconds (measurement ``"lag"``).
    Above ``max_lag`` seconds the check fails with output ``"lag"``; as it is
    not critical by default, that only warns (a busy process should say so,
    not leave the load balancer). ``timeout`` defaults to ``max_lag`` + 0.2 s.
    """
    check_number("event_loop_lag_check", "max_lag", max_lag, minimum=0, exclusive_minimum=True)
    if timeout is None:
        timeout = max_lag + DEFAULT_TIMEOUT
    _timeout("event_loop_lag_check", timeout)

    async def probe() -> float:
        # The loop's own clock, not a fournines Clock: the lag is a property of
        # this loop's scheduling, which a fake clock cannot observe.
        loop = asyncio.get_running_loop()
        fired: asyncio.Future[float] = loop.create_future()

        def wake() -> None:
            if not fired.done():
                fired.set_result(loop.time())

        start = loop.time()
        loop.call_later(_LAG_SAMPLE, wake)
        lag_ms = round(max(0.0, await fired - start - _LAG_SAMPLE) * 1000, 3)
        if lag_ms > max_lag * 1000:
            raise CheckFailed("lag", observed_value=lag_ms)
        return lag_ms

    return Check(name, probe, timeout=timeout, critical=critical, component_type="system",
                 measurement="lag", observed_unit="ms")
