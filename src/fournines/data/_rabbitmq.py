"""Idempotent RabbitMQ consumers with a retry ladder and dead letters (aio-pika).

For a work queue ``Q`` (a quorum queue) the consumer declares:

- ``Q.retry.1`` ... ``Q.retry.N``: one wait queue per step of the ladder, each with
  ``x-message-ttl`` = its delay and dead-lettering back to ``Q`` (at least once).
  A failed message is *published* to the step's queue (publisher confirm) and only
  then acked: it waits in the broker, not in a sleeping handler or a hot requeue
  loop, and a crash in between leaves two copies with one message id, which the
  inbox makes harmless.
- ``Q.dead``: the dead letters, with the reason, the exception type and message,
  attempts, first and last failure time and the original routing in headers
  (``fournines-*``). ``Q``'s ``x-delivery-limit`` dead-letters there too a message
  that kills its consumer again and again (a crash never reaches the ladder).

Each delivery runs ``handler(msg, conn)`` inside one database transaction
(:func:`~fournines.data.transaction`, retried on conflicts) that first inserts
``(consumer, message id)`` into ``fournines_inbox``; a message id already there
means a redelivery: it is acked without running the handler again. The ack is
sent only after COMMIT, so a crash at any instant leaves the message either
unacked (redelivered, deduplicated) or committed and acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .._clock import Clock, system_clock
from .._errors import ConfigurationError, PoisonMessageError, check_number
from .._events import Event, Listener, dispatch, has_listeners
from ..policies._classify import ExceptionFilter, exception_predicate
from ._ladder import (
    ATTEMPTS,
    REASON,
    decode_json,
    failure_headers,
    now_iso,
    plan_failure,
)
from ._tracing import MessageTracer
from .outbox import KEY_HEADER, MESSAGE_ID_HEADER, OutboxMessage
from .transactions import transaction

__all__ = [
    "DEFAULT_LADDER",
    "Consumer",
    "Message",
    "MessageHandled",
    "RabbitPublisher",
    "consumer",
    "dead_queue",
    "declare_queues",
    "retry_queue",
]

_log = logging.getLogger("fournines.data.consumer")

DEFAULT_LADDER = (1.0, 10.0, 60.0)
"""The default waits of the retry ladder, in seconds: three retries, then the dead letters."""

DEFAULT_URL = "amqp://guest:guest@127.0.0.1/"

# Headers of the original routing (on the first failure); the rest are in _ladder.
ORIGINAL_EXCHANGE = "fournines-original-exchange"
ORIGINAL_ROUTING_KEY = "fournines-original-routing-key"

Outcome = Literal["acked", "duplicate", "retried", "dead_lettered"]


def retry_queue(queue: str, step: int) -> str:
    """The name of the wait queue of ladder step ``step`` (1-based) of work queue ``queue``."""
    return f"{queue}.retry.{step}"


def dead_queue(queue: str) -> str:
    """The name of the dead-letter queue of work queue ``queue``."""
    return f"{queue}.dead"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageHandled(Event):
    """A consumer settled a delivery (``policy="consumer"``, ``name`` the consumer's).

    ``outcome``: ``"acked"`` (the handler's transaction committed), ``"duplicate"``
    (the inbox had its id: acked, not run again), ``"retried"`` (sent to ladder step
    ``step``), ``"dead_lettered"`` (for ``reason``). ``seconds``: from receipt to
    the outcome; ``error``: the failure, if any.
    """

    queue: str
    outcome: Outcome
    seconds: float
    step: int | None = None
    reason: str | None = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One delivery as a handler sees it.

    ``body`` is the decoded body (JSON by default), ``raw`` the bytes as sent;
    ``attempt`` is 1 for the first delivery through the ladder, 2 after one failure...
    """

    id: str
    body: Any
    raw: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    key: str | None = None
    routing_key: str | None = None
    attempt: int = 1
    redelivered: bool = False


Handler = Callable[[Message, Any], Awaitable[Any]]


_json = decode_json
_now = now_iso


def _attempt(headers: Mapping[str, Any]) -> int:
    """The attempt (1 = first) a delivery is, from ``fournines-attempts``; junk counts 0."""
    value = headers.get(ATTEMPTS, 0)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    try:
        previous = int(value)
    except (TypeError, ValueError):
        return 1
    return min(max(previous, 0), 1_000_000) + 1


def _live(delivery: Any) -> bool:
    """Whether ``delivery`` can still be acked: the broker requeues those of a closed channel."""
    try:
        delivery.channel  # noqa: B018 - aio-pika raises here once the channel is closed
    except Exception:
        return False
    return True


async def publish_confirmed(exchange: Any, message: Any, routing_key: str) -> None:
    """Publish ``message`` mandatory and wait for the broker's ack.

    A message no queue takes comes back as ``basic.return`` (not an error to
    aio-pika): raised here as aio-pika's ``DeliveryError``, so the caller keeps it.
    """
    import aio_pika  # noqa: PLC0415 - optional dependency
    from pamqp.commands import Basic  # noqa: PLC0415

    result = await exchange.publish(message, routing_key=routing_key, mandatory=True)
    if not isinstance(result, Basic.Ack):
        delivered = result if hasattr(result, "delivery") else None
        frame = getattr(result, "delivery", result)
        raise aio_pika.exceptions.DeliveryError(delivered, frame)


def _queue_arguments(queue: str, delivery_limit: int | None) -> dict[str, Any]:
    args: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_queue(queue),
        # A message past its delivery limit goes to the dead letters, never dropped.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    if delivery_limit is not None:
        args["x-delivery-limit"] = delivery_limit
    return args


async def declare_queues(channel: Any, queue: str, ladder: Sequence[float] = DEFAULT_LADDER,
                         delivery_limit: int | None = 20) -> Any:
    """Declare work queue ``queue``, its ladder's wait queues and its dead letters.

    What :meth:`Consumer.start` does on an aio-pika ``channel``; call it first where a
    producer publishes before any consumer has started. Returns the work queue.
    """
    for step, delay in enumerate(ladder, start=1):
        await channel.declare_queue(retry_queue(queue, step), durable=True, arguments={
            "x-queue-type": "quorum",
            "x-message-ttl": max(1, round(delay * 1000)),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        })
    await channel.declare_queue(dead_queue(queue), durable=True,
                                arguments={"x-queue-type": "quorum"})
    return await channel.declare_queue(queue, durable=True,
                                       arguments=_queue_arguments(queue, delivery_limit))


class RabbitPublisher:
    """Publishes outbox rows to RabbitMQ: the :class:`~fournines.data.Relay`'s ``publish``.

    A row's ``destination`` is the routing key on ``exchange`` (default: the default
    exchange, so the destination is a queue name). Every message is persistent and
    mandatory, and a batch returns only when the broker has confirmed all of it; an
    unroutable message (no such queue) fails the batch, which is sent again later,
    so nothing committed is dropped on the floor.

    :param url: the AMQP URL (reconnects by itself: ``connect_robust``).
    :param exchange: the exchange to publish to (``""``: the default exchange).
    :param timeout: seconds a batch may wait for its confirms (``None``: no limit). A
        broker that accepts the connection but never confirms (paused by a memory or
        disk alarm, half dead) fails the batch, which the relay sends again later,
        instead of holding the batch's row locks for as long as the broker hangs.
    """

    def __init__(self, url: str = DEFAULT_URL, *, exchange: str = "",
                 timeout: float | None = 30.0) -> None:
        check_number("RabbitPublisher", "timeout", timeout, minimum=0, exclusive_minimum=True,
                     optional=True)
        self._timeout = None if timeout is None else float(timeout)
        self._url = url
        self._exchange_name = exchange
        self._connection: Any = None
        self._exchange: Any = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> Any:
        async with self._lock:
            if self._exchange is None:
                import aio_pika  # noqa: PLC0415 - optional dependency

                self._connection = await aio_pika.connect_robust(self._url)
                channel = await self._connection.channel(publisher_confirms=True)
                self._exchange = (channel.default_exchange if not self._exchange_name else
                                  await channel.get_exchange(self._exchange_name))
            return self._exchange

    async def __call__(self, messages: list[OutboxMessage]) -> None:
        """Publish ``messages`` in order; return when all are confirmed."""
        import aio_pika  # noqa: PLC0415

        exchange = await self._ready()
        # Published back to back on one channel (so in order on the wire), confirmed together.
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(*(
                    publish_confirmed(exchange, aio_pika.Message(
                        message.body, headers=message.headers, message_id=message.id,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT), message.destination)
                    for message in messages))
        except aio_pika.exceptions.DeliveryError:
            raise  # unroutable: the channel is fine
        except Exception:
            # A robust channel can stay closed after a broker restart (aio-pika gives up
            # on it): start over with a new connection at the next batch.
            with contextlib.suppress(Exception):
                await self.close()
            self._connection = self._exchange = None
            raise

    async def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = self._exchange = None


class Consumer:
    """An idempotent consumer of one RabbitMQ quorum queue (made by :func:`consumer`).

    Start it with ``await c.run(pool, url)`` (until SIGTERM/SIGINT or :meth:`stop`),
    or ``await c.start(pool, url)`` ... ``await c.stop()``.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        queue: str,
        name: str | None = None,
        ladder: Sequence[float] = DEFAULT_LADDER,
        delivery_limit: int | None = 20,
        prefetch: int = 32,
        concurrency: int = 8,
        batch: int = 1,
        decode: Callable[[bytes], Any] = _json,
        dead_letter_on: ExceptionFilter = (PoisonMessageError, ValueError),
        retry_on: ExceptionFilter = Exception,
        isolation: Any = None,
        attempts: int = 5,
        listeners: Sequence[Listener] = (),
        stop_timeout: float = 30.0,
        message_id_property: bool = False,
        tracing: bool = False,
        tracer_provider: Any = None,
        clock: Clock | None = None,
    ) -> None:
        owner = "consumer"
        if not callable(handler) or not asyncio.iscoroutinefunction(handler):
            raise ConfigurationError(
                f"{owner}: the handler must be a coroutine function "
                f"(async def handle(msg, tx)), got {handler!r}")
        if not isinstance(queue, str) or not queue:
            raise ConfigurationError(f"{owner}.queue must be a non-empty str, got {queue!r}")
        ladder = tuple(ladder)
        for delay in ladder:
            check_number(owner, "ladder", delay, minimum=0, exclusive_minimum=True)
        check_number(owner, "delivery_limit", delivery_limit, minimum=1, integer=True,
                     optional=True)
        check_number(owner, "prefetch", prefetch, minimum=1, integer=True)
        check_number(owner, "concurrency", concurrency, minimum=1, integer=True)
        check_number(owner, "batch", batch, minimum=1, maximum=prefetch, integer=True)
        check_number(owner, "stop_timeout", stop_timeout, minimum=0)
        if concurrency > prefetch:
            raise ConfigurationError(
                f"{owner}.concurrency ({concurrency}) must not exceed prefetch ({prefetch}): "
                "the extra handlers would never get a message")
        if not callable(decode):
            raise ConfigurationError(f"{owner}.decode must be callable, got {decode!r}")
        self.handler = handler
        self.queue = queue
        self.name = name or queue
        self.ladder: tuple[float, ...] = ladder
        self.delivery_limit = delivery_limit
        self.prefetch = prefetch
        self.concurrency = concurrency
        self.batch = batch
        self._decode = decode
        self._fatal = exception_predicate(owner, "dead_letter_on", dead_letter_on)
        self._retryable = exception_predicate(owner, "retry_on", retry_on)
        self._transaction = functools.partial(
            transaction, isolation=isolation, attempts=attempts, listeners=listeners,
            name=f"consumer:{self.name}")
        self._listeners = tuple(listeners)
        self._stop_timeout = float(stop_timeout)
        self._id_property = bool(message_id_property)
        self._clock = clock or system_clock
        self._tracer = (MessageTracer(owner, tracer_provider, system="rabbitmq") if tracing
                        else None)
        self._pool: Any = None
        self._connection: Any = None
        self._channel: Any = None
        self._queue: Any = None
        self._tag: Any = None
        self._slots = asyncio.Semaphore(concurrency)
        self._inflight: set[asyncio.Task[Any]] = set()
        self._waiting: dict[int, Any] = {}
        self._stopped = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        functools.update_wrapper(self, handler)

    async def __call__(self, msg: Message, tx: Any) -> Any:
        """Call the handler itself (no inbox, no ack): for tests of the handler."""
        return await self.handler(msg, tx)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, pool: Any, url: str = DEFAULT_URL, *, connection: Any = None) -> None:
        """Declare the queues and start consuming; returns once consuming."""
        import aio_pika  # noqa: PLC0415 - optional dependency

        self._pool = pool
        self._stopped.clear()
        self._connection = connection or await aio_pika.connect_robust(url)
        self._owns_connection = connection is None
        await self._open_channel()
        self._watchdog = asyncio.create_task(self._watch())

    async def _open_channel(self) -> None:
        self._channel = await self._connection.channel(publisher_confirms=True)
        await self._channel.set_qos(prefetch_count=self.prefetch)
        self._queue = await declare_queues(self._channel, self.queue, self.ladder,
                                           self.delivery_limit)
        self._tag = await self._queue.consume(self._on_message)

    async def _watch(self) -> None:
        # aio-pika's robust connection reconnects, but a robust channel whose restore
        # failed (the broker went away again mid-restore, a forced close) stays closed
        # for good: open a new one. Its unacked deliveries were requeued by the broker.
        while True:
            await asyncio.sleep(1.0)
            channel = self._channel
            if channel is None or not channel.is_closed or self._connection.is_closed:
                continue
            try:
                await self._open_channel()
                _log.warning("consumer %s: its channel was closed; opened a new one", self.name)
            except Exception:
                _log.debug("consumer %s: cannot open a channel yet", self.name, exc_info=True)

    async def stop(self) -> None:
        """Stop fetching, let the messages in flight finish (and be acked), close."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(BaseException):
                await watchdog
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)
            self._tag = None
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self._stop_timeout)
        for task in set(self._inflight):  # past the timeout: unacked, so redelivered
            task.cancel()
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()
        if self._connection is not None and self._owns_connection:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._channel = self._connection = self._queue = None
        self._stopped.set()

    async def run(self, pool: Any, url: str = DEFAULT_URL, *, signals: bool = True) -> None:
        """Consume until SIGTERM / SIGINT (``signals``) or :meth:`stop`, then stop gracefully."""
        await self.start(pool, url)
        loop = asyncio.get_running_loop()
        installed = []
        if signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, lambda: asyncio.ensure_future(self.stop()))
                installed.append(signum)
        try:
            await self._stopped.wait()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            if not self._stopped.is_set():
                await self.stop()

    # -- one delivery -------------------------------------------------------------------

    async def _on_message(self, delivery: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        key = id(delivery)
        self._waiting[key] = delivery
        try:
            async with self._slots:
                # Whoever gets a slot takes its own delivery and the oldest other waiting
                # ones (up to a batch); a task whose delivery another took has nothing left
                # to do. Each task takes out its own entry in ``finally``: aiormq cancels
                # the tasks of a channel that closes (a broker restart), and an entry left
                # behind would be taken later in place of a live one, which would then
                # wait, unacked and never redelivered, for good.
                if self._waiting.pop(key, None) is None:
                    return
                taken = [delivery]
                while len(taken) < self.batch and self._waiting:
                    taken.append(self._waiting.pop(next(iter(self._waiting))))
                taken = [d for d in taken if _live(d)]
                if len(taken) == 1:
                    await self._settle(taken[0])
                elif taken:
                    await self._settle_batch(taken)
        finally:
            self._waiting.pop(key, None)
            if task is not None:
                self._inflight.discard(task)

    def _emit(self, started: float, outcome: Outcome, **fields: Any) -> None:
        batched = fields.pop("batched", False)
        if self._tracer is not None and not batched:
            self._tracer.record_current(outcome, fields.get("error"))
        if has_listeners(self._listeners):
            dispatch(self._listeners, MessageHandled(
                policy="consumer", name=self.name, queue=self.queue, outcome=outcome,
                seconds=self._clock.monotonic() - started, **fields))

    def _span(self, delivery: Any, headers: Mapping[str, Any]) -> Any:
        assert self._tracer is not None
        ident = headers.get(MESSAGE_ID_HEADER)
        return self._tracer.start(
            headers, self.queue, ident if isinstance(ident, str) else None, {
                "messaging.rabbitmq.destination.routing_key": delivery.routing_key,
                "fournines.consumer.attempt": _attempt(headers)})

    async def _settle(self, delivery: Any) -> None:
        if self._tracer is None:
            await self._settle_one(delivery)
            return
        # One CONSUMER span per delivery, continuing the producer's trace from the
        # headers, current while the handler runs and until the delivery is settled.
        span = self._span(delivery, delivery.headers or {})
        token = self._tracer.enter(span)
        try:
            await self._settle_one(delivery)
        finally:
            self._tracer.leave(token)
            span.end()

    async def _settle_one(self, delivery: Any) -> None:
        started = self._clock.monotonic()
        headers = dict(delivery.headers or {})
        ident = headers.get(MESSAGE_ID_HEADER) or (
            delivery.message_id if self._id_property else None)
        if isinstance(ident, bytes):
            ident = ident.decode(errors="replace")
        if not ident:
            await self._dead_letter(
                delivery, headers, started, "missing_message_id", PoisonMessageError(
                    "the message has no id (header fournines-message-id)",
                    reason="missing_message_id"))
            return
        try:
            body = self._decode(delivery.body)
        except Exception as exc:
            reason = exc.reason if isinstance(exc, PoisonMessageError) else "malformed_body"
            await self._dead_letter(delivery, headers, started, reason, exc)
            return
        msg = Message(id=str(ident), body=body, raw=delivery.body, headers=headers,
                      key=headers.get(KEY_HEADER), routing_key=delivery.routing_key,
                      attempt=_attempt(headers),
                      redelivered=bool(delivery.redelivered))

        async def work(conn: Any) -> bool:
            fresh = await conn.fetchval(
                "INSERT INTO fournines_inbox (consumer, message_id) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING RETURNING true", self.name, msg.id)
            if not fresh:
                return False
            await self.handler(msg, conn)
            return True

        try:
            applied = await self._transaction(self._pool, work)
        except Exception as exc:
            await self._failed(delivery, headers, started, exc)
            return
        if await self._ack(delivery):
            self._emit(started, "acked" if applied else "duplicate")

    async def _settle_batch(self, deliveries: list[Any]) -> None:
        """Apply several deliveries in one transaction; on any failure, each on its own."""
        started = self._clock.monotonic()
        messages: list[tuple[Any, Message]] = []
        for delivery in deliveries:
            headers = dict(delivery.headers or {})
            ident = headers.get(MESSAGE_ID_HEADER) or (
                delivery.message_id if self._id_property else None)
            try:
                if not ident:
                    raise PoisonMessageError("no id", reason="missing_message_id")
                body = self._decode(delivery.body)
            except Exception:
                await self._settle(delivery)  # the single path dead-letters it, with reason
                continue
            messages.append((delivery, Message(
                id=ident.decode() if isinstance(ident, bytes) else str(ident), body=body,
                raw=delivery.body, headers=headers, key=headers.get(KEY_HEADER),
                routing_key=delivery.routing_key, attempt=_attempt(headers),
                redelivered=bool(delivery.redelivered))))
        if not messages:
            return
        tracer = self._tracer
        spans = ([self._span(delivery, msg.headers) for delivery, msg in messages]
                 if tracer is not None else [])

        async def work(conn: Any) -> set[str]:
            rows = await conn.fetch(
                "INSERT INTO fournines_inbox (consumer, message_id) "
                "SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING message_id",
                self.name, [msg.id for _, msg in messages])
            fresh = {row[0] for row in rows}
            applied = set()
            for index, (_, msg) in enumerate(messages):
                if msg.id in fresh and msg.id not in applied:  # two copies in one batch
                    applied.add(msg.id)
                    if tracer is None:
                        await self.handler(msg, conn)
                        continue
                    token = tracer.enter(spans[index])
                    try:
                        await self.handler(msg, conn)
                    finally:
                        tracer.leave(token)
            return applied

        try:
            applied = await self._transaction(self._pool, work)
        except Exception:
            # One message failed the whole batch (rolled back): settle each alone, so
            # only the failing one climbs the ladder (each in a span of its own).
            for span in spans:
                span.set_attribute("fournines.consumer.outcome", "batch_rolled_back")
                span.end()
            for delivery, _ in messages:
                await self._settle(delivery)
            return
        for index, (delivery, msg) in enumerate(messages):
            outcome: Outcome | None = None
            if await self._ack(delivery):
                outcome = "acked" if msg.id in applied else "duplicate"
                applied.discard(msg.id)
                self._emit(started, outcome, batched=True)
            if tracer is not None:
                if outcome is not None:
                    tracer.record(spans[index], outcome)
                spans[index].end()

    async def _ack(self, delivery: Any) -> bool:
        try:
            await delivery.ack()
        except Exception:
            # The channel died after COMMIT: the broker redelivers and the inbox dedupes.
            _log.warning("consumer %s: ack failed; the message will be redelivered", self.name,
                         exc_info=True)
            return False
        return True

    async def _failed(self, delivery: Any, headers: dict[str, Any], started: float,
                      exc: Exception) -> None:
        attempts = _attempt(headers)
        plan = plan_failure(exc, attempts=attempts, ladder=self.ladder, fatal=self._fatal,
                            retryable=self._retryable)
        if plan.reason is not None:
            await self._dead_letter(delivery, headers, started, plan.reason, exc)
            return
        out = self._failure_headers(delivery, headers, exc, attempts)
        if await self._forward(delivery, retry_queue(self.queue, attempts), out):
            self._emit(started, "retried", step=attempts, error=exc)

    def _failure_headers(self, delivery: Any, headers: dict[str, Any], exc: BaseException | None,
                         attempts: int) -> dict[str, Any]:
        out = failure_headers(headers, queue=self.queue, attempts=attempts, exc=exc, original={
            ORIGINAL_EXCHANGE: delivery.exchange or "",
            ORIGINAL_ROUTING_KEY: delivery.routing_key or ""})
        # x-death grows by one entry per ladder cycle; the fournines-* headers say it all.
        out.pop("x-death", None)
        return out

    async def _dead_letter(self, delivery: Any, headers: dict[str, Any], started: float,
                           reason: str, exc: BaseException) -> None:
        out = self._failure_headers(delivery, headers, exc, _attempt(headers))
        out[REASON] = reason
        if await self._forward(delivery, dead_queue(self.queue), out):
            self._emit(started, "dead_lettered", reason=reason, error=exc)

    async def _forward(self, delivery: Any, queue: str, headers: dict[str, Any]) -> bool:
        """Publish a copy to ``queue`` (confirmed), then ack the delivery."""
        import aio_pika  # noqa: PLC0415

        try:
            await publish_confirmed(self._channel.default_exchange, aio_pika.Message(
                delivery.body, headers=headers, message_id=delivery.message_id,
                content_type=delivery.content_type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                queue)
        except Exception:
            # Not acked: the broker redelivers it, and the delivery limit bounds the loop.
            _log.warning("consumer %s: could not forward a message to %s", self.name, queue,
                         exc_info=True)
            with contextlib.suppress(Exception):
                await delivery.nack(requeue=True)
            return False
        return await self._ack(delivery)


def consumer(
    *,
    queue: str,
    name: str | None = None,
    ladder: Sequence[float] = DEFAULT_LADDER,
    delivery_limit: int | None = 20,
    prefetch: int = 32,
    concurrency: int = 8,
    batch: int = 1,
    decode: Callable[[bytes], Any] = _json,
    dead_letter_on: ExceptionFilter = (PoisonMessageError, ValueError),
    retry_on: ExceptionFilter = Exception,
    isolation: Any = None,
    attempts: int = 5,
    listeners: Sequence[Listener] = (),
    stop_timeout: float = 30.0,
    message_id_property: bool = False,
    tracing: bool = False,
    tracer_provider: Any = None,
) -> Callable[[Handler], Consumer]:
    """Make ``async def handle(msg, tx)`` an idempotent consumer of ``queue``.

    :param queue: the work queue (a quorum queue, declared with its ladder and dead letters).
    :param name: the consumer's name in the inbox and the events (default: ``queue``).
    :param ladder: the waits, in seconds, before each retry (1 s, 10 s, 60 s); a failure
        after the last goes to the dead letters (``reason="retries_exhausted"``).
    :param delivery_limit: the quorum queue's ``x-delivery-limit``: deliveries without a
        settlement (the consumer crashed) before the broker dead-letters it.
    :param prefetch: unacked messages the broker sends ahead (``basic.qos``).
    :param concurrency: handlers running at once (a bulkhead; at most ``prefetch``).
    :param batch: up to this many waiting deliveries share one transaction (one inbox
        INSERT, the handlers one after another, one COMMIT, then each acked): fewer
        round trips per message. A failure in a batch rolls it back and each of its
        messages is then handled alone, so only the failing one is retried.
    :param decode: bytes to ``msg.body`` (JSON); raising dead-letters the message
        (``reason="malformed_body"``).
    :param dead_letter_on: failures that no retry can fix, dead-lettered at once
        (``PoisonMessageError``, ``ValueError`` — which covers validation errors).
    :param retry_on: failures worth the ladder (everything else is dead-lettered at once).
    :param isolation: the isolation level of the handler's transaction.
    :param attempts: attempts of the transaction on conflicts (40001/40P01), per delivery.
    :param listeners: receive :class:`MessageHandled` (and the transactions' events).
    :param stop_timeout: seconds :meth:`Consumer.stop` waits for the messages in flight.
    :param message_id_property: without the ``fournines-message-id`` header, dedupe on
        the AMQP ``message_id`` property. Off by default: aio-pika gives every
        publish a fresh random one, so a producer's own retry would not be recognised,
        and a message with no id header is dead-lettered (``"missing_message_id"``).
    """

    def decorate(handler: Handler) -> Consumer:
        return Consumer(handler, queue=queue, name=name, ladder=ladder,
                        delivery_limit=delivery_limit, prefetch=prefetch,
                        concurrency=concurrency, batch=batch, decode=decode,
                        dead_letter_on=dead_letter_on,
                        retry_on=retry_on, isolation=isolation, attempts=attempts,
                        listeners=listeners, stop_timeout=stop_timeout,
                        message_id_property=message_id_property, tracing=tracing,
                        tracer_provider=tracer_provider)

    return decorate
