"""The idempotent RabbitMQ consumer: inbox, ladder, dead letters, dlq CLI, bad input."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import asyncpg
import pytest

from fournines import ConfigurationError
from fournines.cli import main
from fournines.data import (
    MESSAGE_ID_HEADER,
    Consumer,
    ConsumerMetrics,
    DeadLetterNotFoundError,
    Message,
    MessageHandled,
    PoisonMessageError,
    consumer,
    dead_queue,
    declare_queues,
    init_schema,
    list_dead_letters,
    replay_dead_letters,
)
from fournines.testing import RecordingListener

from ._amqp import unique

LADDER = (0.05, 0.1)


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database, min_size=1, max_size=8) as pool:
        await init_schema(pool)
        await pool.execute("CREATE TABLE IF NOT EXISTS effects (id text PRIMARY KEY, body text)")
        await pool.execute("TRUNCATE effects, fournines_inbox")
        yield pool


async def publish(url: str, queue: str, body: bytes, *, ident: str | None = None,
                  headers: dict[str, Any] | None = None) -> None:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        extra = {MESSAGE_ID_HEADER: ident} if ident else {}
        await channel.default_exchange.publish(
            aio_pika.Message(body, headers={**extra, **(headers or {})}), routing_key=queue)


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.02)


def settled(rec: RecordingListener, outcome: str) -> list[MessageHandled]:
    return [e for e in rec.of(MessageHandled) if e.outcome == outcome]


def make(queue: str, rec: RecordingListener, behaviour: Callable[[Message], None] | None = None,
         **settings: Any) -> Consumer:
    settings.setdefault("listeners", [rec])

    @consumer(queue=queue, ladder=LADDER, **settings)
    async def handle(msg: Message, tx: Any) -> None:
        await tx.execute("INSERT INTO effects VALUES ($1, $2)", msg.id, json.dumps(msg.body))
        if behaviour is not None:
            behaviour(msg)

    return handle


async def test_a_redelivered_message_is_acked_without_applying_it_again(
    pool: asyncpg.Pool, amqp_url: str,
) -> None:
    queue, rec = unique("dup"), RecordingListener()
    handle = make(queue, rec)
    await handle.start(pool, amqp_url)
    try:
        for _ in range(3):
            await publish(amqp_url, queue, b'{"n": 1}', ident="m-1")
        await until(lambda: asyncio.sleep(0, len(rec.of(MessageHandled)) == 3))
    finally:
        await handle.stop()
    assert await pool.fetchval("SELECT count(*) FROM effects") == 1
    assert len(settled(rec, "acked")) == 1 and len(settled(rec, "duplicate")) == 2


async def test_a_failure_that_passes_later_climbs_the_ladder_and_is_applied_once(
    pool: asyncpg.Pool, amqp_url: str,
) -> None:
    queue, rec = unique("ladder"), RecordingListener()

    def flaky(msg: Message) -> None:
        if msg.attempt < 3:
            raise ConnectionError("the payment service is down")

    handle = make(queue, rec, flaky)
    await handle.start(pool, amqp_url)
    try:
        await publish(amqp_url, queue, b'{"n": 2}', ident="m-2")
        await until(lambda: asyncio.sleep(0, bool(settled(rec, "acked"))))
    finally:
        await handle.stop()
    assert [e.step for e in settled(rec, "retried")] == [1, 2]
    assert await pool.fetchval("SELECT count(*) FROM effects") == 1  # rolled back twice


async def test_a_message_failing_every_time_ends_in_the_dead_letters_with_its_history(
    pool: asyncpg.Pool, amqp_url: str,
) -> None:
    queue, rec = unique("poison"), RecordingListener()

    def broken(msg: Message) -> None:
        raise ConnectionError(f"attempt {msg.attempt} failed")

    handle = make(queue, rec, broken)
    await handle.start(pool, amqp_url)
    try:
        await publish(amqp_url, queue, b'{"n": 3}', ident="m-3")
        await until(lambda: asyncio.sleep(0, bool(settled(rec, "dead_lettered"))))
    finally:
        await handle.stop()
    [letter] = await list_dead_letters(queue, amqp_url)
    assert letter.id == "m-3"
    assert letter.reason == "retries_exhausted"
    assert letter.exception == "builtins.ConnectionError"
    assert letter.error == "attempt 3 failed"
    assert letter.attempts == 3  # the first try and the two ladder steps
    assert letter.first_failure and letter.last_failure
    assert letter.first_failure < letter.last_failure
    assert letter.original_routing_key == queue
    assert json.loads(letter.body) == {"n": 3}
    assert await pool.fetchval("SELECT count(*) FROM effects") == 0


@pytest.mark.parametrize(("body", "ident", "error", "reason"), [
    (b"{not json", "m-4", None, "malformed_body"),
    (b'{"n": 5}', None, None, "missing_message_id"),
    (b'{"n": 6}', "m-6", ValueError("amount must be positive"), "not_retryable"),
    (b'{"n": 7}', "m-7", PoisonMessageError("unknown product", reason="unknown_product"),
     "unknown_product"),
])
async def test_a_message_no_retry_can_fix_goes_straight_to_the_dead_letters(
    pool: asyncpg.Pool, amqp_url: str, body: bytes, ident: str | None,
    error: Exception | None, reason: str,
) -> None:
    queue, rec = unique("bad"), RecordingListener()

    def fail(msg: Message) -> None:
        if error is not None:
            raise error

    handle = make(queue, rec, fail)
    await handle.start(pool, amqp_url)
    try:
        await publish(amqp_url, queue, body, ident=ident)
        await until(lambda: asyncio.sleep(0, bool(settled(rec, "dead_lettered"))))
    finally:
        await handle.stop()
    assert settled(rec, "retried") == []
    [letter] = await list_dead_letters(queue, amqp_url)
    assert letter.reason == reason
    assert letter.attempts == 1
    assert letter.body == body


async def test_an_unexpected_exception_is_retried_then_dead_lettered_and_the_consumer_lives(
    pool: asyncpg.Pool, amqp_url: str,
) -> None:
    queue, rec = unique("boom"), RecordingListener()

    def boom(msg: Message) -> None:
        if msg.body["n"] == 8:
            raise ZeroDivisionError("a bug")

    handle = make(queue, rec, boom)
    await handle.start(pool, amqp_url)
    try:
        await publish(amqp_url, queue, b'{"n": 8}', ident="m-8")
        await until(lambda: asyncio.sleep(0, bool(settled(rec, "dead_lettered"))))
        await publish(amqp_url, queue, b'{"n": 9}', ident="m-9")
        await until(lambda: asyncio.sleep(0, bool(settled(rec, "acked"))))
    finally:
        await handle.stop()
    [letter] = await list_dead_letters(queue, amqp_url)
    assert letter.exception == "builtins.ZeroDivisionError"
    assert await pool.fetchval("SELECT id FROM effects") == "m-9"


async def test_replay_after_a_fix_applies_dead_letters_once_and_again_is_harmless(
    pool: asyncpg.Pool, amqp_url: str,
) -> None:
    queue, rec = unique("replay"), RecordingListener()
    fixed = False

    def until_fixed(msg: Message) -> None:
        if not fixed:
            raise ValueError("rejected by the old code")

    handle = make(queue, rec, until_fixed)
    await handle.start(pool, amqp_url)
    try:
        for n in range(3):
            await publish(amqp_url, queue, b"{}", ident=f"r-{n}")
        await until(lambda: asyncio.sleep(0, len(settled(rec, "dead_lettered")) == 3))
        fixed = True
        assert await replay_dead_letters(queue, amqp_url, ids=["r-1"]) == ["r-1"]
        await until(lambda: asyncio.sleep(0, len(settled(rec, "acked")) == 1))
        with pytest.raises(DeadLetterNotFoundError, match="r-1"):
            await replay_dead_letters(queue, amqp_url, ids=["r-1"])
        assert sorted(await replay_dead_letters(queue, amqp_url)) == ["r-0", "r-2"]
        await until(lambda: asyncio.sleep(0, len(settled(rec, "acked")) == 3))
        # A copy of an applied message (a replay that crashed before its ack) is a duplicate.
        await publish(amqp_url, queue, b"{}", ident="r-1")
        await until(lambda: asyncio.sleep(0, len(settled(rec, "duplicate")) == 1))
    finally:
        await handle.stop()
    assert await pool.fetchval("SELECT count(*) FROM effects") == 3
    assert await list_dead_letters(queue, amqp_url) == []


async def test_dlq_cli_lists_shows_replays_and_purges(
    pool: asyncpg.Pool, amqp_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    queue, rec = unique("cli"), RecordingListener()

    def reject(msg: Message) -> None:
        raise ValueError("invalid order")

    handle = make(queue, rec, reject)
    await handle.start(pool, amqp_url)
    try:
        for n in range(2):
            await publish(amqp_url, queue, b'{"n": 1}', ident=f"c-{n}")
        await until(lambda: asyncio.sleep(0, len(settled(rec, "dead_lettered")) == 2))
    finally:
        await handle.stop()

    def cli(*args: str) -> tuple[int, str, str]:
        status = main(["dlq", *args, queue, "--url", amqp_url]) if not args[1:] else main(
            ["dlq", args[0], queue, *args[1:], "--url", amqp_url])
        out = capsys.readouterr()
        return status, out.out, out.err

    status, out, _ = await asyncio.to_thread(cli, "list")
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(line["id"], line["reason"]) for line in lines] == [
        ("c-0", "not_retryable"), ("c-1", "not_retryable")]
    status, out, _ = await asyncio.to_thread(cli, "show", "c-1")
    assert status == 0 and json.loads(out)["error"] == "invalid order"
    status, _, err = await asyncio.to_thread(cli, "replay", "no-such-id")
    assert status == 1 and "no-such-id" in err and err.count("\n") == 1
    status, _, err = await asyncio.to_thread(cli, "show", "no-such-id")
    assert status == 1 and "no-such-id" in err
    status, out, _ = await asyncio.to_thread(cli, "purge", "c-0")
    assert status == 0 and "purged 1" in out
    status, out, _ = await asyncio.to_thread(cli, "replay")
    assert status == 0 and "replayed 1" in out
    assert await list_dead_letters(queue, amqp_url) == []


def test_dlq_of_a_queue_that_does_not_exist_is_one_line(
    amqp_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["dlq", "list", unique("nothing"), "--url", amqp_url]) == 1
    assert capsys.readouterr().err.count("\n") == 1


async def test_stop_finishes_the_messages_in_flight_and_acks_them(
    pool: asyncpg.Pool, amqp_url: str,
) -> None:
    queue, rec = unique("stop"), RecordingListener()
    started = asyncio.Event()

    @consumer(queue=queue, ladder=LADDER, listeners=[rec])
    async def slow(msg: Message, tx: Any) -> None:
        started.set()
        await asyncio.sleep(0.3)
        await tx.execute("INSERT INTO effects VALUES ($1, '')", msg.id)

    await slow.start(pool, amqp_url)
    await publish(amqp_url, queue, b"{}", ident="s-1")
    await asyncio.wait_for(started.wait(), 30)
    await slow.stop()
    assert [e.outcome for e in rec.of(MessageHandled)] == ["acked"]
    assert await pool.fetchval("SELECT count(*) FROM effects") == 1
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        assert declared.declaration_result.message_count == 0


async def test_handlers_never_run_more_at_once_than_the_concurrency(
    pool: asyncpg.Pool, amqp_url: str,
) -> None:
    queue, rec = unique("bulkhead"), RecordingListener()
    running, most = 0, 0

    @consumer(queue=queue, concurrency=3, prefetch=10, listeners=[rec])
    async def handle(msg: Message, tx: Any) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1

    await handle.start(pool, amqp_url)
    try:
        for n in range(20):
            await publish(amqp_url, queue, b"{}", ident=f"b-{n}")
        await until(lambda: asyncio.sleep(0, len(settled(rec, "acked")) == 20))
    finally:
        await handle.stop()
    assert most == 3


async def test_metrics_count_each_outcome(pool: asyncpg.Pool, amqp_url: str) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    metrics, rec = ConsumerMetrics(registry), RecordingListener()
    queue = unique("metrics")

    def some_fail(msg: Message) -> None:
        if msg.body["n"] == 2 and msg.attempt == 1:
            raise ConnectionError("later")
        if msg.body["n"] == 3:
            raise ValueError("never")

    handle = make(queue, rec, some_fail, name="orders", listeners=[rec, metrics])
    await handle.start(pool, amqp_url)
    try:
        for n, ident in ((1, "x-1"), (1, "x-1"), (2, "x-2"), (3, "x-3")):
            await publish(amqp_url, queue, json.dumps({"n": n}).encode(), ident=ident)
        await until(lambda: asyncio.sleep(0, len(rec.of(MessageHandled)) == 5))
    finally:
        await handle.stop()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"consumer": "orders", **labels})

    assert value("fournines_consumer_consumed_total") == 5
    assert value("fournines_consumer_acked_total") == 3
    assert value("fournines_consumer_duplicates_total") == 1
    assert value("fournines_consumer_retried_total", step="1") == 1
    assert value("fournines_consumer_dead_lettered_total", reason="not_retryable") == 1
    assert value("fournines_consumer_handler_seconds_count") == 5


@pytest.mark.parametrize(("settings", "field"), [
    ({"queue": ""}, "queue"), ({"queue": "q", "ladder": (1.0, -1.0)}, "ladder"),
    ({"queue": "q", "prefetch": 0}, "prefetch"),
    ({"queue": "q", "concurrency": 5, "prefetch": 2}, "concurrency"),
    ({"queue": "q", "retry_on": ()}, "retry_on")])
def test_bad_settings_are_named(settings: dict[str, Any], field: str) -> None:
    async def handle(msg: Message, tx: Any) -> None: ...

    with pytest.raises(ConfigurationError, match=rf"consumer\.{field}"):
        consumer(**settings)(handle)


def test_a_plain_function_handler_is_refused() -> None:
    def handle(msg: Message, tx: Any) -> None: ...

    with pytest.raises(ConfigurationError, match="coroutine function"):
        consumer(queue="q")(handle)  # type: ignore[arg-type]


def test_the_queue_names_of_the_ladder_are_derived_from_the_work_queue() -> None:
    assert dead_queue("orders") == "orders.dead"
    assert str(uuid.UUID(int=0))  # keeps uuid imported for unique ids elsewhere


async def test_a_batch_applies_each_message_once_and_a_failure_retries_only_its_message(
    pool: asyncpg.Pool, amqp_url: str,
) -> None:
    queue, rec = unique("batch"), RecordingListener()

    def one_flaky(msg: Message) -> None:
        if msg.body["n"] == 13 and msg.attempt == 1:
            raise ConnectionError("later")

    handle = make(queue, rec, one_flaky, batch=16, prefetch=64, concurrency=2)
    async with await aio_pika.connect(amqp_url) as connection:  # all waiting before the start
        channel = await connection.channel()
        await declare_queues(channel, queue, LADDER)
        for n in range(100):
            await channel.default_exchange.publish(aio_pika.Message(
                json.dumps({"n": n}).encode(), headers={MESSAGE_ID_HEADER: f"b-{n % 90}"}),
                routing_key=queue)
    await handle.start(pool, amqp_url)
    try:
        await until(lambda: asyncio.sleep(0, len(settled(rec, "acked")) == 90
                                          and len(settled(rec, "duplicate")) == 10))
    finally:
        await handle.stop()
    assert await pool.fetchval("SELECT count(*) FROM effects") == 90
    assert [e.step for e in settled(rec, "retried")] == [1]


def test_a_batch_larger_than_the_prefetch_is_refused() -> None:
    async def handle(msg: Message, tx: Any) -> None: ...

    with pytest.raises(ConfigurationError, match=r"consumer\.batch"):
        consumer(queue="q", prefetch=8, concurrency=2, batch=9)(handle)
