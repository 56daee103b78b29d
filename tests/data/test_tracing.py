"""Traces across the outbox and RabbitMQ: the consumer's span continues the producer's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from fournines.data import (
    MESSAGE_ID_HEADER,
    Consumer,
    Message,
    MessageHandled,
    RabbitPublisher,
    Relay,
    consumer,
    declare_queues,
    init_schema,
    outbox,
)
from fournines.testing import RecordingListener

from ._amqp import unique


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database, min_size=1, max_size=8) as pool:
        await init_schema(pool)
        yield pool


class Seen:
    """What the handler saw: the current span's (trace id, span id) per message id."""

    def __init__(self) -> None:
        self.current: dict[str, list[tuple[int, int]]] = {}


def traced(queue: str, provider: TracerProvider, seen: Seen, rec: RecordingListener,
           fail_first: bool = False, **settings: Any) -> Consumer:
    @consumer(queue=queue, ladder=(0.05,), tracing=True, tracer_provider=provider,
              listeners=[rec], **settings)
    async def handle(msg: Message, tx: Any) -> None:
        context = trace.get_current_span().get_span_context()
        seen.current.setdefault(msg.id, []).append((context.trace_id, context.span_id))
        # The handler's own spans join the trace, under the consumer's span.
        with provider.get_tracer("test").start_as_current_span("charge"):
            await tx.execute("SELECT 1")
        if fail_first and msg.attempt == 1:
            raise ConnectionError("the payment service is down")

    return handle


async def produce(pool: asyncpg.Pool, provider: TracerProvider, queue: str,
                  count: int = 1) -> tuple[Any, list[str]]:
    """Write ``count`` messages under a producer span; publish them through the relay."""
    ids = []
    with provider.get_tracer("test").start_as_current_span("place order") as producer:
        async with pool.acquire() as conn, conn.transaction():
            for n in range(count):
                ids.append(await outbox.add(conn, queue, f"k{n}", json.dumps({"n": n})))
    return producer, ids


async def relay_all(pool: asyncpg.Pool, url: str) -> None:
    publisher = RabbitPublisher(url)
    try:
        while await Relay(pool, publisher).relay_once():
            pass
    finally:
        await publisher.close()


async def settled(rec: RecordingListener, count: int, outcome: str = "acked") -> None:
    async with asyncio.timeout(30):
        while len([e for e in rec.of(MessageHandled) if e.outcome == outcome]) < count:
            await asyncio.sleep(0.02)


def consumer_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]


async def test_the_handler_runs_in_a_consumer_span_whose_parent_is_the_producers_span(
    pool: asyncpg.Pool, amqp_url: str, provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    queue, seen, rec = unique("trace"), Seen(), RecordingListener()
    handle = traced(queue, provider, seen, rec)
    await handle.start(pool, amqp_url)
    try:
        producer, (ident,) = await produce(pool, provider, queue)
        await relay_all(pool, amqp_url)
        await settled(rec, 1)
    finally:
        await handle.stop()
    (span,) = consumer_spans(exporter)
    assert span.name == f"process {queue}"
    assert span.parent is not None
    assert span.parent.span_id == producer.get_span_context().span_id
    assert span.context.trace_id == producer.get_span_context().trace_id
    assert seen.current[ident] == [(span.context.trace_id, span.context.span_id)]
    (charge,) = [s for s in exporter.get_finished_spans() if s.name == "charge"]
    assert charge.parent is not None and charge.parent.span_id == span.context.span_id
    assert span.attributes is not None
    assert span.attributes["messaging.system"] == "rabbitmq"
    assert span.attributes["messaging.destination.name"] == queue
    assert span.attributes["messaging.operation.type"] == "process"
    assert span.attributes["messaging.message.id"] == ident
    assert span.attributes["fournines.consumer.outcome"] == "acked"
    assert span.status.status_code != StatusCode.ERROR


async def test_each_attempt_through_the_ladder_is_a_span_of_the_producers_trace(
    pool: asyncpg.Pool, amqp_url: str, provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    queue, seen, rec = unique("trace-retry"), Seen(), RecordingListener()
    handle = traced(queue, provider, seen, rec, fail_first=True)
    await handle.start(pool, amqp_url)
    try:
        producer, _ = await produce(pool, provider, queue)
        await relay_all(pool, amqp_url)
        await settled(rec, 1)
    finally:
        await handle.stop()
    first, second = sorted(consumer_spans(exporter), key=lambda s: s.start_time or 0)
    for span in (first, second):
        assert span.parent is not None
        assert span.parent.span_id == producer.get_span_context().span_id
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["fournines.consumer.outcome"] == "retried"
    assert first.attributes["error.type"] == "ConnectionError"
    assert first.status.status_code == StatusCode.ERROR
    assert second.attributes["fournines.consumer.outcome"] == "acked"
    assert second.attributes["fournines.consumer.attempt"] == 2


async def test_batched_messages_each_get_a_span_continuing_their_own_producer(
    pool: asyncpg.Pool, amqp_url: str, provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    queue, seen, rec = unique("trace-batch"), Seen(), RecordingListener()
    handle = traced(queue, provider, seen, rec, batch=8, concurrency=1, prefetch=32)
    async with await aio_pika.connect(amqp_url) as connection:  # queues before publishing
        await declare_queues(await connection.channel(), queue, (0.05,))
    producers = {}
    for _ in range(3):  # three producer traces, four messages each
        producer, ids = await produce(pool, provider, queue, count=4)
        producers.update(dict.fromkeys(ids, producer.get_span_context()))
    await relay_all(pool, amqp_url)  # all waiting before the consumer starts: batches
    await handle.start(pool, amqp_url)
    try:
        await settled(rec, 12)
    finally:
        await handle.stop()
    spans = consumer_spans(exporter)
    assert len(spans) == 12
    for span in spans:
        assert span.attributes is not None
        ident = span.attributes["messaging.message.id"]
        assert isinstance(ident, str)
        assert span.parent is not None and span.parent.span_id == producers[ident].span_id
        assert span.context.trace_id == producers[ident].trace_id
        assert seen.current[ident] == [(span.context.trace_id, span.context.span_id)]
        assert span.attributes["fournines.consumer.outcome"] == "acked"


async def test_a_malformed_traceparent_starts_a_new_trace_and_the_message_is_applied(
    pool: asyncpg.Pool, amqp_url: str, provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    queue, seen, rec = unique("trace-bad"), Seen(), RecordingListener()
    handle = traced(queue, provider, seen, rec)
    await handle.start(pool, amqp_url)
    try:
        async with await aio_pika.connect(amqp_url) as connection:
            channel = await connection.channel()
            for ident, value in (("bad-1", "00-zz-yy-01"), ("bad-2", 42),
                                 ("bad-3", {"nested": "table"})):
                await channel.default_exchange.publish(aio_pika.Message(
                    b"{}", headers={MESSAGE_ID_HEADER: ident, "traceparent": value}),
                    routing_key=queue)
        await settled(rec, 3)
    finally:
        await handle.stop()
    spans = consumer_spans(exporter)
    assert len(spans) == 3
    assert all(span.parent is None for span in spans)
    assert sorted(seen.current) == ["bad-1", "bad-2", "bad-3"]


async def test_add_puts_the_current_trace_context_in_the_headers_unless_given(
    pool: asyncpg.Pool, provider: TracerProvider,
) -> None:
    queue = unique("trace-add")
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with pool.acquire() as conn, conn.transaction():
        untraced = await outbox.add(conn, queue, "k", b"{}")
        with provider.get_tracer("test").start_as_current_span("place order") as span:
            traced_id = await outbox.add(conn, queue, "k", b"{}")
            explicit = await outbox.add(conn, queue, "k", b"{}", {"traceparent": given})
    rows = {row["id"]: json.loads(row["headers"]) for row in await pool.fetch(
        "SELECT id, headers::text FROM fournines_outbox WHERE destination = $1", queue)}
    context = span.get_span_context()
    assert "traceparent" not in rows[untraced]
    assert rows[traced_id]["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}")
    assert rows[explicit]["traceparent"] == given
