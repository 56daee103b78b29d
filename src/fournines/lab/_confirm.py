"""The lab's payment confirmation consumer: ``python -m fournines.lab._confirm``.

Handling a confirmation writes one row in ``lab_confirmations`` (no unique key: a
message handled twice leaves two rows, which the lab counts at the end) and then
notifies the customer (:data:`HANDLE_TIME`, a call elsewhere), so a SIGKILL finds
messages in the middle of their handling:

- protected: :func:`fournines.data.consumer`: the row, the inbox row and the
  notification in one transaction, acked after COMMIT (a kill rolls it all back,
  and the redelivery is handled as if new);
- unprotected: plain aio-pika: the row is committed, the customer notified, then
  the message acked; a kill in between redelivers a message whose row is there,
  and it is written again.

Configured from ``FOURNINES_LAB_DATABASE_URL``, ``FOURNINES_LAB_AMQP_URL``,
``FOURNINES_LAB_QUEUE`` and ``FOURNINES_LAB_VARIANT``; prints :data:`READY` once
it consumes (the lab waits for that line in its log).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

__all__ = ["LADDER", "READY", "main"]

READY = "fournines-lab-consumer: consuming"
LADDER = (0.5, 1.0, 2.0, 4.0)
"""The protected consumer's retry ladder, in seconds."""
HANDLE_TIME = 0.05
"""Seconds the notification of one confirmation takes."""


async def _effect(conn: Any, payment_id: str) -> None:
    await conn.execute("INSERT INTO lab_confirmations (payment_id) VALUES ($1)", payment_id)


async def _notify() -> None:
    await asyncio.sleep(HANDLE_TIME)


async def _protected(pool: Any, url: str, queue: str) -> None:
    from ..data import Message, consumer  # noqa: PLC0415

    # The ladder rides out a database restart of a few seconds (7.5 s of waits in all)
    # before a message goes to the dead letters, which the lab counts.
    @consumer(queue=queue, name="lab-confirm", ladder=LADDER, prefetch=32, concurrency=8)
    async def confirm(msg: Message, tx: Any) -> None:
        await _effect(tx, str(msg.body["payment"]))
        await _notify()

    await confirm.start(pool, url)
    print(READY, flush=True)
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()
    await confirm.stop()


async def _unprotected(pool: Any, url: str, queue: str) -> None:
    import aio_pika  # noqa: PLC0415

    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=32)
    declared = await channel.declare_queue(queue, durable=True)
    slots = asyncio.Semaphore(8)

    async def on_message(message: Any) -> None:
        async with slots:
            payment = str(json.loads(message.body)["payment"])
            async with pool.acquire() as conn, conn.transaction():
                await _effect(conn, payment)
            await _notify()
            await message.ack()

    await declared.consume(on_message)
    print(READY, flush=True)
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()
    await connection.close()


async def main() -> None:
    """Consume until SIGTERM."""
    import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415

    pool = await asyncpg.create_pool(os.environ["FOURNINES_LAB_DATABASE_URL"], min_size=1,
                                     max_size=8)
    url, queue = os.environ["FOURNINES_LAB_AMQP_URL"], os.environ["FOURNINES_LAB_QUEUE"]
    try:
        if os.environ.get("FOURNINES_LAB_VARIANT") == "protected":
            await _protected(pool, url, queue)
        else:
            await _unprotected(pool, url, queue)
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
