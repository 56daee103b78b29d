"""Dead letters on Kafka: list, show, replay and purge the ``T.dead`` topic of a topic.

A topic is a log: nothing can be taken out of it. So replaying or purging a dead
letter *appends* a marker record to ``T.dead`` (header ``fournines-dlq-action``:
``replayed`` or ``purged``, and ``fournines-dlq-target``: the letter's
``partition:offset``), and the dead letters are the records no marker targets.
A replay produces the copy to ``T`` (acknowledged) *before* its marker, so a crash
in between leaves the letter listed while its copy is on its way: the consumer's
inbox applies it once, and replaying it again is harmless too. A message that
fails again after a replay is a new dead letter, at a new offset.

Reading needs no consumer group: the partitions of ``T.dead`` are assigned and
read from the beginning to the end offsets of the moment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import DeadLetterNotFoundError
from ._dlq import DeadLetter
from ._kafka import (
    DEFAULT_BOOTSTRAP,
    DUE,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
    dead_topic,
    decode_headers,
    encode_headers,
)
from ._ladder import (
    ATTEMPTS,
    ERROR,
    EXCEPTION,
    FIRST_FAILURE,
    LAST_FAILURE,
    QUEUE,
    REASON,
    REPLAYED,
)
from .outbox import MESSAGE_ID_HEADER

__all__ = [
    "KafkaDeadLetter",
    "list_kafka_dead_letters",
    "purge_kafka_dead_letters",
    "replay_kafka_dead_letters",
]

ACTION = "fournines-dlq-action"
TARGET = "fournines-dlq-target"


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaDeadLetter(DeadLetter):
    """A dead letter on Kafka: a :class:`DeadLetter` plus where it was and where it is.

    ``original_routing_key`` is the topic it was read from when it failed;
    ``partition`` and ``offset`` are its place in ``T.dead``.
    """

    original_partition: int | None = None
    original_offset: int | None = None
    partition: int = 0
    offset: int = 0
    key: bytes | None = None

    def summary(self) -> dict[str, Any]:
        """The fields but the body and the headers (one line of ``dlq list``)."""
        return {**DeadLetter.summary(self), "original_partition": self.original_partition,
                "original_offset": self.original_offset, "partition": self.partition,
                "offset": self.offset}


def _optional_int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _letter(record: Any) -> KafkaDeadLetter:
    headers = decode_headers(record.headers)
    return KafkaDeadLetter(
        id=headers.get(MESSAGE_ID_HEADER), reason=headers.get(REASON),
        exception=headers.get(EXCEPTION), error=headers.get(ERROR),
        attempts=_optional_int(headers.get(ATTEMPTS)) or 0,
        first_failure=headers.get(FIRST_FAILURE), last_failure=headers.get(LAST_FAILURE),
        original_routing_key=headers.get(ORIGINAL_TOPIC),
        original_partition=_optional_int(headers.get(ORIGINAL_PARTITION)),
        original_offset=_optional_int(headers.get(ORIGINAL_OFFSET)),
        body=bytes(record.value or b""), headers=dict(headers), partition=record.partition,
        offset=record.offset, key=record.key)


async def _read(bootstrap: str, topic: str) -> list[KafkaDeadLetter]:
    """The live dead letters of ``topic``, oldest first (per partition)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]  # noqa: PLC0415

    name = dead_topic(topic)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                              enable_auto_commit=False, auto_offset_reset="earliest")
    await reader.start()
    try:
        if name not in await reader.topics():
            raise DeadLetterNotFoundError(
                f"no dead-letter topic {name!r} (is {topic!r} the work topic, and has a "
                "consumer of it started?)")
        tps = [TopicPartition(name, p) for p in sorted(reader.partitions_for_topic(name) or ())]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        records: list[Any] = []
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            batches = await reader.getmany(*left, timeout_ms=1000)
            for tp, batch in batches.items():
                records.extend(r for r in batch if r.offset < ends[tp])
            for tp in list(left):
                if await reader.position(tp) >= ends[tp]:
                    left.discard(tp)
    finally:
        await reader.stop()
    targeted = set()
    letters = []
    for record in records:
        headers = decode_headers(record.headers)
        if ACTION in headers:
            targeted.add(headers.get(TARGET))
        else:
            letters.append(_letter(record))
    return [letter for letter in letters
            if f"{letter.partition}:{letter.offset}" not in targeted]


def _choose(topic: str, letters: list[KafkaDeadLetter],
            ids: Sequence[str]) -> list[KafkaDeadLetter]:
    wanted = set(ids)
    chosen = [letter for letter in letters if not wanted or letter.id in wanted]
    missing = wanted - {letter.id for letter in chosen}
    if missing:
        raise DeadLetterNotFoundError(
            f"no dead letter of topic {topic!r} with id {', '.join(sorted(missing))} "
            "(already replayed or purged?)")
    return chosen


async def list_kafka_dead_letters(topic: str, bootstrap: str = DEFAULT_BOOTSTRAP, *,
                                  limit: int | None = None) -> list[KafkaDeadLetter]:
    """The dead letters of Kafka topic ``topic`` (those not replayed or purged).

    :raises DeadLetterNotFoundError: ``topic`` has no dead-letter topic.
    """
    letters = await _read(bootstrap, topic)
    return letters if limit is None else letters[:limit]


async def _mark(producer: Any, topic: str, letter: KafkaDeadLetter, action: str) -> None:
    future = await producer.send(dead_topic(topic), b"", key=letter.key,
                                 partition=letter.partition, headers=encode_headers({
                                     ACTION: action, TARGET: f"{letter.partition}:{letter.offset}",
                                     MESSAGE_ID_HEADER: letter.id or ""}))
    await future


@contextlib.asynccontextmanager
async def _producer(bootstrap: str) -> Any:
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def replay_kafka_dead_letters(topic: str, bootstrap: str = DEFAULT_BOOTSTRAP, *,
                                    ids: Sequence[str] = ()) -> list[str]:
    """Send dead letters back to ``topic`` (all, or those of ``ids``); the ids replayed.

    The attempts and failure headers are reset, so a replayed message climbs the
    ladder again; ``fournines-replayed`` counts the replays.

    :raises DeadLetterNotFoundError: an id of ``ids`` is not among the dead letters
        (nothing is replayed then), or ``topic`` has no dead-letter topic.
    """
    chosen = _choose(topic, await _read(bootstrap, topic), ids)
    replayed = []
    async with _producer(bootstrap) as producer:
        for letter in chosen:
            headers = {key: value for key, value in letter.headers.items()
                       if key not in (ATTEMPTS, REASON, FIRST_FAILURE, LAST_FAILURE, DUE)}
            headers[REPLAYED] = (_optional_int(letter.headers.get(REPLAYED)) or 0) + 1
            target = letter.headers.get(QUEUE) or topic
            future = await producer.send(target, letter.body, key=letter.key,
                                         headers=encode_headers(headers))
            await future
            await _mark(producer, topic, letter, "replayed")
            replayed.append(letter.id or "")
    return replayed


async def purge_kafka_dead_letters(topic: str, bootstrap: str = DEFAULT_BOOTSTRAP, *,
                                   ids: Sequence[str] = ()) -> int:
    """Drop dead letters of ``topic`` (all, or those of ``ids``) from the list; how many.

    :raises DeadLetterNotFoundError: an id of ``ids`` is not among the dead letters.
    """
    chosen = _choose(topic, await _read(bootstrap, topic), ids)
    async with _producer(bootstrap) as producer:
        for letter in chosen:
            await _mark(producer, topic, letter, "purged")
    return len(chosen)
