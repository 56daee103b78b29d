"""Transaction retry on psycopg 3 (blocking: transaction_sync), against the machine's PostgreSQL."""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import ConnectionPool

from fournines import (
    ConfigurationError,
    DeadlineExceededError,
    RetriesExhausted,
    RetryScheduled,
    deadline_after,
)
from fournines.data import CommitOutcomeUnknownError, sqlstate, transaction_sync, transactional
from fournines.testing import RecordingListener

from ._shared import CONFLICT, HOLD, SCHEMA, SLEEPING_IN_COMMIT

Conn = psycopg.Connection[Any]


@pytest.fixture
def pool(database: str) -> Iterator[ConnectionPool]:
    with ConnectionPool(database, min_size=1, max_size=4, open=False) as pool:
        pool.wait()
        with pool.connection() as conn:
            conn.execute(SCHEMA)
        yield pool


@pytest.fixture
def admin(database: str) -> Iterator[Conn]:
    with psycopg.connect(database, autocommit=True) as conn:
        yield conn


def scalar(conn: Conn, query: str, *params: object) -> Any:
    row = conn.execute(query, params or None).fetchone()
    assert row is not None
    return row[0]


def rows(pool: ConnectionPool, query: str) -> list[tuple[Any, ...]]:
    with pool.connection() as conn:
        return conn.execute(query).fetchall()


def first_time(barrier: threading.Barrier, calls: Counter[str], key: str) -> None:
    calls[key] += 1
    if calls[key] == 1:
        barrier.wait()


def test_a_serialization_failure_is_retried_and_each_transaction_applied_once(
    pool: ConnectionPool, recorder: RecordingListener
) -> None:
    barrier, calls = threading.Barrier(2, timeout=10), Counter[str]()

    def append(conn: Conn, key: str) -> None:
        seen = scalar(conn, "SELECT count(*) FROM ledger")
        first_time(barrier, calls, key)
        conn.execute("INSERT INTO ledger VALUES (%s, %s)", (key, seen))

    with ThreadPoolExecutor(2) as threads:
        done = [threads.submit(transaction_sync, pool, functools.partial(append, key=key),
                               isolation="serializable", listeners=[recorder])
                for key in ("a", "b")]
        for future in done:
            future.result()

    found = rows(pool, "SELECT seen, id FROM ledger ORDER BY seen")
    assert [seen for seen, _ in found] == [0, 1]
    assert sorted(key for _, key in found) == ["a", "b"]
    assert {sqlstate(r.error) for r in recorder.of(RetryScheduled) if r.error} == {"40001"}


def test_a_deadlock_is_retried_and_each_transaction_applied_once(
    pool: ConnectionPool, recorder: RecordingListener
) -> None:
    barrier, calls = threading.Barrier(2, timeout=10), Counter[str]()

    def bump(conn: Conn, first: int, second: int) -> None:
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (first,))
        first_time(barrier, calls, str(first))
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (second,))

    with ThreadPoolExecutor(2) as threads:
        done = [threads.submit(transaction_sync, pool,
                               functools.partial(bump, first=a, second=b), listeners=[recorder])
                for a, b in ((1, 2), (2, 1))]
        for future in done:
            future.result()

    assert rows(pool, "SELECT balance FROM accounts ORDER BY id") == [(2,), (2,)]
    assert {sqlstate(r.error) for r in recorder.of(RetryScheduled) if r.error} == {"40P01"}


def test_a_transaction_blocked_by_a_lock_ends_at_its_deadline_and_the_holder_is_unaffected(
    pool: ConnectionPool, admin: Conn
) -> None:
    admin.execute("BEGIN")
    admin.execute("SELECT * FROM accounts WHERE id = 1 FOR UPDATE")

    def bump(conn: Conn) -> None:
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")

    began = time.monotonic()
    with pytest.raises(DeadlineExceededError) as raised, deadline_after(0.3):
        transaction_sync(pool, bump)
    elapsed = time.monotonic() - began

    assert elapsed < HOLD
    assert sqlstate(raised.value.__cause__) in {"55P03", "57014"}  # type: ignore[arg-type]
    admin.execute("UPDATE accounts SET balance = 100 WHERE id = 1")
    admin.execute("COMMIT")
    assert rows(pool, "SELECT balance FROM accounts WHERE id = 1") == [(100,)]


def test_a_connection_killed_before_commit_is_retried_and_applied_once(
    pool: ConnectionPool, admin: Conn, recorder: RecordingListener
) -> None:
    calls = 0

    def insert(conn: Conn) -> None:
        nonlocal calls
        calls += 1
        conn.execute("INSERT INTO ledger VALUES ('k', %s)", (calls,))
        if calls == 1:
            pid = scalar(conn, "SELECT pg_backend_pid()")
            assert scalar(admin, "SELECT pg_terminate_backend(%s, 5000)", pid)
            conn.execute("SELECT 1")

    transaction_sync(pool, insert, listeners=[recorder])

    assert calls == 2
    assert rows(pool, "SELECT * FROM ledger") == [("k", 2)]
    assert len(recorder.of(RetryScheduled)) == 1


def kill_during_commit(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as admin:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            found = admin.execute(SLEEPING_IN_COMMIT).fetchone()
            if found is not None:
                assert scalar(admin, "SELECT pg_terminate_backend(%s, 5000)", found[0])
                return
            time.sleep(0.02)
    raise AssertionError("no backend ever waited in COMMIT")


def test_a_connection_killed_during_commit_is_not_retried_and_says_idempotent(
    pool: ConnectionPool, database: str, recorder: RecordingListener
) -> None:
    calls = 0

    def pay(conn: Conn) -> None:
        nonlocal calls
        calls += 1
        conn.execute("INSERT INTO payments VALUES ('p', %s)", (calls == 1,))

    with ThreadPoolExecutor(1) as threads:
        killer = threads.submit(kill_during_commit, database)
        with pytest.raises(CommitOutcomeUnknownError, match="idempotent=True"):
            transaction_sync(pool, pay, listeners=[recorder])
        killer.result()

    assert calls == 1
    assert recorder.of(RetriesExhausted)[0].reason == "outcome_unknown"


def test_a_connection_killed_during_commit_of_idempotent_work_is_retried(
    pool: ConnectionPool, database: str
) -> None:
    calls = 0

    def pay(conn: Conn) -> None:
        nonlocal calls
        calls += 1
        conn.execute("INSERT INTO payments VALUES ('p', %s) ON CONFLICT DO NOTHING",
                     (calls == 1,))

    with ThreadPoolExecutor(1) as threads:
        killer = threads.submit(kill_during_commit, database)
        transaction_sync(pool, pay, idempotent=True)
        killer.result()

    assert calls == 2
    assert rows(pool, "SELECT count(*) FROM payments") == [(1,)]


def test_a_unique_violation_is_raised_after_one_attempt(
    pool: ConnectionPool, recorder: RecordingListener
) -> None:
    with pool.connection() as conn:
        conn.execute("INSERT INTO ledger VALUES ('dup', 0)")
    calls = 0

    def insert(conn: Conn) -> None:
        nonlocal calls
        calls += 1
        conn.execute("INSERT INTO ledger VALUES ('dup', 1)")

    with pytest.raises(errors.UniqueViolation):
        transaction_sync(pool, insert, listeners=[recorder])

    assert calls == 1
    assert recorder.events == []


def test_exhausted_attempts_re_raise_the_drivers_last_error(
    pool: ConnectionPool, recorder: RecordingListener
) -> None:
    calls = 0

    def conflict(conn: Conn) -> None:
        nonlocal calls
        calls += 1
        conn.execute(CONFLICT)

    with pytest.raises(errors.SerializationFailure):
        transaction_sync(pool, conflict, attempts=3, listeners=[recorder])

    assert calls == 3
    assert len(recorder.of(RetryScheduled)) == 2


def test_the_decorator_runs_a_plain_function_as_a_retried_transaction(
    pool: ConnectionPool,
) -> None:
    calls = 0

    @transactional(pool, isolation="serializable")
    def record(conn: Conn, key: str) -> str:
        nonlocal calls
        calls += 1
        conn.execute("INSERT INTO ledger VALUES (%s, %s)", (key, calls))
        if calls == 1:
            conn.execute(CONFLICT)
        return key

    assert record("s") == "s"
    assert rows(pool, "SELECT * FROM ledger") == [("s", 2)]


def test_a_coroutine_function_is_refused_by_transaction_sync(pool: ConnectionPool) -> None:
    async def work(conn: Conn) -> None:
        raise AssertionError("not run")

    with pytest.raises(ConfigurationError, match=r"transaction_sync\.fn.*use transaction"):
        transaction_sync(pool, work)


@pytest.mark.parametrize(("setting", "value"), [("attempts", 0), ("isolation", "snapshot")])
def test_a_bad_argument_is_refused_before_any_transaction(
    pool: ConnectionPool, setting: str, value: object
) -> None:
    def work(conn: Conn) -> None:
        raise AssertionError("not run")

    with pytest.raises(ConfigurationError, match=rf"transaction_sync\.{setting}"):
        transaction_sync(pool, work, **{setting: value})  # type: ignore[arg-type]
