"""Transaction retry on psycopg 3 (asyncio), against the machine's PostgreSQL."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from fournines import (
    ConfigurationError,
    DeadlineExceededError,
    RetriesExhausted,
    RetryScheduled,
    deadline_after,
)
from fournines.data import CommitOutcomeUnknownError, sqlstate, transaction, transactional
from fournines.testing import RecordingListener

from ._shared import CONFLICT, HOLD, SCHEMA, SLEEPING_IN_COMMIT

Conn = psycopg.AsyncConnection[Any]


@pytest.fixture
async def pool(database: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = AsyncConnectionPool(database, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            await conn.execute(SCHEMA)
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def admin(database: str) -> AsyncIterator[Conn]:
    conn = await psycopg.AsyncConnection.connect(database, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


async def scalar(conn: Conn, query: str, *params: object) -> Any:
    row = await (await conn.execute(query, params or None)).fetchone()
    assert row is not None
    return row[0]


async def rows(pool: AsyncConnectionPool, query: str) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        return await (await conn.execute(query)).fetchall()


async def first_time(barrier: asyncio.Barrier, calls: Counter[str], key: str) -> None:
    calls[key] += 1
    if calls[key] == 1:
        async with asyncio.timeout(10):
            await barrier.wait()


async def test_a_serialization_failure_is_retried_and_each_transaction_applied_once(
    pool: AsyncConnectionPool, recorder: RecordingListener
) -> None:
    barrier, calls = asyncio.Barrier(2), Counter[str]()

    async def append(conn: Conn, key: str) -> None:
        seen = await scalar(conn, "SELECT count(*) FROM ledger")
        await first_time(barrier, calls, key)
        await conn.execute("INSERT INTO ledger VALUES (%s, %s)", (key, seen))

    await asyncio.gather(*(
        transaction(pool, functools.partial(append, key=key), isolation="serializable",
                    listeners=[recorder])
        for key in ("a", "b")))

    found = await rows(pool, "SELECT seen, id FROM ledger ORDER BY seen")
    assert [seen for seen, _ in found] == [0, 1]
    assert sorted(key for _, key in found) == ["a", "b"]
    assert {sqlstate(r.error) for r in recorder.of(RetryScheduled) if r.error} == {"40001"}


async def test_a_deadlock_is_retried_and_each_transaction_applied_once(
    pool: AsyncConnectionPool, recorder: RecordingListener
) -> None:
    barrier, calls = asyncio.Barrier(2), Counter[str]()

    async def bump(conn: Conn, first: int, second: int) -> None:
        await conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (first,))
        await first_time(barrier, calls, str(first))
        await conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (second,))

    await asyncio.gather(
        transaction(pool, functools.partial(bump, first=1, second=2), listeners=[recorder]),
        transaction(pool, functools.partial(bump, first=2, second=1), listeners=[recorder]))

    assert await rows(pool, "SELECT balance FROM accounts ORDER BY id") == [(2,), (2,)]
    assert {sqlstate(r.error) for r in recorder.of(RetryScheduled) if r.error} == {"40P01"}


async def test_a_transaction_blocked_by_a_lock_ends_at_its_deadline_and_the_holder_is_unaffected(
    pool: AsyncConnectionPool, admin: Conn
) -> None:
    await admin.execute("BEGIN")
    await admin.execute("SELECT * FROM accounts WHERE id = 1 FOR UPDATE")

    async def bump(conn: Conn) -> None:
        await conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")

    began = time.monotonic()
    with pytest.raises(DeadlineExceededError) as raised:
        async with deadline_after(0.3):
            await transaction(pool, bump)
    elapsed = time.monotonic() - began

    assert elapsed < HOLD
    assert sqlstate(raised.value.__cause__) in {"55P03", "57014"}  # type: ignore[arg-type]
    await admin.execute("UPDATE accounts SET balance = 100 WHERE id = 1")
    await admin.execute("COMMIT")
    assert await rows(pool, "SELECT balance FROM accounts WHERE id = 1") == [(100,)]


async def test_the_deadline_becomes_the_statement_and_lock_timeouts(
    pool: AsyncConnectionPool
) -> None:
    async def timeouts(conn: Conn) -> list[int]:
        found = await (await conn.execute(
            "SELECT setting FROM pg_settings WHERE name IN "
            "('statement_timeout', 'lock_timeout') ORDER BY name")).fetchall()
        return [int(setting) for setting, in found]

    async with deadline_after(5):
        inside = await transaction(pool, timeouts)
    outside = await transaction(pool, timeouts)

    assert all(0 < ms <= 5000 for ms in inside)
    assert outside == [0, 0]


async def test_a_connection_killed_before_commit_is_retried_and_applied_once(
    pool: AsyncConnectionPool, admin: Conn, recorder: RecordingListener
) -> None:
    calls = 0

    async def insert(conn: Conn) -> None:
        nonlocal calls
        calls += 1
        await conn.execute("INSERT INTO ledger VALUES ('k', %s)", (calls,))
        if calls == 1:
            pid = await scalar(conn, "SELECT pg_backend_pid()")
            assert await scalar(admin, "SELECT pg_terminate_backend(%s, 5000)", pid)
            await conn.execute("SELECT 1")

    await transaction(pool, insert, listeners=[recorder])

    assert calls == 2
    assert await rows(pool, "SELECT * FROM ledger") == [("k", 2)]
    assert len(recorder.of(RetryScheduled)) == 1


async def kill_during_commit(admin: Conn) -> None:
    async with asyncio.timeout(10):
        while True:
            found = await (await admin.execute(SLEEPING_IN_COMMIT)).fetchone()
            if found is not None:
                assert await scalar(admin, "SELECT pg_terminate_backend(%s, 5000)", found[0])
                return
            await asyncio.sleep(0.02)


async def test_a_connection_killed_during_commit_is_not_retried_and_says_idempotent(
    pool: AsyncConnectionPool, admin: Conn, recorder: RecordingListener
) -> None:
    calls = 0

    async def pay(conn: Conn) -> None:
        nonlocal calls
        calls += 1
        await conn.execute("INSERT INTO payments VALUES ('p', %s)", (calls == 1,))

    killer = asyncio.create_task(kill_during_commit(admin))
    with pytest.raises(CommitOutcomeUnknownError, match="idempotent=True") as raised:
        await transaction(pool, pay, listeners=[recorder])
    await killer

    assert calls == 1
    assert raised.value.__cause__ is not None
    assert recorder.of(RetriesExhausted)[0].reason == "outcome_unknown"


async def test_a_connection_killed_during_commit_of_idempotent_work_is_retried(
    pool: AsyncConnectionPool, admin: Conn
) -> None:
    calls = 0

    async def pay(conn: Conn) -> None:
        nonlocal calls
        calls += 1
        await conn.execute("INSERT INTO payments VALUES ('p', %s) ON CONFLICT DO NOTHING",
                           (calls == 1,))

    killer = asyncio.create_task(kill_during_commit(admin))
    await transaction(pool, pay, idempotent=True)
    await killer

    assert calls == 2
    assert await rows(pool, "SELECT count(*) FROM payments") == [(1,)]


async def test_a_unique_violation_is_raised_after_one_attempt(
    pool: AsyncConnectionPool, recorder: RecordingListener
) -> None:
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO ledger VALUES ('dup', 0)")
    calls = 0

    async def insert(conn: Conn) -> None:
        nonlocal calls
        calls += 1
        await conn.execute("INSERT INTO ledger VALUES ('dup', 1)")

    with pytest.raises(errors.UniqueViolation):
        await transaction(pool, insert, listeners=[recorder])

    assert calls == 1
    assert recorder.events == []


async def test_exhausted_attempts_re_raise_the_drivers_last_error(
    pool: AsyncConnectionPool, recorder: RecordingListener
) -> None:
    calls = 0

    async def conflict(conn: Conn) -> None:
        nonlocal calls
        calls += 1
        await conn.execute(CONFLICT)

    with pytest.raises(errors.SerializationFailure):
        await transaction(pool, conflict, attempts=3, listeners=[recorder])

    assert calls == 3
    assert recorder.of(RetriesExhausted)[0].reason == "attempts"


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


async def test_the_decorator_runs_each_call_as_a_retried_transaction(
    pool: AsyncConnectionPool,
) -> None:
    calls = 0

    @transactional(pool)
    async def record(conn: Conn, key: str) -> str:
        nonlocal calls
        calls += 1
        await conn.execute("INSERT INTO ledger VALUES (%s, %s)", (key, calls))
        if calls == 1:
            await conn.execute(CONFLICT)
        return key

    assert await record("d") == "d"
    assert await rows(pool, "SELECT * FROM ledger") == [("d", 2)]


async def test_a_sync_pool_is_refused_by_the_async_transaction(database: str) -> None:
    async def work(conn: Conn) -> None:
        raise AssertionError("not run")

    with ConnectionPool(database, min_size=0, max_size=1, open=False) as sync_pool:
        with pytest.raises(ConfigurationError, match=r"transaction\.pool.*transaction_sync"):
            await transaction(sync_pool, work)
