"""The README's whole stack for a database call, against a private PostgreSQL that goes down.

Timeout (its deadline becomes each attempt's SQL timeouts) > Retry of connection errors >
CircuitBreaker counting "down" > transaction(): while the server is down, calls are
retried, then the breaker opens and calls fail fast without touching the pool; once the
server is back and the breaker's reset has passed, calls go through, and a conflict
inside is retried by the transaction as ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from fournines import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    ConsecutiveFailures,
    Pipeline,
    Retry,
    RetryScheduled,
    Timeout,
)
from fournines.data import transaction
from fournines.testing import FakeClock, RecordingListener

from ._cluster import PrivatePostgres

# What "the database is down" raises through asyncpg: refused, dropped, starting up.
DOWN = (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
        asyncpg.InterfaceError)


@pytest.fixture
def cluster() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


async def test_the_stack_retries_then_fails_fast_while_the_database_is_down_and_recovers(
    cluster: PrivatePostgres, recorder: RecordingListener
) -> None:
    clock = FakeClock()  # the breaker's: its reset passes when the test says
    breaker = CircuitBreaker("orders-db", trip=ConsecutiveFailures(threshold=4),
                             reset_timeout=30, half_open_probes=1, failure_on=DOWN,
                             clock=clock)
    stack = Pipeline(
        Timeout(5.0),
        Retry(attempts=2, backoff=Backoff(initial=0.01, cap=0.02), on=DOWN,
              listeners=[recorder], name="orders-db"),
        breaker,
    )

    async def timeouts(conn: Any) -> int:
        return int(await conn.fetchval(
            "SELECT current_setting('statement_timeout')::interval "
            "= current_setting('lock_timeout')::interval "
            "AND current_setting('statement_timeout') <> '0'"))

    # min_size=0: no connection is kept, so each call while down tries to connect.
    async with asyncpg.create_pool(cluster.dsn, min_size=0, max_size=2) as pool:
        assert await stack.acall(transaction, pool, timeouts) == 1  # the deadline's timeouts
        await pool.expire_connections()
        await asyncio.to_thread(cluster.stop)

        for _ in range(2):  # 2 calls x 2 attempts: the fourth failure opens the breaker
            with pytest.raises(DOWN):
                await stack.acall(transaction, pool, timeouts)
        assert [e.name for e in recorder.of(RetryScheduled)] == ["orders-db", "orders-db"]
        with pytest.raises(CircuitOpenError):
            await stack.acall(transaction, pool, timeouts)  # fails fast: no connect

        await asyncio.to_thread(cluster.start)
        clock.advance(31)
        assert await stack.acall(transaction, pool, timeouts) == 1
        assert breaker.state == "closed"
