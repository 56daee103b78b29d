"""A RabbitMQ restart during consumption: consumer and relay reconnect, nothing is lost.

The broker is a private one this module starts (see ``_private_rabbit``), so stopping it
disturbs nobody else. Quorum queues keep their messages on disk across the restart; the
consumer (``connect_robust``) and the relay's publisher reconnect by themselves; what was
in flight is redelivered and the inbox applies it once.

Why this once failed under load: aiormq cancels the delivery tasks of a channel that
closes, and the consumer's queue of deliveries waiting for a handler slot kept the
entries of the cancelled ones. After the reconnect, each new delivery's task took a
stale entry (its ack failed, harmlessly) and left its own live one behind: the last
``prefetch`` or so messages stayed unacked on a healthy channel and were never
redelivered. The more tasks were waiting for a slot when the broker went, the more
were stranded, hence the load sensitivity. The forced close below reproduces it in
seconds, without a restart.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg

from fournines.data import Message, RabbitPublisher, Relay, consumer, init_schema, outbox

from ._private_rabbit import PrivateRabbit

N = 2000


async def _count(pool: Any, table: str) -> int:
    value: int = await pool.fetchval(f"SELECT count(*) FROM {table}")
    return value


async def _wait_for(pool: Any, table: str, at_least: int, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while await _count(pool, table) < at_least:
            await asyncio.sleep(0.05)


async def test_a_forced_close_while_deliveries_wait_for_a_slot_strands_none(
    database: str, private_rabbit: PrivateRabbit,
) -> None:
    queue, table = f"forced-{uuid.uuid4().hex[:6]}", f"forced_{uuid.uuid4().hex[:6]}"
    total = 300

    # One handler at a time, 64 sent ahead: most deliveries wait for the slot.
    @consumer(queue=queue, ladder=(0.05,), prefetch=64, concurrency=1)
    async def handle(msg: Message, tx: Any) -> None:
        await asyncio.sleep(0.002)
        await tx.execute(f"INSERT INTO {table} VALUES ($1)", msg.body["n"])

    async with asyncpg.create_pool(database, min_size=1, max_size=4) as pool:
        await init_schema(pool)
        await pool.execute(f"CREATE TABLE {table} (n int NOT NULL)")
        await handle.start(pool, private_rabbit.url)
        publisher = RabbitPublisher(private_rabbit.url)
        try:
            async with pool.acquire() as conn, conn.transaction():
                for n in range(total):
                    await outbox.add(conn, queue, f"k{n}", json.dumps({"n": n}))
            await Relay(pool, publisher, batch_size=total).relay_once()
            await _wait_for(pool, table, 20, 60)
            assert len(handle._waiting) > 0  # deliveries are queued behind the slot
            await asyncio.to_thread(private_rabbit.close_connections)
            await _wait_for(pool, table, total, 120)
        finally:
            await publisher.close()
            await handle.stop()
        assert await pool.fetchval(f"SELECT count(DISTINCT n) FROM {table}") == total
        assert await _count(pool, table) == total


async def test_a_broker_restart_during_consumption_loses_nothing_and_applies_nothing_twice(
    database: str, private_rabbit: PrivateRabbit,
) -> None:
    queue = f"restart-{uuid.uuid4().hex[:6]}"

    @consumer(queue=queue, ladder=(0.05,), prefetch=32, concurrency=4)
    async def handle(msg: Message, tx: Any) -> None:
        await tx.execute("INSERT INTO effects VALUES ($1)", msg.body["n"])

    async with asyncpg.create_pool(database, min_size=1, max_size=8) as pool:
        await init_schema(pool)
        await pool.execute("CREATE TABLE effects (n int NOT NULL)")
        await handle.start(pool, private_rabbit.url)
        publisher = RabbitPublisher(private_rabbit.url)
        relay = Relay(pool, publisher, batch_size=50, poll_interval=0.2, retry_delay=0.5)
        relaying = asyncio.create_task(relay.run())
        try:
            async with pool.acquire() as conn, conn.transaction():
                for n in range(N):
                    await outbox.add(conn, queue, f"k{n % 20}", json.dumps({"n": n}))
            await _wait_for(pool, "effects", N // 4, 120)
            await asyncio.to_thread(private_rabbit.stop)
            at_stop = await _count(pool, "effects")
            await asyncio.sleep(1)  # the relay and the consumer see the broker gone
            await asyncio.to_thread(private_rabbit.start)
            await _wait_for(pool, "effects", N, 180)
        finally:
            relay.stop()
            await relaying
            await publisher.close()
            await handle.stop()
        assert await pool.fetchval("SELECT count(DISTINCT n) FROM effects") == N
        assert await _count(pool, "effects") == N
        assert at_stop < N  # the restart fell in the middle of the work
        assert await pool.fetchval(
            "SELECT count(*) FROM fournines_outbox WHERE sent_at IS NULL") == 0


async def test_a_broker_that_stops_confirming_fails_the_batch_after_the_timeout_and_keeps_the_rows(
    database: str, private_rabbit: PrivateRabbit,
) -> None:
    queue = f"blocked-{uuid.uuid4().hex[:6]}"
    async with asyncpg.create_pool(database, min_size=1, max_size=4) as pool:
        await init_schema(pool)
        publisher = RabbitPublisher(private_rabbit.url, timeout=1.0)
        relay = Relay(pool, publisher)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await outbox.add(conn, queue, "k", b"{}", message_id=f"{queue}-1")
            # A memory alarm: the broker accepts connections but blocks every publisher.
            await asyncio.to_thread(private_rabbit.ctl_ok, "set_vm_memory_high_watermark",
                                    "0.000001")
            try:
                async with asyncio.timeout(60):  # a hang here is the bug
                    try:
                        await relay.relay_once()
                    except TimeoutError:
                        pass
                    else:
                        raise AssertionError("the blocked publish did not time out")
            finally:
                await asyncio.to_thread(private_rabbit.ctl_ok, "set_vm_memory_high_watermark",
                                        "0.4")
            assert await pool.fetchval(
                "SELECT sent_at FROM fournines_outbox WHERE id = $1", f"{queue}-1") is None
        finally:
            await publisher.close()
