"""A consumer or relay process for the crash tests.

``python _worker.py consumer|relay DSN URL QUEUE LOG``.

The consumer applies ``{"n": ...}`` into ``effects`` (no unique constraint, so a
message applied twice would show) and appends one line per suppressed duplicate
to LOG, flushed at once, since the process is killed without warning.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import asyncpg

from fournines.data import Message, MessageHandled, RabbitPublisher, Relay, consumer


async def run_consumer(dsn: str, url: str, queue: str, log: str) -> None:
    out = open(log, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def count(event: object) -> None:
        if isinstance(event, MessageHandled) and event.outcome == "duplicate":
            out.write("duplicate\n")

    batch = int(os.environ.get("FOURNINES_CRASH_BATCH", "1"))

    @consumer(queue=queue, ladder=(0.05, 0.1), prefetch=64, concurrency=8, batch=batch,
              listeners=[count])
    async def handle(msg: Message, tx: Any) -> None:
        await tx.execute("INSERT INTO effects (message_id, n) VALUES ($1, $2)", msg.id,
                         msg.body["n"])

    async with asyncpg.create_pool(dsn, min_size=2, max_size=10) as pool:
        print("ready", flush=True)
        await handle.run(pool, url)


async def run_relay(dsn: str, url: str) -> None:
    async with asyncpg.create_pool(dsn, min_size=2, max_size=4) as pool:
        publisher = RabbitPublisher(url)
        relay = Relay(pool, publisher, batch_size=200, poll_interval=0.2)
        print("ready", flush=True)
        await relay.run()


if __name__ == "__main__":
    role, dsn, url, queue, log = sys.argv[1:6]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(run_consumer(dsn, url, queue, log) if role == "consumer" else run_relay(dsn, url))
