"""Poison messages among good ones, end to end through the outbox, the relay and the consumer.

Of 1,000 messages 1 % always fail (they end in the dead letters after the ladder,
with their history in headers) and 1 % fail twice then pass (applied exactly
once); after the fix, ``fournines dlq replay`` applies the dead letters once.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from fournines.cli import main
from fournines.data import (
    Message,
    MessageHandled,
    RabbitPublisher,
    Relay,
    consumer,
    init_schema,
    list_dead_letters,
    outbox,
)
from fournines.testing import RecordingListener

from ._amqp import unique

N = 1000


async def test_poison_messages_are_dead_lettered_flaky_ones_applied_once_replay_after_a_fix(
    database: str, amqp_url: str,
) -> None:
    queue, rec = unique("poison"), RecordingListener()
    poison = {n for n in range(N) if n % 100 == 7}
    flaky = {n for n in range(N) if n % 100 == 42}
    fixed = False

    @consumer(queue=queue, ladder=(0.05, 0.1, 0.2), listeners=[rec])
    async def handle(msg: Message, tx: Any) -> None:
        n = msg.body["n"]
        await tx.execute("INSERT INTO effects VALUES ($1)", n)
        if n in poison and not fixed:
            raise ConnectionError(f"message {n} cannot be handled yet")
        if n in flaky and msg.attempt < 3:
            raise TimeoutError(f"message {n} timed out")

    async with asyncpg.create_pool(database, min_size=1, max_size=10) as pool:
        await init_schema(pool)
        await pool.execute("CREATE TABLE effects (n int NOT NULL)")  # no key: twice would show
        await handle.start(pool, amqp_url)
        publisher = RabbitPublisher(amqp_url)
        relay = Relay(pool, publisher, poll_interval=0.2)
        relaying = asyncio.create_task(relay.run())
        try:
            async with pool.acquire() as conn, conn.transaction():
                for n in range(N):
                    await outbox.add(conn, queue, f"k{n % 10}", json.dumps({"n": n}),
                                     message_id=f"p-{n}")

            def outcomes(kind: str) -> int:
                return sum(1 for e in rec.of(MessageHandled) if e.outcome == kind)

            async with asyncio.timeout(120):
                while outcomes("acked") < N - len(poison) or outcomes("dead_lettered") < len(
                        poison):
                    await asyncio.sleep(0.05)
            letters = await list_dead_letters(queue, amqp_url)
            assert sorted(letter.id or "" for letter in letters) == sorted(
                f"p-{n}" for n in poison)
            for letter in letters:
                assert letter.reason == "retries_exhausted"
                assert letter.exception == "builtins.ConnectionError"
                assert letter.attempts == 4  # the first try and three ladder steps
                assert letter.original_routing_key == queue
                assert letter.first_failure and letter.last_failure
                assert letter.first_failure < letter.last_failure
            retried = [e.step for e in rec.of(MessageHandled) if e.outcome == "retried"]
            assert retried.count(1) == len(poison) + len(flaky)
            assert retried.count(3) == len(poison)

            fixed = True
            assert await asyncio.to_thread(main, ["dlq", "replay", queue, "--url", amqp_url]) == 0
            async with asyncio.timeout(60):
                while outcomes("acked") < N:
                    await asyncio.sleep(0.05)
        finally:
            relay.stop()
            await relaying
            await publisher.close()
            await handle.stop()
        assert await pool.fetchval("SELECT count(*) FROM effects") == N
        assert await pool.fetchval("SELECT count(DISTINCT n) FROM effects") == N
        assert await list_dead_letters(queue, amqp_url) == []
