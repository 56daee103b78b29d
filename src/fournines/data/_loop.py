"""The one loop of transaction retry, for every driver: take, begin, work, commit, decide.

:mod:`._loop_sync` is generated from :mod:`._loop` by ``scripts/unasync.py``: edit
the async one, then run the script. A driver's shell (:mod:`._asyncpg`, :mod:`._psycopg`,
:mod:`._sqlalchemy` and their sync twins) does the I/O of each step; what a failure
means is decided by :class:`~fournines.data.TransactionRetry`, never here or there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from .._deadline import Deadline, current_deadline
from ._core import TransactionRetry

__all__ = ["Shell", "run_loop"]

T = TypeVar("T")


class Shell(Protocol):
    """The I/O of one driver, made for one call of ``transaction()``."""

    #: the next attempt can take another connection (a pool, not one connection)
    reconnect: bool

    async def acquire(self, deadline: Deadline | None) -> Any:
        """A connection (or session) for one attempt; its errors are raised as they are."""

    async def begin(self, conn: Any, deadline: Deadline | None, ms: int | None) -> int | None:
        """Begin the transaction with its modes and the deadline's timeouts; the ms set."""

    async def commit(self, conn: Any) -> None:
        """Send COMMIT (a session is flushed first)."""

    async def rollback(self, conn: Any) -> None:
        """Roll back after a failure before COMMIT; never raises."""

    async def release(self, conn: Any) -> None:
        """Give the connection back after the attempt, decided already; never raises."""

    def lost(self, conn: Any, error: BaseException) -> bool:
        """Whether the driver says the connection is gone."""


async def run_loop(core: TransactionRetry, shell: Shell, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``await fn(conn)`` in a transaction through ``shell``, retried as ``core`` decides."""
    start = core.begin()
    attempt, delay = 1, 0.0
    while True:
        deadline = current_deadline()
        ms = core.timeout_ms(deadline)
        conn = await shell.acquire(deadline)
        committing = False
        try:
            try:
                ms = await shell.begin(conn, deadline, ms)
                result = await fn(conn)
                committing = True
                await shell.commit(conn)
                return result
            except BaseException as exc:
                if not committing:
                    await shell.rollback(conn)
                if not isinstance(exc, Exception):
                    raise
                decision = core.after_failure(
                    exc, attempt=attempt, previous=delay, start=start, committing=committing,
                    lost=shell.lost(conn, exc), reconnect=shell.reconnect, timeout_ms=ms)
                if decision.error is exc:
                    raise
                if decision.error is not None:
                    raise decision.error from exc
                delay = decision.delay
        finally:
            await shell.release(conn)
        await core.clock.asleep(delay)
        attempt += 1
