"""A PostgreSQL restart under a steady load of transactions (a private cluster of the test's own).

The pool recovers by itself, readiness fails while no connection can be had and comes
back after, and nothing is applied twice or applied while reported as failed: every
transaction reported done is in the table once, none reported failed is, and only those
whose COMMIT outcome was reported unknown may be either.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from fournines import Backoff
from fournines.data import CommitOutcomeUnknownError, pool_check, transaction

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


async def test_a_restart_under_load_recovers_and_applies_nothing_twice(
    cluster: PrivatePostgres,
) -> None:
    admin = await asyncpg.connect(cluster.dsn)
    await admin.execute("CREATE TABLE ledger (id int PRIMARY KEY)")
    await admin.close()
    done: set[int] = set()
    failed: set[int] = set()
    unknown: set[int] = set()
    ids = itertools.count()
    stop = asyncio.Event()

    async with asyncpg.create_pool(cluster.dsn, min_size=2, max_size=4) as pool:
        check = pool_check(pool, timeout=0.5)

        async def load() -> None:
            while not stop.is_set():
                tid = next(ids)

                async def insert(conn: Any, tid: int = tid) -> None:
                    await conn.execute("INSERT INTO ledger VALUES ($1)", tid)
                    await conn.execute("SELECT pg_sleep(0.005)")

                try:
                    await transaction(pool, insert, backoff=Backoff(initial=0.05, cap=0.2))
                    done.add(tid)
                except CommitOutcomeUnknownError:
                    unknown.add(tid)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
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

        applied = {row["id"] for row in await pool.fetch("SELECT id FROM ledger")}

    assert failed, "the restart failed no transaction: it did not happen under load"
    assert done <= applied
    assert not failed & applied
    assert applied <= done | unknown
