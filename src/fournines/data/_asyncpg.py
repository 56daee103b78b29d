"""The asyncpg shell of transaction retry: I/O only, every decision in ``_core``."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from asyncpg.pool import PoolConnectionProxy  # type: ignore[import-untyped]

from .._deadline import current_deadline
from .._errors import ConfigurationError
from ._core import TransactionRetry
from ._watch import acquiring

T = TypeVar("T")

__all__ = ["is_asyncpg", "run"]


def is_asyncpg(target: object) -> bool:
    """Whether ``target`` is an asyncpg pool or connection."""
    return isinstance(target, asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy)


async def run(core: TransactionRetry, target: Any, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(conn)`` in a transaction on ``target``, retried as ``core`` decides."""
    pool = target if isinstance(target, asyncpg.Pool) else None
    if pool is None and target.is_in_transaction():
        raise ConfigurationError(
            f"transaction {core.name!r}: the connection is already in a transaction; "
            "retry must own the whole transaction (pass the pool, or an idle connection)")
    start = core.begin()
    attempt, delay = 1, 0.0
    while True:
        deadline = current_deadline()
        ms = core.timeout_ms(deadline)
        conn = target
        if pool is not None:
            try:
                with acquiring(pool):
                    conn = await pool.acquire(timeout=None if deadline is None
                                              else deadline.remaining())
            except TimeoutError as exc:
                if deadline is None:
                    raise
                raise core.deadline_error(exc) from exc
        committing = False
        try:
            tx = conn.transaction(isolation=core.isolation, readonly=core.readonly)
            try:
                await tx.start()
                if deadline is not None:
                    # The time left now, after the wait for a connection.
                    ms = core.timeout_ms(deadline)
                    assert ms is not None
                    await conn.execute(core.timeouts_sql(ms))
                result = await fn(conn)
                committing = True
                await tx.commit()
                return result
            except BaseException as exc:
                if not committing:
                    await _rollback(tx)
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
                await _release(pool, conn)
        await core.clock.asleep(delay)
        attempt += 1


async def _release(pool: Any, conn: Any) -> None:
    # The outcome is decided before the connection goes back: a reset that fails (the
    # server went away right after COMMIT) must not turn a committed transaction into an
    # error. asyncpg terminates such a connection and frees its slot by itself.
    with contextlib.suppress(Exception):
        await pool.release(conn)


def _lost(conn: Any) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        # A pooled connection that died has already detached from its proxy.
        return True


async def _rollback(tx: Any) -> None:
    # A transaction that never began, or whose connection is gone, has nothing to roll
    # back here: the server dropped it, and the pool discards a broken connection.
    with contextlib.suppress(Exception):
        await tx.rollback()
