"""Transaction retry on psycopg 3 (asyncio): what only psycopg has (shared: test_drivers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from fournines import ConfigurationError
from fournines.data import transaction

Conn = psycopg.AsyncConnection[Any]


@pytest.fixture
async def admin(database: str) -> AsyncIterator[Conn]:
    conn = await psycopg.AsyncConnection.connect(database, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


async def scalar(conn: Conn, query: str) -> Any:
    row = await (await conn.execute(query)).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize("autocommit", [False, True])
async def test_isolation_and_read_only_are_set_on_a_single_connection(
    database: str, autocommit: bool
) -> None:
    async def modes(conn: Conn) -> tuple[str, str]:
        return (await scalar(conn, "SHOW transaction_isolation"),
                await scalar(conn, "SHOW transaction_read_only"))

    async with await psycopg.AsyncConnection.connect(database, autocommit=autocommit) as conn:
        found = await transaction(conn, modes, isolation="serializable", readonly=True)
        assert found == ("serializable", "on")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.isolation_level is None  # the connection's own settings are untouched


async def test_a_connection_already_in_a_transaction_is_refused(admin: Conn) -> None:
    async def work(conn: Conn) -> None:
        raise AssertionError("not run")

    await admin.execute("BEGIN")
    with pytest.raises(ConfigurationError, match="already in a transaction"):
        await transaction(admin, work)
    await admin.execute("ROLLBACK")


async def test_a_sync_pool_is_refused_by_the_async_transaction(database: str) -> None:
    async def work(conn: Conn) -> None:
        raise AssertionError("not run")

    with ConnectionPool(database, min_size=0, max_size=1, open=False) as sync_pool:
        with pytest.raises(ConfigurationError, match=r"transaction\.pool.*transaction_sync"):
            await transaction(sync_pool, work)
