"""The idempotent Kafka consumer on a real (Tansu) broker: inbox, order, ladder, dead letters."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from fournines import ConfigurationError
from fournines.cli import main
from fournines.data import (
    MESSAGE_ID_HEADER,
    DeadLetterNotFoundError,
    KafkaConsumer,
    KafkaMessage,
    MessageHandled,
    PoisonMessageError,
    declare_topics,
    kafka_consumer,
    list_kafka_dead_letters,
    purge_kafka_dead_letters,
    replay_kafka_dead_letters,
    retry_topic,
)
from fournines.testing import RecordingListener

from ._amqp import unique
from ._tansu import Tansu

LADDER = (0.2, 0.4)


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database, min_size=1, max_size=8) as pool:
        from fournines.data import init_schema

        await init_schema(pool)
        await pool.execute("CREATE TABLE IF NOT EXISTS effects "
                           "(id text NOT NULL, body text, at float8)")
        await pool.execute("TRUNCATE effects, fournines_inbox, fournines_deliveries")
        yield pool


async def produce(bootstrap: str, topic: str, body: bytes | None, *, ident: str | None = None,
                  key: str = "k", headers: dict[str, str] | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        extra = {MESSAGE_ID_HEADER: ident} if ident else {}
        await producer.send_and_wait(topic, body, key=key.encode(), headers=[
            (k, v.encode()) for k, v in {**extra, **(headers or {})}.items()])
    finally:
        await producer.stop()


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 60.0) -> None:
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.02)


def settled(rec: RecordingListener, outcome: str) -> list[MessageHandled]:
    return [e for e in rec.of(MessageHandled) if e.outcome == outcome]


def count(rec: RecordingListener, outcome: str, n: int) -> Callable[[], Awaitable[bool]]:
    return lambda: asyncio.sleep(0, len(settled(rec, outcome)) >= n)


def make(topic: str, rec: RecordingListener,
         behaviour: Callable[[KafkaMessage], None] | None = None,
         **settings: Any) -> KafkaConsumer:
    settings.setdefault("listeners", [rec])
    settings.setdefault("ladder", LADDER)
    settings.setdefault("partitions", 2)

    @kafka_consumer(topic=topic, **settings)
    async def handle(msg: KafkaMessage, tx: Any) -> None:
        await tx.execute("INSERT INTO effects VALUES ($1, $2, $3)", msg.id,
                         json.dumps(msg.body), time.time())
        if behaviour is not None:
            behaviour(msg)

    return handle


async def committed(bootstrap: str, group: str, topic: str, partitions: int = 2) -> int:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                              enable_auto_commit=False)
    await reader.start()
    try:
        total = 0
        for p in range(partitions):
            total += await reader.committed(TopicPartition(topic, p)) or 0
        return total
    finally:
        await reader.stop()


async def test_a_record_is_applied_once_and_its_offset_committed_after_the_transaction(
    pool: asyncpg.Pool, tansu: Tansu,
) -> None:
    topic, rec = unique("once"), RecordingListener()
    handle = make(topic, rec)
    await handle.start(pool, tansu.bootstrap)
    try:
        await produce(tansu.bootstrap, topic, b'{"a": 1}', ident="m-1")
        await produce(tansu.bootstrap, topic, b'{"a": 1}', ident="m-1")  # the same, again
        await until(lambda: asyncio.sleep(0, len(rec.of(MessageHandled)) >= 2))
        await until(lambda: committed_is(tansu, topic, 2))
    finally:
        await handle.stop()
    assert [e.outcome for e in rec.of(MessageHandled)] == ["acked", "duplicate"]
    assert await pool.fetchval("SELECT count(*) FROM effects") == 1
    assert await pool.fetchval("SELECT count(*) FROM fournines_inbox WHERE consumer = $1",
                               topic) == 1


async def committed_is(tansu: Tansu, topic: str, n: int) -> bool:
    return await committed(tansu.bootstrap, topic, topic) == n


@pytest.mark.parametrize("batch", [1, 16])
async def test_records_of_one_key_are_applied_in_order(pool: asyncpg.Pool, tansu: Tansu,
                                                       batch: int) -> None:
    topic, rec = unique("order"), RecordingListener()
    seen: dict[str, list[int]] = {}

    def note(msg: KafkaMessage) -> None:
        seen.setdefault(msg.key or "", []).append(msg.body["n"])

    handle = make(topic, rec, note, concurrency=2, batch=batch)
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all")
    await producer.start()
    await handle.start(pool, tansu.bootstrap)
    try:
        futures = [await producer.send(topic, json.dumps({"n": n}).encode(),
                                       key=f"k{n % 5}".encode(),
                                       headers=[(MESSAGE_ID_HEADER, f"o-{n}".encode())])
                   for n in range(200)]
        await asyncio.gather(*futures)
        await until(count(rec, "acked", 200))
    finally:
        await producer.stop()
        await handle.stop()
    assert sorted(seen) == [f"k{i}" for i in range(5)]
    for key, ns in seen.items():
        assert ns == sorted(ns), f"key {key} out of order"
        assert len(ns) == 40


async def test_a_failing_record_waits_in_the_retry_topic_until_due_then_passes(
    pool: asyncpg.Pool, tansu: Tansu,
) -> None:
    topic, rec = unique("ladder"), RecordingListener()
    tries: list[tuple[int, float]] = []

    def flaky(msg: KafkaMessage) -> None:
        tries.append((msg.attempt, time.time()))
        if msg.attempt < 3:
            raise TimeoutError("not yet")

    handle = make(topic, rec, flaky)
    await handle.start(pool, tansu.bootstrap)
    try:
        await produce(tansu.bootstrap, topic, b"{}", ident="f-1")
        await until(count(rec, "acked", 1))
    finally:
        await handle.stop()
    assert [e.step for e in settled(rec, "retried")] == [1, 2]
    assert [attempt for attempt, _ in tries] == [1, 2, 3]
    # Each retry ran no earlier than its step's delay after the failure before it.
    assert tries[1][1] - tries[0][1] >= LADDER[0] - 0.01
    assert tries[2][1] - tries[1][1] >= LADDER[1] - 0.01
    assert await pool.fetchval("SELECT count(*) FROM effects") == 1  # the failures rolled back


async def test_a_failure_in_a_batch_sends_only_the_failing_record_up_the_ladder(
    pool: asyncpg.Pool, tansu: Tansu,
) -> None:
    topic, rec = unique("batchfail"), RecordingListener()

    def behaviour(msg: KafkaMessage) -> None:
        if msg.body["n"] == 5 and msg.attempt == 1:
            raise TimeoutError("once")

    handle = make(topic, rec, behaviour, batch=16)
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all")
    await producer.start()
    try:
        # Produced before the consumer starts, so they arrive together and share batches.
        await declare(tansu, topic)
        await asyncio.gather(*[await producer.send(
            topic, json.dumps({"n": n}).encode(), key=b"one",
            headers=[(MESSAGE_ID_HEADER, f"bf-{n}".encode())]) for n in range(40)])
        await handle.start(pool, tansu.bootstrap)
        await until(count(rec, "acked", 40))
    finally:
        await producer.stop()
        await handle.stop()
    assert [e.step for e in settled(rec, "retried")] == [1]
    assert await pool.fetchval("SELECT count(*) FROM effects") == 40
    assert await pool.fetchval("SELECT count(DISTINCT id) FROM effects") == 40


async def declare(tansu: Tansu, topic: str) -> None:
    await declare_topics(tansu.bootstrap, topic, LADDER, partitions=2)


async def test_a_retry_that_is_not_due_pauses_only_its_partition(
    pool: asyncpg.Pool, tansu: Tansu,
) -> None:
    topic, rec = unique("pause"), RecordingListener()
    handled: list[str] = []

    def behaviour(msg: KafkaMessage) -> None:
        handled.append(msg.id)
        if msg.id == "slow" and msg.attempt == 1:
            raise TimeoutError("later")

    handle = make(topic, rec, behaviour, ladder=(3.0,))
    await handle.start(pool, tansu.bootstrap)
    try:
        await produce(tansu.bootstrap, topic, b"{}", ident="slow")
        await until(count(rec, "retried", 1))
        for n in range(20):  # keep flowing while the retry waits
            await produce(tansu.bootstrap, topic, b"{}", ident=f"fast-{n}", key=f"k{n}")
        await until(count(rec, "acked", 20))
        assert "slow" not in handled[1:]  # not due yet, not run yet
        await until(count(rec, "acked", 21))
    finally:
        await handle.stop()
    assert handled[-1] == "slow"


async def test_a_record_failing_every_step_is_dead_lettered_with_its_history(
    pool: asyncpg.Pool, tansu: Tansu,
) -> None:
    topic, rec = unique("dead"), RecordingListener()

    def fail(msg: KafkaMessage) -> None:
        raise ConnectionError("downstream is away")

    handle = make(topic, rec, fail)
    await handle.start(pool, tansu.bootstrap)
    try:
        await produce(tansu.bootstrap, topic, b'{"x": 1}', ident="d-1", key="kd")
        await until(count(rec, "dead_lettered", 1))
    finally:
        await handle.stop()
    [letter] = await list_kafka_dead_letters(topic, tansu.bootstrap)
    assert letter.id == "d-1"
    assert letter.reason == "retries_exhausted"
    assert letter.exception == "builtins.ConnectionError"
    assert letter.error == "downstream is away"
    assert letter.attempts == 3
    assert letter.original_routing_key == topic  # where it first failed
    assert letter.original_partition is not None and letter.original_offset == 0
    assert letter.first_failure and letter.last_failure
    assert letter.first_failure < letter.last_failure
    assert letter.headers["fournines-queue"] == topic
    assert letter.key == b"kd"
    assert letter.body == b'{"x": 1}'


async def test_a_validation_error_goes_to_the_dead_letters_without_the_ladder(
    pool: asyncpg.Pool, tansu: Tansu,
) -> None:
    topic, rec = unique("invalid"), RecordingListener()

    def invalid(msg: KafkaMessage) -> None:
        raise ValueError("amount must be positive")

    handle = make(topic, rec, invalid)
    await handle.start(pool, tansu.bootstrap)
    try:
        await produce(tansu.bootstrap, topic, b"{}", ident="v-1")
        await until(count(rec, "dead_lettered", 1))
    finally:
        await handle.stop()
    assert settled(rec, "retried") == []
    [letter] = await list_kafka_dead_letters(topic, tansu.bootstrap)
    assert (letter.reason, letter.attempts) == ("not_retryable", 1)


@pytest.mark.parametrize(("body", "headers", "reason"), [
    (b"{not json", {MESSAGE_ID_HEADER: "bad-1"}, "malformed_body"),
    (None, {MESSAGE_ID_HEADER: "bad-2"}, "malformed_body"),
    (b"{}", {}, "missing_message_id"),
    (b"{}", {MESSAGE_ID_HEADER: "bad-3", "fournines-attempts": "two"}, "malformed_header"),
])
async def test_bad_input_is_dead_lettered_with_the_reason_and_the_consumer_goes_on(
    pool: asyncpg.Pool, tansu: Tansu, body: bytes | None, headers: dict[str, str],
    reason: str,
) -> None:
    topic, rec = unique("bad"), RecordingListener()
    handle = make(topic, rec)
    await handle.start(pool, tansu.bootstrap)
    try:
        await produce(tansu.bootstrap, topic, body, headers=headers)
        await produce(tansu.bootstrap, topic, b'{"ok": true}', ident="good")  # same key: after
        await until(count(rec, "acked", 1))
    finally:
        await handle.stop()
    assert [e.reason for e in settled(rec, "dead_lettered")] == [reason]
    [letter] = await list_kafka_dead_letters(topic, tansu.bootstrap)
    assert letter.reason == reason
    assert await pool.fetchval("SELECT id FROM effects") == "good"


async def test_replay_after_a_fix_applies_once_and_a_second_replay_finds_nothing(
    pool: asyncpg.Pool, tansu: Tansu,
) -> None:
    topic, rec = unique("replay"), RecordingListener()
    fixed = False

    def broken(msg: KafkaMessage) -> None:
        if not fixed:
            raise PoisonMessageError("bug")

    handle = make(topic, rec, broken)
    await handle.start(pool, tansu.bootstrap)
    try:
        for n in range(3):
            await produce(tansu.bootstrap, topic, b"{}", ident=f"r-{n}")
        await until(count(rec, "dead_lettered", 3))
        fixed = True
        assert await replay_kafka_dead_letters(topic, tansu.bootstrap, ids=["r-1"]) == ["r-1"]
        await until(count(rec, "acked", 1))
        with pytest.raises(DeadLetterNotFoundError, match="r-1"):
            await replay_kafka_dead_letters(topic, tansu.bootstrap, ids=["r-1"])
        letters = await list_kafka_dead_letters(topic, tansu.bootstrap)
        assert sorted(letter.id or "" for letter in letters) == ["r-0", "r-2"]
        assert await purge_kafka_dead_letters(topic, tansu.bootstrap, ids=["r-2"]) == 1
        assert await asyncio.to_thread(
            main, ["dlq", "replay", topic, "--url", f"kafka://{tansu.bootstrap}"]) == 0
        await until(count(rec, "acked", 2))
    finally:
        await handle.stop()
    assert await list_kafka_dead_letters(topic, tansu.bootstrap) == []
    assert sorted(await pool.fetch("SELECT id FROM effects")) == [("r-0",), ("r-1",)]


async def test_dlq_cli_on_kafka_lists_shows_and_refuses_an_unknown_id(
    pool: asyncpg.Pool, tansu: Tansu, capsys: pytest.CaptureFixture[str],
) -> None:
    topic, rec = unique("cli"), RecordingListener()

    def fail(msg: KafkaMessage) -> None:
        raise PoisonMessageError("no", reason="rejected")

    handle = make(topic, rec, fail)
    await handle.start(pool, tansu.bootstrap)
    try:
        await produce(tansu.bootstrap, topic, b'{"n": 7}', ident="c-1")
        await until(count(rec, "dead_lettered", 1))
    finally:
        await handle.stop()
    url = f"kafka://{tansu.bootstrap}"
    assert await asyncio.to_thread(main, ["dlq", "list", topic, "--url", url]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert (line["id"], line["reason"], line["original_routing_key"]) == ("c-1", "rejected", topic)
    assert await asyncio.to_thread(main, ["dlq", "show", topic, "c-1", "--url", url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["body"] == '{"n": 7}'
    assert shown["headers"]["fournines-exception"] == "fournines._errors.PoisonMessageError"
    assert await asyncio.to_thread(main, ["dlq", "replay", topic, "nope", "--url", url]) == 1
    assert "no dead letter" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["dlq", "list", "no-such-topic", "--url", url]) == 1
    assert "no dead-letter topic" in capsys.readouterr().err


async def test_graceful_stop_finishes_the_record_in_hand_and_commits_it(
    pool: asyncpg.Pool, tansu: Tansu,
) -> None:
    topic, rec = unique("stop"), RecordingListener()
    entered = asyncio.Event()

    @kafka_consumer(topic=topic, partitions=1, listeners=[rec])
    async def handle(msg: KafkaMessage, tx: Any) -> None:
        entered.set()
        await asyncio.sleep(0.5)
        await tx.execute("INSERT INTO effects VALUES ($1, '', 0)", msg.id)

    await handle.start(pool, tansu.bootstrap)
    await produce(tansu.bootstrap, topic, b"{}", ident="s-1")
    await asyncio.wait_for(entered.wait(), 60)
    await handle.stop()
    assert [e.outcome for e in rec.of(MessageHandled)] == ["acked"]
    assert await committed(tansu.bootstrap, topic, topic, partitions=1) == 1


async def test_a_record_read_past_the_delivery_limit_is_dead_lettered(
    pool: asyncpg.Pool, tansu: Tansu,
) -> None:
    # As if the consumer had crashed on it twice already: the count survives processes.
    topic, rec = unique("limit"), RecordingListener()
    await pool.execute("INSERT INTO fournines_deliveries (consumer, message_id, deliveries) "
                       "VALUES ($1, 'crasher', 2)", topic)
    handle = make(topic, rec, delivery_limit=2)
    await handle.start(pool, tansu.bootstrap)
    try:
        await produce(tansu.bootstrap, topic, b"{}", ident="crasher")
        await produce(tansu.bootstrap, topic, b"{}", ident="next")
        await until(count(rec, "acked", 1))
    finally:
        await handle.stop()
    [letter] = await list_kafka_dead_letters(topic, tansu.bootstrap)
    assert (letter.id, letter.reason) == ("crasher", "delivery_limit")
    # Settled: its count is dropped, so a replay starts from zero.
    assert await pool.fetchval("SELECT count(*) FROM fournines_deliveries") == 0


async def test_declare_topics_creates_the_ladder_and_the_dead_letter_topic(tansu: Tansu) -> None:
    topic = unique("declare")
    names = await declare_topics(tansu.bootstrap, topic, (1.0, 2.0), partitions=3)
    assert names == [topic, retry_topic(topic, 1), retry_topic(topic, 2), f"{topic}.dead"]
    assert await declare_topics(tansu.bootstrap, topic, (1.0, 2.0)) == names  # idempotent


def test_bad_settings_name_the_field() -> None:
    async def handler(msg: KafkaMessage, tx: Any) -> None:
        return None

    with pytest.raises(ConfigurationError, match=r"kafka_consumer\.topic"):
        kafka_consumer(topic="")(handler)
    with pytest.raises(ConfigurationError, match=r"kafka_consumer\.concurrency"):
        kafka_consumer(topic="t", concurrency=0)(handler)
    with pytest.raises(ConfigurationError, match="coroutine function"):
        kafka_consumer(topic="t")(lambda msg, tx: None)  # type: ignore[arg-type]


async def test_lag_counts_the_records_not_yet_settled_per_partition(
    pool: asyncpg.Pool, tansu: Tansu,
) -> None:
    topic, rec = unique("lag"), RecordingListener()
    gate = asyncio.Event()

    @kafka_consumer(topic=topic, partitions=1, listeners=[rec])
    async def handle(msg: KafkaMessage, tx: Any) -> None:
        if msg.body["n"] == 1:
            await gate.wait()  # the second record holds the partition

    await declare_topics(tansu.bootstrap, topic, partitions=1)
    for n in range(10):
        await produce(tansu.bootstrap, topic, json.dumps({"n": n}).encode(), ident=f"l-{n}")
    await handle.start(pool, tansu.bootstrap)
    try:
        await until(count(rec, "acked", 1))
        assert handle.lag() == {(topic, 0): 9}  # 10 records, 1 settled
        gate.set()
        await until(count(rec, "acked", 10))
        assert handle.lag() == {(topic, 0): 0}
    finally:
        gate.set()
        await handle.stop()


async def test_a_second_member_joining_mid_stream_takes_partitions_and_nothing_is_applied_twice(
    pool: asyncpg.Pool, tansu: Tansu,
) -> None:
    topic, rec, rec_second = unique("rebalance"), RecordingListener(), RecordingListener()
    first = make(topic, rec, partitions=4)
    second = make(topic, rec, partitions=4, listeners=[rec, rec_second])
    await declare_topics(tansu.bootstrap, topic, LADDER, partitions=4)
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(
            topic, json.dumps({"n": n}).encode(), key=f"k{n % 16}".encode(),
            headers=[(MESSAGE_ID_HEADER, f"rb-{n}".encode())]) for n in range(2000)])
    finally:
        await producer.stop()
    await first.start(pool, tansu.bootstrap)
    try:
        await until(count(rec, "acked", 300))
        await second.start(pool, tansu.bootstrap)  # the group rebalances: revoke, commit
        await until(lambda: asyncio.sleep(0, len(settled(rec, "acked")) + len(
            settled(rec, "duplicate")) >= 2000 and len(settled(rec, "acked")) >= 2000), 120)
    finally:
        await second.stop()
        await first.stop()
    assert settled(rec_second, "acked"), "the second member never got a partition"
    assert await pool.fetchval("SELECT count(*) FROM effects") == 2000
    assert await pool.fetchval("SELECT count(DISTINCT id) FROM effects") == 2000


async def test_an_unexpected_error_outside_retry_on_is_dead_lettered_and_metrics_count_it(
    pool: asyncpg.Pool, tansu: Tansu,
) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from fournines.data import ConsumerMetrics

    registry = prometheus_client.CollectorRegistry()
    topic, rec = unique("unexpected"), RecordingListener()

    def boom(msg: KafkaMessage) -> None:
        if msg.id == "u-1":
            raise KeyError("surprise")

    handle = make(topic, rec, boom, retry_on=(TimeoutError,),
                  listeners=[rec, ConsumerMetrics(registry)])
    await handle.start(pool, tansu.bootstrap)
    try:
        await produce(tansu.bootstrap, topic, b"{}", ident="u-1")
        await produce(tansu.bootstrap, topic, b"{}", ident="u-2")
        await until(count(rec, "acked", 1))
    finally:
        await handle.stop()
    [letter] = await list_kafka_dead_letters(topic, tansu.bootstrap)
    assert (letter.id, letter.reason, letter.exception) == ("u-1", "not_retryable",
                                                           "builtins.KeyError")

    def sample(name: str, **labels: str) -> float | None:
        value: float | None = registry.get_sample_value(name, {"consumer": topic, **labels})
        return value

    assert sample("fournines_consumer_acked_total") == 1
    assert sample("fournines_consumer_dead_lettered_total", reason="not_retryable") == 1
