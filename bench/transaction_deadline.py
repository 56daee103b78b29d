"""Claim: a transaction blocked by another's row lock ends near its 50 ms deadline.

For each driver, ``ROUNDS`` times: a holder locks a row (``UPDATE`` in an open
transaction), a transaction under ``deadline_after(0.05)`` updates the same row, and
the time until it raises ``DeadlineExceededError`` is taken; the holder then commits
(it must succeed: the lock holder is unaffected). Printed: median, p95 and max of
that time, and how many holders committed. Not a test: the numbers depend on the
machine. Run: ``.venv/bin/python bench/transaction_deadline.py`` (the machine's
PostgreSQL as postgres and MariaDB as root; it makes databases of its own).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pymysql
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from fournines import DeadlineExceededError, deadline_after
from fournines.data import transaction

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
ROUNDS = 30
DEADLINE = 0.05


async def measure(title: str, run: Callable[[], Awaitable[None]],
                  hold: Callable[[], Awaitable[Callable[[], Awaitable[None]]]]) -> None:
    times: list[float] = []
    committed = 0
    for _ in range(ROUNDS):
        release = await hold()
        began = time.perf_counter()
        try:
            async with deadline_after(DEADLINE):
                await run()
        except DeadlineExceededError:
            times.append(time.perf_counter() - began)
        await release()
        committed += 1
    times.sort()
    p95 = times[max(0, round(0.95 * len(times)) - 1)] if times else float("nan")
    print(f"  {title:<28} ended {len(times):2d}/{ROUNDS} by the deadline  "
          f"median {statistics.median(times) * 1000:6.1f} ms  p95 {p95 * 1000:6.1f} ms  "
          f"max {max(times) * 1000:6.1f} ms  holders committed {committed}/{ROUNDS}")


async def postgres(dsn: str) -> None:
    async def bump(conn: Any) -> None:
        await conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")

    async def hold() -> Callable[[], Awaitable[None]]:
        conn = await asyncpg.connect(dsn)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 1")

        async def release() -> None:
            await tx.commit()
            await conn.close()
        return release

    async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
        await pool.execute("DROP TABLE IF EXISTS accounts; CREATE TABLE accounts "
                           "(id int PRIMARY KEY, balance int NOT NULL); "
                           "INSERT INTO accounts VALUES (1, 0)")
        await measure("asyncpg", lambda: transaction(pool, bump), hold)
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as ppool:
        await measure("psycopg", lambda: transaction(ppool, bump), hold)
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://"))

    async def sa_bump(conn: Any) -> None:
        await conn.execute(text("UPDATE accounts SET balance = balance + 1 WHERE id = 1"))

    try:
        await measure("sqlalchemy (asyncpg)", lambda: transaction(engine, sa_bump), hold)
    finally:
        await engine.dispose()


async def mariadb(name: str) -> None:
    def connect() -> Any:
        return pymysql.connect(host="127.0.0.1", user="root", password="", database=name,
                               autocommit=True)

    with connect() as conn, conn.cursor() as cursor:
        cursor.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL) "
                       "ENGINE=InnoDB")
        cursor.execute("INSERT INTO accounts VALUES (1, 0)")

    async def hold() -> Callable[[], Awaitable[None]]:
        conn = connect()
        cursor = conn.cursor()
        cursor.execute("BEGIN")
        cursor.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 1")

        async def release() -> None:
            cursor.execute("COMMIT")
            conn.close()
        return release

    async def bump(conn: Any) -> None:
        await conn.execute(text("UPDATE accounts SET balance = balance + 1 WHERE id = 1"))

    engine = create_async_engine(f"mysql+aiomysql://root@127.0.0.1:3306/{name}")
    try:
        await measure("sqlalchemy (aiomysql)", lambda: transaction(engine, bump), hold)
    finally:
        await engine.dispose()


async def main() -> None:
    name = f"fournines_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    print(f"a transaction blocked by a row lock under a {DEADLINE * 1000:.0f} ms deadline, "
          f"{ROUNDS} rounds per driver")
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        await postgres(ADMIN.rsplit("/", 1)[0] + f"/{name}")
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
    with pymysql.connect(host="127.0.0.1", user="root", password="",
                         autocommit=True) as my, my.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
        try:
            await mariadb(name)
        finally:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")


if __name__ == "__main__":
    asyncio.run(main())
