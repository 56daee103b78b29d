"""Claim: the idempotent consumer keeps at least half the throughput of a bare consumer.

Three consumers drain the same kind of preloaded quorum queue, in alternating rounds:

- ``bare``: aio-pika, manual ack after each message, no database (the ceiling);
- ``bare + INSERT``: the same, with the handler's effect as one autocommit INSERT (what
  a hand-written consumer does: not idempotent, a redelivery applies it twice);
- ``fournines``: :func:`fournines.data.consumer`, the same INSERT inside one transaction
  with the inbox row, ack after COMMIT;
- ``fournines batch=16``: the same, up to 16 waiting deliveries per transaction.

Each uses prefetch 64 and 8 handlers at once (the bare ones run a task per message
under the same bound). Then the relay's throughput: rows moved from the outbox to a
queue with publisher confirms, batches of 200.
Target (issue 18): ``fournines`` >= 0.5x ``bare``.
Run: ``.venv/bin/python bench/consumer_throughput.py`` (DATABASE_URL, AMQP_URL; defaults
the machine's PostgreSQL as postgres and RabbitMQ as guest). Makes and drops its own
database; its queues are named ``bench-*`` and deleted after.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid
from typing import Any

import aio_pika
import asyncpg

from fournines.data import (
    MESSAGE_ID_HEADER,
    Message,
    RabbitPublisher,
    Relay,
    consumer,
    dead_queue,
    declare_queues,
    init_schema,
    outbox,
    retry_queue,
)

DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "3000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PREFETCH, CONCURRENCY = 64, 8


async def preload(channel: Any, queue: str) -> None:
    # Every form drains the same kind of queue: the consumer's own topology.
    await idempotent_declare(channel, queue)
    for first in range(0, MESSAGES, 500):
        await asyncio.gather(*(
            channel.default_exchange.publish(aio_pika.Message(
                json.dumps({"n": n}).encode(),
                headers={MESSAGE_ID_HEADER: f"{queue}-{n}"}), routing_key=queue)
            for n in range(first, min(MESSAGES, first + 500))))


async def bare(connection: Any, queue: str, pool: asyncpg.Pool | None) -> float:
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    source = await channel.declare_queue(queue, passive=True)
    slots, done, count = asyncio.Semaphore(CONCURRENCY), asyncio.Event(), 0

    async def on_message(message: Any) -> None:
        nonlocal count
        async with slots:
            if pool is not None:
                await pool.execute("INSERT INTO effects VALUES ($1)",
                                   message.headers[MESSAGE_ID_HEADER])
            await message.ack()
        count += 1
        if count == MESSAGES:
            done.set()

    began = time.perf_counter()
    tag = await source.consume(on_message)
    await done.wait()
    elapsed = time.perf_counter() - began
    await source.cancel(tag)
    await channel.close()
    return MESSAGES / elapsed


async def idempotent(pool: asyncpg.Pool, queue: str, batch: int = 1) -> float:
    done, count = asyncio.Event(), 0

    @consumer(queue=queue, prefetch=PREFETCH, concurrency=CONCURRENCY, delivery_limit=None,
              batch=batch)
    async def handle(msg: Message, tx: Any) -> None:
        nonlocal count
        await tx.execute("INSERT INTO effects VALUES ($1)", msg.id)
        count += 1
        if count == MESSAGES:
            done.set()

    began = time.perf_counter()
    await handle.start(pool, URL)
    await done.wait()
    elapsed = time.perf_counter() - began
    await handle.stop()
    return MESSAGES / elapsed


async def relay_rate(pool: asyncpg.Pool, channel: Any) -> float:
    queue = f"bench-relay-{uuid.uuid4().hex[:6]}"
    await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
    async with pool.acquire() as conn, conn.transaction():
        for n in range(MESSAGES):
            await outbox.add(conn, queue, f"k{n % 50}", json.dumps({"n": n}))
    publisher = RabbitPublisher(URL)
    relay = Relay(pool, publisher, batch_size=200)
    began = time.perf_counter()
    while await relay.relay_once():
        pass
    elapsed = time.perf_counter() - began
    await publisher.close()
    await channel.queue_delete(queue)
    return MESSAGES / elapsed


async def main() -> None:
    name = f"fournines_bench_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(DSN)
    await admin.execute(f"CREATE DATABASE {name}")
    dsn = DSN.rpartition("/")[0] + "/" + name
    queues: list[str] = []
    try:
        async with asyncpg.create_pool(dsn, min_size=CONCURRENCY, max_size=CONCURRENCY + 2) as pool:
            await init_schema(pool)
            await pool.execute("CREATE TABLE effects (id text NOT NULL)")
            connection = await aio_pika.connect(URL)
            channel = await connection.channel()
            rates: dict[str, list[float]] = {"bare": [], "bare + INSERT": [], "fournines": [],
                                            "fournines batch=16": []}
            for _ in range(ROUNDS):
                for form, samples in rates.items():
                    queue = f"bench-{uuid.uuid4().hex[:6]}"
                    queues.append(queue)
                    await preload(channel, queue)
                    if form == "bare":
                        samples.append(await bare(connection, queue, None))
                    elif form == "bare + INSERT":
                        samples.append(await bare(connection, queue, pool))
                    elif form == "fournines":
                        samples.append(await idempotent(pool, queue))
                    else:
                        samples.append(await idempotent(pool, queue, batch=16))
            relay = [await relay_rate(pool, channel) for _ in range(ROUNDS)]
            for queue in queues:
                for extra in (queue, dead_queue(queue), retry_queue(queue, 1),
                              retry_queue(queue, 2), retry_queue(queue, 3)):
                    await channel.queue_delete(extra)
            await connection.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
    base = statistics.median(rates["bare"])
    print(f"{MESSAGES} messages per round, {ROUNDS} rounds, prefetch {PREFETCH}, "
          f"{CONCURRENCY} handlers (median of the rounds; shared machine)")
    for form, values in rates.items():
        median = statistics.median(values)
        print(f"  {form:<20} {median:8.0f} msg/s   x{median / base:.2f}   "
              f"(rounds: {', '.join(f'{v:.0f}' for v in values)})")
    print(f"  outbox relay         {statistics.median(relay):8.0f} msg/s   "
          f"(rounds: {', '.join(f'{v:.0f}' for v in relay)})")


async def idempotent_declare(channel: Any, queue: str) -> None:
    await declare_queues(channel, queue, delivery_limit=None)


if __name__ == "__main__":
    asyncio.run(main())
