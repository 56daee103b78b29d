"""ConsumerHook: the consumer follows the service's life (real RabbitMQ and PostgreSQL).

The service state is driven the way serve() drives it on SIGTERM (``state.drain``);
the real-uvicorn variant is a follow-up.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import pytest

from fournines import ConfigurationError
from fournines.asgi import ServiceState
from fournines.data import (
    MESSAGE_ID_HEADER,
    ConsumerHook,
    Message,
    MessageHandled,
    consumer,
    init_schema,
)
from fournines.testing import RecordingListener

from ._amqp import unique
from .test_consumer import until


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database, min_size=1, max_size=8) as pool:
        await init_schema(pool)
        await pool.execute("CREATE TABLE IF NOT EXISTS effects (id text PRIMARY KEY, body text)")
        await pool.execute("TRUNCATE effects, fournines_inbox")
        yield pool


def slow_consumer(queue: str, rec: RecordingListener) -> Any:
    @consumer(queue=queue, ladder=(0.05,), listeners=[rec], concurrency=4, prefetch=8)
    async def handle(msg: Message, tx: Any) -> None:
        await tx.execute("INSERT INTO effects VALUES ($1, $2)", msg.id, json.dumps(msg.body))
        await asyncio.sleep(0.05)  # in flight when the drain starts

    return handle


async def test_a_drain_mid_stream_loses_nothing_and_applies_nothing_twice(
    pool: asyncpg.Pool, amqp_url: str,
) -> None:
    queue = unique("hook")
    total = 200
    first_rec, second_rec = RecordingListener(), RecordingListener()
    first = slow_consumer(queue, first_rec)
    state = ServiceState(service="orders")
    state.add_hook(ConsumerHook(first, pool, amqp_url))
    state.mark_ready()
    await until(lambda: asyncio.sleep(0, result=first._queue is not None))
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        for n in range(total):
            await channel.default_exchange.publish(aio_pika.Message(
                json.dumps({"n": n}).encode(), headers={MESSAGE_ID_HEADER: f"m{n}"}),
                routing_key=queue)
    await until(lambda: pool.fetchval("SELECT count(*) >= 20 FROM effects"))
    await state.drain(timeout=30)
    assert first._connection is None  # stopped: no longer fetching
    applied_by_first = await pool.fetchval("SELECT count(*) FROM effects")
    acked_by_first = [e for e in first_rec.of(MessageHandled) if e.outcome == "acked"]
    # Everything applied before the drain was acked too (nothing cut off after COMMIT).
    assert len(acked_by_first) == applied_by_first
    assert applied_by_first < total, "the drain came after the stream ended: no test"

    second = slow_consumer(queue, second_rec)
    await second.start(pool, amqp_url)
    try:
        await until(lambda: pool.fetchval("SELECT count(*) = $1 FROM effects", total), 60)
    finally:
        await second.stop()
    outcomes = [e.outcome for e in (*first_rec.of(MessageHandled),
                                    *second_rec.of(MessageHandled))]
    assert outcomes.count("acked") == total
    assert "retried" not in outcomes and "dead_lettered" not in outcomes
    print(f"\nfirst consumer applied {applied_by_first} of {total} before the drain")


async def test_a_pool_factory_makes_the_pool_on_ready_and_closes_it_on_drain(
    database: str, amqp_url: str,
) -> None:
    made: list[asyncpg.Pool] = []

    async def make_pool() -> asyncpg.Pool:
        pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
        await init_schema(pool)
        made.append(pool)
        return pool

    rec = RecordingListener()
    state = ServiceState(service="orders")
    handle = slow_consumer(unique("hookf"), rec)
    state.add_hook(ConsumerHook(handle, url=amqp_url, pool_factory=make_pool))
    state.mark_ready()
    await until(lambda: asyncio.sleep(0, result=handle._queue is not None))
    await state.drain(timeout=30)
    assert len(made) == 1 and made[0].is_closing()


def test_a_hook_needs_exactly_one_of_pool_and_pool_factory() -> None:
    handle = slow_consumer(f"q{uuid.uuid4().hex}", RecordingListener())
    with pytest.raises(ConfigurationError, match="exactly one of pool and pool_factory"):
        ConsumerHook(handle)
    with pytest.raises(ConfigurationError, match="consumer must have start"):
        ConsumerHook(object(), pool=object())
