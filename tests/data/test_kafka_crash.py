"""Crashes lose nothing and apply nothing twice, on Kafka: kill -9 of the consumer and the relay.

N messages go through the outbox to a Tansu topic of 4 partitions; the consumer
runs as a real process, killed with SIGKILL at 5 random moments and restarted each
time (the new one joins the group once Tansu has dropped the dead member), and the
relay is killed once: afterwards ``effects`` holds each of the N messages exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from fournines.data import declare_topics, init_schema, outbox

from ._amqp import unique
from ._tansu import Tansu

N = int(os.environ.get("FOURNINES_CRASH_MESSAGES", "10000"))
WORKER = Path(__file__).with_name("_kafka_worker.py")
SRC = Path(__file__).parents[2] / "src"


def start(role: str, database: str, bootstrap: str, topic: str, log: Path,
          batch: int = 1) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{Path(__file__).parents[2]}",
           "FOURNINES_CRASH_BATCH": str(batch)}
    proc = subprocess.Popen([sys.executable, str(WORKER), role, database, bootstrap, topic,
                             str(log)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.parametrize("batch", [1, 16])
async def test_kill_9_of_kafka_consumer_and_relay_loses_nothing_and_applies_nothing_twice(
    database: str, tansu: Tansu, tmp_path: Path, batch: int,
) -> None:
    topic, log = unique("kcrash"), tmp_path / "duplicates.log"
    log.touch()
    rng = random.Random()
    async with asyncpg.create_pool(database, min_size=1, max_size=4) as pool:
        await init_schema(pool)
        await pool.execute("DROP TABLE IF EXISTS effects")
        await pool.execute("TRUNCATE fournines_outbox, fournines_inbox, fournines_deliveries")
        await pool.execute("CREATE TABLE effects (message_id text NOT NULL, n int NOT NULL)")
        for first in range(0, N, 1000):  # the business transactions
            async with pool.acquire() as conn, conn.transaction():
                for n in range(first, min(N, first + 1000)):
                    await outbox.add(conn, topic, f"k{n % 50}", json.dumps({"n": n}))
        await declare_topics(tansu.bootstrap, topic, (0.05, 0.1), partitions=4)

        consumer = start("consumer", database, tansu.bootstrap, topic, log, batch)
        relay = start("relay", database, tansu.bootstrap, topic, log)
        thresholds = sorted(rng.randrange(N // 10, 9 * N // 10) for _ in range(5))
        relay_killed = False
        began = time.monotonic()
        try:
            async with asyncio.timeout(900):
                while True:
                    applied = await pool.fetchval("SELECT count(*) FROM effects")
                    if not relay_killed and await pool.fetchval(
                            "SELECT count(*) FROM fournines_outbox WHERE sent_at IS NOT NULL"
                    ) > N // 3:
                        kill(relay)
                        relay = start("relay", database, tansu.bootstrap, topic, log)
                        relay_killed = True
                    if thresholds and applied >= thresholds[0]:
                        thresholds.pop(0)
                        await asyncio.sleep(rng.random() * 0.2)  # a random instant
                        kill(consumer)
                        consumer = start("consumer", database, tansu.bootstrap, topic, log,
                                         batch)
                    if applied >= N and not thresholds:
                        break
                    await asyncio.sleep(0.01)
            elapsed = time.monotonic() - began
        finally:
            kill(relay)
            consumer.send_signal(signal.SIGTERM)  # graceful: finish in hand, commit, leave
            status = consumer.wait(timeout=60)
        assert status == 0
        assert relay_killed
        rows = await pool.fetch("SELECT n, count(*) FROM effects GROUP BY n HAVING count(*) > 1")
        assert rows == [], f"applied twice: {rows[:10]}"
        assert await pool.fetchval("SELECT count(DISTINCT n) FROM effects") == N
        assert await pool.fetchval("SELECT count(*) FROM effects") == N
        duplicates = log.read_text().count("duplicate")
        print(f"\nkafka batch={batch}: {N} messages, 5 consumer kills, 1 relay kill: "
              f"{elapsed:.1f}s, {duplicates} duplicates suppressed")
