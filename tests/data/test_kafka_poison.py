"""Poison records among good ones on Kafka, end to end: outbox, relay, consumer, dlq.

Of 1,000 messages 1 % always fail (they end in ``T.dead`` after the ladder, with
their history in headers) and 1 % fail twice then pass (applied exactly once);
after the fix, ``fournines dlq replay --url kafka://...`` applies the dead letters once.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from fournines.cli import main
from fournines.data import (
    KafkaMessage,
    KafkaPublisher,
    MessageHandled,
    Relay,
    init_schema,
    kafka_consumer,
    list_kafka_dead_letters,
    outbox,
)
from fournines.testing import RecordingListener

from ._amqp import unique
from ._tansu import Tansu

N = 1000


async def test_kafka_poison_is_dead_lettered_flaky_ones_applied_once_replay_after_a_fix(
    database: str, tansu: Tansu,
) -> None:
    topic, rec = unique("kpoison"), RecordingListener()
    poison = {n for n in range(N) if n % 100 == 7}
    flaky = {n for n in range(N) if n % 100 == 42}
    fixed = False

    @kafka_consumer(topic=topic, ladder=(0.05, 0.1, 0.2), listeners=[rec])
    async def handle(msg: KafkaMessage, tx: Any) -> None:
        n = msg.body["n"]
        await tx.execute("INSERT INTO effects VALUES ($1)", n)
        if n in poison and not fixed:
            raise ConnectionError(f"message {n} cannot be handled yet")
        if n in flaky and msg.attempt < 3:
            raise TimeoutError(f"message {n} timed out")

    async with asyncpg.create_pool(database, min_size=1, max_size=10) as pool:
        await init_schema(pool)
        await pool.execute("CREATE TABLE effects (n int NOT NULL)")  # no key: twice would show
        await handle.start(pool, tansu.bootstrap)
        publisher = KafkaPublisher(tansu.bootstrap)
        relay = Relay(pool, publisher, poll_interval=0.2)
        relaying = asyncio.create_task(relay.run())
        try:
            async with pool.acquire() as conn, conn.transaction():
                for n in range(N):
                    await outbox.add(conn, topic, f"k{n % 10}", json.dumps({"n": n}),
                                     message_id=f"p-{n}")

            def outcomes(kind: str) -> int:
                return sum(1 for e in rec.of(MessageHandled) if e.outcome == kind)

            async with asyncio.timeout(180):
                while outcomes("acked") < N - len(poison) or outcomes("dead_lettered") < len(
                        poison):
                    await asyncio.sleep(0.05)
            letters = await list_kafka_dead_letters(topic, tansu.bootstrap)
            assert sorted(letter.id or "" for letter in letters) == sorted(
                f"p-{n}" for n in poison)
            for letter in letters:
                assert letter.reason == "retries_exhausted"
                assert letter.exception == "builtins.ConnectionError"
                assert letter.attempts == 4  # the first try and three ladder steps
                assert letter.original_routing_key == topic
                assert letter.original_partition is not None
                assert letter.original_offset is not None
                assert letter.first_failure and letter.last_failure
                assert letter.first_failure < letter.last_failure
            retried = [e.step for e in rec.of(MessageHandled) if e.outcome == "retried"]
            assert retried.count(1) == len(poison) + len(flaky)
            assert retried.count(3) == len(poison)

            fixed = True
            url = f"kafka://{tansu.bootstrap}"
            assert await asyncio.to_thread(main, ["dlq", "replay", topic, "--url", url]) == 0
            async with asyncio.timeout(60):
                while outcomes("acked") < N:
                    await asyncio.sleep(0.05)
            # A second replay finds nothing left to send.
            assert await asyncio.to_thread(main, ["dlq", "replay", topic, "--url", url]) == 0
        finally:
            relay.stop()
            await relaying
            await publisher.close()
            await handle.stop()
        assert await pool.fetchval("SELECT count(*) FROM effects") == N
        assert await pool.fetchval("SELECT count(DISTINCT n) FROM effects") == N
        assert await list_kafka_dead_letters(topic, tansu.bootstrap) == []
