"""Transaction retry on asyncpg: what only asyncpg has (the shared scenarios: test_drivers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from fournines import ConfigurationError
from fournines.data import transaction

from ._shared import SCHEMA


@pytest.fixture
async def admin(database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(SCHEMA)
        yield conn
    finally:
        await conn.close()


async def test_a_single_connection_runs_the_transaction(admin: asyncpg.Connection) -> None:
    async def insert(conn: Any) -> None:
        await conn.execute("INSERT INTO ledger VALUES ('one', 1)")

    await transaction(admin, insert)

    assert await admin.fetchval("SELECT count(*) FROM ledger") == 1
    assert not admin.is_in_transaction()


async def test_a_connection_already_in_a_transaction_is_refused(
    admin: asyncpg.Connection
) -> None:
    async def work(conn: Any) -> None:
        raise AssertionError("not run")

    async with admin.transaction():
        with pytest.raises(ConfigurationError, match="already in a transaction"):
            await transaction(admin, work)


async def test_an_unsupported_pool_is_refused() -> None:
    async def work(conn: Any) -> None:
        raise AssertionError("not run")

    with pytest.raises(ConfigurationError, match=r"transaction\.pool.*asyncpg"):
        await transaction("postgresql://localhost", work)


async def test_a_connection_that_fails_to_go_back_after_commit_leaves_the_commit_done(
    admin: asyncpg.Connection, database: str
) -> None:
    async def failing_reset(conn: Any) -> None:
        raise ConnectionResetError("the server went away after COMMIT")

    async def insert(conn: Any) -> str:
        await conn.execute("INSERT INTO ledger VALUES ('after', 1)")
        return "committed"

    # The pool runs reset= as each connection comes back: here it fails after COMMIT.
    async with asyncpg.create_pool(database, min_size=1, max_size=1,
                                   reset=failing_reset) as pool:
        assert await transaction(pool, insert) == "committed"

    assert await admin.fetchval("SELECT count(*) FROM ledger") == 1
