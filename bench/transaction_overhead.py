"""Claim: transaction retry costs little over a hand-written transaction with no conflicts.

Target: ``await transaction(pool, fn)`` within 5 % of ``async with pool.acquire() as conn:
async with conn.transaction(): await fn(conn)`` on asyncpg, and of the same by hand on
psycopg's AsyncConnectionPool, with no deadline (with one, each attempt sends one more
statement, ``SET LOCAL`` of the timeouts: measured too, for information; and on a pool
a ``PoolMetrics`` watches, whose acquires are timed).
Each transaction runs one ``SELECT 1``. Rounds alternate the forms; the median of the
rounds' per-transaction times is compared.
Run: ``.venv/bin/python bench/transaction_overhead.py`` (DATABASE_URL, default the
machine's PostgreSQL as user postgres).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from fournines import deadline_after
from fournines.data import PoolMetrics, transaction

DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ROUNDS = 15
PER_ROUND = 400


async def asyncpg_work(conn: Any) -> None:
    await conn.execute("SELECT 1")


async def psycopg_work(conn: Any) -> None:
    await conn.execute("SELECT 1")


async def timed(form: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Seconds per transaction: wall clock, and this process's CPU (what fournines adds
    is CPU here; the CPU time is less disturbed by other processes on a loaded machine)."""
    began, cpu = time.perf_counter(), time.process_time()
    for _ in range(PER_ROUND):
        await form()
    return ((time.perf_counter() - began) / PER_ROUND,
            (time.process_time() - cpu) / PER_ROUND)


async def compare(title: str, forms: dict[str, Callable[[], Awaitable[None]]]) -> None:
    for form in forms.values():  # warm up connections, prepared statements, caches
        await timed(form)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in forms}
    for _ in range(ROUNDS):
        for name, form in forms.items():
            samples[name].append(await timed(form))
    walls = {name: statistics.median(w for w, _ in values) for name, values in samples.items()}
    cpus = {name: statistics.median(c for _, c in values) for name, values in samples.items()}
    base_wall, base_cpu = next(iter(walls.values())), next(iter(cpus.values()))
    print(f"\n{title}")
    for name in forms:
        print(f"  {name:<44} {walls[name] * 1e6:8.1f} µs/tx x{walls[name] / base_wall:.3f}"
              f"   client CPU {cpus[name] * 1e6:6.1f} µs/tx x{cpus[name] / base_cpu:.3f}")


async def main() -> None:
    async with asyncpg.create_pool(DSN, min_size=1, max_size=1) as pool:

        async def by_hand() -> None:
            async with pool.acquire() as conn, conn.transaction():
                await asyncpg_work(conn)

        async def retried() -> None:
            await transaction(pool, asyncpg_work)

        async def retried_with_deadline() -> None:
            async with deadline_after(5):
                await transaction(pool, asyncpg_work)

        async def retried_watched() -> None:
            await transaction(watched, asyncpg_work)

        async with asyncpg.create_pool(DSN, min_size=1, max_size=1) as watched:
            PoolMetrics(CollectorRegistry()).add(watched, name="bench")
            await compare("asyncpg, no conflicts (target: fournines <= x1.05)", {
                "by hand: acquire + conn.transaction()": by_hand,
                "fournines transaction(pool, fn)": retried,
                "fournines on a pool PoolMetrics watches": retried_watched,
                "fournines under a deadline (+ SET LOCAL)": retried_with_deadline,
            })

    async with AsyncConnectionPool(DSN, min_size=1, max_size=1, open=False) as ppool:

        async def p_by_hand() -> None:
            async with ppool.connection() as conn:
                await psycopg_work(conn)
                await conn.commit()

        async def p_retried() -> None:
            await transaction(ppool, psycopg_work)

        await compare("psycopg AsyncConnectionPool, no conflicts (target: <= x1.05)", {
            "by hand: pool.connection() + commit()": p_by_hand,
            "fournines transaction(pool, fn)": p_retried,
        })


if __name__ == "__main__":
    asyncio.run(main())
