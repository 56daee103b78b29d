"""A readiness check backed by the pool the service really uses.

:func:`pool_check` builds a :class:`fournines.asgi.Check` for ``protect(checks=[...])``
(and the WSGI ``protect``) that borrows a connection from the pool and runs
``SELECT 1``: readiness then fails when the pool cannot hand out a connection
within the check's timeout (the database is down, or every connection is busy),
which a check on a fresh connection of its own would not notice. Blocking pools
(psycopg's ``ConnectionPool``, a SQLAlchemy ``Engine``) are probed on a thread.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError, check_number
from ._watch import acquiring, pool_key

if TYPE_CHECKING:
    from ..asgi import Check

__all__ = ["pool_check"]

_POOLS = ("an asyncpg Pool, a psycopg AsyncConnectionPool or ConnectionPool, or a SQLAlchemy "
          "AsyncEngine or Engine")


def _kind(pool: object) -> str | None:
    module = type(pool).__module__.partition(".")[0]
    if module == "asyncpg":
        from . import _asyncpg  # noqa: PLC0415 - drivers load on use
        return "asyncpg" if _asyncpg.is_asyncpg(pool) and hasattr(pool, "acquire") else None
    if module == "psycopg_pool":
        from psycopg_pool import AsyncConnectionPool, ConnectionPool  # noqa: PLC0415
        if isinstance(pool, AsyncConnectionPool):
            return "psycopg"
        return "psycopg_sync" if isinstance(pool, ConnectionPool) else None
    if module == "sqlalchemy":
        from sqlalchemy import Engine  # noqa: PLC0415
        from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: PLC0415
        if isinstance(pool, AsyncEngine):
            return "sqlalchemy"
        return "sqlalchemy_sync" if isinstance(pool, Engine) else None
    return None


class _BlockingProbe:
    """``SELECT 1`` on a thread, one at a time.

    A thread cannot be cancelled: a probe that outlives the check's timeout (a
    SQLAlchemy pool waits its own ``pool_timeout``, 30 s by default) goes on waiting.
    While it does, the next probes fail at once instead of starting threads of their
    own, so a pool that hands out nothing is not also flooded with waiters.
    """

    def __init__(self, pool: Any, kind: str, timeout: float) -> None:
        self._pool, self._kind, self._timeout = pool, kind, timeout
        self._key = pool_key(pool)
        self._busy = threading.Lock()

    def _select(self) -> None:
        try:
            if self._kind == "psycopg_sync":
                with acquiring(self._key):
                    conn = self._pool.getconn(self._timeout)
                try:
                    conn.execute("SELECT 1")
                finally:
                    self._pool.putconn(conn)
            else:
                with acquiring(self._key):
                    connection = self._pool.connect()
                with connection:
                    connection.exec_driver_sql("SELECT 1")
        finally:
            self._busy.release()

    async def __call__(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise TimeoutError("the previous probe is still waiting for a connection")
        try:
            work = asyncio.to_thread(self._select)
        except BaseException:
            self._busy.release()
            raise
        async with asyncio.timeout(self._timeout):
            await work


def pool_check(
    pool: Any,
    *,
    name: str = "postgres",
    timeout: float = 0.2,
    critical: bool = True,
) -> Check:
    """A readiness check that borrows a connection from ``pool`` and runs ``SELECT 1``.

    :param pool: an asyncpg ``Pool``, a psycopg ``AsyncConnectionPool`` or
        ``ConnectionPool``, or a SQLAlchemy ``AsyncEngine`` or ``Engine``. A blocking
        pool is probed on a thread, one probe at a time (a probe still waiting fails
        the next ones at once).
    :param name: the component name in the health response.
    :param timeout: seconds to get a connection and an answer; the probe gives up by
        itself after it, so it fails in time outside the health middleware too.
    :param critical: whether a failure fails readiness (HTTP 503).
    """
    from ..asgi import Check  # noqa: PLC0415 - the ASGI layer loads only for a check

    check_number("pool_check", "timeout", timeout, minimum=0, exclusive_minimum=True)
    kind = _kind(pool)
    if kind is None:
        raise ConfigurationError(f"pool_check.pool must be {_POOLS}, got {type(pool).__name__}")
    if kind.endswith("_sync"):
        return Check(name, _BlockingProbe(pool, kind, timeout), timeout=timeout,
                     critical=critical, component_type="datastore")
    key = pool_key(pool)

    async def probe() -> None:
        async with asyncio.timeout(timeout):
            if kind == "asyncpg":
                with acquiring(key):
                    conn = await pool.acquire(timeout=timeout)
                try:
                    await conn.fetchval("SELECT 1")
                finally:
                    await pool.release(conn)
            elif kind == "psycopg":
                with acquiring(key):
                    conn = await pool.getconn(timeout)
                try:
                    await conn.execute("SELECT 1")
                finally:
                    await pool.putconn(conn)
            else:
                connection = pool.connect()
                with acquiring(key):
                    await connection.start()
                try:
                    await connection.exec_driver_sql("SELECT 1")
                finally:
                    await connection.close()

    return Check(name, probe, timeout=timeout, critical=critical, component_type="datastore")
