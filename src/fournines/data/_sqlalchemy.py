"""The SQLAlchemy 2 shell of transaction retry, for AsyncEngine and async_sessionmaker.

I/O only, every decision in ``_core``; :mod:`._sqlalchemy_sync` is generated from
:mod:`._sqlalchemy` by ``scripts/unasync.py`` (edit the async one, then run the script),
and what the two share beyond ``await`` is in :mod:`._sqlalchemy_core`.

Targets are what hands out a fresh connection or session per attempt: engines
(``AsyncEngine``; ``fn`` gets its ``AsyncConnection``) and session makers
(``async_sessionmaker``; ``fn`` gets the session). The isolation level and read-only mode go through
SQLAlchemy's execution options, which the pool resets when the connection comes back;
the deadline's timeouts are set by ``set_config(..., true)`` on PostgreSQL. On MySQL
and MariaDB (dialect ``mysql`` or ``mariadb``; pymysql, aiomysql, any driver) the
deadline sets the session's ``innodb_lock_wait_timeout`` and ``max_statement_time``
(MySQL: ``max_execution_time``) for the transaction and puts them back after it (a
connection that cannot be put back is invalidated, never returned with them), and
read-only is ``SET TRANSACTION READ ONLY``. A session is flushed before COMMIT, so an
error of the flush counts as one before COMMIT was sent (and is retried when it is a
conflict).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import text

from .._deadline import Deadline
from . import _sqlalchemy_core as sa
from ._core import TransactionRetry
from ._loop import run_loop
from ._watch import acquiring, pool_key

T = TypeVar("T")

__all__ = ["is_target", "run"]


def is_target(target: object) -> bool:
    """Whether ``target`` is an engine or session maker of this shell's kind.

    The kind: ``AsyncEngine`` and ``async_sessionmaker``.
    """
    return sa.is_async_target(target)


async def run(core: TransactionRetry, target: Any, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``await fn(conn_or_session)`` in a transaction, retried as ``core`` decides."""
    return await run_loop(core, _Shell(core, target), fn)


class _Shell:
    __slots__ = ("_core", "_dialect", "_engine", "_options", "_pool", "_restore", "_target",
                 "reconnect")

    def __init__(self, core: TransactionRetry, target: Any) -> None:
        self._core, self._target = core, target
        self._engine = sa.is_engine(target)
        self._dialect = sa.dialect(target)
        self._options = sa.options(core, self._dialect)
        self._pool = pool_key(target)
        self._restore: str | None = None
        self.reconnect = True  # each attempt takes a connection or session of its own

    async def acquire(self, deadline: Deadline | None) -> Any:
        self._restore = None
        if not self._engine:
            return self._target()  # a session takes its connection when it begins
        # Taking a connection is not part of the transaction: its errors raise as they are.
        with acquiring(self._pool):
            return await self._target.connect()

    async def begin(self, handle: Any, deadline: Deadline | None, ms: int | None
                    ) -> int | None:
        if self._engine:
            if self._options:
                await handle.execution_options(**self._options)
            await handle.begin()
        else:
            with acquiring(self._pool):
                await handle.connection(execution_options=self._options or None)
        ms = self._core.timeout_ms(deadline)
        if self._dialect in sa.MYSQL:
            first, undo = sa.mysql_sql(self._core, self._target, ms)
            for statement in first:
                await handle.execute(text(statement))
            self._restore = undo
        elif ms is not None and self._dialect == "postgresql":
            await handle.execute(sa.TIMEOUTS, {"ms": str(ms)})
        return ms

    async def commit(self, handle: Any) -> None:
        if not self._engine:
            await handle.flush()
        await handle.commit()

    async def rollback(self, handle: Any) -> None:
        with contextlib.suppress(Exception):
            await handle.rollback()

    async def release(self, handle: Any) -> None:
        if self._restore is not None:
            await self._put_back(handle, self._restore)
        with contextlib.suppress(Exception):
            await handle.close()

    async def _put_back(self, handle: Any, restore: str) -> None:
        # The session's timeouts go back before the connection goes back to the pool; when
        # they cannot (the connection broke), the connection is invalidated: the pool drops
        # it rather than hand the next transaction one with a deadline's 50 ms timeouts.
        try:
            await handle.execute(text(restore))
        except Exception:  # the outcome is decided; only the connection is at stake
            with contextlib.suppress(Exception):
                await handle.invalidate()

    def lost(self, handle: Any, error: BaseException) -> bool:
        invalidated = bool(getattr(handle, "invalidated", False)) if self._engine else False
        return sa.lost(error, invalidated)
