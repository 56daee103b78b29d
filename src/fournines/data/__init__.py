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

Needs the ``data`` extra (``pip install 'fournines[data]'``) or the driver in use;
importing this package imports no driver.
"""

from .._errors import CommitOutcomeUnknownError
from ._core import (
    DEFAULT_BACKOFF,
    Isolation,
    TransactionDecision,
    TransactionRetry,
    Verdict,
    classify,
    sqlstate,
)
from .checks import pool_check
from .metrics import PoolMetrics
from .transactions import transaction, transaction_sync, transactional

__all__ = [
    "DEFAULT_BACKOFF",
    "CommitOutcomeUnknownError",
    "Isolation",
    "PoolMetrics",
    "TransactionDecision",
    "TransactionRetry",
    "Verdict",
    "classify",
    "pool_check",
    "sqlstate",
    "transaction",
    "transaction_sync",
    "transactional",
]
