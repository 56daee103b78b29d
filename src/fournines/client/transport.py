"""Resilient httpx transports: per-host breakers, budgeted retries, deadlines, bulkheads.

Users keep ``httpx.AsyncClient`` and all its habits; only the transport changes::

    client = httpx.AsyncClient(transport=AsyncResilientTransport())

Each origin (``scheme://host:port``) gets its own circuit breaker, retry budget
and optional bulkhead, created on first use from one :class:`ClientPolicy` and
kept in a bounded LRU registry, so one failing host never opens another host's
breaker. Per attempt the transport:

1. refuses at once with :class:`~fournines.DeadlineExceededError` when the
   current deadline is spent (the network is not touched);
2. takes a bulkhead slot and a breaker permit (an open breaker raises
   :class:`~fournines.CircuitOpenError` without touching the network);
3. sets the attempt's timeout to ``min(attempt_timeout, remaining deadline)``
   through ``request.extensions["timeout"]`` and sends the remaining budget in
   ``x-request-timeout-ms`` and the 1-based attempt number in ``x-request-attempt``;
4. counts 5xx, connect errors, read timeouts, protocol errors and deadline
   overruns as breaker failures (4xx, 429 included, are not);
5. retries idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE, TRACE, or any
   request with an ``Idempotency-Key``) on connect errors, read timeouts and the
   retryable statuses, honouring ``Retry-After`` (seconds or HTTP-date, capped),
   drawing each retry from the host's :class:`~fournines.RetryBudget` and never
   sleeping past the deadline. Exhausted retries return the last response or
   re-raise the last error.

With ``hedge_after`` set, an idempotent attempt that has no response headers
after the hedge delay gets ONE concurrent twin (a hedge); see :class:`ClientPolicy`.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from .._clock import Clock, system_clock
from .._deadline import Deadline, current_deadline
from .._errors import ConfigurationError, DeadlineExceededError, check_number
from .._events import (
    DeadlineExceeded,
    FallbackUsed,
    Listener,
    RetriesExhausted,
    RetryScheduled,
    dispatch,
    global_listeners,
)
from .._propagation import (
    ATTEMPT_HEADER,
    NO_RETRY_HEADER,
    TIMEOUT_HEADER,
    format_timeout_ms,
    mark_retries_exhausted,
)
from ..policies.backoff import Backoff
from ..policies.budget import RetryBudget
from ..policies.bulkhead import Bulkhead, BulkheadPermit
from ..policies.circuit_breaker import (
    AdaptiveThrottling,
    BreakerPermit,
    CircuitBreaker,
    ConsecutiveFailures,
    FailureRate,
)

__all__ = [
    "IDEMPOTENT_METHODS",
    "AsyncResilientTransport",
    "ClientPolicy",
    "FallbackHook",
    "parse_retry_after",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""Methods retried without an ``Idempotency-Key`` (RFC 9110, section 9.2.2)."""

FallbackHook = Callable[[httpx.Request, BaseException], httpx.Response]
"""``hook(request, error) -> response``: answers instead of a failed call."""

# Errors that say the host is unhealthy (breaker failures) and that are safe to retry
# for an idempotent request: the request either never left or its answer never came.
_FAILURES: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
    DeadlineExceededError,
)
_RETRYABLE: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadTimeout,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientPolicy:
    """Declarative settings for the policies of one host (all times in seconds).

    :param trip: when the host's breaker opens (default ``ConsecutiveFailures(5)``).
    :param reset_timeout: how long an open breaker waits before probing.
    :param half_open_probes: probes admitted, and successes needed, while half-open.
    :param attempts: attempts per idempotent request, the first included (1: no retry).
    :param backoff: the wait before each retry.
    :param retry_statuses: response statuses that are retried.
    :param max_retry_after: the cap on a ``Retry-After`` hint.
    :param attempt_timeout: each attempt's timeout (``None``: the client's own);
        always shortened to the remaining deadline.
    :param max_concurrent: requests in flight to the host at once (``None``: no bulkhead).
    :param budget_ratio: retries allowed per request, over ``budget_ttl``.
    :param budget_min_per_second: retries allowed per second regardless of traffic.
    :param budget_ttl: the window of the retry budget.
    :param hedge_after: hedging (``None``: off). When an idempotent attempt (same
        rule as retries) has no response headers after this many seconds, ONE
        second attempt is sent concurrently; the first non-retryable outcome
        (a response whose status is not in ``retry_statuses``, or an error that
        is not retried) wins, the other attempt is cancelled and its response,
        if any, closed. A hedge withdraws one retry from the host's
        :class:`~fournines.RetryBudget` (no hedge when it refuses), takes its own
        breaker permit and bulkhead slot (never queueing: no hedge when either
        refuses), does not use up one of ``attempts``, and is never sent when
        the deadline would pass before the hedge delay. Each hedge emits
        ``RetryScheduled(policy="hedge", delay=<hedge delay>)``.
    :param hedge_quantile: with ``hedge_after`` (required, as the fallback), hedge
        after this quantile (e.g. ``0.95``) of the host's last 100 successful
        attempt latencies instead, once 20 of them exist. Attempts that lost a
        race are not sampled.
    """

    trip: ConsecutiveFailures | FailureRate | AdaptiveThrottling = field(
        default_factory=ConsecutiveFailures
    )
    reset_timeout: float = 30.0
    half_open_probes: int = 1
    attempts: int = 3
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.05, cap=2.0))
    retry_statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    max_retry_after: float = 30.0
    attempt_timeout: float | None = None
    max_concurrent: int | None = None
    budget_ratio: float = 0.2
    budget_min_per_second: float = 10.0
    budget_ttl: float = 10.0
    hedge_after: float | None = None
    hedge_quantile: float | None = None

    def __post_init__(self) -> None:
        owner = "ClientPolicy"
        if not isinstance(self.trip, ConsecutiveFailures | FailureRate | AdaptiveThrottling):
            raise ConfigurationError(
                f"{owner}.trip must be ConsecutiveFailures, FailureRate or AdaptiveThrottling, "
                f"got {self.trip!r}"
            )
        check_number(owner, "reset_timeout", self.reset_timeout, minimum=0)
        check_number(owner, "half_open_probes", self.half_open_probes, minimum=1, integer=True)
        check_number(owner, "attempts", self.attempts, minimum=1, integer=True)
        if not isinstance(self.backoff, Backoff):
            raise ConfigurationError(f"{owner}.backoff must be a Backoff, got {self.backoff!r}")
        if not isinstance(self.retry_statuses, frozenset) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599
            for s in self.retry_statuses
        ):
            raise ConfigurationError(
                f"{owner}.retry_statuses must be a frozenset of HTTP status codes, "
                f"got {self.retry_statuses!r}"
            )
        check_number(owner, "max_retry_after", self.max_retry_after, minimum=0)
        check_number(owner, "attempt_timeout", self.attempt_timeout, minimum=0,
                     exclusive_minimum=True, optional=True)
        check_number(owner, "max_concurrent", self.max_concurrent, minimum=1, integer=True,
                     optional=True)
        check_number(owner, "budget_ratio", self.budget_ratio, minimum=0, maximum=1000)
        check_number(owner, "budget_min_per_second", self.budget_min_per_second, minimum=0)
        check_number(owner, "budget_ttl", self.budget_ttl, minimum=0, exclusive_minimum=True)
        check_number(owner, "hedge_after", self.hedge_after, minimum=0, optional=True)
        check_number(owner, "hedge_quantile", self.hedge_quantile, minimum=0,
                     exclusive_minimum=True, maximum=1, optional=True)
        if self.hedge_quantile is not None and self.hedge_after is None:
            raise ConfigurationError(
                f"{owner}.hedge_quantile needs {owner}.hedge_after (the hedge delay used "
                f"until enough latencies are known), got hedge_after=None"
            )


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date).

    ``now`` is the current Unix time (for HTTP-dates). Returns ``None`` when the
    value is absent or malformed; a date in the past gives ``0.0``.

    >>> parse_retry_after("3", 0.0)
    3.0
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


class _HostPolicies:
    """The policies of one host (or route): created once, reused by every request."""

    __slots__ = ("breaker", "budget", "bulkhead", "config", "latencies", "name")

    def __init__(self, name: str, config: ClientPolicy, budget: RetryBudget | None,
                 clock: Clock, listeners: Sequence[Listener]) -> None:
        self.name = name
        self.config = config
        self.breaker = CircuitBreaker(
            name, trip=config.trip, reset_timeout=config.reset_timeout,
            half_open_probes=config.half_open_probes, clock=clock, listeners=listeners,
        )
        self.budget = budget if budget is not None else RetryBudget(
            ratio=config.budget_ratio, min_per_second=config.budget_min_per_second,
            ttl=config.budget_ttl, name=name, clock=clock, listeners=listeners,
        )
        self.bulkhead = None if config.max_concurrent is None else Bulkhead(
            max_concurrent=config.max_concurrent, name=name, clock=clock, listeners=listeners,
        )
        # Recent successful attempt latencies, kept only for quantile hedging.
        self.latencies: deque[float] | None = (
            None if config.hedge_quantile is None else deque(maxlen=_HEDGE_SAMPLES)
        )

    def hedge_delay(self) -> float:
        """Seconds to wait for an attempt's headers before sending a hedge."""
        config = self.config
        assert config.hedge_after is not None
        latencies = self.latencies
        if latencies is None or len(latencies) < _HEDGE_MIN_SAMPLES:
            return config.hedge_after
        assert config.hedge_quantile is not None
        ordered = sorted(latencies)
        index = min(len(ordered) - 1, int(config.hedge_quantile * len(ordered)))
        return ordered[index]


_HEDGE_SAMPLES = 100
_HEDGE_MIN_SAMPLES = 20


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives the bulkhead slot back when it is closed."""

    __slots__ = ("_permit", "_stream")

    def __init__(self, stream: httpx.AsyncByteStream, permit: BulkheadPermit) -> None:
        self._stream = stream
        self._permit = permit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._permit.release()


def _origin(url: httpx.URL) -> str:
    port = url.port
    if port is None:
        port = 443 if url.scheme == "https" else 80
    return f"{url.scheme}://{url.host}:{port}"


def _attempt_timeout(request: httpx.Request, seconds: float) -> None:
    """Shorten every timeout of ``request`` to at most ``seconds``."""
    current = request.extensions.get("timeout") or {}
    timeout: dict[str, float] = {}
    for key in ("connect", "read", "write", "pool"):
        value = current.get(key)
        timeout[key] = seconds if value is None or value > seconds else value
    request.extensions = {**request.extensions, "timeout": timeout}


class AsyncResilientTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` that protects every request; see the module docstring.

    :param transport: the transport that does the I/O (default ``httpx.AsyncHTTPTransport()``).
    :param config: the policy of every host without an override.
    :param per_route: overrides keyed by origin (``"http://host:port"``), or by
        ``(method, path)`` for one route (that route then has policies of its own).
    :param budget: one retry budget shared by all hosts (default: one per host).
    :param fallbacks: hooks keyed by ``(method, path)``, called with the request and
        the error when a request fails (an exception, or a 5xx as
        ``httpx.HTTPStatusError``) to answer instead.
    :param listeners: receive the events of every policy (named by host).
    :param clock: where time comes from.
    :param max_hosts: hosts whose policies are kept (least recently used go first).
    :param rng: the random source of backoff jitter.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        config: ClientPolicy | None = None,
        per_route: Mapping[str | tuple[str, str], ClientPolicy] | None = None,
        budget: RetryBudget | None = None,
        fallbacks: Mapping[tuple[str, str], FallbackHook] | None = None,
        listeners: Sequence[Listener] = (),
        clock: Clock = system_clock,
        max_hosts: int = 1000,
        rng: random.Random | None = None,
    ) -> None:
        if config is not None and not isinstance(config, ClientPolicy):
            raise ConfigurationError(
                f"AsyncResilientTransport.config must be a ClientPolicy, got {config!r}"
            )
        routes = dict(per_route or {})
        for key, value in routes.items():
            if not isinstance(value, ClientPolicy):
                raise ConfigurationError(
                    f"AsyncResilientTransport.per_route[{key!r}] must be a ClientPolicy, "
                    f"got {value!r}"
                )
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError(
                f"AsyncResilientTransport.budget must be a RetryBudget, got {budget!r}"
            )
        check_number("AsyncResilientTransport", "max_hosts", max_hosts, minimum=1, integer=True)
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._config = config or ClientPolicy()
        self._routes = {k: v for k, v in routes.items() if isinstance(k, tuple)}
        self._hosts = {k: v for k, v in routes.items() if isinstance(k, str)}
        self._budget = budget
        self._fallbacks = {(m.upper(), p): h for (m, p), h in (fallbacks or {}).items()}
        self._listeners = tuple(listeners)
        self._clock = clock
        self._max_hosts = max_hosts
        self._rng = rng or random.Random()
        self._registry: OrderedDict[object, _HostPolicies] = OrderedDict()

    # -- the registry ----------------------------------------------------------------

    def policies_for(self, url: httpx.URL | str, method: str = "GET") -> _HostPolicies:
        """The policies that protect a request to ``url`` (created on first use)."""
        url = httpx.URL(url) if isinstance(url, str) else url
        origin = _origin(url)
        key: object = origin
        config: ClientPolicy | None = None
        if self._routes:
            route = (method, url.path)
            config = self._routes.get(route)
            if config is not None:
                key = (origin, *route)
        registry = self._registry
        policies = registry.get(key)
        if policies is not None:
            if len(registry) > 1:
                registry.move_to_end(key)
            return policies
        if config is None:
            config = self._hosts.get(origin, self._config)
        name = origin if isinstance(key, str) else f"{method} {origin}{url.path}"
        policies = _HostPolicies(name, config, self._budget, self._clock, self._listeners)
        registry[key] = policies
        if len(registry) > self._max_hosts:
            registry.popitem(last=False)
        return policies

    # -- the transport ---------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` under the policies of its host."""
        if not self._fallbacks:
            return await self._protected(request)
        hook = self._fallbacks.get((request.method, request.url.path))
        if hook is None:
            return await self._protected(request)
        try:
            response = await self._protected(request)
        except Exception as exc:
            return self._fallback(hook, request, exc)
        if response.status_code < 500:
            return response
        await response.aclose()
        error = httpx.HTTPStatusError(
            f"{response.status_code} from {request.url}", request=request, response=response
        )
        return self._fallback(hook, request, error)

    def _fallback(self, hook: FallbackHook, request: httpx.Request,
                  exc: BaseException) -> httpx.Response:
        response = hook(request, exc)
        if self._listeners or global_listeners():
            dispatch(self._listeners, FallbackUsed(
                policy="fallback", name=f"{request.method} {request.url.path}", error=exc,
            ))
        return response

    async def _protected(self, request: httpx.Request) -> httpx.Response:
        deadline = current_deadline()
        hp = self.policies_for(request.url, request.method)
        if deadline is not None and deadline.remaining() <= 0:
            raise self._expired(hp, deadline)
        cfg = hp.config
        budget = hp.budget
        budget.deposit()
        retries = cfg.attempts > 1 and (
            request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers
        )
        hedge = cfg.hedge_after is not None and (
            request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers
        )
        breaker = hp.breaker
        bulkhead = hp.bulkhead
        inner = self._transport
        headers = request.headers
        attempt = 1
        delay = 0.0
        last: httpx.Response | None = None
        while True:
            limit = cfg.attempt_timeout
            if deadline is not None:
                remaining = deadline.remaining()
                if remaining <= 0:
                    if last is not None:
                        return last
                    raise self._expired(hp, deadline)
                if limit is None or remaining < limit:
                    limit = remaining
            try:
                permit = breaker.try_acquire()
            except Exception:
                # The breaker opened during our retries: the last answer says more.
                if last is not None:
                    return last
                raise
            slot = None
            if bulkhead is not None:
                try:
                    slot = await bulkhead.aacquire()
                except BaseException:
                    permit.release()
                    raise
            if limit is not None:
                headers[TIMEOUT_HEADER] = format_timeout_ms(limit)
                _attempt_timeout(request, limit)
            headers[ATTEMPT_HEADER] = str(attempt)
            try:
                if hedge:
                    response = await self._race(hp, request, permit, slot, deadline, attempt)
                else:
                    response = await inner.handle_async_request(request)
            except Exception as exc:
                if slot is not None:
                    slot.release()
                error: Exception = exc
                if (deadline is not None and isinstance(exc, httpx.TimeoutException)
                        and deadline.remaining() <= 0):
                    error = self._expired(hp, deadline)
                if isinstance(error, _FAILURES):
                    permit.failure(error)
                else:
                    permit.release()
                last = None  # the last outcome is this error, not an older response
                planned = None
                if isinstance(error, _RETRYABLE):
                    if retries:
                        planned = self._plan(hp, attempt, delay, None, error, deadline)
                    else:
                        mark_retries_exhausted()
                if planned is None:
                    if error is exc:
                        raise
                    raise error from exc
            else:
                status = response.status_code
                if status >= 500:
                    permit.failure()
                else:
                    permit.success()
                if slot is not None:
                    response.stream = _ReleasingStream(
                        response.stream,  # type: ignore[arg-type]
                        slot,
                    )
                if status not in cfg.retry_statuses:
                    return response
                if not retries or NO_RETRY_HEADER in response.headers:
                    # Not ours to retry (not idempotent), or the hop below already retried
                    # and gave up: tell our own caller not to retry either.
                    mark_retries_exhausted()
                    return response
                hint = parse_retry_after(response.headers.get("retry-after"), self._clock.time())
                planned = self._plan(hp, attempt, delay, hint, None, deadline)
                if planned is None:
                    return response
                # Read and close what we discard, so its connection goes back to the pool.
                await response.aread()
                await response.aclose()
                last = response
            delay = planned
            await self._clock.asleep(delay)
            attempt += 1

    async def _race(self, hp: _HostPolicies, request: httpx.Request, permit: BreakerPermit,
                    slot: BulkheadPermit | None, deadline: Deadline | None,
                    attempt: int) -> httpx.Response:
        """Send ``request``, hedged once if its headers are late; the first decisive outcome wins.

        The caller settles ``permit`` and ``slot`` from what this returns or raises;
        when the hedge's outcome is the one returned, the primary attempt is settled
        here (those later calls are then no-ops), and the hedge always is.
        """
        cfg = hp.config
        clock = self._clock
        inner = self._transport
        delay = hp.hedge_delay()
        start = clock.monotonic()
        primary: asyncio.Future[httpx.Response] = asyncio.ensure_future(
            inner.handle_async_request(request))
        second: asyncio.Future[httpx.Response] | None = None
        h_permit: BreakerPermit | None = None
        h_slot: BulkheadPermit | None = None
        h_start = start
        winner: asyncio.Future[httpx.Response] | None = None
        try:
            done, _ = await asyncio.wait((primary,), timeout=delay)
            if not done:
                launched = self._launch_hedge(hp, request, deadline, attempt, delay)
                if launched is not None:
                    h_request, h_permit, h_slot = launched
                    h_start = clock.monotonic()
                    second = asyncio.ensure_future(inner.handle_async_request(h_request))
            if second is None:
                winner = primary
                response = await primary
            else:
                pending: set[asyncio.Future[httpx.Response]] = {primary, second}
                while pending:
                    done, pending = await asyncio.wait(
                        pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in (primary, second):  # the primary first on a tie
                        if task in done and self._decisive(cfg, task):
                            winner = task
                            break
                    if winner is not None:
                        break
                if winner is None:
                    winner = primary  # both retryable: the primary's outcome goes up
                response = await winner
        finally:
            entries: list[tuple[asyncio.Future[httpx.Response] | None, BreakerPermit | None,
                                BulkheadPermit | None]] = [(primary, permit, slot),
                                                           (second, h_permit, h_slot)]
            for racer, t_permit, t_slot in entries:
                if racer is None or (racer is winner and (
                        racer is primary or racer.exception() is None)):
                    continue  # the caller settles the primary; a winning hedge below
                assert t_permit is not None
                await self._settle_loser(racer, t_permit, t_slot)
        if winner is second:
            assert h_permit is not None
            if response.status_code >= 500:
                h_permit.failure()
            else:
                h_permit.success()
            if h_slot is not None:
                response.stream = _ReleasingStream(
                    response.stream,  # type: ignore[arg-type]
                    h_slot,
                )
        if hp.latencies is not None and response.status_code < 500:
            hp.latencies.append(clock.monotonic() - (start if winner is primary else h_start))
        return response

    @staticmethod
    def _decisive(cfg: ClientPolicy, task: asyncio.Future[httpx.Response]) -> bool:
        if task.cancelled():
            return False
        error = task.exception()
        if error is not None:
            return not isinstance(error, _RETRYABLE)
        return task.result().status_code not in cfg.retry_statuses

    def _launch_hedge(self, hp: _HostPolicies, request: httpx.Request,
                      deadline: Deadline | None, attempt: int, delay: float
                      ) -> tuple[httpx.Request, BreakerPermit, BulkheadPermit | None] | None:
        """The hedge's request, breaker permit and slot, or ``None`` when it may not go."""
        limit = hp.config.attempt_timeout
        if deadline is not None:
            remaining = deadline.remaining()
            if remaining <= 0:
                return None
            if limit is None or remaining < limit:
                limit = remaining
        try:
            permit = hp.breaker.try_acquire()
        except Exception:
            return None
        slot = None
        if hp.bulkhead is not None:
            try:
                slot = hp.bulkhead.try_acquire()
            except Exception:
                permit.release()
                return None
        if not hp.budget.try_withdraw():
            permit.release()
            if slot is not None:
                slot.release()
            return None
        hedge = httpx.Request(request.method, request.url, headers=request.headers,
                              stream=request.stream, extensions=dict(request.extensions))
        headers = hedge.headers  # a copy of the primary's
        if limit is not None:
            headers[TIMEOUT_HEADER] = format_timeout_ms(limit)
            _attempt_timeout(hedge, limit)
        headers[ATTEMPT_HEADER] = str(attempt + 1)
        if self._listeners or global_listeners():
            dispatch(self._listeners, RetryScheduled(
                policy="hedge", name=hp.name, attempt=attempt, delay=delay, error=None,
            ))
        return hedge, permit, slot

    @staticmethod
    async def _settle_loser(task: asyncio.Future[httpx.Response], permit: BreakerPermit,
                            slot: BulkheadPermit | None) -> None:
        """Cancel an attempt that lost the race; record its outcome if it had one."""
        try:
            if not task.done():
                task.cancel()
                try:
                    await asyncio.wait((task,))
                except asyncio.CancelledError:
                    task.cancel()
                    raise
            if task.cancelled():
                permit.release()
                return
            error = task.exception()
            if error is not None:
                if isinstance(error, _FAILURES):
                    permit.failure(error)
                else:
                    permit.release()
                return
            response = task.result()
            if response.status_code >= 500:
                permit.failure()
            else:
                permit.success()
            await response.aclose()
        finally:
            permit.release()
            if slot is not None:
                slot.release()

    def _expired(self, hp: _HostPolicies, deadline: Deadline) -> DeadlineExceededError:
        if self._listeners or global_listeners():
            dispatch(self._listeners, DeadlineExceeded(
                policy="client", name=hp.name, timeout=max(0.0, deadline.remaining()),
            ))
        return DeadlineExceededError(f"no time left for a request to {hp.name}")

    def _plan(self, hp: _HostPolicies, attempt: int, previous: float, hint: float | None,
              error: BaseException | None, deadline: Deadline | None) -> float | None:
        """The wait before attempt ``attempt + 1``, or ``None`` to stop (event sent)."""
        cfg = hp.config
        reason = ""
        delay = 0.0
        if attempt >= cfg.attempts:
            reason = "attempts"
        else:
            delay = cfg.backoff.delay(attempt, previous, self._rng)
            if hint is not None and hint > delay:
                delay = min(hint, cfg.max_retry_after)
            if deadline is not None and deadline.remaining() <= delay:
                reason = "deadline"
            elif not hp.budget.try_withdraw():
                reason = "budget"
        if reason:
            # Whatever we answer our own caller now, it must not be retried again.
            mark_retries_exhausted()
        if self._listeners or global_listeners():
            if reason:
                dispatch(self._listeners, RetriesExhausted(
                    policy="retry", name=hp.name, attempts=attempt, reason=reason, error=error,
                ))
            else:
                dispatch(self._listeners, RetryScheduled(
                    policy="retry", name=hp.name, attempt=attempt, delay=delay, error=error,
                ))
        return None if reason else delay

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()

    def __repr__(self) -> str:
        return f"AsyncResilientTransport(hosts={len(self._registry)}, config={self._config!r})"
