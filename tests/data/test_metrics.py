"""PoolMetrics: each pool's size and use from its public API, and the acquires fournines times."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine

from fournines import ConfigurationError
from fournines.data import PoolMetrics, transaction, transaction_sync

from .test_checks import POOLS


def value(registry: CollectorRegistry, metric: str, pool: str = "orders") -> float | None:
    return registry.get_sample_value(f"fournines_db_pool_{metric}", {"pool": pool})


@pytest.mark.parametrize("kind", list(POOLS))
async def test_a_borrowed_connection_shows_as_in_use_until_it_comes_back(
    database: str, kind: str
) -> None:
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)
    async with POOLS[kind](database) as (pool, borrow):
        async with borrow() as conn:
            if kind == "sqlalchemy":
                await conn.exec_driver_sql("SELECT 1")
            metrics.add(pool, name="orders")
            assert value(registry, "in_use") == 1
            assert value(registry, "idle") == 0
        assert value(registry, "in_use") == 0
        assert value(registry, "connections") == 1


async def test_psycopg_pools_report_their_waits_and_requests(database: str) -> None:
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)
    async with POOLS["psycopg"](database) as (pool, borrow):
        metrics.add(pool, name="orders")
        before = value(registry, "acquires_total")
        async with borrow():
            pass

        assert value(registry, "acquires_total") == (before or 0) + 1
        assert value(registry, "max") == 1
        assert value(registry, "waiting") == 0
        assert value(registry, "acquire_wait_seconds_total") is not None


async def test_a_removed_pool_is_no_longer_reported(database: str) -> None:
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)
    async with POOLS["asyncpg"](database) as (pool, _):
        metrics.add(pool, name="orders")
        metrics.remove("orders")
        assert value(registry, "connections") is None


def test_an_unsupported_pool_is_refused_when_added() -> None:
    metrics = PoolMetrics(CollectorRegistry())
    with pytest.raises(ConfigurationError, match=r"PoolMetrics\.add\.pool"):
        metrics.add("postgresql://localhost", name="orders")


@pytest.mark.parametrize("kind", list(POOLS))
async def test_each_acquire_of_a_transaction_lands_in_the_latency_histogram(
    database: str, kind: str
) -> None:
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)

    async def one(conn: Any) -> None:
        return None

    async with POOLS[kind](database) as (pool, _):
        metrics.add(pool, name="orders")
        for _ in range(3):
            await transaction(pool, one)
        count = value(registry, "acquire_seconds_count")
        total = value(registry, "acquire_seconds_sum")
        metrics.remove("orders")
        await transaction(pool, one)  # no longer watched: not timed

    assert count == 3
    assert total is not None and total > 0
    assert registry.get_sample_value("fournines_db_pool_acquire_seconds_bucket",
                                     {"pool": "orders", "le": "+Inf"}) is None


@pytest.mark.parametrize("kind", ["asyncpg", "sqlalchemy"])
async def test_a_transaction_waiting_for_the_only_connection_counts_as_waiting(
    database: str, kind: str
) -> None:
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)

    async def one(conn: Any) -> None:
        return None

    async with POOLS[kind](database) as (pool, borrow):
        metrics.add(pool, name="orders")
        async with borrow() as conn:
            if kind == "sqlalchemy":
                await conn.exec_driver_sql("SELECT 1")
            waiter = asyncio.create_task(transaction(pool, one))
            for _ in range(200):
                if value(registry, "waiting") == 1:
                    break
                await asyncio.sleep(0.01)
            assert value(registry, "waiting") == 1
        await asyncio.wait_for(waiter, 10)
        assert value(registry, "waiting") == 0
        assert registry.get_sample_value(
            "fournines_db_pool_acquire_seconds_bucket",
            {"pool": "orders", "le": "0.0005"}) == 0  # it waited


def test_a_blocking_engines_transactions_are_timed(database: str) -> None:
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)
    engine = create_engine(database.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        metrics.add(engine, name="orders")
        transaction_sync(engine, lambda conn: conn.exec_driver_sql("SELECT 1"))
        assert value(registry, "acquire_seconds_count") == 1
        assert value(registry, "waiting") == 0
    finally:
        engine.dispose()


def test_bad_buckets_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"PoolMetrics\.buckets"):
        PoolMetrics(CollectorRegistry(), buckets=(0.1, 0.01))
