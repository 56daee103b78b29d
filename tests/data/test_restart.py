"""A PostgreSQL restart under steady load, on a private cluster: asyncpg and psycopg pools.

The pool recovers by itself, readiness fails while no connection can be had and comes
back after, and nothing is applied twice or applied while reported as failed: every
transaction reported done is in the table once, none reported failed is, and only those
whose COMMIT outcome was reported unknown may be either.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from fournines import Backoff, RetryScheduled
from fournines.data import CommitOutcomeUnknownError, pool_check, transaction
from fournines.testing import RecordingListener

from ._cluster import PrivatePostgres


@pytest.fixture
def cluster() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


async def wait_for(condition: Any, seconds: float = 20) -> None:
    async with asyncio.timeout(seconds):
        while not await condition():
            await asyncio.sleep(0.05)


@asynccontextmanager
async def asyncpg_pool(dsn: str) -> AsyncIterator[Any]:
    async with asyncpg.create_pool(dsn, min_size=2, max_size=4) as pool:
        yield pool


@asynccontextmanager
async def psycopg_pool(dsn: str) -> AsyncIterator[Any]:
    # A connection is checked before it is handed out: after a restart, the pool's idle
    # connections are all dead, and each would otherwise cost an attempt.
    async with AsyncConnectionPool(dsn, min_size=2, max_size=4, open=False, timeout=2,
                                   check=AsyncConnectionPool.check_connection) as pool:
        yield pool


POOLS = {"asyncpg": (asyncpg_pool, "$1"), "psycopg": (psycopg_pool, "%s")}
# What a transaction may raise while the server is down: the drivers' errors.
DOWN = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, psycopg.Error)


@pytest.mark.parametrize("kind", list(POOLS))
async def test_a_restart_under_load_recovers_and_applies_nothing_twice(
    cluster: PrivatePostgres, kind: str, recorder: RecordingListener
) -> None:
    async with await psycopg.AsyncConnection.connect(cluster.dsn, autocommit=True) as admin:
        await admin.execute("CREATE TABLE ledger (id int PRIMARY KEY)")
    open_pool, placeholder = POOLS[kind]
    done: set[int] = set()
    failed: set[int] = set()
    unknown: set[int] = set()
    ids = itertools.count()
    stop = asyncio.Event()

    async with open_pool(cluster.dsn) as pool:
        check = pool_check(pool, timeout=0.5)

        async def load() -> None:
            while not stop.is_set():
                tid = next(ids)

                async def insert(conn: Any, tid: int = tid) -> None:
                    insert_sql = f"INSERT INTO ledger VALUES ({placeholder})"
                    if kind == "asyncpg":
                        await conn.execute(insert_sql, tid)
                    else:
                        await conn.execute(insert_sql, (tid,))
                    await conn.execute("SELECT pg_sleep(0.005)")

                try:
                    await transaction(pool, insert, backoff=Backoff(initial=0.05, cap=0.2),
                                      listeners=[recorder])
                    done.add(tid)
                except CommitOutcomeUnknownError:
                    unknown.add(tid)
                except DOWN:
                    failed.add(tid)
                    await asyncio.sleep(0.05)  # the database is down: the app backs off

        async def ready() -> bool:
            try:
                await check.probe()
            except Exception:
                return False
            return True

        workers = [asyncio.create_task(load()) for _ in range(4)]
        await wait_for(lambda: asyncio.sleep(0, len(done) >= 20))
        await asyncio.to_thread(cluster.stop)
        assert not await ready()
        await asyncio.to_thread(cluster.start)
        await wait_for(ready)
        after_restart = len(done)
        await wait_for(lambda: asyncio.sleep(0, len(done) >= after_restart + 20))
        stop.set()
        await asyncio.gather(*workers)


    async with await psycopg.AsyncConnection.connect(cluster.dsn) as conn:
        rows = await (await conn.execute("SELECT id FROM ledger")).fetchall()
    applied = {tid for tid, in rows}

    # The restart hit transactions in flight: they failed, or were retried (psycopg's pool
    # waits for the server to come back, and may see every transaction through).
    assert failed or recorder.of(RetryScheduled), "no transaction saw the restart"
    assert done <= applied
    assert not failed & applied
    assert applied <= done | unknown


async def test_the_outbox_relay_keeps_relaying_after_a_restart(cluster: PrivatePostgres) -> None:
    # The server closes the relay's LISTEN connection, which the asyncpg pool takes back
    # by itself: the relay must notice, not die on the detached connection.
    from fournines.data import Relay, init_schema, outbox

    published: list[str] = []

    async def publish(messages: list[Any]) -> None:
        published.extend(m.id for m in messages)

    async def add(ident: str) -> None:
        async def work(conn: Any) -> None:
            await outbox.add(conn, "q", key=ident, body=b"{}", message_id=ident)

        await transaction(pool, work)

    async with asyncpg.create_pool(cluster.dsn, min_size=1, max_size=4) as pool:
        await init_schema(pool)
        relay = Relay(pool, publish, poll_interval=0.1, retry_delay=0.1)
        running = asyncio.create_task(relay.run())
        try:
            await add("before")

            async def seen(ident: str) -> bool:
                return ident in published

            await wait_for(lambda: seen("before"))
            await asyncio.to_thread(cluster.stop)
            await asyncio.sleep(0.5)  # the relay meets the server gone
            await asyncio.to_thread(cluster.start)

            async def added() -> bool:
                try:
                    await add("after")
                except DOWN:
                    return False
                return True

            await wait_for(added)
            await wait_for(lambda: seen("after"))
            assert not running.done()
        finally:
            relay.stop()
            await asyncio.wait_for(running, 10)
