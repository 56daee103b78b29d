"""Idempotent Kafka consumers with a retry ladder and dead letters (aiokafka).

For a topic ``T`` the consumer declares (if missing):

- ``T.retry.1`` ... ``T.retry.N``: one retry topic per step of the ladder. A failed
  record is *produced* there (acks=all) with the header ``fournines-due`` (epoch
  milliseconds), and only then is its offset on ``T`` let go. The consumer reads
  the retry topics in the same group; a record not yet due pauses its partition
  and seeks back to it, and the partition is resumed when it is due (Spring Kafka's
  non-blocking retries): no handler sleeps, and the other partitions keep going.
  Every record of one step has the same delay, so a partition's head is always the
  first to become due.
- ``T.dead``: the dead letters, with the same ``fournines-*`` headers as on RabbitMQ
  (reason, exception type and message, attempts, first and last failure time) and
  the original routing: ``fournines-original-topic/-partition/-offset``.

Each record runs ``handler(msg, conn)`` in one database transaction that first
inserts ``(consumer, message id)`` into ``fournines_inbox``: a record whose id is
there is a redelivery, skipped. Offsets are committed only for records whose
transaction committed (or that a retry or dead-letter topic holds), so a crash at
any instant leaves a record either uncommitted (read again, deduplicated) or done.

Order: the records of one partition (so of one key) are handled one at a time, in
offset order; up to ``concurrency`` partitions at once. A retried record leaves
that order, as in every non-blocking retry design: the records after it go on.

Delivery limit: Kafka counts no deliveries. A record that kills the process every
time would be read again forever, so after each (re)assignment of a partition the
consumer counts, in ``fournines_deliveries`` (autocommitted before the handler
runs), the deliveries of its records up to the first one that settles; a record
read more than ``delivery_limit`` times that way is dead-lettered
(``reason="delivery_limit"``). It costs one statement per record only in the few
records after an assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._clock import Clock, system_clock
from .._errors import ConfigurationError, PoisonMessageError, check_number
from .._events import Listener, dispatch, has_listeners
from ..policies._classify import ExceptionFilter, exception_predicate
from ._ladder import ATTEMPTS, REASON, decode_json, failure_headers, plan_failure
from ._rabbitmq import DEFAULT_LADDER, Message, MessageHandled, Outcome
from .outbox import KEY_HEADER, MESSAGE_ID_HEADER, OutboxMessage
from .transactions import transaction

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DUE",
    "ORIGINAL_OFFSET",
    "ORIGINAL_PARTITION",
    "ORIGINAL_TOPIC",
    "KafkaConsumer",
    "KafkaMessage",
    "KafkaPublisher",
    "dead_topic",
    "declare_topics",
    "decode_headers",
    "encode_headers",
    "kafka_consumer",
    "retry_topic",
]

_log = logging.getLogger("fournines.data.kafka")

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

DUE = "fournines-due"
ORIGINAL_TOPIC = "fournines-original-topic"
ORIGINAL_PARTITION = "fournines-original-partition"
ORIGINAL_OFFSET = "fournines-original-offset"

# Kafka's own defaults are 10 s / 3 s; 6 s is what Tansu is known to work with, and a
# consumer killed without leaving is replaced sooner.
_CONSUMER_DEFAULTS: dict[str, Any] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "auto_offset_reset": "earliest",
    "enable_auto_commit": False,
}


def retry_topic(topic: str, step: int) -> str:
    """The retry topic of ladder step ``step`` (1-based) of ``topic``."""
    return f"{topic}.retry.{step}"


def dead_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}.dead"


def encode_headers(headers: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """Headers as Kafka carries them: ``str`` values as UTF-8, the rest as their ``str``."""
    return [(str(key), value if isinstance(value, bytes) else str(value).encode())
            for key, value in headers.items()]


def decode_headers(raw: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """A record's headers as a dict of ``str`` (bytes that are not UTF-8 are replaced)."""
    return {key: (value or b"").decode(errors="replace") for key, value in raw or ()}


def _int_header(headers: Mapping[str, str], name: str, default: int = 0) -> int:
    value = headers.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise PoisonMessageError(f"the header {name} is not an integer: {value[:40]!r}",
                                 reason="malformed_header") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaMessage(Message):
    """One Kafka record as a handler sees it: a :class:`Message` plus where it was read.

    ``routing_key`` is the topic it was read from (the work topic or a retry topic),
    ``topic`` the work topic it belongs to; ``redelivered`` is true for the records
    read right after a partition was assigned, the ones another member (or a crashed
    process) may have read already.
    """

    topic: str
    partition: int
    offset: int


async def declare_topics(bootstrap: str, topic: str, ladder: Sequence[float] = DEFAULT_LADDER,
                         *, partitions: int = 4) -> list[str]:
    """Create ``topic``, its retry topics and its dead-letter topic where missing; the names.

    What :meth:`KafkaConsumer.start` does; call it first where a producer publishes
    before any consumer has started. The dead-letter topic has one partition.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]  # noqa: PLC0415

    wanted = {topic: partitions, **{retry_topic(topic, step): partitions
                                    for step in range(1, len(ladder) + 1)},
              dead_topic(topic): 1}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, num_partitions=count, replication_factor=1)
                   for name, count in wanted.items() if name not in existing]
        if missing:
            response = await admin.create_topics(missing)
            for name, code, *_ in getattr(response, "topic_errors", ()):
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (another consumer won)
                    raise ConfigurationError(
                        f"cannot create Kafka topic {name!r}: error code {code}")
    finally:
        await admin.close()
    return list(wanted)


class KafkaPublisher:
    """Publishes outbox rows to Kafka: the :class:`~fournines.data.Relay`'s ``publish``.

    A row's ``destination`` is the topic and its ``key`` the record key (so the
    partition: rows of one key stay in order). A batch returns only when the broker
    has acknowledged all of it (``acks="all"``); on any failure the producer is
    closed and made again for the next batch, which the relay sends again.

    :param bootstrap: ``host:port[,host:port]`` of the brokers.
    :param options: more ``AIOKafkaProducer`` settings.
    """

    def __init__(self, bootstrap: str = DEFAULT_BOOTSTRAP, **options: Any) -> None:
        self._bootstrap = bootstrap
        self._options = {"acks": "all", "request_timeout_ms": 10000, **options}
        self._producer: Any = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> Any:
        async with self._lock:
            if self._producer is None:
                from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]  # noqa: PLC0415

                producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, **self._options)
                try:
                    await producer.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def __call__(self, messages: list[OutboxMessage]) -> None:
        """Send ``messages`` in order; return when the broker has acknowledged all."""
        producer = await self._ready()
        try:
            # send() queues in order (one partition's records stay in order: aiokafka
            # has one request in flight per broker); then wait for all the acks.
            pending = [await producer.send(message.destination, message.body,
                                           key=message.key.encode(),
                                           headers=encode_headers(message.headers))
                       for message in messages]
            await asyncio.gather(*pending)
        except Exception:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop the producer (it is made again at the next batch)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()


Handler = Callable[[KafkaMessage, Any], Awaitable[Any]]


class _Partition:
    """What the consumer keeps per assigned partition."""

    __slots__ = ("done", "held", "pending", "revoked", "suspect", "tp", "worker")

    def __init__(self, tp: Any) -> None:
        self.tp = tp
        self.revoked = False
        self.pending: deque[Any] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.done: int | None = None  # the next offset to commit
        self.held: asyncio.TimerHandle | None = None  # paused until a retry is due
        self.suspect = True  # count deliveries until one record settles


def _rebalance_listener(owner: KafkaConsumer) -> Any:
    """A ``ConsumerRebalanceListener`` (aiokafka awaits it before it rejoins the group)."""
    from aiokafka import ConsumerRebalanceListener  # noqa: PLC0415

    class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            await owner._revoke(set(revoked))

        async def on_partitions_assigned(self, assigned: Any) -> None:
            """Nothing to do: a partition's state is made at its first fetched records."""

    return Rebalance()


class KafkaConsumer:
    """An idempotent consumer of one Kafka topic (made by :func:`kafka_consumer`).

    Start it with ``await c.run(pool, bootstrap)`` (until SIGTERM/SIGINT or
    :meth:`stop`), or ``await c.start(pool, bootstrap)`` ... ``await c.stop()``.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        topic: str,
        name: str | None = None,
        ladder: Sequence[float] = DEFAULT_LADDER,
        delivery_limit: int | None = 20,
        partitions: int = 4,
        concurrency: int = 8,
        prefetch: int = 256,
        batch: int = 1,
        decode: Callable[[bytes], Any] = decode_json,
        dead_letter_on: ExceptionFilter = (PoisonMessageError, ValueError),
        retry_on: ExceptionFilter = Exception,
        isolation: Any = None,
        attempts: int = 5,
        listeners: Sequence[Listener] = (),
        stop_timeout: float = 30.0,
        commit_interval: float = 0.2,
        options: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> None:
        owner = "kafka_consumer"
        if not callable(handler) or not asyncio.iscoroutinefunction(handler):
            raise ConfigurationError(
                f"{owner}: the handler must be a coroutine function "
                f"(async def handle(msg, tx)), got {handler!r}")
        if not isinstance(topic, str) or not topic:
            raise ConfigurationError(f"{owner}.topic must be a non-empty str, got {topic!r}")
        ladder = tuple(ladder)
        for delay in ladder:
            check_number(owner, "ladder", delay, minimum=0, exclusive_minimum=True)
        check_number(owner, "delivery_limit", delivery_limit, minimum=1, integer=True,
                     optional=True)
        check_number(owner, "partitions", partitions, minimum=1, integer=True)
        check_number(owner, "concurrency", concurrency, minimum=1, integer=True)
        check_number(owner, "prefetch", prefetch, minimum=1, integer=True)
        check_number(owner, "batch", batch, minimum=1, maximum=prefetch, integer=True)
        check_number(owner, "stop_timeout", stop_timeout, minimum=0)
        check_number(owner, "commit_interval", commit_interval, minimum=0)
        if not callable(decode):
            raise ConfigurationError(f"{owner}.decode must be callable, got {decode!r}")
        self.handler = handler
        self.topic = topic
        self.name = name or topic
        self.ladder: tuple[float, ...] = ladder
        self.delivery_limit = delivery_limit
        self.partitions = partitions
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.batch = batch
        self._decode = decode
        self._fatal = exception_predicate(owner, "dead_letter_on", dead_letter_on)
        self._retryable = exception_predicate(owner, "retry_on", retry_on)
        self._transaction = functools.partial(
            transaction, isolation=isolation, attempts=attempts, listeners=listeners,
            name=f"consumer:{self.name}")
        self._listeners = tuple(listeners)
        self._stop_timeout = float(stop_timeout)
        self._commit_interval = float(commit_interval)
        self._options = {**_CONSUMER_DEFAULTS, **(options or {})}
        self._clock = clock or system_clock
        self._retry_topics = {retry_topic(topic, step): step
                              for step in range(1, len(ladder) + 1)}
        self._pool: Any = None
        self._kafka: Any = None
        self._producer: Any = None
        self._parts: dict[Any, _Partition] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: list[asyncio.Task[None]] = []
        self._commit_wanted = asyncio.Event()
        self._halting = False
        self._stopped = asyncio.Event()
        functools.update_wrapper(self, handler)

    async def __call__(self, msg: KafkaMessage, tx: Any) -> Any:
        """Call the handler itself (no inbox, no commit): for tests of the handler."""
        return await self.handler(msg, tx)

    @property
    def topics(self) -> list[str]:
        """The topics the consumer reads: the work topic and its retry topics."""
        return [self.topic, *self._retry_topics]

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, pool: Any, bootstrap: str = DEFAULT_BOOTSTRAP) -> None:
        """Declare the topics, join the group and start consuming in the background."""
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: PLC0415

        self._pool = pool
        self._halting = False
        self._stopped.clear()
        await declare_topics(bootstrap, self.topic, self.ladder, partitions=self.partitions)
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                          request_timeout_ms=10000)
        await self._producer.start()
        self._kafka = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=self.name,
                                       **self._options)
        try:
            self._kafka.subscribe(self.topics, listener=_rebalance_listener(self))
            await self._kafka.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self._kafka.stop()
            await self._producer.stop()
            self._kafka = self._producer = None
            raise
        self._tasks = [asyncio.create_task(self._fetch()), asyncio.create_task(self._commits())]

    async def stop(self) -> None:
        """Stop fetching, finish the records in hand, commit their offsets, leave the group."""
        if self._kafka is None:
            self._stopped.set()
            return
        self._halting = True
        fetcher, committer = self._tasks
        with contextlib.suppress(BaseException):
            await fetcher
        workers = [part.worker for part in self._parts.values()
                   if part.worker is not None and not part.worker.done()]
        if workers:
            await asyncio.wait(workers, timeout=self._stop_timeout)
        for task in workers:  # past the timeout: uncommitted, so read again
            task.cancel()
        committer.cancel()
        with contextlib.suppress(BaseException):
            await committer
        await self._commit()
        for part in self._parts.values():
            if part.held is not None:
                part.held.cancel()
        self._parts.clear()
        with contextlib.suppress(Exception):
            await self._kafka.stop()
        with contextlib.suppress(Exception):
            await self._producer.stop()
        self._kafka = self._producer = None
        self._stopped.set()

    async def run(self, pool: Any, bootstrap: str = DEFAULT_BOOTSTRAP, *,
                  signals: bool = True) -> None:
        """Consume until SIGTERM / SIGINT (``signals``) or :meth:`stop`, then stop gracefully."""
        await self.start(pool, bootstrap)
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

    def lag(self) -> dict[tuple[str, int], int]:
        """Records behind the end of each assigned partition, as the last fetch told.

        ``(topic, partition)`` to the high watermark minus the next offset to commit
        (a partition nothing was read from yet is left out).
        """
        out: dict[tuple[str, int], int] = {}
        if self._kafka is None:
            return out
        for tp, part in list(self._parts.items()):
            high = self._kafka.highwater(tp)
            if high is not None and part.done is not None:
                out[(tp.topic, tp.partition)] = max(0, high - part.done)
        return out

    # -- fetching and committing --------------------------------------------------------

    async def _fetch(self) -> None:
        kafka = self._kafka
        while not self._halting:
            try:
                batches = await kafka.getmany(timeout_ms=200, max_records=self.prefetch)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The broker is away, or the group is being rebuilt: aiokafka reconnects.
                _log.warning("kafka consumer %s: fetch failed; retrying", self.name,
                             exc_info=True)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batches.items():
                part = self._parts.get(tp)
                if part is None:
                    part = self._parts[tp] = _Partition(tp)
                if part.held is not None:
                    continue  # read before the pause took hold: read again after the seek
                part.pending.extend(records)
                if len(part.pending) >= self.prefetch:
                    kafka.pause(tp)  # bounded memory: resumed once drained
                if part.worker is None or part.worker.done():
                    part.worker = asyncio.create_task(self._drain(part))

    async def _commits(self) -> None:
        while True:
            await self._commit_wanted.wait()
            await asyncio.sleep(self._commit_interval)  # coalesce the offsets of a while
            self._commit_wanted.clear()
            await self._commit()

    async def _commit(self, parts: Sequence[_Partition] | None = None) -> None:
        from aiokafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]  # noqa: PLC0415

        offsets = {part.tp: OffsetAndMetadata(part.done, "")
                   for part in (parts if parts is not None else list(self._parts.values()))
                   if part.done is not None}
        if not offsets or self._kafka is None:
            return
        try:
            await self._kafka.commit(offsets)
        except Exception:
            # A rebalance took the partitions, or the broker is away: the records after
            # the last committed offset are read again, and the inbox skips them.
            _log.warning("kafka consumer %s: offset commit failed", self.name, exc_info=True)

    async def _revoke(self, revoked: set[Any]) -> None:
        parts = [self._parts[tp] for tp in revoked if tp in self._parts]
        for part in parts:
            part.revoked = True
            part.pending.clear()  # the next owner reads them
            if part.held is not None:
                part.held.cancel()
                part.held = None
        workers = [p.worker for p in parts if p.worker is not None and not p.worker.done()]
        if workers:  # the record in hand finishes, so its offset can be committed now
            await asyncio.wait(workers, timeout=self._stop_timeout)
        await self._commit(parts)
        for part in parts:
            self._parts.pop(part.tp, None)

    # -- one partition ------------------------------------------------------------------

    async def _drain(self, part: _Partition) -> None:
        while part.pending and not self._halting and not part.revoked and part.held is None:
            async with self._slots:
                # A chunk per turn, so that a long backlog does not starve the others.
                for _ in range(max(1, 64 // self.batch)):
                    if not part.pending or self._halting or part.revoked:
                        break
                    records = self._take(part)
                    if not records:  # a retry not due yet: the partition is held
                        break
                    if len(records) == 1:
                        await self._settle(part, records[0])
                    else:
                        await self._settle_batch(part, records)
                    for _ in records:
                        if part.pending:
                            part.pending.popleft()
                    part.done = records[-1].offset + 1
                    self._commit_wanted.set()
            if len(part.pending) < self.prefetch // 2 and part.held is None:
                self._resume(part)
        if part.held is None:
            self._resume(part)

    def _take(self, part: _Partition) -> list[Any]:
        """The next records to settle together (in order), or none if the head is held."""
        head = part.pending[0]
        if head.topic in self._retry_topics:
            return [] if self._hold(part, head) else [head]
        if part.suspect or self.batch == 1:
            return [head]  # deliveries are counted one by one after an assignment
        return [part.pending[i] for i in range(min(self.batch, len(part.pending)))]

    def _resume(self, part: _Partition) -> None:
        if self._kafka is not None and not part.revoked:
            with contextlib.suppress(Exception):  # no longer assigned
                self._kafka.resume(part.tp)

    def _hold(self, part: _Partition, record: Any) -> bool:
        """Pause a retry partition whose head is not due yet; whether it was paused."""
        headers = decode_headers(record.headers)
        try:
            due = _int_header(headers, DUE)
        except PoisonMessageError:
            return False  # settled (dead-lettered) by _settle, which parses it again
        wait = due / 1000 - self._clock.time()
        if wait <= 0:
            return False
        self._kafka.pause(part.tp)
        self._kafka.seek(part.tp, record.offset)
        part.pending.clear()

        def release() -> None:
            part.held = None
            if not self._halting:
                self._resume(part)

        part.held = asyncio.get_running_loop().call_later(wait, release)
        return True

    # -- one record ---------------------------------------------------------------------

    def _emit(self, started: float, outcome: Outcome, **fields: Any) -> None:
        if has_listeners(self._listeners):
            dispatch(self._listeners, MessageHandled(
                policy="consumer", name=self.name, queue=self.topic, outcome=outcome,
                seconds=self._clock.monotonic() - started, **fields))

    async def _settle(self, part: _Partition, record: Any) -> None:
        started = self._clock.monotonic()
        headers = decode_headers(record.headers)
        ident = headers.get(MESSAGE_ID_HEADER)
        try:
            if not ident:
                raise PoisonMessageError(
                    "the record has no message id (header fournines-message-id)",
                    reason="missing_message_id")
            previous = _int_header(headers, ATTEMPTS)
            if record.value is None:
                raise PoisonMessageError("the record has no value (a tombstone)",
                                         reason="malformed_body")
            body = self._decode(record.value)
        except Exception as exc:
            reason = exc.reason if isinstance(exc, PoisonMessageError) else "malformed_body"
            await self._dead_letter(part, record, headers, started, reason, exc, previous=0)
            return
        key = headers.get(KEY_HEADER) or (
            record.key.decode(errors="replace") if record.key is not None else None)
        msg = KafkaMessage(id=ident, body=body, raw=record.value, headers=headers, key=key,
                           routing_key=record.topic, attempt=previous + 1,
                           redelivered=part.suspect, topic=self.topic,
                           partition=record.partition, offset=record.offset)
        counted = False
        if part.suspect and self.delivery_limit is not None:
            deliveries = await self._count_delivery(ident)
            counted = deliveries is not None
            if deliveries is not None and deliveries > self.delivery_limit:
                await self._dead_letter(part, record, headers, started, "delivery_limit",
                                        PoisonMessageError(
                                            f"read {deliveries} times without settling "
                                            "(the consumer crashed on it?)",
                                            reason="delivery_limit"), previous=previous)
                await self._forget_delivery(ident)
                part.suspect = False
                return

        async def work(conn: Any) -> bool:
            if counted:
                await conn.execute("DELETE FROM fournines_deliveries WHERE consumer = $1 AND "
                                   "message_id = $2", self.name, ident)
            fresh = await conn.fetchval(
                "INSERT INTO fournines_inbox (consumer, message_id) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING RETURNING true", self.name, ident)
            if not fresh:
                return False
            await self.handler(msg, conn)
            return True

        try:
            applied = await self._transaction(self._pool, work)
        except Exception as exc:
            await self._failed(part, record, headers, started, exc, previous)
            if counted:  # settled (retry topic or dead letters): not a crash loop
                await self._forget_delivery(ident)
            part.suspect = False
            return
        if applied:
            part.suspect = False
        self._emit(started, "acked" if applied else "duplicate")

    async def _settle_batch(self, part: _Partition, records: list[Any]) -> None:
        """Apply consecutive records in one transaction; on any failure, each on its own."""
        started = self._clock.monotonic()
        messages: list[KafkaMessage] = []
        for record in records:
            headers = decode_headers(record.headers)
            ident = headers.get(MESSAGE_ID_HEADER)
            try:
                if not ident or record.value is None:
                    raise PoisonMessageError("bad record", reason="malformed_body")
                previous = _int_header(headers, ATTEMPTS)
                body = self._decode(record.value)
            except Exception:
                messages = []  # the single path dead-letters it, with its reason, in order
                break
            key = headers.get(KEY_HEADER) or (
                record.key.decode(errors="replace") if record.key is not None else None)
            messages.append(KafkaMessage(
                id=ident, body=body, raw=record.value, headers=headers, key=key,
                routing_key=record.topic, attempt=previous + 1, topic=self.topic,
                partition=record.partition, offset=record.offset))
        if not messages:
            for record in records:
                await self._settle(part, record)
            return

        async def work(conn: Any) -> set[str]:
            rows = await conn.fetch(
                "INSERT INTO fournines_inbox (consumer, message_id) "
                "SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING message_id",
                self.name, [msg.id for msg in messages])
            fresh = {row[0] for row in rows}
            applied = set()
            for msg in messages:
                if msg.id in fresh and msg.id not in applied:  # two copies in one batch
                    applied.add(msg.id)
                    await self.handler(msg, conn)
            return applied

        try:
            applied = await self._transaction(self._pool, work)
        except Exception:
            # One record failed the whole batch (rolled back): settle each alone, in
            # order, so only the failing one climbs the ladder.
            for record in records:
                await self._settle(part, record)
            return
        for msg in messages:
            fresh = msg.id in applied
            applied.discard(msg.id)
            self._emit(started, "acked" if fresh else "duplicate")

    async def _count_delivery(self, ident: str) -> int | None:
        try:
            count: int = await self._pool.fetchval(
                "INSERT INTO fournines_deliveries (consumer, message_id) VALUES ($1, $2) "
                "ON CONFLICT (consumer, message_id) DO UPDATE SET deliveries = "
                "fournines_deliveries.deliveries + 1, last_at = now() RETURNING deliveries",
                self.name, ident)
        except Exception:
            # No table (an older schema) or no database: the handler's transaction will
            # tell; the delivery limit is not worth failing the record for.
            _log.warning("kafka consumer %s: cannot count deliveries", self.name, exc_info=True)
            return None
        return count

    async def _forget_delivery(self, ident: str) -> None:
        with contextlib.suppress(Exception):  # a leftover row only delays a future count
            await self._pool.execute("DELETE FROM fournines_deliveries WHERE consumer = $1 "
                                     "AND message_id = $2", self.name, ident)

    async def _failed(self, part: _Partition, record: Any, headers: dict[str, str],
                      started: float, exc: Exception, previous: int) -> None:
        attempts = previous + 1
        plan = plan_failure(exc, attempts=attempts, ladder=self.ladder, fatal=self._fatal,
                            retryable=self._retryable)
        if plan.reason is not None or plan.step is None:
            await self._dead_letter(part, record, headers, started,
                                    plan.reason or "not_retryable", exc, previous=previous)
            return
        out = self._failure_headers(record, headers, exc, attempts)
        out[DUE] = str(round((self._clock.time() + plan.delay) * 1000))
        if await self._forward(part, record, retry_topic(self.topic, plan.step), out):
            self._emit(started, "retried", step=plan.step, error=exc)

    def _failure_headers(self, record: Any, headers: dict[str, str], exc: BaseException | None,
                         attempts: int) -> dict[str, Any]:
        out = failure_headers(headers, queue=self.topic, attempts=attempts, exc=exc, original={
            ORIGINAL_TOPIC: record.topic, ORIGINAL_PARTITION: record.partition,
            ORIGINAL_OFFSET: record.offset})
        out.pop(DUE, None)
        return out

    async def _dead_letter(self, part: _Partition, record: Any, headers: dict[str, str],
                           started: float, reason: str, exc: BaseException, *,
                           previous: int) -> None:
        out = self._failure_headers(record, headers, exc, previous + 1)
        out[REASON] = reason
        if await self._forward(part, record, dead_topic(self.topic), out):
            self._emit(started, "dead_lettered", reason=reason, error=exc)

    async def _forward(self, part: _Partition, record: Any, topic: str,
                       headers: dict[str, Any]) -> bool:
        """Produce a copy to ``topic`` and wait for the broker's ack, retrying until it has it.

        Until then the offset is not let go: the partition waits (as it must, to keep
        its order), and stopping leaves the record to be read again.
        """
        while True:
            try:
                future = await self._producer.send(topic, record.value, key=record.key,
                                                   headers=encode_headers(headers))
                await future
                return True
            except Exception:
                _log.warning("kafka consumer %s: cannot produce to %s; retrying", self.name,
                             topic, exc_info=True)
            if self._halting or part.revoked:
                raise asyncio.CancelledError  # not settled: read again by whoever owns it
            await asyncio.sleep(1.0)


def kafka_consumer(
    *,
    topic: str,
    name: str | None = None,
    ladder: Sequence[float] = DEFAULT_LADDER,
    delivery_limit: int | None = 20,
    partitions: int = 4,
    concurrency: int = 8,
    prefetch: int = 256,
    batch: int = 1,
    decode: Callable[[bytes], Any] = decode_json,
    dead_letter_on: ExceptionFilter = (PoisonMessageError, ValueError),
    retry_on: ExceptionFilter = Exception,
    isolation: Any = None,
    attempts: int = 5,
    listeners: Sequence[Listener] = (),
    stop_timeout: float = 30.0,
    commit_interval: float = 0.2,
    options: Mapping[str, Any] | None = None,
) -> Callable[[Handler], KafkaConsumer]:
    """Make ``async def handle(msg, tx)`` an idempotent consumer of Kafka topic ``topic``.

    :param topic: the work topic (declared with its retry and dead-letter topics).
    :param name: the consumer group and the consumer's name in the inbox (default: ``topic``).
    :param ladder: the waits, in seconds, before each retry (one retry topic each); a
        failure after the last goes to the dead letters (``reason="retries_exhausted"``).
    :param delivery_limit: reads of one record without a settlement (the consumer
        crashed on it) before it is dead-lettered (``"delivery_limit"``); ``None``: no limit.
    :param partitions: partitions of the topics it creates (those that exist are kept).
    :param concurrency: partitions handled at once (each one record at a time, in order).
    :param prefetch: records fetched ahead per partition before its fetching pauses.
    :param batch: up to this many consecutive records of one partition share one
        transaction (one inbox INSERT, the handlers in offset order, one COMMIT): fewer
        round trips per record. A failure rolls the batch back and its records are
        then settled one by one, so only the failing one climbs the ladder.
    :param decode: bytes to ``msg.body`` (JSON); raising dead-letters the record
        (``reason="malformed_body"``).
    :param dead_letter_on: failures no retry can fix, dead-lettered at once.
    :param retry_on: failures worth the ladder (everything else is dead-lettered at once).
    :param isolation: the isolation level of the handler's transaction.
    :param attempts: attempts of the transaction on conflicts (40001/40P01), per record.
    :param listeners: receive :class:`MessageHandled` (and the transactions' events).
    :param stop_timeout: seconds :meth:`KafkaConsumer.stop` waits for the records in hand.
    :param commit_interval: seconds offsets are gathered before one commit.
    :param options: more ``AIOKafkaConsumer`` settings (``session_timeout_ms`` is 6000).
    """

    def decorate(handler: Handler) -> KafkaConsumer:
        return KafkaConsumer(handler, topic=topic, name=name, ladder=ladder,
                             delivery_limit=delivery_limit, partitions=partitions,
                             concurrency=concurrency, prefetch=prefetch, batch=batch,
                             decode=decode,
                             dead_letter_on=dead_letter_on, retry_on=retry_on,
                             isolation=isolation, attempts=attempts, listeners=listeners,
                             stop_timeout=stop_timeout, commit_interval=commit_interval,
                             options=options)

    return decorate
