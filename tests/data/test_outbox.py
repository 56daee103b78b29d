"""The transactional outbox and its relay, on the machine's PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import pytest

from fournines import ConfigurationError
from fournines.cli import main
from fournines.data import MESSAGE_ID_HEADER, OutboxMessage, RabbitPublisher, Relay, outbox

from ._amqp import unique


@pytest.fixture(scope="module")
def schema(database: str) -> str:
    assert main(["data", "init", database]) == 0  # the documented migration
    return database


@pytest.fixture
async def pool(schema: str) -> AsyncIterator[asyncpg.Pool]:
    database = schema
    async with asyncpg.create_pool(database, min_size=1, max_size=6) as pool:
        await pool.execute("TRUNCATE fournines_outbox, fournines_inbox")
        yield pool


class Sink:
    """A publisher that keeps what it is given (the relay's contract, without a broker)."""

    def __init__(self) -> None:
        self.sent: list[OutboxMessage] = []

    async def __call__(self, messages: list[OutboxMessage]) -> None:
        await asyncio.sleep(0)  # let other relays interleave
        self.sent.extend(messages)


async def _add(pool: asyncpg.Pool, items: list[tuple[str, str]],
               destination: str = "q") -> list[str]:
    async with pool.acquire() as conn, conn.transaction():
        return [await outbox.add(conn, destination, key, body) for key, body in items]


async def test_a_message_added_in_a_rolled_back_transaction_is_never_published(
    pool: asyncpg.Pool,
) -> None:
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, "q", "k", "never")
            raise RuntimeError("the business change failed")
    sink = Sink()
    assert await Relay(pool, sink).relay_once() == 0
    assert sink.sent == []


async def test_the_relay_publishes_each_key_in_order_with_the_id_as_a_header(
    pool: asyncpg.Pool,
) -> None:
    ids = await _add(pool, [(f"k{i % 3}", str(i)) for i in range(30)])
    sink = Sink()
    relay = Relay(pool, sink, batch_size=7)
    while await relay.relay_once():
        pass
    assert [m.id for m in sink.sent] == ids
    assert all(m.headers[MESSAGE_ID_HEADER] == m.id for m in sink.sent)
    assert await pool.fetchval("SELECT count(*) FROM fournines_outbox WHERE sent_at IS NULL") == 0


async def test_several_relays_share_the_rows_without_publishing_one_twice_or_out_of_order(
    pool: asyncpg.Pool,
) -> None:
    await _add(pool, [(f"k{i % 5}", str(i)) for i in range(500)])
    sink = Sink()
    relays = [Relay(pool, sink, batch_size=10) for _ in range(4)]

    async def drain(relay: Relay) -> None:
        while await relay.relay_once() or await pool.fetchval(
                "SELECT count(*) FROM fournines_outbox WHERE sent_at IS NULL"):
            await asyncio.sleep(0)

    await asyncio.gather(*(drain(r) for r in relays))
    assert len(sink.sent) == 500
    assert len({m.id for m in sink.sent}) == 500
    per_key: dict[str, list[int]] = defaultdict(list)
    for m in sink.sent:
        per_key[m.key].append(int(m.body))
    assert all(bodies == sorted(bodies) for bodies in per_key.values())
    assert sum(1 for r in relays if r.published) >= 2  # the work was shared


async def test_a_failed_publish_leaves_the_batch_to_be_sent_again(pool: asyncpg.Pool) -> None:
    await _add(pool, [("k", "a"), ("k", "b")])

    async def broken(messages: list[OutboxMessage]) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        await Relay(pool, broken).relay_once()
    sink = Sink()
    assert await Relay(pool, sink).relay_once() == 2
    assert [m.body for m in sink.sent] == [b"a", b"b"]


async def test_the_relay_wakes_on_notify_without_waiting_for_its_poll(pool: asyncpg.Pool) -> None:
    sink = Sink()
    relay = Relay(pool, sink, poll_interval=3600)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.2)  # let it go idle on LISTEN
        await _add(pool, [("k", "x")])
        async with asyncio.timeout(30):  # a poll would take an hour
            while not sink.sent:
                await asyncio.sleep(0.01)
    finally:
        relay.stop()
        await task
    assert [m.body for m in sink.sent] == [b"x"]


async def test_cleanup_deletes_sent_rows_older_than_the_retention(pool: asyncpg.Pool) -> None:
    await _add(pool, [("k", "old"), ("k", "new")])
    relay = Relay(pool, Sink(), retention=60)
    await relay.relay_once()
    await pool.execute("UPDATE fournines_outbox SET sent_at = now() - interval '2 minutes' "
                       "WHERE body = 'old'")
    assert await relay.cleanup() == 1
    assert await pool.fetchval("SELECT body FROM fournines_outbox") == b"new"


async def test_zero_retention_deletes_rows_as_they_are_sent(pool: asyncpg.Pool) -> None:
    await _add(pool, [("k", "a")])
    await Relay(pool, Sink(), retention=0).relay_once()
    assert await pool.fetchval("SELECT count(*) FROM fournines_outbox") == 0


async def test_add_outside_a_transaction_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(ConfigurationError, match="inside a transaction"):
            await outbox.add(conn, "q", "k", "x")


@pytest.mark.parametrize(("args", "field"), [
    (("", "k", "x"), "destination"), (("q", "", "x"), "key"), (("q", "k", 5), "body")])
async def test_add_names_a_bad_argument(pool: asyncpg.Pool, args: tuple[Any, ...],
                                        field: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(ConfigurationError, match=rf"outbox\.add\.{field}"):
            await outbox.add(conn, *args)


async def test_headers_that_are_not_json_are_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(ConfigurationError, match=r"outbox\.add\.headers"):
            await outbox.add(conn, "q", "k", "x", {"when": object()})


async def test_rabbit_publisher_delivers_rows_to_their_queue_with_id_and_headers(
    pool: asyncpg.Pool, amqp_url: str,
) -> None:
    queue_name = unique("outbox")
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True,
                                            arguments={"x-queue-type": "quorum"})
        async with pool.acquire() as conn, conn.transaction():
            ident = await outbox.add(conn, queue_name, "k", json.dumps({"n": 1}), {"trace": "t1"})
        publisher = RabbitPublisher(amqp_url)
        try:
            assert await Relay(pool, publisher).relay_once() == 1
        finally:
            await publisher.close()
        got = await queue.get(timeout=10)
        assert got is not None
        await got.ack()
    assert got.message_id == ident
    assert got.headers[MESSAGE_ID_HEADER] == ident
    assert got.headers["trace"] == "t1"
    assert json.loads(got.body) == {"n": 1}


async def test_an_unroutable_row_stays_unsent_instead_of_being_dropped(
    pool: asyncpg.Pool, amqp_url: str,
) -> None:
    await _add(pool, [("k", "x")], destination=unique("no-such-queue"))
    publisher = RabbitPublisher(amqp_url)
    try:
        with pytest.raises(aio_pika.exceptions.DeliveryError):
            await Relay(pool, publisher).relay_once()
    finally:
        await publisher.close()
    assert await pool.fetchval("SELECT count(*) FROM fournines_outbox WHERE sent_at IS NULL") == 1


def test_data_init_prints_the_migration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "init", "--print-sql"]) == 0
    assert "CREATE TABLE IF NOT EXISTS fournines_outbox" in capsys.readouterr().out


def test_data_init_reports_an_unreachable_database_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["data", "init", "postgresql://postgres@127.0.0.1:1/x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fournines data init" in err


@pytest.mark.parametrize("timeout", [0, -1.0, "30"])
def test_rabbit_publisher_refuses_a_timeout_that_is_not_a_positive_number(timeout: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"RabbitPublisher\.timeout"):
        RabbitPublisher(timeout=timeout)
