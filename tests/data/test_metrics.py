"""PoolMetrics: each pool's size and use, read at scrape time from its public API."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from fournines import ConfigurationError
from fournines.data import PoolMetrics

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
