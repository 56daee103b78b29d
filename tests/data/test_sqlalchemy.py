"""Transaction retry on SQLAlchemy 2: AsyncEngine (asyncpg), Engine and sessionmaker (psycopg)."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from fournines import ConfigurationError, DeadlineExceededError, RetryScheduled, deadline_after
from fournines.data import CommitOutcomeUnknownError, sqlstate, transaction, transaction_sync
from fournines.testing import RecordingListener

from ._shared import CONFLICT, HOLD, SCHEMA, SLEEPING_IN_COMMIT


def url(database: str, driver: str) -> str:
    return database.replace("postgresql://", f"postgresql+{driver}://", 1)


@pytest.fixture
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    # asyncpg prepares what SQLAlchemy sends, and a prepared statement holds one command.
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(SCHEMA)
    engine = create_async_engine(url(database, "asyncpg"), pool_size=4)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sync_engine(database: str) -> Iterator[Engine]:
    engine = create_engine(url(database, "psycopg"), pool_size=4)
    with engine.connect() as conn:
        conn.exec_driver_sql(SCHEMA)
        conn.commit()
    try:
        yield engine
    finally:
        engine.dispose()


def scalar(engine: Engine, query: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(query)).scalar()


async def ascalar(engine: AsyncEngine, query: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(query))).scalar()


async def test_a_serialization_failure_is_retried_on_an_async_engine(
    engine: AsyncEngine, recorder: RecordingListener
) -> None:
    barrier, calls = asyncio.Barrier(2), Counter[str]()

    async def append(conn: AsyncConnection, key: str) -> None:
        seen = (await conn.execute(text("SELECT count(*) FROM ledger"))).scalar()
        calls[key] += 1
        if calls[key] == 1:
            async with asyncio.timeout(10):
                await barrier.wait()
        await conn.execute(text("INSERT INTO ledger VALUES (:k, :s)"), {"k": key, "s": seen})

    await asyncio.gather(*(
        transaction(engine, functools.partial(append, key=key), isolation="serializable",
                    listeners=[recorder])
        for key in ("a", "b")))

    assert await ascalar(engine, "SELECT string_agg(seen::text, ',' ORDER BY seen) "
                                 "FROM ledger") == "0,1"
    assert {sqlstate(r.error) for r in recorder.of(RetryScheduled) if r.error} == {"40001"}


def test_a_deadlock_is_retried_on_an_engine(
    sync_engine: Engine, recorder: RecordingListener
) -> None:
    barrier, calls = threading.Barrier(2, timeout=10), Counter[str]()

    def bump(conn: Any, first: int, second: int) -> None:
        query = text("UPDATE accounts SET balance = balance + 1 WHERE id = :id")
        conn.execute(query, {"id": first})
        calls[str(first)] += 1
        if calls[str(first)] == 1:
            barrier.wait()
        conn.execute(query, {"id": second})

    with ThreadPoolExecutor(2) as threads:
        done = [threads.submit(transaction_sync, sync_engine,
                               functools.partial(bump, first=a, second=b), listeners=[recorder])
                for a, b in ((1, 2), (2, 1))]
        for future in done:
            future.result()

    assert scalar(sync_engine, "SELECT sum(balance) FROM accounts") == 4
    assert {sqlstate(r.error) for r in recorder.of(RetryScheduled) if r.error} == {"40P01"}


def test_a_session_is_flushed_and_a_conflict_in_it_retried(sync_engine: Engine) -> None:
    maker = sessionmaker(sync_engine)
    calls = 0

    def insert(session: Session) -> None:
        nonlocal calls
        calls += 1
        session.execute(text("INSERT INTO ledger VALUES ('s', :n)"), {"n": calls})
        if calls == 1:
            session.execute(text(CONFLICT))

    transaction_sync(maker, insert, isolation="repeatable_read")

    assert calls == 2
    assert scalar(sync_engine, "SELECT seen FROM ledger WHERE id = 's'") == 2


async def test_an_async_session_reports_its_isolation_and_read_only(engine: AsyncEngine) -> None:
    async def modes(session: AsyncSession) -> tuple[Any, Any]:
        return ((await session.execute(text("SHOW transaction_isolation"))).scalar(),
                (await session.execute(text("SHOW transaction_read_only"))).scalar())

    found = await transaction(async_sessionmaker(engine), modes, isolation="serializable",
                              readonly=True)

    assert found == ("serializable", "on")


async def test_a_lock_under_a_deadline_ends_with_deadline_exceeded(engine: AsyncEngine) -> None:
    async with engine.connect() as holder:
        await holder.execute(text("SELECT * FROM accounts WHERE id = 1 FOR UPDATE"))

        async def bump(conn: AsyncConnection) -> None:
            await conn.execute(text("UPDATE accounts SET balance = 7 WHERE id = 1"))

        began = time.monotonic()
        with pytest.raises(DeadlineExceededError) as raised:
            async with deadline_after(0.3):
                await transaction(engine, bump)
        assert time.monotonic() - began < HOLD
        assert sqlstate(raised.value.__cause__) in {"55P03", "57014"}  # type: ignore[arg-type]
        await holder.commit()


async def test_a_connection_killed_before_commit_is_retried_on_an_async_engine(
    engine: AsyncEngine, database: str
) -> None:
    calls = 0
    admin = create_async_engine(url(database, "asyncpg"), isolation_level="AUTOCOMMIT")

    async def insert(conn: AsyncConnection) -> None:
        nonlocal calls
        calls += 1
        await conn.execute(text("INSERT INTO ledger VALUES ('k', :n)"), {"n": calls})
        if calls == 1:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
            async with admin.connect() as other:
                await other.execute(text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid})
            await conn.execute(text("SELECT 1"))

    try:
        await transaction(engine, insert)
    finally:
        await admin.dispose()

    assert calls == 2
    assert await ascalar(engine, "SELECT seen FROM ledger WHERE id = 'k'") == 2


def kill_during_commit(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            pid = admin.execute(text(SLEEPING_IN_COMMIT)).scalar()
            if pid is not None:
                admin.execute(text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid})
                return
            time.sleep(0.02)
    raise AssertionError("no backend ever waited in COMMIT")


def test_a_connection_killed_during_commit_is_not_retried_on_an_engine(
    sync_engine: Engine,
) -> None:
    calls = 0

    def pay(conn: Any) -> None:
        nonlocal calls
        calls += 1
        conn.execute(text("INSERT INTO payments VALUES ('p', :slow)"), {"slow": calls == 1})

    with ThreadPoolExecutor(1) as threads:
        killer = threads.submit(kill_during_commit, sync_engine)
        with pytest.raises(CommitOutcomeUnknownError, match="idempotent=True") as raised:
            transaction_sync(sync_engine, pay)
        killer.result()

    assert calls == 1
    assert isinstance(raised.value.__cause__, DBAPIError)


def test_a_unique_violation_is_raised_after_one_attempt_on_an_engine(
    sync_engine: Engine, recorder: RecordingListener
) -> None:
    calls = 0

    def insert(conn: Any) -> None:
        nonlocal calls
        calls += 1
        conn.execute(text("INSERT INTO ledger VALUES ('dup', 0), ('dup', 1)"))

    with pytest.raises(IntegrityError):
        transaction_sync(sync_engine, insert, listeners=[recorder])

    assert calls == 1
    assert recorder.events == []


def test_an_async_engine_is_refused_by_transaction_sync(database: str) -> None:
    engine = create_async_engine(url(database, "asyncpg"))

    def work(conn: Any) -> None:
        raise AssertionError("not run")

    with pytest.raises(ConfigurationError, match=r"transaction_sync\.pool.*SQLAlchemy"):
        transaction_sync(engine, work)
