"""pool_check: readiness fails when the service's own pool cannot hand out a connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from typing import Any

import asyncpg
import httpx
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from fournines import ConfigurationError
from fournines.asgi import HealthMiddleware, ServiceState
from fournines.data import pool_check


@asynccontextmanager
async def asyncpg_pool(dsn: str) -> AsyncIterator[tuple[Any, Any]]:
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        yield pool, pool.acquire


@asynccontextmanager
async def psycopg_pool(dsn: str) -> AsyncIterator[tuple[Any, Any]]:
    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool:
        yield pool, pool.connection


@asynccontextmanager
async def sqlalchemy_engine(dsn: str) -> AsyncIterator[tuple[Any, Any]]:
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
                                 pool_size=1, max_overflow=0)
    try:
        yield engine, engine.connect
    finally:
        await engine.dispose()


POOLS: dict[str, Callable[[str], AbstractAsyncContextManager[tuple[Any, Any]]]] = {
    "asyncpg": asyncpg_pool, "psycopg": psycopg_pool, "sqlalchemy": sqlalchemy_engine,
}


async def readyz(app: Any) -> int:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://service") as client:
        return (await client.get("/readyz")).status_code


@pytest.mark.parametrize("kind", list(POOLS))
async def test_readiness_fails_while_the_pool_has_no_connection_and_comes_back(
    database: str, kind: str
) -> None:
    state = ServiceState(service="orders", instance="orders-1")
    state.mark_ready()
    async with POOLS[kind](database) as (pool, borrow):
        app = HealthMiddleware(checks=[pool_check(pool, timeout=0.2)], state=state,
                               cache_ttl=0)
        assert await readyz(app) == 200
        async with borrow():  # the pool's only connection, busy
            assert await readyz(app) == 503
        assert await readyz(app) == 200


async def test_an_unsupported_pool_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"pool_check\.pool"):
        pool_check("postgresql://localhost")


async def test_a_bad_timeout_is_refused(database: str) -> None:
    async with asyncpg_pool(database) as (pool, _):
        with pytest.raises(ConfigurationError, match=r"pool_check\.timeout"):
            pool_check(pool, timeout=0)


@contextmanager
def psycopg_sync_pool(dsn: str) -> Iterator[tuple[Any, Any]]:
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        yield pool, pool.connection


@contextmanager
def sqlalchemy_sync_engine(dsn: str) -> Iterator[tuple[Any, Any]]:
    # The engine's own wait, 1 s, is what a probe thread still waiting outlives the check by.
    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1),
                           pool_size=1, max_overflow=0, pool_timeout=1)
    try:
        yield engine, engine.connect
    finally:
        engine.dispose()


SYNC_POOLS: dict[str, Callable[[str], AbstractContextManager[tuple[Any, Any]]]] = {
    "psycopg_sync": psycopg_sync_pool, "sqlalchemy_sync": sqlalchemy_sync_engine,
}


async def ready_again(app: Any) -> int:
    # A probe thread still waiting for the connection just given back finishes first.
    for _ in range(100):
        if (status := await readyz(app)) == 200:
            return status
        await asyncio.sleep(0.1)
    return status


@pytest.mark.parametrize("kind", list(SYNC_POOLS))
async def test_a_blocking_pools_readiness_fails_while_it_has_no_connection_and_comes_back(
    database: str, kind: str
) -> None:
    state = ServiceState(service="orders", instance="orders-1")
    state.mark_ready()
    with SYNC_POOLS[kind](database) as (pool, borrow):
        app = HealthMiddleware(checks=[pool_check(pool, timeout=0.2)], state=state,
                               cache_ttl=0)
        assert await readyz(app) == 200
        with borrow():  # the pool's only connection, busy
            assert await readyz(app) == 503
            assert await readyz(app) == 503
        assert await ready_again(app) == 200


async def test_a_blocking_probe_still_waiting_fails_the_next_one_at_once(database: str) -> None:
    with sqlalchemy_sync_engine(database) as (engine, borrow):
        check = pool_check(engine, timeout=0.1)
        with borrow():
            with pytest.raises(TimeoutError):
                await check.probe()
            with pytest.raises(TimeoutError, match="still waiting"):
                await check.probe()
