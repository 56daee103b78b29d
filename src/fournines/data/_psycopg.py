"""The psycopg 3 shells of transaction retry (async and sync): I/O only.

The two loops are the same lines, with and without ``await``; every decision is
in ``_core``. The transaction is begun by SQL, not through the connection's
``isolation_level``/``read_only`` attributes, so a pooled connection comes back
to the pool with the settings it left with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from .._deadline import current_deadline
from .._errors import ConfigurationError
from ._core import TransactionRetry
from ._watch import acquiring

T = TypeVar("T")

__all__ = ["is_psycopg_async", "is_psycopg_sync", "run", "run_sync"]


def is_psycopg_async(target: object) -> bool:
    """Whether ``target`` is a psycopg async pool or connection."""
    return isinstance(target, AsyncConnectionPool | psycopg.AsyncConnection)


def is_psycopg_sync(target: object) -> bool:
    """Whether ``target`` is a psycopg (sync) pool or connection."""
    return isinstance(target, ConnectionPool | psycopg.Connection)


def _check_idle(core: TransactionRetry, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
                ) -> None:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ConfigurationError(
            f"transaction {core.name!r}: the connection is already in a transaction; "
            "retry must own the whole transaction (pass the pool, or an idle connection)")


def _lost(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return conn.broken or conn.closed


async def run(core: TransactionRetry, target: Any, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``await fn(conn)`` in a transaction on ``target``, retried as ``core`` decides."""
    pool = target if isinstance(target, AsyncConnectionPool) else None
    if pool is None:
        _check_idle(core, target)
    start = core.begin()
    attempt, delay = 1, 0.0
    while True:
        deadline = current_deadline()
        ms = core.timeout_ms(deadline)
        conn = target
        if pool is not None:
            try:
                with acquiring(pool):
                    conn = await pool.getconn(None if deadline is None
                                              else deadline.remaining())
            except PoolTimeout as exc:
                if deadline is None:
                    raise
                raise core.deadline_error(exc) from exc
        committing = False
        try:
            try:
                ms = core.timeout_ms(deadline)
                sql = core.begin_sql(ms, explicit_begin=conn.autocommit)
                if sql is not None:
                    await conn.execute(sql)
                result = await fn(conn)
                committing = True
                await conn.commit()
                return result
            except BaseException as exc:
                if not committing:
                    await _arollback(conn)
                if not isinstance(exc, Exception):
                    raise
                decision = core.after_failure(
                    exc, attempt=attempt, previous=delay, start=start, committing=committing,
                    lost=_lost(conn), reconnect=pool is not None, timeout_ms=ms)
                if decision.error is exc:
                    raise
                if decision.error is not None:
                    raise decision.error from exc
                delay = decision.delay
        finally:
            if pool is not None:
                # Decided already: giving the connection back must not change the outcome.
                with contextlib.suppress(Exception):
                    await pool.putconn(conn)
        await core.clock.asleep(delay)
        attempt += 1


def run_sync(core: TransactionRetry, target: Any, fn: Callable[[Any], T]) -> T:
    """Run ``fn(conn)`` in a transaction on ``target``, retried as ``core`` decides."""
    pool = target if isinstance(target, ConnectionPool) else None
    if pool is None:
        _check_idle(core, target)
    start = core.begin()
    attempt, delay = 1, 0.0
    while True:
        deadline = current_deadline()
        ms = core.timeout_ms(deadline)
        conn = target
        if pool is not None:
            try:
                with acquiring(pool):
                    conn = pool.getconn(None if deadline is None else deadline.remaining())
            except PoolTimeout as exc:
                if deadline is None:
                    raise
                raise core.deadline_error(exc) from exc
        committing = False
        try:
            try:
                ms = core.timeout_ms(deadline)
                sql = core.begin_sql(ms, explicit_begin=conn.autocommit)
                if sql is not None:
                    conn.execute(sql)
                result = fn(conn)
                committing = True
                conn.commit()
                return result
            except BaseException as exc:
                if not committing:
                    _rollback(conn)
                if not isinstance(exc, Exception):
                    raise
                decision = core.after_failure(
                    exc, attempt=attempt, previous=delay, start=start, committing=committing,
                    lost=_lost(conn), reconnect=pool is not None, timeout_ms=ms)
                if decision.error is exc:
                    raise
                if decision.error is not None:
                    raise decision.error from exc
                delay = decision.delay
        finally:
            if pool is not None:
                with contextlib.suppress(Exception):
                    pool.putconn(conn)
        core.clock.sleep(delay)
        attempt += 1


# A transaction whose connection is gone has nothing to roll back: the server dropped
# it, and the pool discards a broken connection when it is put back.

async def _arollback(conn: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(Exception):
        await conn.rollback()


def _rollback(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(Exception):
        conn.rollback()
