"""The Kafka consumer and relay ride out a broker restart by themselves.

Tansu runs in memory mode (the only storage this build has): a restarted broker
has no topics, no records and no committed offsets. So what a restart means here:

- records the relay had published (and marked sent) but the consumer had not yet
  read are gone with the broker: no client can get them back, and the outbox no
  longer has them to send. With a durable Kafka they would be read after the
  restart; this test counts them instead of pretending;
- committed offsets are gone too, but so are the records they pointed into;
- topics come back when the relay produces to them (Tansu creates a topic on first
  use) or when a consumer starts (``declare_topics``).

What must hold, and is checked: neither the consumer nor the relay is restarted,
both reconnect on their own, nothing is applied twice, and every message written
to the outbox after the broker is back is applied exactly once.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from fournines.data import (
    KafkaMessage,
    KafkaPublisher,
    Relay,
    init_schema,
    kafka_consumer,
    outbox,
)

from ._amqp import unique
from ._tansu import Tansu


async def add(pool: asyncpg.Pool, topic: str, numbers: range) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for n in numbers:
            await outbox.add(conn, topic, f"k{n % 7}", json.dumps({"n": n}), message_id=f"b-{n}")


async def applied(pool: asyncpg.Pool, numbers: range) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM effects WHERE n >= $1 AND n < $2", numbers.start, numbers.stop)
    return count


async def wait_applied(pool: asyncpg.Pool, numbers: range, seconds: float = 120) -> None:
    async with asyncio.timeout(seconds):
        while await applied(pool, numbers) < len(numbers):
            await asyncio.sleep(0.1)


async def test_consumer_and_relay_reconnect_after_tansu_restarts_and_apply_nothing_twice(
    database: str, tansu: Tansu,
) -> None:
    topic = unique("krestart")

    @kafka_consumer(topic=topic, partitions=2, ladder=(0.1,))
    async def handle(msg: KafkaMessage, tx: Any) -> None:
        await tx.execute("INSERT INTO effects VALUES ($1)", msg.body["n"])

    before, during, after = range(0, 200), range(200, 2200), range(2200, 2400)
    async with asyncpg.create_pool(database, min_size=1, max_size=8) as pool:
        await init_schema(pool)
        await pool.execute("CREATE TABLE effects (n int NOT NULL)")  # no key: twice would show
        await handle.start(pool, tansu.bootstrap)
        publisher = KafkaPublisher(tansu.bootstrap)
        relay = Relay(pool, publisher, poll_interval=0.2, retry_delay=0.5)
        relaying = asyncio.create_task(relay.run())
        try:
            await add(pool, topic, before)
            await wait_applied(pool, before)

            # A restart while records are on their way: kill -9, back on the same port.
            await add(pool, topic, during)
            async with asyncio.timeout(120):
                while await applied(pool, during) < 300:
                    await asyncio.sleep(0.02)
            tansu.restart()

            await add(pool, topic, after)  # written once the broker is back
            await wait_applied(pool, after)
            async with asyncio.timeout(60):  # the outbox drains: everything was published
                while await pool.fetchval(
                        "SELECT count(*) FROM fournines_outbox WHERE sent_at IS NULL"):
                    await asyncio.sleep(0.1)
            await asyncio.sleep(2)  # let what is left in flight land
        finally:
            relay.stop()
            await relaying
            await publisher.close()
            await handle.stop()
        twice = await pool.fetch("SELECT n FROM effects GROUP BY n HAVING count(*) > 1")
        assert twice == []
        assert await applied(pool, before) == len(before)
        assert await applied(pool, after) == len(after)
        lost = len(during) - await applied(pool, during)
        print(f"\nbroker restart: {lost} of {len(during)} records in flight were lost "
              "with Tansu's memory (published and marked sent, not yet read)")
