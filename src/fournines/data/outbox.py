"""The transactional outbox: messages written in the business transaction, published after.

:func:`add` inserts a message into ``fournines_outbox`` on the caller's own
connection, inside the caller's transaction: the message exists if and only if the
business change committed. A :class:`Relay` then publishes the committed rows and
marks them sent; a crash between publishing and marking publishes the row again
(at least once), and the consumer's inbox (the message id travels as the header
:data:`MESSAGE_ID_HEADER`) makes the duplicate harmless.

Order: rows of one key are published in the order of ``seq`` (insertion; rows of
one key written by concurrent transactions are ordered by insertion, not commit),
each batch in one transaction that first takes a transaction-level advisory lock
per key, skipping the keys another relay holds (``pg_try_advisory_xact_lock``, the
``SKIP LOCKED`` of keys), then locks that key's rows (``FOR UPDATE``): several
relays share the work, each key is in one relay's hands at a time, and none
publishes a row twice in the normal case.

The relay wakes on ``NOTIFY fournines_outbox`` (sent by a statement trigger on
insert) and polls every ``poll_interval`` seconds as a fallback for a lost
notification or a dropped listening connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._clock import Clock, system_clock
from .._errors import ConfigurationError, check_number
from ._tracing import inject_context

__all__ = ["MESSAGE_ID_HEADER", "SCHEMA", "OutboxMessage", "Relay", "add", "init_schema"]

_log = logging.getLogger("fournines.data.outbox")

MESSAGE_ID_HEADER = "fournines-message-id"
"""The header that carries a message's id from the outbox to the consumer's inbox."""

KEY_HEADER = "fournines-key"

CHANNEL = "fournines_outbox"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS fournines_outbox (
    seq          bigserial PRIMARY KEY,
    id           text NOT NULL UNIQUE,
    destination  text NOT NULL,
    key          text NOT NULL,
    body         bytea NOT NULL,
    headers      jsonb NOT NULL DEFAULT '{{}}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz
);
CREATE INDEX IF NOT EXISTS fournines_outbox_unsent
    ON fournines_outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS fournines_outbox_sent
    ON fournines_outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS fournines_inbox (
    consumer     text NOT NULL,
    message_id   text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE TABLE IF NOT EXISTS fournines_deliveries (
    consumer     text NOT NULL,
    message_id   text NOT NULL,
    deliveries   int NOT NULL DEFAULT 1,
    last_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE OR REPLACE FUNCTION fournines_outbox_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS fournines_outbox_notify ON fournines_outbox;
CREATE TRIGGER fournines_outbox_notify AFTER INSERT ON fournines_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION fournines_outbox_notify();
"""
"""The migration: the outbox and inbox tables, the Kafka consumer's delivery counts
and the notify trigger (idempotent).

Run by ``fournines data init DSN`` or :func:`init_schema`; copy it into your own
migrations if you keep them (it is plain PostgreSQL 12+ SQL)."""


async def init_schema(conn: Any) -> None:
    """Create the outbox and inbox tables on an asyncpg connection or pool (idempotent)."""
    await conn.execute(SCHEMA)


async def add(
    tx: Any,
    destination: str,
    key: str,
    body: bytes | str,
    headers: Mapping[str, Any] | None = None,
    *,
    message_id: str | None = None,
) -> str:
    """Write a message into the outbox on ``tx``, in the caller's transaction; its id.

    :param tx: the asyncpg connection the business change runs on, in a transaction
        (the ``conn`` a :func:`~fournines.data.transaction` function receives).
    :param destination: where the relay sends it (a queue name for RabbitMQ).
    :param key: the ordering key: messages of one key are published in order.
    :param body: the payload (``str`` is sent as UTF-8).
    :param headers: string-keyed, JSON-serialisable headers sent along. The current
        OpenTelemetry context is added (``traceparent``/``tracestate``, unless these
        are given), so a consumer with ``tracing=True`` continues the caller's trace.
    :param message_id: the id the consumer dedupes on (default: a new UUID).
    :raises ConfigurationError: a bad argument, or ``tx`` not in a transaction
        (the message would be sent whether the business change commits or not).
    """
    for field, value in (("destination", destination), ("key", key)):
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"outbox.add.{field} must be a non-empty str, got {value!r}")
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes | bytearray | memoryview):
        raise ConfigurationError(f"outbox.add.body must be bytes or str, got {type(body).__name__}")
    try:
        encoded = json.dumps(inject_context(dict(headers or {})))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"outbox.add.headers must be a JSON-serialisable mapping, got {headers!r}") from exc
    is_in_transaction = getattr(tx, "is_in_transaction", None)
    if not callable(is_in_transaction) or not is_in_transaction():
        raise ConfigurationError(
            "outbox.add.tx must be an asyncpg connection inside a transaction (the one the "
            "business change runs on), so the message is written if and only if it commits")
    ident = message_id or str(uuid.uuid4())
    await tx.execute(
        "INSERT INTO fournines_outbox (id, destination, key, body, headers) "
        "VALUES ($1, $2, $3, $4, $5::jsonb)", ident, destination, key, bytes(body), encoded)
    return ident


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxMessage:
    """One row of the outbox, as the relay hands it to a publisher.

    ``headers`` already include :data:`MESSAGE_ID_HEADER` and the key.
    """

    seq: int
    id: str
    destination: str
    key: str
    body: bytes
    headers: dict[str, Any]


Publish = Callable[[list[OutboxMessage]], Awaitable[None]]

# Two steps, so that a key is claimed whole: first lock keys (a transaction-level
# advisory lock each, skipping the keys another relay holds), then, on a snapshot taken
# after the locks, read the unsent rows of those keys in order. Locking inside one
# scan of the rows is not enough: the holder of a key can commit halfway through the
# scan, and the rows of that key seen before would be skipped and later ones taken,
# out of order. hashtextextended is stable across sessions; the seed keeps fournines'
# locks apart from the application's.
_CLAIM_KEYS = """
SELECT key FROM (
    SELECT key, min(seq) AS first FROM fournines_outbox WHERE sent_at IS NULL
    GROUP BY key ORDER BY first LIMIT $2
) candidates
WHERE pg_try_advisory_xact_lock(hashtextextended(key, 4242))
LIMIT $1
"""
_CLAIM_ROWS = """
SELECT seq, id, destination, key, body, headers::text
FROM fournines_outbox
WHERE sent_at IS NULL AND key = ANY($1::text[])
ORDER BY seq
LIMIT $2
FOR UPDATE
"""


def _closed(conn: Any) -> bool:
    """Whether the listening connection is gone.

    When the server closes a connection that is checked out of an asyncpg pool
    (a restart), the pool takes it back by itself and its proxy refuses every
    call, ``is_closed()`` included (``InterfaceError``: "released back to the
    pool"): that connection is gone too.
    """
    try:
        return bool(conn.is_closed())
    except Exception:
        return True


class Relay:
    """Publishes the outbox's committed rows, in order per key, at least once.

    :param pool: an asyncpg ``Pool`` (one connection for the batches, one to LISTEN).
    :param publish: ``async def publish(messages)``: send them all, in order, and
        return only once the broker has them (publisher confirms); raise to have
        the whole batch sent again later. :class:`~fournines.data.RabbitPublisher`
        is one.
    :param batch_size: rows claimed per transaction.
    :param poll_interval: seconds between polls when no notification arrives.
    :param retention: seconds a sent row is kept before cleanup deletes it
        (``0``: delete at once, in the batch's transaction).
    :param retry_delay: seconds to wait after a failed batch (broker or database down).
    :param clock: what waits sleep on.
    """

    def __init__(
        self,
        pool: Any,
        publish: Publish,
        *,
        batch_size: int = 200,
        poll_interval: float = 1.0,
        retention: float = 3600.0,
        retry_delay: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        check_number("Relay", "batch_size", batch_size, minimum=1, integer=True)
        check_number("Relay", "poll_interval", poll_interval, minimum=0, exclusive_minimum=True)
        check_number("Relay", "retention", retention, minimum=0)
        check_number("Relay", "retry_delay", retry_delay, minimum=0)
        if not callable(publish):
            raise ConfigurationError(f"Relay.publish must be a coroutine function, got {publish!r}")
        self._pool = pool
        self._publish = publish
        self._batch_size = batch_size
        self._poll_interval = float(poll_interval)
        self._retention = float(retention)
        self._retry_delay = float(retry_delay)
        self._clock = clock or system_clock
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.published = 0
        """Rows published (and marked sent) by this relay."""

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def relay_once(self) -> int:
        """Claim, publish and mark one batch; how many rows it published (0: none waiting)."""
        async with self._pool.acquire() as conn, conn.transaction():
            keys = await conn.fetch(_CLAIM_KEYS, self._batch_size, 4 * self._batch_size)
            if not keys:
                return 0
            rows = await conn.fetch(_CLAIM_ROWS, [k[0] for k in keys], self._batch_size)
            if not rows:
                return 0
            messages = [
                OutboxMessage(seq=row[0], id=row[1], destination=row[2], key=row[3],
                              body=bytes(row[4]),
                              headers={**json.loads(row[5]), MESSAGE_ID_HEADER: row[1],
                                       KEY_HEADER: row[3]})
                for row in rows]
            await self._publish(messages)
            seqs = [message.seq for message in messages]
            if self._retention == 0:
                await conn.execute("DELETE FROM fournines_outbox WHERE seq = ANY($1::bigint[])",
                                   seqs)
            else:
                await conn.execute("UPDATE fournines_outbox SET sent_at = now() "
                                   "WHERE seq = ANY($1::bigint[])", seqs)
        self.published += len(messages)
        return len(messages)

    async def cleanup(self) -> int:
        """Delete the rows sent more than ``retention`` seconds ago; how many."""
        result: str = await self._pool.execute(
            "DELETE FROM fournines_outbox WHERE sent_at IS NOT NULL "
            "AND sent_at < now() - make_interval(secs => $1)", self._retention)
        return int(result.rpartition(" ")[2] or 0)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in flight."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Relay until :meth:`stop` (or cancellation); survives database and broker outages."""
        listener: Any = None
        last_cleanup = self._clock.monotonic()
        try:
            while not self._stopping.is_set():
                if listener is None or _closed(listener):
                    listener = await self._listen(listener)
                # Cleared before the batch, not after: a notification (or stop()) that
                # arrives while a batch is in flight must not be lost.
                self._wake.clear()
                try:
                    count = await self.relay_once()
                    if self._clock.monotonic() - last_cleanup > min(60.0, self._retention or 60):
                        last_cleanup = self._clock.monotonic()
                        await self.cleanup()
                except Exception:
                    _log.warning("outbox relay: batch failed; retrying in %.1fs",
                                 self._retry_delay, exc_info=True)
                    await self._sleep(self._retry_delay)
                    continue
                if count < self._batch_size:  # caught up: wait for a notification or a poll
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll_interval)
        finally:
            await self._unlisten(listener)

    async def _unlisten(self, conn: Any) -> None:
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.remove_listener(CHANNEL, self._notified)
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def _listen(self, old: Any) -> Any:
        await self._unlisten(old)
        conn: Any = None
        try:
            conn = await self._pool.acquire()
            await conn.add_listener(CHANNEL, self._notified)
            return conn
        except Exception:
            _log.warning("outbox relay: cannot LISTEN; polling", exc_info=True)
            if conn is not None:  # the server went away between the two: not kept
                with contextlib.suppress(Exception):
                    await self._pool.release(conn)
            return None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
