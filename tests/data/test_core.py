"""The sans-I/O core of transaction retry: what each failure means, and what follows."""

from __future__ import annotations

import random

import pymysql
import pytest

from fournines import (
    Backoff,
    ConfigurationError,
    DeadlineExceeded,
    DeadlineExceededError,
    RetriesExhausted,
    Retry,
    RetryBudget,
    RetryScheduled,
    deadline_after,
)
from fournines.data import (
    CommitOutcomeUnknownError,
    TransactionRetry,
    classify,
    mysql_errno,
    sqlstate,
    transaction,
)
from fournines.testing import FakeClock, RecordingListener


class PgError(Exception):
    """A driver error carrying a SQLSTATE, as asyncpg's and psycopg's do."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.sqlstate = code


class Wrapper(Exception):
    """An error wrapping the driver's in ``orig``, as SQLAlchemy's DBAPIError does."""

    def __init__(self, orig: BaseException) -> None:
        super().__init__("wrapped")
        self.orig = orig


def verdict(error: BaseException, *, committing: bool = False, lost: bool = False,
            idempotent: bool = False, reconnect: bool = True,
            under_deadline: bool = False) -> str:
    return classify(error, committing=committing, lost=lost, idempotent=idempotent,
                    reconnect=reconnect, under_deadline=under_deadline)


def core(clock: FakeClock, recorder: RecordingListener, **kwargs: object) -> TransactionRetry:
    settings: dict[str, object] = {
        "backoff": Backoff(initial=0.01, cap=0.01, jitter="none"), **kwargs}
    return TransactionRetry(clock=clock, listeners=[recorder], rng=random.Random(1),
                            **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("code", ["40001", "40P01"])
def test_a_serialization_failure_or_deadlock_is_retried(code: str) -> None:
    assert verdict(PgError(code)) == "retry"


@pytest.mark.parametrize("code", ["40001", "40P01"])
def test_a_conflict_at_commit_is_retried_since_the_server_rolled_back(code: str) -> None:
    assert verdict(PgError(code), committing=True) == "retry"


def test_a_unique_violation_is_raised() -> None:
    assert verdict(PgError("23505")) == "raise"


def test_an_error_without_sqlstate_is_raised() -> None:
    assert verdict(RuntimeError("bug")) == "raise"


def test_a_connection_lost_before_commit_is_retried() -> None:
    assert verdict(RuntimeError("closed"), lost=True) == "retry"


def test_a_terminated_backend_is_a_lost_connection() -> None:
    assert verdict(PgError("57P01")) == "retry"


def test_a_connection_exception_class_is_a_lost_connection() -> None:
    assert verdict(PgError("08006")) == "retry"


def test_a_connection_reset_is_a_lost_connection() -> None:
    assert verdict(ConnectionResetError()) == "retry"


def test_a_connection_lost_during_commit_has_an_unknown_outcome() -> None:
    assert verdict(RuntimeError("closed"), lost=True, committing=True) == "unknown"


def test_a_connection_lost_during_commit_of_idempotent_work_is_retried() -> None:
    assert verdict(RuntimeError("closed"), lost=True, committing=True,
                   idempotent=True) == "retry"


def test_a_lost_single_connection_cannot_be_retried() -> None:
    assert verdict(RuntimeError("closed"), lost=True, reconnect=False) == "raise"


def test_a_lost_single_connection_during_commit_still_has_an_unknown_outcome() -> None:
    assert verdict(RuntimeError("closed"), lost=True, committing=True,
                   reconnect=False) == "unknown"


@pytest.mark.parametrize("code", ["57014", "55P03"])
def test_a_cancel_or_lock_timeout_under_a_deadline_is_the_deadline(code: str) -> None:
    assert verdict(PgError(code), under_deadline=True) == "deadline"


@pytest.mark.parametrize("code", ["57014", "55P03"])
def test_a_cancel_or_lock_timeout_without_a_deadline_is_raised(code: str) -> None:
    assert verdict(PgError(code)) == "raise"


def test_the_sqlstate_is_found_through_a_wrapper() -> None:
    assert sqlstate(Wrapper(PgError("40001"))) == "40001"
    assert verdict(Wrapper(PgError("40P01"))) == "retry"


def test_the_sqlstate_is_found_through_the_cause() -> None:
    outer = RuntimeError("outer")
    outer.__cause__ = PgError("40001")
    assert sqlstate(outer) == "40001"


def test_a_retry_waits_the_backoff_and_sends_retry_scheduled(
    clock: FakeClock, recorder: RecordingListener
) -> None:
    retry = core(clock, recorder, name="transfer")
    start = retry.begin()
    error = PgError("40001")

    decision = retry.after_failure(error, attempt=1, previous=0.0, start=start,
                                   committing=False, lost=False, reconnect=True,
                                   timeout_ms=None)

    assert decision.error is None
    assert decision.delay == 0.01
    [event] = recorder.of(RetryScheduled)
    assert (event.policy, event.name, event.attempt, event.error) == (
        "transaction", "transfer", 1, error)


def test_the_last_attempt_re_raises_the_driver_error_as_it_was(
    clock: FakeClock, recorder: RecordingListener
) -> None:
    retry = core(clock, recorder, attempts=2)
    error = PgError("40P01")

    decision = retry.after_failure(error, attempt=2, previous=0.01, start=retry.begin(),
                                   committing=False, lost=False, reconnect=True,
                                   timeout_ms=None)

    assert decision.error is error
    [event] = recorder.of(RetriesExhausted)
    assert (event.policy, event.reason) == ("transaction", "attempts")


def test_no_retry_waits_past_the_deadline(clock: FakeClock, recorder: RecordingListener) -> None:
    retry = core(clock, recorder, backoff=Backoff(initial=1, cap=1, jitter="none"))
    error = PgError("40001")

    with deadline_after(0.5, clock=clock):
        decision = retry.after_failure(error, attempt=1, previous=0.0, start=retry.begin(),
                                       committing=False, lost=False, reconnect=True,
                                       timeout_ms=None)

    assert decision.error is error
    assert recorder.of(RetriesExhausted)[0].reason == "deadline"


def test_an_empty_budget_stops_the_retry(clock: FakeClock, recorder: RecordingListener) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=clock)
    retry = core(clock, recorder, budget=budget)
    error = PgError("40001")

    decision = retry.after_failure(error, attempt=1, previous=0.0, start=retry.begin(),
                                   committing=False, lost=False, reconnect=True,
                                   timeout_ms=None)

    assert decision.error is error
    assert recorder.of(RetriesExhausted)[0].reason == "budget"


def test_an_unknown_commit_outcome_names_idempotent_and_sends_outcome_unknown(
    clock: FakeClock, recorder: RecordingListener
) -> None:
    retry = core(clock, recorder, name="charge")

    decision = retry.after_failure(ConnectionResetError(), attempt=1, previous=0.0,
                                   start=retry.begin(), committing=True, lost=True,
                                   reconnect=True, timeout_ms=None)

    assert isinstance(decision.error, CommitOutcomeUnknownError)
    assert "idempotent=True" in str(decision.error)
    assert decision.error.name == "charge"
    assert recorder.of(RetriesExhausted)[0].reason == "outcome_unknown"
    assert recorder.of(RetryScheduled) == []


def test_a_timeout_under_a_deadline_becomes_deadline_exceeded_with_its_event(
    clock: FakeClock, recorder: RecordingListener
) -> None:
    retry = core(clock, recorder)

    decision = retry.after_failure(PgError("55P03"), attempt=1, previous=0.0,
                                   start=retry.begin(), committing=False, lost=False,
                                   reconnect=True, timeout_ms=300)

    assert isinstance(decision.error, DeadlineExceededError)
    assert "300 ms" in str(decision.error)
    assert recorder.of(DeadlineExceeded)[0].timeout == 0.3


def test_the_time_left_becomes_the_timeout_rounded_up_in_ms(
    clock: FakeClock, recorder: RecordingListener
) -> None:
    retry = core(clock, recorder)
    with deadline_after(0.3, clock=clock) as deadline:
        clock.advance(0.0995)
        assert retry.timeout_ms(deadline) == 201


def test_the_timeout_is_at_least_one_ms(clock: FakeClock, recorder: RecordingListener) -> None:
    retry = core(clock, recorder)
    with deadline_after(0.3, clock=clock) as deadline:
        clock.advance(0.2999999)
        assert retry.timeout_ms(deadline) == 1


def test_no_deadline_sets_no_timeout(clock: FakeClock, recorder: RecordingListener) -> None:
    assert core(clock, recorder).timeout_ms(None) is None


def test_a_passed_deadline_raises_before_the_transaction_begins(
    clock: FakeClock, recorder: RecordingListener
) -> None:
    retry = core(clock, recorder)
    with deadline_after(0.3, clock=clock) as deadline:
        clock.advance(0.3)
        with pytest.raises(DeadlineExceededError):
            retry.timeout_ms(deadline)


def test_psycopg_begin_sql_sets_modes_after_the_drivers_begin(
    clock: FakeClock, recorder: RecordingListener
) -> None:
    retry = core(clock, recorder, isolation="serializable", readonly=True)
    assert retry.begin_sql(250, explicit_begin=False) == (
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY; "
        "SET LOCAL statement_timeout = 250; SET LOCAL lock_timeout = 250")


def test_psycopg_begin_sql_begins_itself_in_autocommit(
    clock: FakeClock, recorder: RecordingListener
) -> None:
    retry = core(clock, recorder, isolation="repeatable_read")
    assert retry.begin_sql(None, explicit_begin=True) == "BEGIN ISOLATION LEVEL REPEATABLE READ"


def test_psycopg_begin_sql_is_nothing_when_nothing_is_set(
    clock: FakeClock, recorder: RecordingListener
) -> None:
    assert core(clock, recorder).begin_sql(None, explicit_begin=False) is None


@pytest.mark.parametrize(("setting", "value"), [
    ("attempts", 0), ("attempts", 1.5), ("isolation", "snapshot"), ("readonly", "yes"),
    ("idempotent", 1), ("backoff", 0.1), ("budget", 3), ("name", ""),
])
def test_a_bad_setting_is_a_configuration_error_naming_it(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"transaction\.{setting}"):
        TransactionRetry(**{setting: value})  # type: ignore[arg-type]


async def test_a_setting_cached_from_an_earlier_call_is_still_checked_by_type() -> None:
    async def work(conn: object) -> None:
        raise AssertionError("not run")

    with pytest.raises(ConfigurationError, match=r"transaction\.pool"):
        await transaction("not a pool", work, readonly=True)
    with pytest.raises(ConfigurationError, match=r"transaction\.readonly"):
        await transaction("not a pool", work, readonly=1)  # type: ignore[arg-type]


async def test_an_unhashable_listener_is_accepted() -> None:
    async def work(conn: object) -> None:
        raise AssertionError("not run")

    with pytest.raises(ConfigurationError, match=r"transaction\.pool"):
        await transaction("not a pool", work, listeners=[[].append])  # type: ignore[list-item]


def test_a_plain_retry_around_a_transaction_does_not_retry_an_unknown_commit() -> None:
    calls = 0

    def commit() -> None:
        nonlocal calls
        calls += 1
        raise CommitOutcomeUnknownError("lost during COMMIT")

    with pytest.raises(CommitOutcomeUnknownError):
        Retry(attempts=3, backoff=Backoff(initial=0, cap=0)).call(commit)

    assert calls == 1


# MySQL and MariaDB: the drivers' own error objects, as the server's error packet makes them.

def mysql_error(errno: int) -> BaseException:
    return pymysql.err.OperationalError(errno, "from the server")


@pytest.mark.parametrize("errno", [1213, 1205])
def test_a_mysql_deadlock_or_lock_wait_timeout_is_retried(errno: int) -> None:
    assert verdict(mysql_error(errno)) == "retry"


@pytest.mark.parametrize("errno", [1969, 3024, 1205])
def test_a_mysql_statement_or_lock_timeout_under_a_deadline_is_the_deadline(errno: int) -> None:
    assert verdict(mysql_error(errno), under_deadline=True) == "deadline"


def test_a_mysql_statement_timeout_without_a_deadline_is_raised() -> None:
    assert verdict(mysql_error(1969)) == "raise"


@pytest.mark.parametrize("errno", [2006, 2013, 1927])
def test_a_mysql_lost_connection_is_retried_before_commit_and_unknown_during_it(
    errno: int
) -> None:
    assert verdict(mysql_error(errno)) == "retry"
    assert verdict(mysql_error(errno), committing=True) == "unknown"


def test_a_mysql_duplicate_key_is_raised() -> None:
    assert verdict(pymysql.err.IntegrityError(1062, "Duplicate entry")) == "raise"


def test_the_mysql_errno_is_found_through_a_wrapper_and_not_in_other_errors() -> None:
    assert mysql_errno(Wrapper(mysql_error(1213))) == 1213
    assert mysql_errno(ValueError(1213)) is None
    assert mysql_errno(PgError("40001")) is None


def test_the_mysql_timeouts_are_set_for_the_session_and_put_back() -> None:
    retry = TransactionRetry()
    apply, restore = retry.mysql_timeouts_sql(1250, mariadb=True)
    assert "SESSION innodb_lock_wait_timeout = 2" in apply
    assert "SESSION max_statement_time = 1.250" in apply
    assert "@fournines_lock_wait" in restore and "@fournines_statement_time" in restore
    apply, _ = retry.mysql_timeouts_sql(80, mariadb=False)
    assert "SESSION max_execution_time = 80" in apply
    assert "SESSION innodb_lock_wait_timeout = 1" in apply
