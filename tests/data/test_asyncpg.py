"""Transaction retry on asyncpg, against the machine's PostgreSQL: real conflicts, real kills."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

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


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database, min_size=1, max_size=4) as pool:
        await pool.execute(SCHEMA)
        yield pool


@pytest.fixture
async def admin(database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database)
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
    pool: asyncpg.Pool, recorder: RecordingListener
) -> None:
    barrier, calls = asyncio.Barrier(2), Counter[str]()

    async def append(conn: Any, key: str) -> None:
        seen = await conn.fetchval("SELECT count(*) FROM ledger")
        await first_time(barrier, calls, key)
        await conn.execute("INSERT INTO ledger VALUES ($1, $2)", key, seen)

    await asyncio.gather(*(
        transaction(pool, functools.partial(append, key=key), isolation="serializable",
                    listeners=[recorder])
        for key in ("a", "b")))

    rows = await pool.fetch("SELECT id, seen FROM ledger ORDER BY seen")
    assert [row["seen"] for row in rows] == [0, 1]  # the retry saw the first one's row
    assert sorted(row["id"] for row in rows) == ["a", "b"]
    retries = recorder.of(RetryScheduled)
    assert retries and {sqlstate(r.error) for r in retries if r.error} == {"40001"}
    assert {r.policy for r in retries} == {"transaction"}


async def test_a_deadlock_is_retried_and_each_transaction_applied_once(
    pool: asyncpg.Pool, recorder: RecordingListener
) -> None:
    barrier, calls = asyncio.Barrier(2), Counter[str]()

    async def bump(conn: Any, first: int, second: int) -> None:
        await conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = $1", first)
        await first_time(barrier, calls, str(first))
        await conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = $1", second)

    await asyncio.gather(
        transaction(pool, functools.partial(bump, first=1, second=2), listeners=[recorder]),
        transaction(pool, functools.partial(bump, first=2, second=1), listeners=[recorder]))

    rows = await pool.fetch("SELECT balance FROM accounts ORDER BY id")
    assert [row["balance"] for row in rows] == [2, 2]
    assert {sqlstate(r.error) for r in recorder.of(RetryScheduled) if r.error} == {"40P01"}


async def test_a_transaction_blocked_by_a_lock_ends_at_its_deadline_and_the_holder_is_unaffected(
    pool: asyncpg.Pool, admin: asyncpg.Connection
) -> None:
    holder = admin.transaction()
    await holder.start()
    await admin.execute("SELECT * FROM accounts WHERE id = 1 FOR UPDATE")

    async def bump(conn: Any) -> None:
        await conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")

    began = time.monotonic()
    with pytest.raises(DeadlineExceededError) as raised:
        async with deadline_after(0.3):
            await transaction(pool, bump)
    elapsed = time.monotonic() - began

    assert elapsed < HOLD
    assert sqlstate(raised.value.__cause__) in {"55P03", "57014"}  # type: ignore[arg-type]
    await admin.execute("UPDATE accounts SET balance = 100 WHERE id = 1")
    await holder.commit()
    assert await pool.fetchval("SELECT balance FROM accounts WHERE id = 1") == 100


async def test_the_deadline_becomes_the_statement_and_lock_timeouts(pool: asyncpg.Pool) -> None:
    async def timeouts(conn: Any) -> list[int]:
        rows = await conn.fetch("SELECT setting FROM pg_settings WHERE name IN "
                                "('statement_timeout', 'lock_timeout') ORDER BY name")
        return [int(row["setting"]) for row in rows]

    async with deadline_after(5):
        inside = await transaction(pool, timeouts)
    outside = await transaction(pool, timeouts)

    assert all(0 < ms <= 5000 for ms in inside)
    assert outside == [0, 0]  # SET LOCAL ended with the transaction


async def test_a_connection_killed_before_commit_is_retried_and_applied_once(
    pool: asyncpg.Pool, admin: asyncpg.Connection, recorder: RecordingListener
) -> None:
    calls = 0

    async def insert(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await conn.execute("INSERT INTO ledger VALUES ('k', $1)", calls)
        if calls == 1:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
            await conn.execute("SELECT 1")

    await transaction(pool, insert, listeners=[recorder])

    assert calls == 2
    assert [tuple(r) for r in await pool.fetch("SELECT * FROM ledger")] == [("k", 2)]
    assert len(recorder.of(RetryScheduled)) == 1


async def kill_during_commit(admin: asyncpg.Connection) -> None:
    """Terminate the backend that waits in COMMIT on the deferred trigger's pg_sleep."""
    async with asyncio.timeout(10):
        while True:
            pid = await admin.fetchval(SLEEPING_IN_COMMIT)
            if pid is not None:
                assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
                return
            await asyncio.sleep(0.02)


async def test_a_connection_killed_during_commit_is_not_retried_and_says_idempotent(
    pool: asyncpg.Pool, admin: asyncpg.Connection, recorder: RecordingListener
) -> None:
    calls = 0

    async def pay(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await conn.execute("INSERT INTO payments VALUES ('p', $1)", calls == 1)

    killer = asyncio.create_task(kill_during_commit(admin))
    with pytest.raises(CommitOutcomeUnknownError, match="idempotent=True") as raised:
        await transaction(pool, pay, listeners=[recorder])
    await killer

    assert calls == 1
    assert raised.value.__cause__ is not None
    assert recorder.of(RetriesExhausted)[0].reason == "outcome_unknown"
    assert recorder.of(RetryScheduled) == []


async def test_a_connection_killed_during_commit_of_idempotent_work_is_retried(
    pool: asyncpg.Pool, admin: asyncpg.Connection
) -> None:
    calls = 0

    async def pay(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await conn.execute("INSERT INTO payments VALUES ('p', $1) ON CONFLICT DO NOTHING",
                           calls == 1)

    killer = asyncio.create_task(kill_during_commit(admin))
    await transaction(pool, pay, idempotent=True)
    await killer

    assert calls == 2
    assert await pool.fetchval("SELECT count(*) FROM payments") == 1


async def test_a_unique_violation_is_raised_after_one_attempt(
    pool: asyncpg.Pool, recorder: RecordingListener
) -> None:
    await pool.execute("INSERT INTO ledger VALUES ('dup', 0)")
    calls = 0

    async def insert(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await conn.execute("INSERT INTO ledger VALUES ('dup', 1)")

    with pytest.raises(asyncpg.UniqueViolationError):
        await transaction(pool, insert, listeners=[recorder])

    assert calls == 1
    assert recorder.events == []


async def test_exhausted_attempts_re_raise_the_drivers_last_error(
    pool: asyncpg.Pool, recorder: RecordingListener
) -> None:
    calls = 0

    async def conflict(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await conn.execute(CONFLICT)

    with pytest.raises(asyncpg.SerializationError):
        await transaction(pool, conflict, attempts=3, listeners=[recorder])

    assert calls == 3
    assert len(recorder.of(RetryScheduled)) == 2
    assert recorder.of(RetriesExhausted)[0].reason == "attempts"


async def test_the_work_is_rolled_back_before_a_retry(pool: asyncpg.Pool) -> None:
    calls = 0

    async def insert(conn: Any) -> int:
        nonlocal calls
        calls += 1
        await conn.execute("INSERT INTO ledger VALUES ('once', $1)", calls)
        if calls == 1:
            await conn.execute(CONFLICT)
        return calls

    assert await transaction(pool, insert) == 2
    assert [tuple(r) for r in await pool.fetch("SELECT * FROM ledger")] == [("once", 2)]


async def test_isolation_and_read_only_are_set(pool: asyncpg.Pool) -> None:
    async def modes(conn: Any) -> tuple[str, str]:
        return (await conn.fetchval("SHOW transaction_isolation"),
                await conn.fetchval("SHOW transaction_read_only"))

    assert await transaction(pool, modes, isolation="repeatable_read", readonly=True) == (
        "repeatable read", "on")


async def test_a_single_connection_runs_the_transaction(admin: asyncpg.Connection) -> None:
    await admin.execute(SCHEMA)

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


async def test_the_decorator_runs_each_call_as_a_retried_transaction(
    pool: asyncpg.Pool, recorder: RecordingListener
) -> None:
    calls = Counter[str]()

    @transactional(lambda: pool, isolation="serializable", listeners=[recorder])
    async def record(conn: Any, key: str, *, seen: int) -> str:
        calls[key] += 1
        await conn.execute("INSERT INTO ledger VALUES ($1, $2)", key, seen)
        if calls[key] == 1:
            await conn.execute(CONFLICT)
        return key

    assert await record("d", seen=7) == "d"
    assert [tuple(r) for r in await pool.fetch("SELECT * FROM ledger")] == [("d", 7)]
    assert recorder.of(RetryScheduled)[0].name.endswith("record")


async def test_a_function_that_is_not_a_coroutine_function_is_refused(
    pool: asyncpg.Pool
) -> None:
    def work(conn: Any) -> None:
        raise AssertionError("not run")

    with pytest.raises(ConfigurationError, match=r"transaction\.fn.*transaction_sync"):
        await transaction(pool, work)  # type: ignore[arg-type]


@pytest.mark.parametrize(("setting", "value"), [("attempts", 0), ("isolation", "snapshot")])
async def test_a_bad_argument_is_refused_before_any_transaction(
    pool: asyncpg.Pool, setting: str, value: object
) -> None:
    async def work(conn: Any) -> None:
        raise AssertionError("not run")

    with pytest.raises(ConfigurationError, match=rf"transaction\.{setting}"):
        await transaction(pool, work, **{setting: value})  # type: ignore[arg-type]


async def test_an_unsupported_pool_is_refused() -> None:
    async def work(conn: Any) -> None:
        raise AssertionError("not run")

    with pytest.raises(ConfigurationError, match=r"transaction\.pool.*asyncpg"):
        await transaction("postgresql://localhost", work)


async def test_a_connection_that_fails_to_go_back_after_commit_leaves_the_commit_done(
    admin: asyncpg.Connection, database: str
) -> None:
    await admin.execute(SCHEMA)

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
