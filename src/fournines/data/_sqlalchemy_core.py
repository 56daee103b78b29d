"""What the SQLAlchemy shells of transaction retry share: targets, dialects, statements.

The shells (:mod:`._sqlalchemy`, and :mod:`._sqlalchemy_sync` generated from it) do the
I/O; what differs between an ``AsyncEngine`` and an ``Engine`` beyond ``await`` is here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from ._core import TransactionRetry

__all__ = ["MYSQL", "TIMEOUTS", "dialect", "is_async_target", "is_engine", "is_sync_target",
           "lost", "mysql_sql", "options"]

TIMEOUTS = text("SELECT set_config('statement_timeout', :ms, true), "
                "set_config('lock_timeout', :ms, true)")
"""PostgreSQL's deadline timeouts: one statement that every PostgreSQL driver can prepare."""

MYSQL = frozenset({"mysql", "mariadb"})
"""The dialect names of MySQL and MariaDB."""


def is_async_target(target: object) -> bool:
    """Whether ``target`` is an ``AsyncEngine`` or an ``async_sessionmaker``."""
    return isinstance(target, AsyncEngine | async_sessionmaker)


def is_sync_target(target: object) -> bool:
    """Whether ``target`` is an ``Engine`` or a ``sessionmaker``."""
    return isinstance(target, Engine | sessionmaker)


def is_engine(target: object) -> bool:
    """Whether ``target`` is an engine (``fn`` gets a connection), not a session maker."""
    return isinstance(target, Engine | AsyncEngine)


def _engine(target: Any) -> Any:
    return target if is_engine(target) else target.kw.get("bind")


def dialect(target: Any) -> str:
    """The dialect name of the engine behind ``target`` (``""``: a maker with no bind)."""
    engine = _engine(target)
    return str(engine.dialect.name) if engine is not None else ""


def options(core: TransactionRetry, dialect: str) -> dict[str, Any]:
    """The execution options of the transaction's modes (the pool resets them on return)."""
    found: dict[str, Any] = {}
    if core.isolation is not None:
        found["isolation_level"] = core.isolation.upper().replace("_", " ")
    if core.readonly and dialect == "postgresql":
        found["postgresql_readonly"] = True
    return found


def lost(error: BaseException, invalidated: bool) -> bool:
    """Whether the connection is gone: SQLAlchemy tells a disconnect and marks it."""
    return invalidated or bool(getattr(error, "connection_invalidated", False))


def mysql_sql(core: TransactionRetry, target: Any, ms: int | None
              ) -> tuple[tuple[str, ...], str | None]:
    """MySQL's first statements of an attempt (modes, timeouts) and the undo of its timeouts.

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
