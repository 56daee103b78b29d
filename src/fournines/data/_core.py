"""The sans-I/O core of transaction retry: settings, error classification, decisions.

Every driver runs the one loop of :mod:`._loop` (and its generated sync twin): take a
connection, begin, apply the deadline as timeouts, run the work, commit; on a failure,
roll back, release the connection, and ask :meth:`TransactionRetry.after_failure`
what to do. Everything that decides lives here, free of any driver's types, so the
drivers' shells are their I/O alone and decide nothing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from .._clock import Clock, system_clock
from .._deadline import Deadline
from .._errors import (
    CommitOutcomeUnknownError,
    ConfigurationError,
    DeadlineExceededError,
    check_number,
)
from .._events import DeadlineExceeded, Listener, RetriesExhausted, dispatch, has_listeners
from ..policies.backoff import Backoff
from ..policies.budget import RetryBudget
from ..policies.retry import RetryPlanner

__all__ = [
    "DEFAULT_BACKOFF",
    "Isolation",
    "TransactionDecision",
    "TransactionRetry",
    "Verdict",
    "classify",
    "mysql_errno",
    "sqlstate",
]

Isolation = Literal["read_uncommitted", "read_committed", "repeatable_read", "serializable"]
"""An isolation level, as asyncpg spells it (``None``: the server's default)."""

Verdict = Literal["retry", "deadline", "unknown", "raise"]
"""What a failed attempt means: retry the whole transaction, the deadline ended it,
the COMMIT's outcome is unknown, or an error to raise as it is."""

DEFAULT_BACKOFF = Backoff(initial=0.005, multiplier=2.0, cap=0.5, jitter="full")
"""The default wait before a retry: conflicts clear in milliseconds, so start small."""

# 40001 serialization_failure, 40P01 deadlock_detected: PostgreSQL rolled the whole
# transaction back and says that running it again may well succeed.
_RETRYABLE = frozenset({"40001", "40P01"})
# 57014 query_canceled (statement_timeout), 55P03 lock_not_available (lock_timeout):
# what the timeouts set from the deadline raise when they fire.
_TIMED_OUT = frozenset({"57014", "55P03"})
# The server ended the session (pg_terminate_backend, shutdown, crash, starting up);
# class 08 is "connection exception".
_LOST = frozenset({"57P01", "57P02", "57P03"})

# MySQL and MariaDB tell errors by number, not SQLSTATE (1213's is 40001, 1205's HY000).
# 1213 ER_LOCK_DEADLOCK: InnoDB rolled the transaction back; 1205 ER_LOCK_WAIT_TIMEOUT:
# innodb_lock_wait_timeout ended a wait for a row lock (only the statement is rolled
# back, but the whole transaction is, here, and run again).
_MYSQL_RETRYABLE = frozenset({1213, 1205})
# What the timeouts set from a deadline raise: 1969 ER_STATEMENT_TIMEOUT (MariaDB's
# max_statement_time), 3024 ER_QUERY_TIMEOUT (MySQL's max_execution_time), and 1205
# when innodb_lock_wait_timeout was set from the deadline.
_MYSQL_TIMED_OUT = frozenset({1969, 3024, 1205})
# The server ended the session: 2006 gone away, 2013 lost during a query, 2055 lost
# at handshake, 4031 idle disconnection (MySQL 8), 1927 connection killed (MariaDB),
# 1053 server shutdown in progress.
_MYSQL_LOST = frozenset({2006, 2013, 2055, 4031, 1927, 1053})
# Drivers whose errors carry the MySQL error number (first argument, or ``errno``).
_MYSQL_DRIVERS = frozenset({"pymysql", "aiomysql", "MySQLdb", "asyncmy", "mysql", "mariadb"})

_LEVELS = get_args(Isolation)

# One jitter source for every transaction without an rng of its own: seeding a new
# random.Random() costs more than the rest of a call's setup (bench/transaction_overhead.py).
_RNG = random.Random()

_SQL_ISOLATION: dict[str, str] = {
    "read_uncommitted": "READ UNCOMMITTED",
    "read_committed": "READ COMMITTED",
    "repeatable_read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a driver error, or ``None``.

    Read from ``sqlstate`` (asyncpg, psycopg) or ``pgcode``, on the error itself,
    then on what it wraps (SQLAlchemy's ``orig``, the ``__cause__``), a few levels deep.
    """
    seen: BaseException | None = error
    for _ in range(4):
        if seen is None:
            return None
        for attribute in ("sqlstate", "pgcode"):
            code = getattr(seen, attribute, None)
            if isinstance(code, str) and len(code) == 5:
                return code
        inner = getattr(seen, "orig", None)
        seen = inner if isinstance(inner, BaseException) else seen.__cause__
    return None


def mysql_errno(error: BaseException) -> int | None:
    """The MySQL/MariaDB error number of a driver error, or ``None``.

    Read from the error of a MySQL driver (pymysql, aiomysql, mysqlclient, asyncmy,
    mysql-connector, mariadb): its ``errno``, or its first argument; on the error
    itself, then on what it wraps (SQLAlchemy's ``orig``, the ``__cause__``).
    """
    seen: BaseException | None = error
    for _ in range(4):
        if seen is None:
            return None
        if type(seen).__module__.partition(".")[0] in _MYSQL_DRIVERS:
            code = getattr(seen, "errno", None)
            if not isinstance(code, int) and seen.args:
                code = seen.args[0]
            if isinstance(code, int) and not isinstance(code, bool):
                return code
        inner = getattr(seen, "orig", None)
        seen = inner if isinstance(inner, BaseException) else seen.__cause__
    return None


def classify(
    error: BaseException,
    *,
    committing: bool,
    lost: bool,
    idempotent: bool,
    reconnect: bool,
    under_deadline: bool,
) -> Verdict:
    """What the failure ``error`` of one attempt means (the one rule of every shell).

    :param committing: COMMIT had been sent when it failed.
    :param lost: the driver says the connection is gone (the shell asks it).
    :param idempotent: the work is safe to apply twice.
    :param reconnect: another connection can be had (a pool, not one connection).
    :param under_deadline: the attempt ran with timeouts set from a deadline.

    >>> class Conflict(Exception):
    ...     sqlstate = "40001"
    >>> classify(Conflict(), committing=True, lost=False, idempotent=False, reconnect=True,
    ...          under_deadline=False)
    'retry'
    """
    code = sqlstate(error)
    # A MySQL error's number says more than its SQLSTATE (1205's is the catch-all HY000).
    if (errno := mysql_errno(error)) is not None:
        if under_deadline and errno in _MYSQL_TIMED_OUT:
            return "deadline"
        if errno in _MYSQL_RETRYABLE:
            return "retry"
        lost = lost or errno in _MYSQL_LOST
    if code in _RETRYABLE:
        # The server rolled back, at COMMIT too: the outcome is known, and it is "no".
        return "retry"
    if under_deadline and code in _TIMED_OUT:
        return "deadline"
    if lost or isinstance(error, ConnectionError) or (
        code is not None and (code.startswith("08") or code in _LOST)
    ):
        if committing and not idempotent:
            return "unknown"
        return "retry" if reconnect else "raise"
    return "raise"


@dataclass(frozen=True, slots=True)
class TransactionDecision:
    """What :meth:`TransactionRetry.after_failure` decided.

    ``error is None``: wait ``delay`` seconds, then run the transaction again.
    Otherwise stop and raise ``error``: the failure itself (re-raise it as it was),
    or a fournines error to raise ``from`` it.
    """

    delay: float = 0.0
    error: BaseException | None = None


class TransactionRetry:
    """The settings and decisions of transaction retry, for any driver.

    :func:`~fournines.data.transaction` builds one per call and
    :func:`~fournines.data.transactional` one per decorated function; a shell
    asks it what to do and does the I/O. It keeps no per-call state, so one
    serves any number of concurrent transactions.

    :param isolation: the isolation level (``None``: the server's default).
    :param readonly: begin the transaction ``READ ONLY``.
    :param attempts: attempts in all, the first included.
    :param backoff: the wait before each retry (:data:`DEFAULT_BACKOFF`).
    :param budget: a :class:`~fournines.RetryBudget` each retry is withdrawn from.
    :param idempotent: the work is safe to apply twice, so a COMMIT whose outcome is
        unknown is retried too.
    :param listeners: receive ``RetryScheduled`` / ``RetriesExhausted`` /
        ``DeadlineExceeded`` with ``policy="transaction"``.
    :param clock: what retries sleep on.
    :param name: the ``name`` of the events, and of the transaction in errors.
    :param rng: random source of the jitter.
    :param owner: the name errors about bad settings start with.
    """

    __slots__ = ("_clock", "_idempotent", "_isolation", "_listeners", "_name", "_planner",
                 "_readonly")

    def __init__(
        self,
        *,
        isolation: Isolation | None = None,
        readonly: bool = False,
        attempts: int = 5,
        backoff: Backoff | None = None,
        budget: RetryBudget | None = None,
        idempotent: bool = False,
        listeners: Sequence[Listener] = (),
        clock: Clock | None = None,
        name: str = "transaction",
        rng: random.Random | None = None,
        owner: str = "transaction",
    ) -> None:
        check_number(owner, "attempts", attempts, minimum=1, integer=True)
        if isolation is not None and isolation not in _LEVELS:
            allowed = ", ".join(repr(level) for level in _LEVELS)
            raise ConfigurationError(
                f"{owner}.isolation must be None or one of {allowed}, got {isolation!r}")
        for flag, value in (("readonly", readonly), ("idempotent", idempotent)):
            if not isinstance(value, bool):
                raise ConfigurationError(f"{owner}.{flag} must be a bool, got {value!r}")
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ConfigurationError(f"{owner}.backoff must be a Backoff, got {backoff!r}")
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError(f"{owner}.budget must be a RetryBudget, got {budget!r}")
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{owner}.name must be a non-empty str, got {name!r}")
        self._isolation = isolation
        self._readonly = readonly
        self._idempotent = idempotent
        self._listeners = tuple(listeners)
        self._clock = clock or system_clock
        self._name = name
        self._planner = RetryPlanner(
            attempts=attempts, backoff=backoff or DEFAULT_BACKOFF, budget=budget, name=name,
            policy="transaction", clock=self._clock, listeners=self._listeners, rng=rng or _RNG,
        )

    @property
    def isolation(self) -> Isolation | None:
        """The isolation level (``None``: the server's default)."""
        return self._isolation

    @property
    def readonly(self) -> bool:
        """Whether transactions begin ``READ ONLY``."""
        return self._readonly

    @property
    def idempotent(self) -> bool:
        """Whether a COMMIT whose outcome is unknown is retried."""
        return self._idempotent

    @property
    def name(self) -> str:
        """The name of the events and errors."""
        return self._name

    @property
    def clock(self) -> Clock:
        """The clock retries sleep on."""
        return self._clock

    @property
    def planner(self) -> RetryPlanner:
        """The core's retry planner that decides the waits and stops."""
        return self._planner

    def __repr__(self) -> str:
        return (f"TransactionRetry(name={self._name!r}, isolation={self._isolation!r}, "
                f"readonly={self._readonly!r}, attempts={self._planner.attempts!r}, "
                f"idempotent={self._idempotent!r})")

    # -- the steps of one transaction ----------------------------------------------------

    def begin(self) -> float:
        """Start one logical transaction (deposited in the budget); the ``start`` to pass on."""
        return self._planner.begin()

    def timeout_ms(self, deadline: Deadline | None) -> int | None:
        """The statement and lock timeout for an attempt starting now, in ms (``None``: none).

        The time left, rounded up, at least 1 (0 would mean "no timeout" to
        PostgreSQL). Raises :class:`~fournines.DeadlineExceededError` when the
        deadline has already passed: no transaction is begun in vain.
        """
        if deadline is None:
            return None
        remaining = deadline.remaining()
        if remaining <= 0:
            raise self.deadline_error(None)
        return max(1, math.ceil(remaining * 1000))

    def timeouts_sql(self, ms: int) -> str:
        """The statements that make ``ms`` the transaction's statement and lock timeouts."""
        return f"SET LOCAL statement_timeout = {int(ms)}; SET LOCAL lock_timeout = {int(ms)}"

    def mysql_timeouts_sql(self, ms: int, *, mariadb: bool) -> tuple[str, str]:
        """For MySQL/MariaDB: the statement making ``ms`` the session's timeouts, and its undo.

        There is no ``SET LOCAL`` there: the session's ``innodb_lock_wait_timeout``
        (whole seconds, rounded up) and MariaDB's ``max_statement_time`` (seconds, to
        the millisecond; it also ends a wait for a lock) or MySQL's
        ``max_execution_time`` (ms; read-only SELECTs only) are set for the
        transaction, their values kept in user variables, and the second statement
        puts them back before the connection returns to its pool.
        """
        lock_wait = max(1, math.ceil(int(ms) / 1000))
        variable, value = (("max_statement_time", f"{int(ms) / 1000:.3f}") if mariadb
                           else ("max_execution_time", str(int(ms))))
        apply = ("SET @fournines_lock_wait = @@SESSION.innodb_lock_wait_timeout, "
                 f"@fournines_statement_time = @@SESSION.{variable}, "
                 f"SESSION innodb_lock_wait_timeout = {lock_wait}, "
                 f"SESSION {variable} = {value}")
        restore = ("SET SESSION innodb_lock_wait_timeout = @fournines_lock_wait, "
                   f"SESSION {variable} = @fournines_statement_time")
        return apply, restore

    def modes_sql(self) -> str:
        """The transaction modes (``ISOLATION LEVEL ... READ ONLY``), or ``""``."""
        parts = []
        if self._isolation is not None:
            parts.append(f"ISOLATION LEVEL {_SQL_ISOLATION[self._isolation]}")
        if self._readonly:
            parts.append("READ ONLY")
        return " ".join(parts)

    def begin_sql(self, ms: int | None, *, explicit_begin: bool) -> str | None:
        """What to send first, for drivers that begin by SQL (psycopg), or ``None``.

        ``explicit_begin``: the connection is in autocommit mode, so the statement
        begins the transaction (``BEGIN <modes>``); otherwise the driver has sent
        ``BEGIN`` by itself and the modes are set with ``SET TRANSACTION``, which must
        come first in the transaction.
        """
        modes = self.modes_sql()
        statements = []
        if explicit_begin:
            statements.append(f"BEGIN {modes}".rstrip())
        elif modes:
            statements.append(f"SET TRANSACTION {modes}")
        if ms is not None:
            statements.append(self.timeouts_sql(ms))
        return "; ".join(statements) or None

    def deadline_error(self, cause: BaseException | None, ms: int | None = None
                       ) -> DeadlineExceededError:
        """The error for a transaction that its deadline ended (the event is sent)."""
        if has_listeners(self._listeners):
            dispatch(self._listeners, DeadlineExceeded(
                policy="transaction", name=self._name, timeout=(ms or 0) / 1000))
        if cause is None:
            return DeadlineExceededError(
                f"transaction {self._name!r}: the deadline passed before it could run")
        return DeadlineExceededError(
            f"transaction {self._name!r} ran out of its deadline: the server cancelled it "
            f"(the statement and lock timeouts set from it, {ms} ms)" if ms is not None else
            f"transaction {self._name!r} ran out of its deadline waiting for a connection")

    def after_failure(
        self,
        error: BaseException,
        *,
        attempt: int,
        previous: float,
        start: float,
        committing: bool,
        lost: bool,
        reconnect: bool,
        timeout_ms: int | None,
    ) -> TransactionDecision:
        """Decide after attempt ``attempt`` (1-based) failed with ``error``, rolled back.

        :param previous: the ``delay`` of the last decision (0.0 before the first).
        :param start: what :meth:`begin` returned.
        :param committing: COMMIT had been sent.
        :param lost: the driver says the connection is gone.
        :param reconnect: the next attempt can take another connection (a pool).
        :param timeout_ms: the timeouts set from the deadline in this attempt, if any.
        """
        verdict = classify(error, committing=committing, lost=lost,
                           idempotent=self._idempotent, reconnect=reconnect,
                           under_deadline=timeout_ms is not None)
        if verdict == "raise":
            return TransactionDecision(error=error)
        if verdict == "deadline":
            return TransactionDecision(error=self.deadline_error(error, timeout_ms))
        if verdict == "unknown":
            if has_listeners(self._listeners):
                dispatch(self._listeners, RetriesExhausted(
                    policy="transaction", name=self._name, attempts=attempt,
                    reason="outcome_unknown", error=error))
            return TransactionDecision(error=CommitOutcomeUnknownError(
                f"transaction {self._name!r}: the connection was lost during COMMIT, so "
                "whether it was applied is unknown; it was not retried, since applying it "
                "twice may be wrong. If the work is safe to apply twice (an upsert keyed by "
                "a request id, say), pass idempotent=True to retry it; otherwise check "
                "whether it was applied before running it again.",
                name=self._name, attempts=attempt))
        decision = self._planner.plan(attempt, previous=previous, start=start, error=error)
        if decision.reason is not None:
            return TransactionDecision(error=error)
        return TransactionDecision(delay=decision.delay)
