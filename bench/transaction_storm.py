"""The bank-transfer storm: fournines transaction retry vs unbounded immediate retries.

16 workers run 2,000 transfers between 20 accounts under SERIALIZABLE on asyncpg,
twice, on a fresh table each time:

- fournines: ``transaction(pool, fn, isolation="serializable", attempts=...)``, which
  retries 40001 and 40P01 after a jittered backoff;
- "retry forever": what sqlalchemy-cockroachdb's ``run_transaction`` does: on 40001,
  run again at once, without limit or wait (40P01 is not retried: the transfer fails).

Printed: throughput, retries per transfer, transfers that failed, and whether the sum
of the balances held. Not a test: numbers depend on the machine. Run:
``.venv/bin/python bench/transaction_storm.py`` (the machine's PostgreSQL as postgres;
it creates and drops a database of its own).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import asyncpg

from fournines import RetryScheduled
from fournines.data import transaction
from fournines.testing import RecordingListener

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
WORKERS, TRANSFERS, ACCOUNTS, START = 16, 2000, 20, 1000


async def transfer(conn: Any, source: int, target: int, amount: int) -> None:
    await conn.execute("UPDATE accounts SET balance = balance - $1 WHERE id = $2", amount, source)
    await conn.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", amount, target)


async def retry_forever(pool: Any, source: int, target: int, amount: int) -> int:
    retries = 0
    while True:
        async with pool.acquire() as conn:
            try:
                async with conn.transaction(isolation="serializable"):
                    await transfer(conn, source, target, amount)
                return retries
            except asyncpg.SerializationError:
                retries += 1


async def storm(dsn: str, form: str) -> None:
    async with asyncpg.create_pool(dsn, min_size=WORKERS, max_size=WORKERS) as pool:
        await pool.execute("DROP TABLE IF EXISTS accounts; "
                           "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); "
                           f"INSERT INTO accounts SELECT g, {START} "
                           f"FROM generate_series(1, {ACCOUNTS}) g")
        rng = random.Random(7)
        work = [(*rng.sample(range(1, ACCOUNTS + 1), 2), rng.randint(1, 50))
                for _ in range(TRANSFERS)]
        recorder = RecordingListener()
        failed = retried = 0

        async def one(source: int, target: int, amount: int) -> None:
            nonlocal failed, retried
            try:
                if form == "fournines":
                    async def fn(conn: Any) -> None:
                        await transfer(conn, source, target, amount)

                    await transaction(pool, fn, isolation="serializable", attempts=50,
                                      listeners=[recorder])
                else:
                    retried += await retry_forever(pool, source, target, amount)
            except asyncpg.PostgresError:
                failed += 1

        async def worker() -> None:
            while work:
                await one(*work.pop())

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        elapsed = time.perf_counter() - began
        retries = len(recorder.of(RetryScheduled)) if form == "fournines" else retried
        total = await pool.fetchval("SELECT sum(balance) FROM accounts")
        print(f"  {form:<16} {TRANSFERS / elapsed:8.0f} transfers/s  "
              f"{retries / TRANSFERS:6.2f} retries/transfer  {failed:4d} failed  "
              f"sum {'kept' if total == START * ACCOUNTS else 'BROKEN'}")


async def main() -> None:
    name = f"fournines_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.execute(f"ALTER DATABASE {name} SET deadlock_timeout = '100ms'")
        dsn = ADMIN.rsplit("/", 1)[0] + f"/{name}"
        print(f"storm: {WORKERS} workers, {TRANSFERS} transfers, {ACCOUNTS} accounts, "
              "SERIALIZABLE (asyncpg)")
        for form in ("fournines", "retry forever", "fournines", "retry forever"):
            await storm(dsn, form)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
