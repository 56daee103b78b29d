"""A readiness check backed by the pool the service really uses.

:func:`pool_check` builds a :class:`fournines.asgi.Check` for ``protect(checks=[...])``
that borrows a connection from the pool and runs ``SELECT 1``: readiness then fails
when the pool cannot hand out a connection within the check's timeout (the
database is down, or every connection is busy), which a check on a fresh
connection of its own would not notice.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError, check_number

if TYPE_CHECKING:
    from ..asgi import Check

__all__ = ["pool_check"]


def _kind(pool: object) -> str | None:
    module = type(pool).__module__.partition(".")[0]
    if module == "asyncpg":
        from . import _asyncpg  # noqa: PLC0415 - drivers load on use
        return "asyncpg" if _asyncpg.is_asyncpg(pool) and hasattr(pool, "acquire") else None
    if module == "psycopg_pool":
        from psycopg_pool import AsyncConnectionPool  # noqa: PLC0415
        return "psycopg" if isinstance(pool, AsyncConnectionPool) else None
    if module == "sqlalchemy":
        from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: PLC0415
        return "sqlalchemy" if isinstance(pool, AsyncEngine) else None
    return None


def pool_check(
    pool: Any,
    *,
    name: str = "postgres",
    timeout: float = 0.2,
    critical: bool = True,
) -> Check:
    """A readiness check that borrows a connection from ``pool`` and runs ``SELECT 1``.

    :param pool: an asyncpg ``Pool``, a psycopg ``AsyncConnectionPool`` or a
        SQLAlchemy ``AsyncEngine``.
    :param name: the component name in the health response.
    :param timeout: seconds to get a connection and an answer; the probe gives up by
        itself after it, so it fails in time outside the health middleware too.
    :param critical: whether a failure fails readiness (HTTP 503).
    """
    from ..asgi import Check  # noqa: PLC0415 - the ASGI layer loads only for a check

    check_number("pool_check", "timeout", timeout, minimum=0, exclusive_minimum=True)
    kind = _kind(pool)
    if kind is None:
        raise ConfigurationError(
            "pool_check.pool must be an asyncpg Pool, a psycopg AsyncConnectionPool or a "
            f"SQLAlchemy AsyncEngine, got {type(pool).__name__}")

    async def probe() -> None:
        async with asyncio.timeout(timeout):
            if kind == "asyncpg":
                async with pool.acquire(timeout=timeout) as conn:
                    await conn.fetchval("SELECT 1")
            elif kind == "psycopg":
                async with pool.connection(timeout=timeout) as conn:
                    await conn.execute("SELECT 1")
            else:
                from sqlalchemy import text  # noqa: PLC0415

                async with pool.connect() as conn:
                    await conn.execute(text("SELECT 1"))

    return Check(name, probe, timeout=timeout, critical=critical, component_type="datastore")
