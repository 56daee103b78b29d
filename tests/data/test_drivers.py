"""Transaction retry, one specification run on asyncpg and on psycopg 3 (asyncio) pools.

Against the machine's PostgreSQL: real conflicts, real row locks, backends really
terminated. What only one driver has (a single connection's state, a pool's reset hook)
is in tests/data/test_asyncpg.py and test_psycopg.py; the blocking form in
test_psycopg_sync.py, SQLAlchemy in test_sqlalchemy.py.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors
from psycopg_pool import AsyncConnectionPool

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


class Driver:
    """What a scenario needs of a driver: a pool, a statement, a value, its errors."""

    name: str
    unique_violation: type[Exception]
    serialization_failure: type[Exception]

    def open_pool(self, dsn: str) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def connect(self, dsn: str) -> Any:
        """An autocommit connection of this driver, outside the pool."""
        raise NotImplementedError

    async def execute(self, conn: Any, query: str, *params: object) -> None:
        """Run ``query`` (``$1`` placeholders) on a connection."""
        raise NotImplementedError

    async def fetchval(self, conn: Any, query: str, *params: object) -> Any:
        """The first column of the first row of ``query``."""
        raise NotImplementedError

    async def rows(self, pool: Any, query: str) -> list[tuple[Any, ...]]:
        """Every row of ``query``, on a connection of ``pool``."""
        raise NotImplementedError


class Asyncpg(Driver):
    name = "asyncpg"
    unique_violation = asyncpg.UniqueViolationError
    serialization_failure = asyncpg.SerializationError

    @asynccontextmanager
    async def open_pool(self, dsn: str) -> AsyncIterator[Any]:
        async with asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool:
            yield pool

    async def connect(self, dsn: str) -> Any:
        return await asyncpg.connect(dsn)

    async def execute(self, conn: Any, query: str, *params: object) -> None:
        await conn.execute(query, *params)

    async def fetchval(self, conn: Any, query: str, *params: object) -> Any:
        return await conn.fetchval(query, *params)

    async def rows(self, pool: Any, query: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await pool.fetch(query)]


class Psycopg(Driver):
    name = "psycopg"
    unique_violation = errors.UniqueViolation
    serialization_failure = errors.SerializationFailure

    @asynccontextmanager
    async def open_pool(self, dsn: str) -> AsyncIterator[Any]:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=4, open=False) as pool:
            await pool.wait()
            yield pool

    async def connect(self, dsn: str) -> Any:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True)

    async def execute(self, conn: Any, query: str, *params: object) -> None:
        await conn.execute(re.sub(r"\$\d+", "%s", query), params or None)

    async def fetchval(self, conn: Any, query: str, *params: object) -> Any:
        row = await (await conn.execute(re.sub(r"\$\d+", "%s", query), params or None)
                     ).fetchone()
        return None if row is None else row[0]

    async def rows(self, pool: Any, query: str) -> list[tuple[Any, ...]]:
        async with pool.connection() as conn:
            return await (await conn.execute(query)).fetchall()


@pytest.fixture(params=[Asyncpg(), Psycopg()], ids=lambda driver: driver.name)
def driver(request: pytest.FixtureRequest) -> Driver:
    found: Driver = request.param
    return found


@pytest.fixture
async def pool(database: str, driver: Driver) -> AsyncIterator[Any]:
    async with driver.open_pool(database) as pool:
        admin = await driver.connect(database)
        try:
            await admin.execute(SCHEMA)
        finally:
            await admin.close()
        yield pool


@pytest.fixture
async def admin(database: str, driver: Driver) -> AsyncIterator[Any]:
    conn = await driver.connect(database)
    try:
        yield conn
    finally:
        await conn.close()


async def first_time(barrier: asyncio.Barrier, calls: Counter[str], key: str) -> None:
    """Wait for the other transaction, on the first attempt only (retries run alone)."""
    calls[key] += 1
    if calls[key] == 1:
        async with asyncio.timeout(10):
            await barrier.wait()


async def test_a_serialization_failure_is_retried_and_each_transaction_applied_once(
    pool: Any, driver: Driver, recorder: RecordingListener
) -> None:
    barrier, calls = asyncio.Barrier(2), Counter[str]()

    async def append(conn: Any, key: str) -> None:
        seen = await driver.fetchval(conn, "SELECT count(*) FROM ledger")
        await first_time(barrier, calls, key)
        await driver.execute(conn, "INSERT INTO ledger VALUES ($1, $2)", key, seen)

    await asyncio.gather(*(
        transaction(pool, functools.partial(append, key=key), isolation="serializable",
                    listeners=[recorder])
        for key in ("a", "b")))

    found = await driver.rows(pool, "SELECT seen, id FROM ledger ORDER BY seen")
    assert [seen for seen, _ in found] == [0, 1]  # the retry saw the first one's row
    assert sorted(key for _, key in found) == ["a", "b"]
    retries = recorder.of(RetryScheduled)
    assert retries and {sqlstate(r.error) for r in retries if r.error} == {"40001"}
    assert {r.policy for r in retries} == {"transaction"}


async def test_a_deadlock_is_retried_and_each_transaction_applied_once(
    pool: Any, driver: Driver, recorder: RecordingListener
) -> None:
    barrier, calls = asyncio.Barrier(2), Counter[str]()
    update = "UPDATE accounts SET balance = balance + 1 WHERE id = $1"

    async def bump(conn: Any, first: int, second: int) -> None:
        await driver.execute(conn, update, first)
        await first_time(barrier, calls, str(first))
        await driver.execute(conn, update, second)

    await asyncio.gather(
        transaction(pool, functools.partial(bump, first=1, second=2), listeners=[recorder]),
        transaction(pool, functools.partial(bump, first=2, second=1), listeners=[recorder]))

    assert await driver.rows(pool, "SELECT balance FROM accounts ORDER BY id") == [(2,), (2,)]
    assert {sqlstate(r.error) for r in recorder.of(RetryScheduled) if r.error} == {"40P01"}


async def test_a_transaction_blocked_by_a_lock_ends_at_its_deadline_and_the_holder_is_unaffected(
    pool: Any, driver: Driver, admin: Any
) -> None:
    await driver.execute(admin, "BEGIN")
    await driver.execute(admin, "SELECT * FROM accounts WHERE id = 1 FOR UPDATE")

    async def bump(conn: Any) -> None:
        await driver.execute(conn, "UPDATE accounts SET balance = balance + 1 WHERE id = 1")

    began = time.monotonic()
    with pytest.raises(DeadlineExceededError) as raised:
        async with deadline_after(0.3):
            await transaction(pool, bump)
    elapsed = time.monotonic() - began

    assert elapsed < HOLD
    assert sqlstate(raised.value.__cause__) in {"55P03", "57014"}  # type: ignore[arg-type]
    await driver.execute(admin, "UPDATE accounts SET balance = 100 WHERE id = 1")
    await driver.execute(admin, "COMMIT")
    assert await driver.rows(pool, "SELECT balance FROM accounts WHERE id = 1") == [(100,)]


async def test_the_deadline_becomes_the_statement_and_lock_timeouts(
    pool: Any, driver: Driver
) -> None:
    async def timeouts(conn: Any) -> list[int]:
        statement = await driver.fetchval(
            conn, "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")
        lock = await driver.fetchval(
            conn, "SELECT setting FROM pg_settings WHERE name = 'lock_timeout'")
        return [int(statement), int(lock)]

    async with deadline_after(5):
        inside = await transaction(pool, timeouts)
    outside = await transaction(pool, timeouts)

    assert all(0 < ms <= 5000 for ms in inside)
    assert outside == [0, 0]  # SET LOCAL ended with the transaction


async def test_a_connection_killed_before_commit_is_retried_and_applied_once(
    pool: Any, driver: Driver, admin: Any, recorder: RecordingListener
) -> None:
    calls = 0

    async def insert(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await driver.execute(conn, "INSERT INTO ledger VALUES ('k', $1)", calls)
        if calls == 1:
            pid = await driver.fetchval(conn, "SELECT pg_backend_pid()")
            assert await driver.fetchval(admin, "SELECT pg_terminate_backend($1, 5000)", pid)
            await driver.execute(conn, "SELECT 1")

    await transaction(pool, insert, listeners=[recorder])

    assert calls == 2
    assert await driver.rows(pool, "SELECT * FROM ledger") == [("k", 2)]
    assert len(recorder.of(RetryScheduled)) == 1


async def kill_during_commit(driver: Driver, admin: Any) -> None:
    """Terminate the backend that waits in COMMIT on the deferred trigger's pg_sleep."""
    async with asyncio.timeout(10):
        while True:
            pid = await driver.fetchval(admin, SLEEPING_IN_COMMIT)
            if pid is not None:
                assert await driver.fetchval(admin, "SELECT pg_terminate_backend($1, 5000)",
                                             pid)
                return
            await asyncio.sleep(0.02)


async def test_a_connection_killed_during_commit_is_not_retried_and_says_idempotent(
    pool: Any, driver: Driver, admin: Any, recorder: RecordingListener
) -> None:
    calls = 0

    async def pay(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await driver.execute(conn, "INSERT INTO payments VALUES ('p', $1)", calls == 1)

    killer = asyncio.create_task(kill_during_commit(driver, admin))
    with pytest.raises(CommitOutcomeUnknownError, match="idempotent=True") as raised:
        await transaction(pool, pay, listeners=[recorder])
    await killer

    assert calls == 1
    assert raised.value.__cause__ is not None
    assert recorder.of(RetriesExhausted)[0].reason == "outcome_unknown"
    assert recorder.of(RetryScheduled) == []


async def test_a_connection_killed_during_commit_of_idempotent_work_is_retried(
    pool: Any, driver: Driver, admin: Any
) -> None:
    calls = 0

    async def pay(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await driver.execute(
            conn, "INSERT INTO payments VALUES ('p', $1) ON CONFLICT DO NOTHING", calls == 1)

    killer = asyncio.create_task(kill_during_commit(driver, admin))
    await transaction(pool, pay, idempotent=True)
    await killer

    assert calls == 2
    assert await driver.rows(pool, "SELECT count(*) FROM payments") == [(1,)]


async def test_a_unique_violation_is_raised_after_one_attempt(
    pool: Any, driver: Driver, admin: Any, recorder: RecordingListener
) -> None:
    await driver.execute(admin, "INSERT INTO ledger VALUES ('dup', 0)")
    calls = 0

    async def insert(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await driver.execute(conn, "INSERT INTO ledger VALUES ('dup', 1)")

    with pytest.raises(driver.unique_violation):
        await transaction(pool, insert, listeners=[recorder])

    assert calls == 1
    assert recorder.events == []


async def test_exhausted_attempts_re_raise_the_drivers_last_error(
    pool: Any, driver: Driver, recorder: RecordingListener
) -> None:
    calls = 0

    async def conflict(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await driver.execute(conn, CONFLICT)

    with pytest.raises(driver.serialization_failure):
        await transaction(pool, conflict, attempts=3, listeners=[recorder])

    assert calls == 3
    assert len(recorder.of(RetryScheduled)) == 2
    assert recorder.of(RetriesExhausted)[0].reason == "attempts"


async def test_the_work_is_rolled_back_before_a_retry(pool: Any, driver: Driver) -> None:
    calls = 0

    async def insert(conn: Any) -> int:
        nonlocal calls
        calls += 1
        await driver.execute(conn, "INSERT INTO ledger VALUES ('once', $1)", calls)
        if calls == 1:
            await driver.execute(conn, CONFLICT)
        return calls

    assert await transaction(pool, insert) == 2
    assert await driver.rows(pool, "SELECT * FROM ledger") == [("once", 2)]


async def test_isolation_and_read_only_are_set(pool: Any, driver: Driver) -> None:
    async def modes(conn: Any) -> tuple[str, str]:
        return (await driver.fetchval(conn, "SHOW transaction_isolation"),
                await driver.fetchval(conn, "SHOW transaction_read_only"))

    assert await transaction(pool, modes, isolation="repeatable_read", readonly=True) == (
        "repeatable read", "on")
    assert await transaction(pool, modes) == ("read committed", "off")  # the pool's own


@pytest.mark.parametrize("getter", [False, True], ids=["pool", "getter"])
async def test_the_decorator_runs_each_call_as_a_retried_transaction(
    pool: Any, driver: Driver, recorder: RecordingListener, getter: bool
) -> None:
    calls = Counter[str]()

    @transactional((lambda: pool) if getter else pool, isolation="serializable",
                   listeners=[recorder])
    async def record(conn: Any, key: str, *, seen: int) -> str:
        calls[key] += 1
        await driver.execute(conn, "INSERT INTO ledger VALUES ($1, $2)", key, seen)
        if calls[key] == 1:
            await driver.execute(conn, CONFLICT)
        return key

    assert await record("d", seen=7) == "d"
    assert await driver.rows(pool, "SELECT * FROM ledger") == [("d", 7)]
    assert recorder.of(RetryScheduled)[0].name.endswith("record")


async def test_a_function_that_is_not_a_coroutine_function_is_refused(pool: Any) -> None:
    def work(conn: Any) -> None:
        raise AssertionError("not run")

    with pytest.raises(ConfigurationError, match=r"transaction\.fn.*transaction_sync"):
        await transaction(pool, work)  # type: ignore[arg-type]


@pytest.mark.parametrize(("setting", "value"), [("attempts", 0), ("isolation", "snapshot")])
async def test_a_bad_argument_is_refused_before_any_transaction(
    pool: Any, setting: str, value: object
) -> None:
    async def work(conn: Any) -> None:
        raise AssertionError("not run")

    with pytest.raises(ConfigurationError, match=rf"transaction\.{setting}"):
        await transaction(pool, work, **{setting: value})  # type: ignore[arg-type]
