"""Transaction retry: run a function in a transaction, and run it again when the database says so.

One shape for every driver: :func:`transaction` for asyncio (an asyncpg ``Pool`` or
``Connection``, a psycopg ``AsyncConnectionPool`` or ``AsyncConnection``, a
SQLAlchemy ``AsyncEngine`` or ``async_sessionmaker``: the driver is told by the
type) and :func:`transaction_sync` for blocking code (a psycopg ``ConnectionPool``
or ``Connection``, a SQLAlchemy ``Engine`` or ``sessionmaker``);
:func:`transactional` is the decorator form of both. ``fn`` receives the
connection (the session, for a session maker) and does its work; it must not
commit. Through SQLAlchemy, MySQL and MariaDB are served too: their deadlock
(1213) and lock wait timeout (1205) are retried, and a deadline sets the session's
``innodb_lock_wait_timeout`` and ``max_statement_time`` for the transaction (put back
after it); other dialects get the retry and the isolation level only.

The whole transaction is retried, never a statement, when:

- PostgreSQL rolled it back with SQLSTATE ``40001`` (serialization failure) or
  ``40P01`` (deadlock detected), at COMMIT too;
- the connection was lost before COMMIT was sent (a pool hands out another one).

It is **not** retried when the connection is lost *during* COMMIT: whether it
was applied is unknown, and applying a payment twice is worse than reporting
it. That raises :class:`~fournines.data.CommitOutcomeUnknownError`, unless the
work is marked ``idempotent=True`` (safe to apply twice), which retries it.
Every other error is raised as it is, after one attempt.

Retries are decided by the core's :class:`~fournines.policies.retry.RetryPlanner`
(attempts, jittered backoff, a shared :class:`~fournines.RetryBudget`, and never
sleeping past the current deadline); exhausted retries re-raise the driver's
last error as it was. Under a deadline (:func:`~fournines.deadline_after`, or one
read from the request), each attempt begins with ``SET LOCAL statement_timeout``
and ``SET LOCAL lock_timeout`` set to the time left, so a transaction blocked on
a lock ends near its deadline with :class:`~fournines.DeadlineExceededError`
(chained from the driver's ``query_canceled`` / ``lock_not_available``), and the
wait for a pooled connection is bounded by it too (asyncpg and psycopg pools;
SQLAlchemy's wait is its engine's ``pool_timeout``). Taking a connection that
cannot be had (the database is down) is not retried here: its error is raised
as it is, for the breaker and retry around the call.

Events (``policy="transaction"``): ``RetryScheduled`` before each retry,
``RetriesExhausted`` when retrying stops (``reason`` ``"outcome_unknown"`` for an
unknown COMMIT), ``DeadlineExceeded`` when the deadline ends a transaction.
"""

from __future__ import annotations

import functools
import inspect
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from .._clock import Clock
from .._errors import ConfigurationError
from .._events import Listener
from ..policies.backoff import Backoff
from ..policies.budget import RetryBudget
from ._core import Isolation, TransactionRetry

__all__ = ["transaction", "transaction_sync", "transactional"]

T = TypeVar("T")
P = ParamSpec("P")

_ASYNC_TARGETS = ("an asyncpg Pool or Connection, a psycopg AsyncConnectionPool or "
                  "AsyncConnection, or a SQLAlchemy AsyncEngine or async_sessionmaker")
_SYNC_TARGETS = ("a psycopg ConnectionPool or Connection, or a SQLAlchemy Engine or "
                 "sessionmaker")


def _is_coroutine_function(fn: object) -> bool:
    # An object with an ``async def __call__`` is a coroutine function too.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))  # noqa: B004


# What each target type is, found once per type: detection imports the driver's shell
# only when a target is one of its objects, so fournines.data needs no driver to import.
_KINDS: dict[type, str | None] = {}
_ASYNC_RUNS: dict[str, Callable[[TransactionRetry, Any, Any], Awaitable[Any]]] = {}
_SYNC_RUNS: dict[str, Callable[[TransactionRetry, Any, Any], Any]] = {}


def _detect(target: object) -> str | None:
    module = type(target).__module__.partition(".")[0]
    if module == "asyncpg":
        from . import _asyncpg  # noqa: PLC0415 - drivers load on use
        _ASYNC_RUNS["asyncpg"] = _asyncpg.run
        return "asyncpg" if _asyncpg.is_asyncpg(target) else None
    if module in ("psycopg", "psycopg_pool"):
        from . import _psycopg, _psycopg_sync  # noqa: PLC0415
        _ASYNC_RUNS["psycopg"], _SYNC_RUNS["psycopg_sync"] = _psycopg.run, _psycopg_sync.run
        if _psycopg.is_target(target):
            return "psycopg"
        if _psycopg_sync.is_target(target):
            return "psycopg_sync"
    if module == "sqlalchemy":
        from . import _sqlalchemy, _sqlalchemy_sync  # noqa: PLC0415
        _ASYNC_RUNS["sqlalchemy"] = _sqlalchemy.run
        _SYNC_RUNS["sqlalchemy_sync"] = _sqlalchemy_sync.run
        if _sqlalchemy.is_target(target):
            return "sqlalchemy"
        if _sqlalchemy_sync.is_target(target):
            return "sqlalchemy_sync"
    return None


def _driver(target: object) -> str | None:
    kind = type(target)
    try:
        return _KINDS[kind]
    except KeyError:
        found = _KINDS[kind] = _detect(target)
        return found


# The settings of recent calls, checked and built once: a call of transaction() then
# costs a dict lookup, not a validation and a planner (bench/transaction_overhead.py).
_CORES: dict[tuple[Any, ...], TransactionRetry] = {}
_MAX_CORES = 256


def _core(owner: str, isolation: Any, readonly: Any, attempts: Any, backoff: Any, budget: Any,
          idempotent: Any, listeners: Sequence[Listener], clock: Any, name: Any,
          rng: Any) -> TransactionRetry:
    # Types are in the key: 1 == True == 1.0, but only some of them are valid settings.
    key: tuple[Any, ...] = (owner, isolation, type(readonly), readonly, type(attempts),
                            attempts, backoff, budget, type(idempotent), idempotent,
                            tuple(listeners), clock, name, rng)
    try:
        core = _CORES.get(key)
    except TypeError:  # an unhashable listener or setting: build it each time
        core, key = None, ()
    if core is None:
        core = TransactionRetry(isolation=isolation, readonly=readonly, attempts=attempts,
                                backoff=backoff, budget=budget, idempotent=idempotent,
                                listeners=listeners, clock=clock, name=name, rng=rng,
                                owner=owner)
        if key:
            if len(_CORES) >= _MAX_CORES:
                _CORES.clear()
            _CORES[key] = core
    return core


def _check_async(owner: str, target: object, fn: object) -> str:
    if not callable(fn) or not _is_coroutine_function(fn):
        hint = " (use transaction_sync for a plain function)" if callable(fn) else ""
        raise ConfigurationError(
            f"{owner}.fn must be a coroutine function (async def fn(conn)), got {fn!r}{hint}")
    driver = _driver(target)
    if driver is None or driver.endswith("_sync"):
        hint = " (use transaction_sync for it)" if driver else ""
        raise ConfigurationError(
            f"{owner}.pool must be {_ASYNC_TARGETS}, got {type(target).__name__}{hint}")
    return driver


def _check_sync(owner: str, target: object, fn: object) -> str:
    if not callable(fn) or _is_coroutine_function(fn):
        hint = " (use transaction for a coroutine function)" if callable(fn) else ""
        raise ConfigurationError(
            f"{owner}.fn must be a plain function (def fn(conn)), got {fn!r}{hint}")
    driver = _driver(target)
    if driver is None or not driver.endswith("_sync"):
        raise ConfigurationError(
            f"{owner}.pool must be {_SYNC_TARGETS}, got {type(target).__name__}")
    return driver


async def _arun(core: TransactionRetry, driver: str, target: Any,
                fn: Callable[[Any], Awaitable[T]]) -> T:
    result: T = await _ASYNC_RUNS[driver](core, target, fn)
    return result


def _run_sync(core: TransactionRetry, driver: str, target: Any, fn: Callable[[Any], T]) -> T:
    result: T = _SYNC_RUNS[driver](core, target, fn)
    return result


async def transaction(
    pool: Any,
    fn: Callable[[Any], Awaitable[T]],
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
) -> T:
    """Run ``await fn(conn)`` in a transaction; retry the whole of it on conflicts.

    :param pool: an asyncpg ``Pool`` or ``Connection``, a psycopg
        ``AsyncConnectionPool`` or ``AsyncConnection`` (idle: not in a transaction),
        or a SQLAlchemy ``AsyncEngine`` (``fn`` gets an ``AsyncConnection``) or
        ``async_sessionmaker`` (``fn`` gets an ``AsyncSession``, flushed before
        COMMIT). With a pool each attempt takes a connection of its own, so a lost
        connection is retried on another; a single connection cannot be.
    :param fn: ``async def fn(conn)``: the transaction's work; its result is returned.
    :param isolation: ``"serializable"``, ``"repeatable_read"``, ``"read_committed"``,
        ``"read_uncommitted"``, or ``None`` for the server's default.
    :param readonly: begin the transaction ``READ ONLY``.
    :param attempts: attempts in all, the first included.
    :param backoff: the wait before each retry (5 ms doubling to 0.5 s, full jitter).
    :param budget: a :class:`~fournines.RetryBudget` each retry is withdrawn from.
    :param idempotent: the work is safe to apply twice: retry it also when the
        outcome of COMMIT is unknown.
    :param listeners: receive the events (``policy="transaction"``).
    :param clock: what retries sleep on.
    :param name: the ``name`` of the events and errors.
    :param rng: random source of the jitter.
    :raises CommitOutcomeUnknownError: the connection was lost during COMMIT.
    :raises DeadlineExceededError: the deadline passed, or its timeouts fired.
    :raises ConfigurationError: a bad argument (named), before anything runs.

    Bad arguments never leave a transaction half open: they are checked first.
    """
    core = _core("transaction", isolation, readonly, attempts, backoff, budget, idempotent,
                 listeners, clock, name, rng)
    driver = _check_async("transaction", pool, fn)
    return await _arun(core, driver, pool, fn)


def transaction_sync(
    pool: Any,
    fn: Callable[[Any], T],
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
) -> T:
    """Run ``fn(conn)`` in a transaction; retry the whole of it on conflicts (blocking).

    The same as :func:`transaction`, for a psycopg ``ConnectionPool`` or
    ``Connection``, or a SQLAlchemy ``Engine`` or ``sessionmaker``, and a plain
    function ``def fn(conn)``; retries sleep on ``clock``.
    """
    core = _core("transaction_sync", isolation, readonly, attempts, backoff, budget,
                 idempotent, listeners, clock, name, rng)
    driver = _check_sync("transaction_sync", pool, fn)
    return _run_sync(core, driver, pool, fn)


def transactional(
    pool: Any,
    *,
    isolation: Isolation | None = None,
    readonly: bool = False,
    attempts: int = 5,
    backoff: Backoff | None = None,
    budget: RetryBudget | None = None,
    idempotent: bool = False,
    listeners: Sequence[Listener] = (),
    clock: Clock | None = None,
    name: str | None = None,
    rng: random.Random | None = None,
) -> Callable[[Callable[Concatenate[Any, P], T]], Callable[P, T]]:
    """Decorate ``fn(conn, *args, **kwargs)`` so each call runs as a retried transaction.

    ``pool`` is a pool or connection as for :func:`transaction`, or a function of
    no argument returning one (called at each call: a pool made at startup).
    A coroutine function becomes a coroutine function run by :func:`transaction`;
    a plain function, a function run by :func:`transaction_sync`. The decorated
    function is called without its first argument, the connection::

        @transactional(lambda: app.pool, isolation="serializable")
        async def transfer(conn, source: int, target: int, amount: int) -> None: ...

        await transfer(1, 2, 100)

    ``name`` defaults to the function's qualified name. The settings are checked
    once, when decorating.
    """

    def decorate(fn: Callable[Concatenate[Any, P], T]) -> Callable[P, T]:
        is_async = _is_coroutine_function(fn)
        owner = "transactional"
        core = TransactionRetry(isolation=isolation, readonly=readonly, attempts=attempts,
                                backoff=backoff, budget=budget, idempotent=idempotent,
                                listeners=listeners, clock=clock,
                                name=name or str(getattr(fn, "__qualname__", "transaction")),
                                rng=rng, owner=owner)
        # A pool itself is never called: only a getter (a plain function) is.
        getter = pool if inspect.isfunction(pool) or inspect.ismethod(pool) else None

        if is_async:
            @functools.wraps(fn)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                target = getter() if getter is not None else pool
                driver = _check_async(owner, target, fn)

                async def work(conn: Any) -> Any:
                    return await fn(conn, *args, **kwargs)  # type: ignore[misc]

                return await _arun(core, driver, target, work)

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run_sync(*args: P.args, **kwargs: P.kwargs) -> T:
            target = getter() if getter is not None else pool
            driver = _check_sync(owner, target, fn)
            return _run_sync(core, driver, target, lambda conn: fn(conn, *args, **kwargs))

        return run_sync

    return decorate
