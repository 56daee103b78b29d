"""Dead letters on RabbitMQ: list, show, replay and purge the ``Q.dead`` of a work queue.

Reading a queue without consuming it: every message is fetched with ``basic.get``
unacked, and the ones not replayed or purged go back when the channel closes.
A replay publishes a copy to the work queue (confirmed) *before* acking the dead
letter, so a crash in between leaves it in both places with one message id: the
consumer's inbox applies it once, and replaying it again is harmless too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import DeadLetterNotFoundError
from ._ladder import ATTEMPTS, ERROR, EXCEPTION, FIRST_FAILURE, LAST_FAILURE, REASON, REPLAYED
from ._rabbitmq import DEFAULT_URL, ORIGINAL_ROUTING_KEY, dead_queue, publish_confirmed
from .outbox import MESSAGE_ID_HEADER

__all__ = ["DeadLetter", "list_dead_letters", "purge_dead_letters", "replay_dead_letters"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A dead letter, as ``fournines dlq list/show`` prints it."""

    id: str | None
    reason: str | None
    exception: str | None
    error: str | None
    attempts: int
    first_failure: str | None
    last_failure: str | None
    original_routing_key: str | None
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The fields but the body and the headers (one line of ``dlq list``)."""
        return {"id": self.id, "reason": self.reason, "exception": self.exception,
                "attempts": self.attempts, "first_failure": self.first_failure,
                "last_failure": self.last_failure,
                "original_routing_key": self.original_routing_key, "error": self.error}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _letter(delivery: Any) -> DeadLetter:
    headers = dict(delivery.headers or {})
    reason = _text(headers.get(REASON))
    if reason is None and headers.get("x-death"):
        # Dead-lettered by the broker itself (the delivery limit): its own reason.
        reason = _text(headers["x-death"][0].get("reason"))
    return DeadLetter(
        id=_text(headers.get(MESSAGE_ID_HEADER) or delivery.message_id),
        reason=reason, exception=_text(headers.get(EXCEPTION)), error=_text(headers.get(ERROR)),
        attempts=int(headers.get(ATTEMPTS, 0) or 0),
        first_failure=_text(headers.get(FIRST_FAILURE)),
        last_failure=_text(headers.get(LAST_FAILURE)),
        original_routing_key=_text(headers.get(ORIGINAL_ROUTING_KEY)),
        body=bytes(delivery.body), headers=headers)


async def _fetch_all(channel: Any, queue: str, limit: int | None) -> list[Any]:
    source = await channel.get_queue(dead_queue(queue), ensure=True)
    deliveries: list[Any] = []
    while limit is None or len(deliveries) < limit:
        delivery = await source.get(no_ack=False, fail=False)
        if delivery is None:
            break
        deliveries.append(delivery)
    return deliveries


async def list_dead_letters(queue: str, url: str = DEFAULT_URL, *,
                            limit: int | None = None) -> list[DeadLetter]:
    """The dead letters of work queue ``queue``, oldest first; they stay where they are."""
    import aio_pika  # noqa: PLC0415 - optional dependency

    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        return [_letter(delivery) for delivery in await _fetch_all(channel, queue, limit)]


async def replay_dead_letters(queue: str, url: str = DEFAULT_URL, *,
                              ids: Sequence[str] = ()) -> list[str]:
    """Send dead letters back to ``queue`` (all, or those of ``ids``); the ids replayed.

    The attempts and failure headers are reset, so a replayed message climbs the
    ladder again; ``fournines-replayed`` counts the replays.

    :raises DeadLetterNotFoundError: an id of ``ids`` is not among the dead letters
        (nothing is replayed then).
    """
    import aio_pika  # noqa: PLC0415

    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        deliveries = await _fetch_all(channel, queue, None)
        chosen = [d for d in deliveries if not ids or _letter(d).id in set(ids)]
        missing = set(ids) - {_letter(d).id for d in chosen}
        if missing:
            raise DeadLetterNotFoundError(
                f"no dead letter of queue {queue!r} with id {', '.join(sorted(missing))} "
                "(already replayed or purged?)")
        replayed = []
        for delivery in chosen:
            letter = _letter(delivery)
            headers = {key: value for key, value in letter.headers.items()
                       if key not in (ATTEMPTS, REASON, FIRST_FAILURE, LAST_FAILURE, "x-death")}
            headers[REPLAYED] = int(letter.headers.get(REPLAYED, 0) or 0) + 1
            await publish_confirmed(channel.default_exchange, aio_pika.Message(
                delivery.body, headers=headers, message_id=delivery.message_id,
                content_type=delivery.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT), queue)
            await delivery.ack()
            replayed.append(letter.id or "")
        return replayed


async def purge_dead_letters(queue: str, url: str = DEFAULT_URL, *,
                             ids: Sequence[str] = ()) -> int:
    """Delete dead letters of ``queue`` (all, or those of ``ids``); how many.

    :raises DeadLetterNotFoundError: an id of ``ids`` is not among the dead letters.
    """
    import aio_pika  # noqa: PLC0415

    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        if not ids:
            target = await channel.get_queue(dead_queue(queue), ensure=True)
            result = await target.purge()
            return int(getattr(result, "message_count", 0) or 0)
        deliveries = await _fetch_all(channel, queue, None)
        chosen = [d for d in deliveries if _letter(d).id in set(ids)]
        missing = set(ids) - {_letter(d).id for d in chosen}
        if missing:
            raise DeadLetterNotFoundError(
                f"no dead letter of queue {queue!r} with id {', '.join(sorted(missing))}")
        for delivery in chosen:
            await delivery.ack()
        return len(chosen)
