"""The psycopg 3 shell of transaction retry, for AsyncConnectionPool and AsyncConnection.

I/O only, every decision in ``_core``. :mod:`._psycopg_sync` is generated from
:mod:`._psycopg` by ``scripts/unasync.py``: edit the async one, then run the script.
The transaction is begun by SQL, not through the connection's ``isolation_level`` /
``read_only`` attributes, so a pooled connection goes back with the settings it came with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .._deadline import Deadline
from .._errors import ConfigurationError
from ._core import TransactionRetry
from ._loop import run_loop
from ._watch import acquiring

T = TypeVar("T")

__all__ = ["is_target", "run"]


def is_target(target: object) -> bool:
    """Whether ``target`` is a pool or connection of this shell's kind.

    The kind: psycopg's ``AsyncConnectionPool`` and ``AsyncConnection``.
    """
    return isinstance(target, AsyncConnectionPool | psycopg.AsyncConnection)


async def run(core: TransactionRetry, target: Any, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``await fn(conn)`` in a transaction on ``target``, retried as ``core`` decides."""
    return await run_loop(core, _Shell(core, target), fn)


class _Shell:
    __slots__ = ("_core", "_pool", "_target", "reconnect")

    def __init__(self, core: TransactionRetry, target: Any) -> None:
        self._core, self._target = core, target
        self._pool = target if isinstance(target, AsyncConnectionPool) else None
        if self._pool is None and target.info.transaction_status != TransactionStatus.IDLE:
            raise ConfigurationError(
                f"transaction {core.name!r}: the connection is already in a transaction; "
                "retry must own the whole transaction (pass the pool, or an idle connection)")
        self.reconnect = self._pool is not None

    async def acquire(self, deadline: Deadline | None) -> Any:
        pool = self._pool
        if pool is None:
            return self._target
        try:
            with acquiring(pool):
                return await pool.getconn(None if deadline is None else deadline.remaining())
        except PoolTimeout as exc:
            if deadline is None:
                raise
            raise self._core.deadline_error(exc) from exc

    async def begin(self, conn: Any, deadline: Deadline | None, ms: int | None) -> int | None:
        ms = self._core.timeout_ms(deadline)
        sql = self._core.begin_sql(ms, explicit_begin=conn.autocommit)
        if sql is not None:
            await conn.execute(sql)
        return ms

    async def commit(self, conn: Any) -> None:
        await conn.commit()

    async def rollback(self, conn: Any) -> None:
        # A transaction whose connection is gone has nothing to roll back: the server
        # dropped it, and the pool discards a broken connection when it is put back.
        with contextlib.suppress(Exception):
            await conn.rollback()

    async def release(self, conn: Any) -> None:
        # Decided already: giving the connection back must not change the outcome.
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.putconn(conn)

    def lost(self, conn: Any, error: BaseException) -> bool:
        return bool(conn.broken or conn.closed)
