"""The SQLAlchemy 2 shells of transaction retry (async and sync): I/O only.

Targets are what hands out a fresh connection or session per attempt: an
``Engine``/``AsyncEngine`` (``fn`` gets a ``Connection``/``AsyncConnection``) or a
``sessionmaker``/``async_sessionmaker`` (``fn`` gets a session). The isolation
level and read-only mode go through SQLAlchemy's execution options, which the
pool resets when the connection comes back; the deadline's timeouts are set by
``set_config(..., true)``, one statement that every PostgreSQL driver can prepare.
On MySQL and MariaDB (dialect ``mysql`` or ``mariadb``; pymysql, aiomysql, any
driver) the deadline sets the session's ``innodb_lock_wait_timeout`` and
``max_statement_time`` (MySQL: ``max_execution_time``) for the transaction and puts
them back after it (a connection that cannot be put back is invalidated, never
returned with them), and read-only is ``SET TRANSACTION READ ONLY``. A session is
flushed before COMMIT, so an error of the flush counts as one before COMMIT was
sent (and is retried when it is a conflict).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from .._deadline import current_deadline
from ._core import TransactionRetry
from ._watch import acquiring, pool_key

T = TypeVar("T")

__all__ = ["is_sqlalchemy_async", "is_sqlalchemy_sync", "run", "run_sync"]

_TIMEOUTS = text("SELECT set_config('statement_timeout', :ms, true), "
                 "set_config('lock_timeout', :ms, true)")


def is_sqlalchemy_async(target: object) -> bool:
    """Whether ``target`` is an ``AsyncEngine`` or an ``async_sessionmaker``."""
    return isinstance(target, AsyncEngine | async_sessionmaker)


def is_sqlalchemy_sync(target: object) -> bool:
    """Whether ``target`` is an ``Engine`` or a ``sessionmaker``."""
    return isinstance(target, Engine | sessionmaker)


_MYSQL = frozenset({"mysql", "mariadb"})


def _options(core: TransactionRetry, dialect: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if core.isolation is not None:
        options["isolation_level"] = core.isolation.upper().replace("_", " ")
    if core.readonly and dialect == "postgresql":
        options["postgresql_readonly"] = True
    return options


def _lost(error: BaseException, invalidated: bool) -> bool:
    # SQLAlchemy tells a disconnect by the driver's error and marks the connection.
    return invalidated or bool(getattr(error, "connection_invalidated", False))


def _engine(target: Any) -> Any:
    return target if isinstance(target, Engine | AsyncEngine) else target.kw.get("bind")


def _dialect(target: Any) -> str:
    engine = _engine(target)
    return str(engine.dialect.name) if engine is not None else ""


def _mysql_sql(core: TransactionRetry, target: Any, ms: int | None
               ) -> tuple[tuple[str, ...], str | None]:
    """MySQL's first statement of an attempt (modes, timeouts) and the undo of its timeouts.

    Read after connecting: only then does SQLAlchemy know whether the server is MariaDB.
    """
    statements: list[str] = []
    restore = None
    if core.readonly:
        statements.append("SET TRANSACTION READ ONLY")
    if ms is not None:
        apply, restore = core.mysql_timeouts_sql(
            ms, mariadb=bool(getattr(_engine(target).dialect, "is_mariadb", False)))
        statements.append(apply)
    return tuple(statements), restore


async def run(core: TransactionRetry, target: Any, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``await fn(conn_or_session)`` in a transaction, retried as ``core`` decides."""
    engine = isinstance(target, AsyncEngine)
    dialect = _dialect(target)
    options = _options(core, dialect)
    pool = pool_key(target)
    start = core.begin()
    attempt, delay = 1, 0.0
    while True:
        ms = core.timeout_ms(current_deadline())
        committing, restore = False, None
        handle = target.connect() if engine else target()
        if engine:
            # Taking a connection is not part of the transaction: its errors raise as they are.
            with acquiring(pool):
                await handle.start()
        try:
            try:
                if engine:
                    if options:
                        await handle.execution_options(**options)
                    await handle.begin()
                else:
                    with acquiring(pool):
                        await handle.connection(execution_options=options or None)
                ms = core.timeout_ms(current_deadline())
                if dialect in _MYSQL:
                    first, undo = _mysql_sql(core, target, ms)
                    for statement in first:
                        await handle.execute(text(statement))
                    restore = undo
                elif ms is not None and dialect == "postgresql":
                    await handle.execute(_TIMEOUTS, {"ms": str(ms)})
                result = await fn(handle)
                if not engine:
                    await handle.flush()
                committing = True
                await handle.commit()
                return result
            except BaseException as exc:
                if not committing:
                    with contextlib.suppress(Exception):
                        await handle.rollback()
                if not isinstance(exc, Exception):
                    raise
                invalidated = bool(getattr(handle, "invalidated", False)) if engine else False
                decision = core.after_failure(
                    exc, attempt=attempt, previous=delay, start=start, committing=committing,
                    lost=_lost(exc, invalidated), reconnect=True, timeout_ms=ms)
                if decision.error is exc:
                    raise
                if decision.error is not None:
                    raise decision.error from exc
                delay = decision.delay
        finally:
            if restore is not None:
                await _arestore(handle, restore)
            with contextlib.suppress(Exception):
                await handle.close()
        await core.clock.asleep(delay)
        attempt += 1


def run_sync(core: TransactionRetry, target: Any, fn: Callable[[Any], T]) -> T:
    """Run ``fn(conn_or_session)`` in a transaction, retried as ``core`` decides."""
    engine = isinstance(target, Engine)
    dialect = _dialect(target)
    options = _options(core, dialect)
    pool = pool_key(target)
    start = core.begin()
    attempt, delay = 1, 0.0
    while True:
        ms = core.timeout_ms(current_deadline())
        committing, restore = False, None
        if engine:
            with acquiring(pool):
                handle = target.connect()
        else:
            handle = target()
        try:
            try:
                if engine:
                    if options:
                        handle.execution_options(**options)
                    handle.begin()
                else:
                    with acquiring(pool):
                        handle.connection(execution_options=options or None)
                ms = core.timeout_ms(current_deadline())
                if dialect in _MYSQL:
                    first, undo = _mysql_sql(core, target, ms)
                    for statement in first:
                        handle.execute(text(statement))
                    restore = undo
                elif ms is not None and dialect == "postgresql":
                    handle.execute(_TIMEOUTS, {"ms": str(ms)})
                result = fn(handle)
                if not engine:
                    handle.flush()
                committing = True
                handle.commit()
                return result
            except BaseException as exc:
                if not committing:
                    with contextlib.suppress(Exception):
                        handle.rollback()
                if not isinstance(exc, Exception):
                    raise
                invalidated = bool(getattr(handle, "invalidated", False)) if engine else False
                decision = core.after_failure(
                    exc, attempt=attempt, previous=delay, start=start, committing=committing,
                    lost=_lost(exc, invalidated), reconnect=True, timeout_ms=ms)
                if decision.error is exc:
                    raise
                if decision.error is not None:
                    raise decision.error from exc
                delay = decision.delay
        finally:
            if restore is not None:
                _restore(handle, restore)
            with contextlib.suppress(Exception):
                handle.close()
        core.clock.sleep(delay)
        attempt += 1


# The session's timeouts go back before the connection goes back to the pool; when they
# cannot (the connection broke), the connection is invalidated: the pool drops it
# rather than hand the next transaction one with a deadline's 50 ms timeouts.

async def _arestore(handle: Any, restore: str) -> None:
    try:
        await handle.execute(text(restore))
    except Exception:  # the outcome is decided; only the connection is at stake
        with contextlib.suppress(Exception):
            await handle.invalidate()


def _restore(handle: Any, restore: str) -> None:
    try:
        handle.execute(text(restore))
    except Exception:
        with contextlib.suppress(Exception):
            handle.invalidate()
