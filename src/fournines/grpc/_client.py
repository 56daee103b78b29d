"""Client interceptors: a breaker per target, budgeted retries, deadline propagation.

:class:`AioClientInterceptor` (``grpc.aio``) and :class:`ClientInterceptor`
(sync ``grpcio``) protect the calls of one channel, that is one target
(``"payments:50051"``), with the core's policies: one
:class:`~fournines.CircuitBreaker`, one :class:`~fournines.RetryBudget` and
one :class:`~fournines.RetryPlanner` per interceptor, configured by a frozen
:class:`RpcClientPolicy`.

Every call (all four kinds) gets the deadline: its timeout becomes the time
left of :func:`fournines.current_deadline` when that is sooner than the
caller's own ``timeout=``, so a server protected by :class:`AioServerInterceptor`
hands its remaining budget to the next hop. A call whose deadline is already
spent is not sent: :class:`GrpcDeadlineExceededError`.

Unary-unary calls also go through the breaker and are retried:

- the breaker admits each attempt; an open breaker raises
  :class:`GrpcCircuitOpenError` (a ``CircuitOpenError`` and a ``grpc.RpcError``
  whose ``code()`` is ``UNAVAILABLE``) without sending anything. A status in
  ``failure_codes`` (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``INTERNAL``,
  ``UNKNOWN``, ``DATA_LOSS``) counts as a failure; any other status, an
  application's answer, as a success;
- a status in ``retry_codes`` (``UNAVAILABLE`` by default: the one code gRPC
  calls safe to retry for any method) is retried; ``RESOURCE_EXHAUSTED`` only when
  the server sent the ``grpc-retry-pushback-ms`` trailer (gRFC A6, what
  fournines' server interceptor sends when it sheds or rate-limits), and the
  wait is then at least the pushback. A negative or malformed pushback means
  "do not retry", as in gRFC A6; a pushback beyond ``max_retry_after`` ends
  the retrying;
- retries are withdrawn from the budget and planned by the core planner:
  jittered backoff, never a wait past the deadline (or the call's own
  ``timeout=``, which covers all its attempts, as in gRPC), and each attempt's
  timeout is what is left;
- when retrying stops, the last call is answered as gRPC would have: its
  ``grpc.RpcError`` is raised, with its code, details and trailers.

Streaming calls are not retried nor counted by the breaker: a stream that
failed half-way cannot be replayed by an interceptor.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from .._clock import Clock, system_clock
from .._deadline import Deadline, current_deadline
from .._errors import CircuitOpenError, ConfigurationError, check_number
from .._events import Listener
from ..policies.backoff import Backoff
from ..policies.budget import RetryBudget
from ..policies.circuit_breaker import (
    AdaptiveThrottling,
    BreakerPermit,
    CircuitBreaker,
    ConsecutiveFailures,
    FailureRate,
)
from ..policies.retry import RetryPlanner
from ._errors import GrpcCircuitOpenError, GrpcDeadlineExceededError
from ._server import PUSHBACK_KEY

__all__ = ["AioClientInterceptor", "ClientInterceptor", "RpcClientPolicy"]

_S = grpc.StatusCode
_OK = _S.OK
_EXHAUSTED = _S.RESOURCE_EXHAUSTED

_DEFAULT_FAILURES = frozenset({_S.UNAVAILABLE, _S.DEADLINE_EXCEEDED, _S.INTERNAL, _S.UNKNOWN,
                               _S.DATA_LOSS})


def _check_codes(owner: str, name: str, codes: object) -> None:
    if not isinstance(codes, frozenset) or not all(
            isinstance(c, grpc.StatusCode) and c is not _OK for c in codes):
        raise ConfigurationError(
            f"{owner}.{name} must be a frozenset of grpc.StatusCode other than OK, got {codes!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcClientPolicy:
    """Declarative settings of the policies of one gRPC target (times in seconds).

    :param trip: when the target's breaker opens (default ``ConsecutiveFailures(5)``).
    :param reset_timeout: how long an open breaker waits before probing.
    :param half_open_probes: probes admitted, and successes needed, while half-open.
    :param attempts: attempts per unary call, the first included (1: no retry).
    :param backoff: the wait before each retry.
    :param retry_codes: statuses retried (``UNAVAILABLE``); ``RESOURCE_EXHAUSTED``
        is retried only with server pushback, whether listed or not.
    :param failure_codes: statuses the breaker counts as failures.
    :param max_retry_after: the longest pushback honoured; a longer one stops retrying.
    :param attempt_timeout: each attempt's timeout (``None``: the call's); always
        shortened to the remaining deadline.
    :param budget_ratio: retries allowed per call, over ``budget_ttl``.
    :param budget_min_per_second: retries allowed per second regardless of traffic.
    :param budget_ttl: the window of the retry budget.
    """

    trip: ConsecutiveFailures | FailureRate | AdaptiveThrottling = field(
        default_factory=ConsecutiveFailures)
    reset_timeout: float = 30.0
    half_open_probes: int = 1
    attempts: int = 3
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.05, cap=2.0))
    retry_codes: frozenset[grpc.StatusCode] = frozenset({_S.UNAVAILABLE})
    failure_codes: frozenset[grpc.StatusCode] = _DEFAULT_FAILURES
    max_retry_after: float = 30.0
    attempt_timeout: float | None = None
    budget_ratio: float = 0.2
    budget_min_per_second: float = 10.0
    budget_ttl: float = 10.0

    def __post_init__(self) -> None:
        owner = "RpcClientPolicy"
        if not isinstance(self.trip, ConsecutiveFailures | FailureRate | AdaptiveThrottling):
            raise ConfigurationError(
                f"{owner}.trip must be ConsecutiveFailures, FailureRate or AdaptiveThrottling, "
                f"got {self.trip!r}")
        check_number(owner, "reset_timeout", self.reset_timeout, minimum=0)
        check_number(owner, "half_open_probes", self.half_open_probes, minimum=1, integer=True)
        check_number(owner, "attempts", self.attempts, minimum=1, integer=True)
        if not isinstance(self.backoff, Backoff):
            raise ConfigurationError(f"{owner}.backoff must be a Backoff, got {self.backoff!r}")
        _check_codes(owner, "retry_codes", self.retry_codes)
        _check_codes(owner, "failure_codes", self.failure_codes)
        check_number(owner, "max_retry_after", self.max_retry_after, minimum=0)
        check_number(owner, "attempt_timeout", self.attempt_timeout, minimum=0,
                     exclusive_minimum=True, optional=True)
        check_number(owner, "budget_ratio", self.budget_ratio, minimum=0, maximum=1000)
        check_number(owner, "budget_min_per_second", self.budget_min_per_second, minimum=0)
        check_number(owner, "budget_ttl", self.budget_ttl, minimum=0, exclusive_minimum=True)


def pushback(trailers: Any) -> float | None:
    """Seconds of the ``grpc-retry-pushback-ms`` trailer; -1.0 when it forbids retrying.

    ``None`` when there is none. A negative or malformed value is the server
    asking not to be retried (gRFC A6).
    """
    for key, value in trailers or ():
        if key == PUSHBACK_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            if text.isascii() and text.isdigit():
                return int(text) / 1000.0
            return -1.0
    return None


class _Target:
    """The policies of one target and the decisions between attempts (no I/O)."""

    def __init__(self, owner: str, target: str, policy: RpcClientPolicy | None,
                 budget: RetryBudget | None, listeners: Sequence[Listener], clock: Clock,
                 rng: random.Random | None) -> None:
        if not isinstance(target, str) or not target:
            raise ConfigurationError(f"{owner}.target must be a non-empty str, got {target!r}")
        if policy is not None and not isinstance(policy, RpcClientPolicy):
            raise ConfigurationError(f"{owner}.policy must be an RpcClientPolicy, got {policy!r}")
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError(f"{owner}.budget must be a RetryBudget, got {budget!r}")
        config = policy or RpcClientPolicy()
        self.target = target
        self.config = config
        self.clock = clock
        self.breaker = CircuitBreaker(
            target, trip=config.trip, reset_timeout=config.reset_timeout,
            half_open_probes=config.half_open_probes, clock=clock, listeners=listeners)
        self.budget = budget if budget is not None else RetryBudget(
            ratio=config.budget_ratio, min_per_second=config.budget_min_per_second,
            ttl=config.budget_ttl, name=target, clock=clock, listeners=listeners)
        self.planner = RetryPlanner(
            attempts=config.attempts, backoff=config.backoff,
            max_retry_after=config.max_retry_after, budget=self.budget, name=target,
            clock=clock, listeners=listeners, rng=rng)

    def deadline(self, timeout: float | None) -> Deadline | None:
        """The call's deadline: the current one, or its own ``timeout``, whichever is sooner."""
        deadline = current_deadline()
        if timeout is not None and (deadline is None or deadline.remaining() > timeout):
            deadline = Deadline(self.clock.monotonic() + timeout, self.clock)
        return deadline

    def timeout(self, deadline: Deadline | None) -> float | None:
        """The next attempt's timeout; raises when no time is left."""
        limit = self.config.attempt_timeout
        if deadline is not None:
            remaining = deadline.remaining()
            if remaining <= 0:
                raise GrpcDeadlineExceededError(
                    f"{self.target}: the deadline passed before the call was sent")
            if limit is None or remaining < limit:
                limit = remaining
        return limit

    def admit(self) -> BreakerPermit:
        try:
            return self.breaker.try_acquire()
        except CircuitOpenError as exc:
            error: Exception = GrpcCircuitOpenError.__new__(GrpcCircuitOpenError, *exc.args)
            error.__cause__ = exc
            error.__suppress_context__ = True
            raise error from exc

    def settle(self, permit: BreakerPermit, code: grpc.StatusCode) -> None:
        if code is _OK or code not in self.config.failure_codes:
            permit.success()
        else:
            permit.failure()

    def plan(self, attempt: int, previous: float, start: float, code: grpc.StatusCode,
             trailers: Any, deadline: Deadline | None) -> float | None:
        """The wait before the next attempt, or ``None`` to answer the last one."""
        hint = pushback(trailers)
        if hint is not None and hint < 0:
            return None
        if code not in self.config.retry_codes and not (code is _EXHAUSTED and hint is not None):
            return None
        decision = self.planner.plan(attempt, previous=previous, start=start,
                                     retry_after=hint, deadline=deadline)
        return None if decision.reason is not None else decision.delay


class _SyncDetails(
    collections.namedtuple(
        "_SyncDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    """A sync call's details with another timeout (grpc's own class is private)."""


def _sync_details(details: Any, timeout: float | None) -> _SyncDetails:
    return _SyncDetails(details.method, timeout, details.metadata, details.credentials,
                        getattr(details, "wait_for_ready", None),
                        getattr(details, "compression", None))


def _aio_details(details: Any, timeout: float | None) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(details.method, timeout, details.metadata,
                                      details.credentials, details.wait_for_ready)


class AioClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """The ``grpc.aio`` client interceptor of one target (see the module docstring).

    ``grpc.aio`` takes one interceptor object per kind of call, so give the
    channel all of them: :attr:`interceptors` (this one, for unary calls, and
    its streaming siblings, which share its target)::

        protect = AioClientInterceptor("payments:50051")
        channel = grpc.aio.insecure_channel("payments:50051", interceptors=protect.interceptors)

    :param target: the channel's target; names the breaker, budget and events.
    :param policy: the settings (:class:`RpcClientPolicy`).
    :param budget: a :class:`~fournines.RetryBudget` shared with other targets
        (default: one of the target's own, from the policy).
    :param listeners: receive the breaker's, budget's and retries' events.
    :param clock: where time and sleeps come from.
    :param rng: random source of the backoff jitter.
    """

    def __init__(self, target: str, *, policy: RpcClientPolicy | None = None,
                 budget: RetryBudget | None = None, listeners: Sequence[Listener] = (),
                 clock: Clock = system_clock, rng: random.Random | None = None) -> None:
        self._target = _Target("AioClientInterceptor", target, policy, budget, listeners,
                               clock, rng)
        self._all: list[grpc.aio.ClientInterceptor] = [
            self, _AioUnaryStream(self._target), _AioStreamUnary(self._target),
            _AioStreamStream(self._target)]

    @property
    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """A channel's ``interceptors=``: this interceptor and its streaming siblings."""
        return list(self._all)

    @property
    def breaker(self) -> CircuitBreaker:
        """The target's breaker."""
        return self._target.breaker

    @property
    def budget(self) -> RetryBudget:
        """The retry budget the target's retries are withdrawn from."""
        return self._target.budget

    async def intercept_unary_unary(
        self, continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails, request: Any,
    ) -> Any:
        """Send the call through the breaker, retrying as the policy says."""
        target = self._target
        deadline = target.deadline(client_call_details.timeout)
        timeout = target.timeout(deadline)
        start = target.planner.begin()
        attempt, delay = 1, 0.0
        call: Any = None
        while True:
            try:
                permit = target.admit()
            except GrpcCircuitOpenError:
                if call is None:
                    raise
                return call  # opened during the retries: the last answer says more
            try:
                call = await continuation(_aio_details(client_call_details, timeout), request)
                # Awaiting the call itself, not call.code(): one wake-up less per call.
                await call
                code = _OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            except BaseException:
                # Cancelled by the caller (or by a fournines Timeout: a failure then).
                permit.cancelled()
                raise
            target.settle(permit, code)
            if code is _OK:
                return call
            planned = target.plan(attempt, delay, start, code,
                                  await call.trailing_metadata(), deadline)
            if planned is None:
                return call
            await target.clock.asleep(planned)
            delay = planned
            attempt += 1
            try:
                timeout = target.timeout(deadline)
            except GrpcDeadlineExceededError:
                return call

    def __repr__(self) -> str:
        return f"AioClientInterceptor(target={self._target.target!r})"


async def _aio_streaming(target: _Target, continuation: Callable[[Any, Any], Any],
                         details: Any, request: Any) -> Any:
    timeout = target.timeout(target.deadline(details.timeout))
    return await continuation(_aio_details(details, timeout), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    """Server-streaming calls of an :class:`AioClientInterceptor`'s target: the deadline."""

    def __init__(self, target: _Target) -> None:
        self._target = target

    async def intercept_unary_stream(
        self, continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails, request: Any,
    ) -> Any:
        return await _aio_streaming(self._target, continuation, client_call_details, request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    """Client-streaming calls of an :class:`AioClientInterceptor`'s target: the deadline."""

    def __init__(self, target: _Target) -> None:
        self._target = target

    async def intercept_stream_unary(
        self, continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails, request_iterator: Any,
    ) -> Any:
        return await _aio_streaming(self._target, continuation, client_call_details,
                                    request_iterator)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):
    """Bidirectional calls of an :class:`AioClientInterceptor`'s target: the deadline."""

    def __init__(self, target: _Target) -> None:
        self._target = target

    async def intercept_stream_stream(
        self, continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails, request_iterator: Any,
    ) -> Any:
        return await _aio_streaming(self._target, continuation, client_call_details,
                                    request_iterator)


class ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """The sync ``grpcio`` twin of :class:`AioClientInterceptor`: same parameters and decisions.

    ``grpc.intercept_channel(grpc.insecure_channel(target), ClientInterceptor(target))``
    (one object serves all four kinds of call: sync channels ask it for each).
    It blocks the calling thread for backoff; a ``future()`` call is waited for
    inside the interceptor, to know whether to retry.
    """

    def __init__(self, target: str, *, policy: RpcClientPolicy | None = None,
                 budget: RetryBudget | None = None, listeners: Sequence[Listener] = (),
                 clock: Clock = system_clock, rng: random.Random | None = None) -> None:
        self._target = _Target("ClientInterceptor", target, policy, budget, listeners,
                               clock, rng)

    @property
    def breaker(self) -> CircuitBreaker:
        """The target's breaker."""
        return self._target.breaker

    @property
    def budget(self) -> RetryBudget:
        """The retry budget the target's retries are withdrawn from."""
        return self._target.budget

    def intercept_unary_unary(
        self, continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails, request: Any,
    ) -> Any:
        """Send the call through the breaker, retrying as the policy says."""
        target = self._target
        deadline = target.deadline(client_call_details.timeout)
        timeout = target.timeout(deadline)
        start = target.planner.begin()
        attempt, delay = 1, 0.0
        outcome: Any = None
        while True:
            try:
                permit = target.admit()
            except GrpcCircuitOpenError:
                if outcome is None:
                    raise
                return outcome  # opened during the retries: the last answer says more
            try:
                outcome = continuation(_sync_details(client_call_details, timeout), request)
                code = outcome.code()
            except BaseException:
                permit.release()
                raise
            target.settle(permit, code)
            if code is _OK:
                return outcome
            planned = target.plan(attempt, delay, start, code, outcome.trailing_metadata(),
                                  deadline)
            if planned is None:
                return outcome
            target.clock.sleep(planned)
            delay = planned
            attempt += 1
            try:
                timeout = target.timeout(deadline)
            except GrpcDeadlineExceededError:
                return outcome

    def _streaming(self, continuation: Callable[[Any, Any], Any], details: Any,
                   request: Any) -> Any:
        target = self._target
        timeout = target.timeout(target.deadline(details.timeout))
        return continuation(_sync_details(details, timeout), request)

    def intercept_unary_stream(
        self, continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails, request: Any,
    ) -> Any:
        """Send the call with the deadline as its timeout (not retried)."""
        return self._streaming(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails, request_iterator: Any,
    ) -> Any:
        """Send the call with the deadline as its timeout (not retried)."""
        return self._streaming(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails, request_iterator: Any,
    ) -> Any:
        """Send the call with the deadline as its timeout (not retried)."""
        return self._streaming(continuation, client_call_details, request_iterator)

    def __repr__(self) -> str:
        return f"ClientInterceptor(target={self._target.target!r})"
