"""A Kafka consumer or relay process for the crash tests.

``python _kafka_worker.py consumer|relay DSN BOOTSTRAP TOPIC LOG``.

The consumer applies ``{"n": ...}`` into ``effects`` (no unique constraint, so a
record applied twice would show) and appends one line per suppressed duplicate to
LOG, flushed at once, since the process is killed without warning.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import asyncpg

from fournines.data import KafkaMessage, KafkaPublisher, MessageHandled, Relay, kafka_consumer


async def run_consumer(dsn: str, bootstrap: str, topic: str, log: str) -> None:
    out = open(log, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def count(event: object) -> None:
        if isinstance(event, MessageHandled) and event.outcome == "duplicate":
            out.write("duplicate\n")

    batch = int(os.environ.get("FOURNINES_CRASH_BATCH", "1"))

    @kafka_consumer(topic=topic, ladder=(0.05, 0.1), partitions=4, concurrency=4, batch=batch,
                    listeners=[count])
    async def handle(msg: KafkaMessage, tx: Any) -> None:
        await tx.execute("INSERT INTO effects (message_id, n) VALUES ($1, $2)", msg.id,
                         msg.body["n"])

    async with asyncpg.create_pool(dsn, min_size=2, max_size=10) as pool:
        # run() = start() + wait for SIGTERM + a graceful stop; "ready" once started.
        await handle.start(pool, bootstrap)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        await stopping.wait()
        await handle.stop()


async def run_relay(dsn: str, bootstrap: str) -> None:
    async with asyncpg.create_pool(dsn, min_size=2, max_size=4) as pool:
        publisher = KafkaPublisher(bootstrap)
        relay = Relay(pool, publisher, batch_size=200, poll_interval=0.2)
        print("ready", flush=True)
        await relay.run()


if __name__ == "__main__":
    role, dsn, bootstrap, topic, log = sys.argv[1:6]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(run_consumer(dsn, bootstrap, topic, log) if role == "consumer"
                else run_relay(dsn, bootstrap))
