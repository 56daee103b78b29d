"""The asyncpg shell of transaction retry: I/O only, every decision in ``_core``."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from asyncpg.pool import PoolConnectionProxy  # type: ignore[import-untyped]

from .._deadline import Deadline
from .._errors import ConfigurationError
from ._core import TransactionRetry
from ._loop import run_loop
from ._watch import acquiring

T = TypeVar("T")

__all__ = ["is_asyncpg", "run"]


def is_asyncpg(target: object) -> bool:
    """Whether ``target`` is an asyncpg pool or connection."""
    return isinstance(target, asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy)


async def run(core: TransactionRetry, target: Any, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(conn)`` in a transaction on ``target``, retried as ``core`` decides."""
    return await run_loop(core, _Shell(core, target), fn)


class _Shell:
    __slots__ = ("_core", "_pool", "_target", "_tx", "reconnect")

    def __init__(self, core: TransactionRetry, target: Any) -> None:
        self._core, self._target = core, target
        self._pool = target if isinstance(target, asyncpg.Pool) else None
        if self._pool is None and target.is_in_transaction():
            raise ConfigurationError(
                f"transaction {core.name!r}: the connection is already in a transaction; "
                "retry must own the whole transaction (pass the pool, or an idle connection)")
        self.reconnect = self._pool is not None
        self._tx: Any = None

    async def acquire(self, deadline: Deadline | None) -> Any:
        pool = self._pool
        if pool is None:
            return self._target
        try:
            with acquiring(pool):
                return await pool.acquire(timeout=None if deadline is None
                                          else deadline.remaining())
        except TimeoutError as exc:
            if deadline is None:
                raise
            raise self._core.deadline_error(exc) from exc

    async def begin(self, conn: Any, deadline: Deadline | None, ms: int | None) -> int | None:
        core = self._core
        self._tx = conn.transaction(isolation=core.isolation, readonly=core.readonly)
        await self._tx.start()
        if deadline is not None:
            # The time left now, after the wait for a connection.
            ms = core.timeout_ms(deadline)
            assert ms is not None
            await conn.execute(core.timeouts_sql(ms))
        return ms

    async def commit(self, conn: Any) -> None:
        await self._tx.commit()

    async def rollback(self, conn: Any) -> None:
        # A transaction that never began, or whose connection is gone, has nothing to roll
        # back here: the server dropped it, and the pool discards a broken connection.
        if self._tx is not None:
            with contextlib.suppress(Exception):
                await self._tx.rollback()

    async def release(self, conn: Any) -> None:
        self._tx = None
        # The outcome is decided before the connection goes back: a reset that fails (the
        # server went away right after COMMIT) must not turn a committed transaction into
        # an error. asyncpg terminates such a connection and frees its slot by itself.
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    def lost(self, conn: Any, error: BaseException) -> bool:
        try:
            return bool(conn.is_closed())
        except asyncpg.InterfaceError:
            # A pooled connection that died has already detached from its proxy.
            return True
