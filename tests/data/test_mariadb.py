"""Transaction retry on MariaDB through SQLAlchemy 2: aiomysql (AsyncEngine), pymysql (Engine).

The same shape as on PostgreSQL: InnoDB's deadlock (1213) and lock wait timeout (1205)
retry the whole transaction; a deadline becomes the session's ``max_statement_time``
and ``innodb_lock_wait_timeout`` for the transaction, put back after it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from fournines import DeadlineExceededError, RetryScheduled, deadline_after
from fournines.data import mysql_errno, transaction, transaction_sync
from fournines.testing import RecordingListener

from ._mariadb import admin, url
from ._shared import HOLD

SCHEMA = (
    "DROP TABLE IF EXISTS ledger, accounts",
    "CREATE TABLE ledger (id varchar(40) PRIMARY KEY, seen int) ENGINE=InnoDB",
    "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL) ENGINE=InnoDB",
    "INSERT INTO accounts VALUES (1, 0), (2, 0)",
)


def database_name(database: str) -> str:
    return database.rpartition("/")[2]


@pytest.fixture
def schema(mariadb_database: str) -> str:
    with admin(database_name(mariadb_database)) as conn, conn.cursor() as cursor:
        for statement in SCHEMA:
            cursor.execute(statement)
    return mariadb_database


@pytest.fixture
async def engine(schema: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(url(schema, "aiomysql"), pool_size=4)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sync_engine(schema: str) -> Iterator[Engine]:
    # One connection: what a transaction leaves on its session, the next one finds.
    engine = create_engine(url(schema, "pymysql"), pool_size=1, max_overflow=0)
    try:
        yield engine
    finally:
        engine.dispose()


def scalar(engine: Engine, query: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(query)).scalar()


def errnos(recorder: RecordingListener) -> set[int | None]:
    return {mysql_errno(r.error) for r in recorder.of(RetryScheduled) if r.error}


async def test_a_deadlock_is_retried_on_an_async_engine(
    engine: AsyncEngine, recorder: RecordingListener
) -> None:
    barrier, calls = asyncio.Barrier(2), Counter[int]()

    async def bump(conn: AsyncConnection, first: int, second: int) -> None:
        query = text("UPDATE accounts SET balance = balance + 1 WHERE id = :id")
        await conn.execute(query, {"id": first})
        calls[first] += 1
        if calls[first] == 1:
            async with asyncio.timeout(10):
                await barrier.wait()
        await conn.execute(query, {"id": second})

    await asyncio.gather(*(
        transaction(engine, functools.partial(bump, first=a, second=b), listeners=[recorder])
        for a, b in ((1, 2), (2, 1))))

    async with engine.connect() as conn:
        balances = (await conn.execute(text("SELECT balance FROM accounts ORDER BY id"))).all()
    assert [row[0] for row in balances] == [2, 2]
    assert errnos(recorder) == {1213}
    assert sorted(calls.values()) == [1, 2]


def test_a_deadlock_is_retried_in_a_sessionmaker(
    schema: str, recorder: RecordingListener
) -> None:
    engine = create_engine(url(schema, "pymysql"), pool_size=2)
    maker = sessionmaker(engine)
    barrier, calls = threading.Barrier(2, timeout=10), Counter[int]()

    def bump(session: Session, first: int, second: int) -> None:
        query = text("UPDATE accounts SET balance = balance + 1 WHERE id = :id")
        session.execute(query, {"id": first})
        calls[first] += 1
        if calls[first] == 1:
            barrier.wait()
        session.execute(query, {"id": second})

    try:
        with ThreadPoolExecutor(2) as threads:
            done = [threads.submit(transaction_sync, maker,
                                   functools.partial(bump, first=a, second=b),
                                   listeners=[recorder])
                    for a, b in ((1, 2), (2, 1))]
            for future in done:
                future.result()
        assert scalar(engine, "SELECT sum(balance) FROM accounts") == 4
    finally:
        engine.dispose()
    assert errnos(recorder) == {1213}


def test_a_lock_wait_timeout_is_retried_as_a_whole_transaction(
    schema: str, recorder: RecordingListener
) -> None:
    # The server's lock wait, 1 s, ends the first attempt; the holder lets go soon after.
    engine = create_engine(url(schema, "pymysql"), pool_size=1,
                           connect_args={"init_command": "SET innodb_lock_wait_timeout = 1"})
    locked, calls = threading.Event(), 0

    def hold() -> None:
        with admin(database_name(schema)) as conn, conn.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 1")
            locked.set()
            time.sleep(1.5)
            cursor.execute("COMMIT")

    def bump(conn: Any) -> None:
        nonlocal calls
        calls += 1
        conn.execute(text("INSERT INTO ledger VALUES (:k, 0)"), {"k": f"try-{calls}"})
        conn.execute(text("UPDATE accounts SET balance = balance + 1 WHERE id = 1"))

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        transaction_sync(engine, bump, listeners=[recorder], attempts=5)
        holder.join(10)
        assert scalar(engine, "SELECT balance FROM accounts WHERE id = 1") == 11
        # The first attempt's INSERT went with it: the whole transaction was run again.
        assert scalar(engine, "SELECT group_concat(id) FROM ledger") == f"try-{calls}"
    finally:
        holder.join(10)
        engine.dispose()
    assert errnos(recorder) == {1205}
    assert calls >= 2


async def test_a_lock_under_a_deadline_ends_with_deadline_exceeded(
    engine: AsyncEngine, schema: str
) -> None:
    async def bump(conn: AsyncConnection) -> None:
        await conn.execute(text("UPDATE accounts SET balance = balance + 1 WHERE id = 1"))

    with admin(database_name(schema)) as holder, holder.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 1")
        began = time.monotonic()
        with pytest.raises(DeadlineExceededError) as caught:
            async with deadline_after(0.3):
                await transaction(engine, bump)
        # Ended by max_statement_time, long before the server's 50 s lock wait.
        assert time.monotonic() - began < HOLD
        assert mysql_errno(caught.value.__cause__ or caught.value) == 1969
        cursor.execute("COMMIT")  # the lock holder is unaffected
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT balance FROM accounts WHERE id = 1"))
                ).scalar() == 10


def test_the_session_timeouts_of_a_deadline_are_put_back_after_the_transaction(
    sync_engine: Engine,
) -> None:
    before = scalar(sync_engine, "SELECT concat(@@SESSION.innodb_lock_wait_timeout, ' ', "
                                 "@@SESSION.max_statement_time)")

    def timeouts(conn: Any) -> Any:
        return conn.execute(text("SELECT @@SESSION.innodb_lock_wait_timeout, "
                                 "@@SESSION.max_statement_time")).one()

    with deadline_after(5.0):
        lock_wait, statement_time = transaction_sync(sync_engine, timeouts)

    assert lock_wait == 5
    assert 4.0 < float(statement_time) <= 5.0
    assert scalar(sync_engine, "SELECT concat(@@SESSION.innodb_lock_wait_timeout, ' ', "
                               "@@SESSION.max_statement_time)") == before


def test_read_only_refuses_a_write_and_is_not_retried(sync_engine: Engine) -> None:
    calls = 0

    def write(conn: Any) -> None:
        nonlocal calls
        calls += 1
        conn.execute(text("INSERT INTO ledger VALUES ('ro', 1)"))

    with pytest.raises(DBAPIError) as caught:
        transaction_sync(sync_engine, write, readonly=True)

    assert mysql_errno(caught.value) == 1792  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    assert calls == 1
    assert scalar(sync_engine, "SELECT count(*) FROM ledger") == 0


def test_the_isolation_level_holds_for_the_transaction_only(sync_engine: Engine) -> None:
    def level(conn: Any) -> Any:
        return conn.execute(text("SELECT @@tx_isolation")).scalar()

    assert transaction_sync(sync_engine, level, isolation="serializable") == "SERIALIZABLE"
    assert scalar(sync_engine, "SELECT @@tx_isolation") == "REPEATABLE-READ"


def test_a_connection_killed_before_commit_is_retried_and_applied_once(
    schema: str, recorder: RecordingListener
) -> None:
    engine = create_engine(url(schema, "pymysql"), pool_size=2)
    calls = 0

    def pay(conn: Any) -> None:
        nonlocal calls
        calls += 1
        conn.execute(text("INSERT INTO ledger VALUES ('payment', :n)"), {"n": calls})
        if calls == 1:
            thread = conn.execute(text("SELECT CONNECTION_ID()")).scalar()
            with admin() as killer, killer.cursor() as cursor:
                cursor.execute(f"KILL CONNECTION {int(thread)}")
        conn.execute(text("UPDATE accounts SET balance = balance + 1 WHERE id = 1"))

    try:
        transaction_sync(engine, pay, listeners=[recorder])
        assert scalar(engine, "SELECT seen FROM ledger WHERE id = 'payment'") == 2
        assert scalar(engine, "SELECT balance FROM accounts WHERE id = 1") == 1
    finally:
        engine.dispose()
    assert calls == 2
    assert len(recorder.of(RetryScheduled)) == 1
