"""The data pillar: database transactions that survive conflicts.

:func:`transaction` (asyncpg, psycopg async, SQLAlchemy ``AsyncEngine`` and
``async_sessionmaker``) and :func:`transaction_sync` (psycopg, SQLAlchemy
``Engine`` and ``sessionmaker``) run a function in a transaction and retry the whole transaction on
serialization failures, deadlocks and connections lost before COMMIT; the
current deadline becomes the transaction's statement and lock timeouts;
:func:`transactional` is the decorator form. A COMMIT whose outcome is unknown
raises :class:`CommitOutcomeUnknownError` unless the work is ``idempotent``.
:func:`pool_check` is a readiness check on the pool the service uses, and
:class:`PoolMetrics` reports its size, use and waits to Prometheus.

Messages that survive crashes: ``outbox.add(tx, ...)`` writes
a message in the business
transaction and a :class:`Relay` (with :class:`RabbitPublisher`) publishes it at least
once, in order per key; :func:`consumer` makes ``async def handle(msg, tx)`` an
idempotent RabbitMQ consumer (inbox row in the handler's transaction, ack after
commit, a retry ladder of TTL wait queues, dead letters with the reason in headers,
which :func:`list_dead_letters` / :func:`replay_dead_letters` / ``fournines dlq``
manage); :func:`kafka_consumer` and :class:`KafkaPublisher` do the same on Kafka
(retry topics whose partitions pause until a retry is due, ``T.dead``, and
:func:`list_kafka_dead_letters` / :func:`replay_kafka_dead_letters`);
:class:`ConsumerMetrics` counts it all. :data:`SCHEMA` is the migration
(``fournines data init``).

Needs the ``data`` extra (``pip install 'fournines[data]'``) or the driver in use;
importing this package imports no driver.
"""

from .._errors import CommitOutcomeUnknownError, DeadLetterNotFoundError, PoisonMessageError
from . import outbox
from ._core import (
    DEFAULT_BACKOFF,
    Isolation,
    TransactionDecision,
    TransactionRetry,
    Verdict,
    classify,
    mysql_errno,
    sqlstate,
)
from ._dlq import DeadLetter, list_dead_letters, purge_dead_letters, replay_dead_letters
from ._hook import ConsumerHook
from ._kafka import (
    KafkaConsumer,
    KafkaMessage,
    KafkaPublisher,
    dead_topic,
    declare_topics,
    kafka_consumer,
    retry_topic,
)
from ._kafka_dlq import (
    KafkaDeadLetter,
    list_kafka_dead_letters,
    purge_kafka_dead_letters,
    replay_kafka_dead_letters,
)
from ._rabbitmq import (
    DEFAULT_LADDER,
    Consumer,
    Message,
    MessageHandled,
    RabbitPublisher,
    consumer,
    dead_queue,
    declare_queues,
    retry_queue,
)
from .checks import pool_check
from .metrics import ConsumerMetrics, PoolMetrics
from .outbox import MESSAGE_ID_HEADER, SCHEMA, OutboxMessage, Relay, init_schema
from .transactions import transaction, transaction_sync, transactional

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_LADDER",
    "MESSAGE_ID_HEADER",
    "SCHEMA",
    "CommitOutcomeUnknownError",
    "Consumer",
    "ConsumerHook",
    "ConsumerMetrics",
    "DeadLetter",
    "DeadLetterNotFoundError",
    "Isolation",
    "KafkaConsumer",
    "KafkaDeadLetter",
    "KafkaMessage",
    "KafkaPublisher",
    "Message",
    "MessageHandled",
    "OutboxMessage",
    "PoisonMessageError",
    "PoolMetrics",
    "RabbitPublisher",
    "Relay",
    "TransactionDecision",
    "TransactionRetry",
    "Verdict",
    "classify",
    "consumer",
    "dead_queue",
    "dead_topic",
    "declare_queues",
    "declare_topics",
    "init_schema",
    "kafka_consumer",
    "list_dead_letters",
    "list_kafka_dead_letters",
    "mysql_errno",
    "outbox",
    "pool_check",
    "purge_dead_letters",
    "purge_kafka_dead_letters",
    "replay_dead_letters",
    "replay_kafka_dead_letters",
    "retry_queue",
    "retry_topic",
    "sqlstate",
    "transaction",
    "transaction_sync",
    "transactional",
]
