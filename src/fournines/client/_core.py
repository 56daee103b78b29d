"""The sans-I/O core shared by the sync and async resilient transports.

Everything that decides lives here: the per-host registry and the route patterns,
admission (deadline, breaker, per-attempt timeout and headers), each step of an
attempt (``_failed``, ``_abandoned``, ``_answered``: what the outcome means for the
breaker and whether to retry), the fallbacks (``_instead_of_error``, ``_keeps``,
``_instead_of_5xx``), the response bodies that settle the breaker and bulkhead
when closed (one class for sync and async), and observation (events for
metrics, an OpenTelemetry client span). The shells in
:mod:`fournines.client.transport` only do the I/O: send, sleep, read and close
bodies, and (async only) race a hedge.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import itertools
import random
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx

from .._clock import Clock
from .._deadline import Deadline, current_deadline
from .._errors import ConfigurationError, DeadlineExceededError, RejectedError, check_number
from .._events import (
    ClientRequestFinished,
    ClientRequestStarted,
    DeadlineExceeded,
    FallbackUsed,
    HostEvicted,
    Listener,
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
    State,
)
from ..policies.fallback import StaleCache
from ..policies.retry import RetryPlanner
from ._errors import TransportDeadlineExceededError

if TYPE_CHECKING:
    from ._tracing import ClientTracer

V = TypeVar("V")

# What the transports turn into their httpx-typed twins (client/_errors.py).
EDGE_ERRORS = (RejectedError, DeadlineExceededError)


def replayable(stream: object) -> bool:
    """Whether a request body can be sent again, judged from public httpx types only.

    httpx builds the body of fixed content (bytes, text, JSON, forms: ``ByteStream``;
    multipart, which seeks its files back to the start on each send) as a stream that
    is both a ``SyncByteStream`` and an ``AsyncByteStream``; a body from an iterator
    or generator is only one of the two, and can be read once.
    """
    return isinstance(stream, httpx.SyncByteStream) and isinstance(stream, httpx.AsyncByteStream)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""Methods retried without an ``Idempotency-Key`` (RFC 9110, section 9.2.2)."""

FallbackHook = Callable[[httpx.Request, BaseException], httpx.Response]
"""``hook(request, error) -> response``: answers instead of a failed call."""

# Errors that say the host is unhealthy (breaker failures) and that are safe to retry
# for an idempotent request: the request either never left or its answer never came.
# NetworkError covers a connection reset by the peer (ReadError) or broken while
# sending (WriteError), not only a refused one (ConnectError).
_FAILURES: tuple[type[BaseException], ...] = (
    httpx.NetworkError,
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
    httpx.ReadError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientPolicy:
    """Declarative settings for the policies of one host (all times in seconds).

    :param trip: when the host's breaker opens (default ``ConsecutiveFailures(5)``,
        which opens after five timed-out calls to a hung host even at one call a
        second). At hundreds of attempts a second a host that fails one attempt in
        five, which retries absorb, also fails five in a row every few seconds: for
        such a host prefer ``FailureRate(threshold=0.5, window=100)``.
    :param reset_timeout: the longest an open breaker waits before probing.
    :param initial_reset_timeout: the wait after the breaker first opens; each failed
        probe doubles it up to ``reset_timeout`` (``None``: always ``reset_timeout``).
        Short by default, so a breaker tripped by a short fault serves again about a
        second after it ends, while a host that stays down is probed ever more rarely.
    :param half_open_probes: probes admitted, and successes needed, while half-open.
    :param attempts: attempts per idempotent request, the first included (1: no retry).
    :param backoff: the wait before each retry.
    :param retry_statuses: response statuses that are retried.
    :param max_retry_after: the longest ``Retry-After`` hint honoured; a longer one
        ends the retrying at once (the host said "not soon").
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
    initial_reset_timeout: float | None = 1.0
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
        check_number(owner, "initial_reset_timeout", self.initial_reset_timeout, minimum=0,
                     optional=True)
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
        when = email.utils.parsedate_to_datetime(text).timestamp()
    # A hostile year (20 digits) overflows inside the parser instead of failing to parse;
    # a date without a zone is local time, which the platform may not reach (OSError).
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return max(0.0, when - now)


class RouteTable(Generic[V]):
    """``(method, path pattern) -> value``, matched the way requests are seen.

    A pattern is an exact path (``/payments/status``), a template whose ``{name}``
    segments each match one non-empty path segment (``/payments/{id}/status``),
    or a prefix ending in ``*`` (``/static/*``). An exact pattern beats a
    template, which beats a prefix; among templates the one with more literal
    segments wins, among prefixes the longest.
    """

    __slots__ = ("_exact", "_prefixes", "_templates")

    def __init__(self, owner: str, field: str, items: Iterable[tuple[object, V]]) -> None:
        self._exact: dict[tuple[str, str], tuple[str, V]] = {}
        templates: list[tuple[int, str, tuple[str | None, ...], str, V]] = []
        prefixes: list[tuple[str, str, V]] = []
        for key, value in items:
            if not (isinstance(key, tuple) and len(key) == 2
                    and all(isinstance(part, str) for part in key)):
                raise ConfigurationError(
                    f"{owner}.{field} keys must be (method, path) tuples, got {key!r}"
                )
            method, pattern = key[0].upper(), key[1]
            if not pattern.startswith("/"):
                raise ConfigurationError(
                    f"{owner}.{field} key {key!r}: the path must start with '/' (an exact "
                    f"path, a template like '/payments/{{id}}/status' or a prefix like "
                    f"'/static/*')"
                )
            if "*" in pattern[:-1]:
                raise ConfigurationError(
                    f"{owner}.{field} key {key!r}: '*' may only end a prefix pattern "
                    f"('/static/*'); use '{{name}}' for one segment"
                )
            if pattern.endswith("*"):
                prefixes.append((method, pattern[:-1], value))
                continue
            segments = tuple(None if _is_parameter(part) else part
                             for part in pattern.split("/"))
            if any(("{" in part or "}" in part) for part in segments if part is not None):
                raise ConfigurationError(
                    f"{owner}.{field} key {key!r}: a '{{name}}' must be a whole path segment"
                )
            if None in segments:
                literal = sum(part is not None for part in segments)
                templates.append((literal, method, segments, pattern, value))
            else:
                self._exact[(method, pattern)] = (pattern, value)
        templates.sort(key=lambda t: -t[0])  # stable: declaration order breaks ties
        self._templates = [(m, segs, pat, v) for _, m, segs, pat, v in templates]
        prefixes.sort(key=lambda p: -len(p[1]))
        self._prefixes = [(m, prefix, prefix + "*", v) for m, prefix, v in prefixes]

    def __bool__(self) -> bool:
        return bool(self._exact or self._templates or self._prefixes)

    def match(self, method: str, path: str) -> tuple[str, V] | None:
        """``(pattern, value)`` of the best route for a request, or ``None``."""
        found = self._exact.get((method, path))
        if found is not None or not (self._templates or self._prefixes):
            return found
        if self._templates:
            parts = path.split("/")
            for m, segments, pattern, value in self._templates:
                if m == method and len(segments) == len(parts) and all(
                    part if want is None else part == want
                    for want, part in zip(segments, parts, strict=True)
                ):
                    return pattern, value
        for m, prefix, pattern, value in self._prefixes:
            if m == method and path.startswith(prefix):
                return pattern, value
        return None


def _is_parameter(segment: str) -> bool:
    inner = segment[1:-1]
    return (len(segment) > 2 and segment[0] == "{" and segment[-1] == "}"
            and "{" not in inner and "}" not in inner)


class _HostPolicies:
    """The policies of one host (or route): created once, reused by every request."""

    __slots__ = ("breaker", "budget", "bulkhead", "config", "ends", "failed_at", "label",
                 "latencies", "name", "retry", "starts")

    def __init__(self, name: str, config: ClientPolicy, budget: RetryBudget | None,
                 clock: Clock, listeners: Sequence[Listener], rng: random.Random,
                 label: str = "") -> None:
        self.name = name
        self.config = config
        # The ``host`` label of the client metrics (bounded: see TransportCore._label).
        self.label = label or name
        # Requests begun and ended (an answer's body closed): next() on a count is one C
        # call, so threads of the sync transport never lose one (``+= 1`` could).
        self.starts = itertools.count()
        self.ends = itertools.count()
        # When the transport last counted a failure of this host (evicted after clean ones).
        self.failed_at = -1e18
        self.breaker = CircuitBreaker(
            name, trip=config.trip, reset_timeout=config.reset_timeout,
            initial_reset_timeout=config.initial_reset_timeout,
            half_open_probes=config.half_open_probes, clock=clock, listeners=listeners,
        )
        self.budget = budget if budget is not None else RetryBudget(
            ratio=config.budget_ratio, min_per_second=config.budget_min_per_second,
            ttl=config.budget_ttl, name=name, clock=clock, listeners=listeners,
        )
        # The one retry decision of fournines (set_testing reaches it too); the transport
        # deposits each request in the budget itself, the planner withdraws each retry.
        self.retry = RetryPlanner(
            attempts=config.attempts, backoff=config.backoff,
            max_retry_after=config.max_retry_after, budget=self.budget, name=name,
            clock=clock, listeners=listeners, rng=rng,
        )
        self.bulkhead = None if config.max_concurrent is None else Bulkhead(
            max_concurrent=config.max_concurrent, name=name, clock=clock, listeners=listeners,
        )
        # Recent successful attempt latencies, kept only for quantile hedging.
        self.latencies: deque[float] | None = (
            None if config.hedge_quantile is None else deque(maxlen=_HEDGE_SAMPLES)
        )

    def busy(self) -> bool:
        """Whether a request to this host is in flight (its body not yet closed).

        Reading a count moves it on by one: both move, so the difference stays. Ends
        are read first, so a request that ends meanwhile is still counted (never less
        than the truth: a busy host is never taken for an idle one).
        """
        ended = next(self.ends)
        return next(self.starts) > ended

    def evictable(self, now: float) -> int:
        """0: keep (busy, open or forced); 1: may go; 2: should go first (no recent failure)."""
        if self.busy():
            return 0
        state = self.breaker.state
        if state is State.CLOSED:
            return 1 if now - self.failed_at < self.config.reset_timeout else 2
        # Half-open and idle: nobody has probed it for a while; kept after clean hosts.
        return 1 if state is State.HALF_OPEN else 0

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

# How many of the least recently used hosts a new host may look at to make room.
_EVICTION_SCAN = 16
# The name and ``host`` label of what no kept host has: the overflow, unlabelled hosts.
_OTHER = "_other"

HostKey = Callable[[httpx.Request], str | None]
"""``host_key(request) -> key``: requests with one key share one set of policies.

Return a service or origin group name (``"payments"``), or ``None`` for the request's
origin.
"""

def _origin(url: httpx.URL) -> str:
    port = url.port
    if port is None:
        port = 443 if url.scheme == "https" else 80
    return f"{url.scheme}://{url.host}:{port}"


def copy_request(request: httpx.Request) -> httpx.Request:
    """A request like ``request`` whose headers and extensions can be changed on their own.

    The transports set each attempt's timeout, budget and attempt headers (and the
    trace context) on a copy: the caller's request stays as it was built, so sending
    it again never carries an older deadline. The body stream is shared (it is
    only sent again when :func:`replayable`).
    """
    return httpx.Request(request.method, request.url, headers=request.headers,
                         stream=request.stream, extensions=dict(request.extensions))


def _attempt_timeout(request: httpx.Request, seconds: float) -> None:
    """Shorten every timeout of ``request`` to at most ``seconds``."""
    current = request.extensions.get("timeout") or {}
    timeout: dict[str, float] = {}
    for key in ("connect", "read", "write", "pool"):
        value = current.get(key)
        timeout[key] = seconds if value is None or value > seconds else value
    request.extensions = {**request.extensions, "timeout": timeout}



STALE_HEADER = "x-fournines-degraded"
"""Response header marking an answer served by a fallback (value ``stale`` for a cached one)."""

STALE_AGE_EXTENSION = "fournines.stale_age"
"""Response extension: how old (seconds) the cached answer served instead is."""

Fallbacks = Mapping[tuple[str, str], FallbackHook | StaleCache[Any]]


class _Snapshot:
    """A good response kept for a stale-cache route: raw body, so encodings stay right."""

    __slots__ = ("body", "extensions", "headers", "status", "stored_at")

    def __init__(self, response: httpx.Response, headers: list[tuple[bytes, bytes]],
                 body: bytes, stored_at: float) -> None:
        self.status = response.status_code
        self.headers = headers
        self.extensions = {k: v for k, v in response.extensions.items()
                           if k in ("http_version", "reason_phrase")}
        self.body = body
        self.stored_at = stored_at


class _Call:
    """The state of one request across its attempts."""

    __slots__ = ("attempt", "deadline", "delay", "hedge", "hp", "last", "retries")

    def __init__(self, hp: _HostPolicies, deadline: Deadline | None, retries: bool,
                 hedge: bool) -> None:
        self.hp = hp
        self.deadline = deadline
        self.retries = retries
        self.hedge = hedge
        self.attempt = 1
        self.delay = 0.0
        self.last: httpx.Response | None = None


# Methods named as they are in metrics; any other becomes "_OTHER" (as OpenTelemetry's
# semantic conventions do): a service forwarding its callers' methods must not let
# them mint label values.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                            "CONNECT", "TRACE"})


def _method_label(method: str) -> str:
    return method if method in _KNOWN_METHODS else "_OTHER"


class _Observation:
    """What is measured of one request: start time, and its span when tracing."""

    __slots__ = ("announced", "host", "hp", "span", "start", "token")

    def __init__(self, hp: _HostPolicies, start: float, span: Any, token: Any,
                 announced: bool) -> None:
        # Looked up once per request: a host in the overflow is reported once.
        self.hp = hp
        self.host = hp.label
        self.start = start
        self.span = span
        self.token = token
        # Finished is sent only after Started was: a listener added mid-request must
        # not see an in-flight count go below zero.
        self.announced = announced


class TransportCore:
    """Decisions shared by :class:`ResilientTransport` and :class:`AsyncResilientTransport`."""

    _owner = "ResilientTransport"

    def __init__(
        self,
        *,
        config: ClientPolicy | None,
        per_route: Mapping[str | tuple[str, str], ClientPolicy] | None,
        budget: RetryBudget | None,
        fallbacks: Fallbacks | None,
        listeners: Sequence[Listener],
        clock: Clock,
        max_hosts: int,
        rng: random.Random | None,
        tracing: bool,
        tracer_provider: Any,
        max_stale_bytes: int,
        host_key: HostKey | None = None,
    ) -> None:
        owner = self._owner
        if config is not None and not isinstance(config, ClientPolicy):
            raise ConfigurationError(f"{owner}.config must be a ClientPolicy, got {config!r}")
        routes = dict(per_route or {})
        for key, value in routes.items():
            if not isinstance(value, ClientPolicy):
                raise ConfigurationError(
                    f"{owner}.per_route[{key!r}] must be a ClientPolicy, got {value!r}"
                )
            if isinstance(key, str):
                try:
                    url = httpx.URL(key)
                except httpx.InvalidURL:
                    url = httpx.URL()
                if not (url.scheme and url.host):
                    raise ConfigurationError(
                        f"{owner}.per_route keys must be origins like 'http://host:port' "
                        f"or (method, path) tuples, got {key!r}"
                    )
            elif not (isinstance(key, tuple) and len(key) == 2
                    and all(isinstance(part, str) for part in key)):
                raise ConfigurationError(
                    f"{owner}.per_route keys must be origins like 'http://host:port' "
                    f"or (method, path) tuples, got {key!r}"
                )
        route_table: RouteTable[ClientPolicy] = RouteTable(
            owner, "per_route", ((k, v) for k, v in routes.items() if isinstance(k, tuple)))
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError(f"{owner}.budget must be a RetryBudget, got {budget!r}")
        hooks = dict(fallbacks or {})
        fallback_table: RouteTable[FallbackHook | StaleCache[Any]] = RouteTable(
            owner, "fallbacks", hooks.items())
        for key, hook in hooks.items():
            if not callable(hook) and not isinstance(hook, StaleCache):
                raise ConfigurationError(
                    f"{owner}.fallbacks[{key!r}] must be a function or a StaleCache, "
                    f"got {hook!r}"
                )
        check_number(owner, "max_hosts", max_hosts, minimum=1, integer=True)
        if host_key is not None and not callable(host_key):
            raise ConfigurationError(
                f"{owner}.host_key must be a callable taking a request and returning a "
                f"str (or None for the request's origin), got {host_key!r}"
            )
        check_number(owner, "max_stale_bytes", max_stale_bytes, minimum=0, integer=True)
        self._config = config or ClientPolicy()
        # Keys are matched the way requests are seen: upper-case method, full origin.
        self._routes = route_table
        self._hosts = {_origin(httpx.URL(k)): v for k, v in routes.items() if isinstance(k, str)}
        self._budget = budget
        self._fallbacks = fallback_table
        self._clock = clock
        self._max_hosts = max_hosts
        self._max_stale_bytes = max_stale_bytes
        self._rng = rng or random.Random()
        self._registry: OrderedDict[object, _HostPolicies] = OrderedDict()
        self._host_key = host_key
        # Taken only when a host is not in the registry: the hit path stays lock-free.
        self._registry_lock = threading.Lock()
        # The shared policies of hosts that found every kept host busy or open.
        self._overflow: dict[object, _HostPolicies] = {}
        # Host labels handed out; at most max_hosts, then "_other" (see _label).
        self._labels: set[str] = set()
        self._tracer: ClientTracer | None = None
        if tracing or tracer_provider is not None:
            from ._tracing import ClientTracer  # noqa: PLC0415 - OpenTelemetry is optional

            self._tracer = ClientTracer(owner, tracer_provider)
            # Resilience events (retries, hedges, rejections, fallbacks) become span events.
            listeners = (*listeners, self._tracer.record_event)
        self._listeners = tuple(listeners)

    # -- the registry ----------------------------------------------------------------

    def policies_for(self, url: httpx.URL | str, method: str = "GET") -> _HostPolicies:
        """The policies that protect a request to ``url`` (created on first use).

        With ``host_key``, the key is taken from a GET (or ``method``) request to ``url``.
        """
        url = httpx.URL(url) if isinstance(url, str) else url
        if self._host_key is not None:
            return self._policies(httpx.Request(method, url))
        return self._lookup(_origin(url), url, method)

    def _policies(self, request: httpx.Request) -> _HostPolicies:
        """The policies of ``request``: its ``host_key`` group, else its origin."""
        url = request.url
        group = None
        if self._host_key is not None:
            group = self._host_key(request)
            if group is not None and not isinstance(group, str):
                raise ConfigurationError(
                    f"{self._owner}.host_key must return a str or None, got {group!r}"
                )
        return self._lookup(_origin(url) if group is None else group, url, request.method)

    def _lookup(self, origin: str, url: httpx.URL, method: str) -> _HostPolicies:
        key: object = origin
        config: ClientPolicy | None = None
        pattern = ""
        if self._routes:
            found = self._routes.match(method, url.path)
            if found is not None:
                # One set of policies per route pattern: every order id shares one breaker.
                pattern, config = found
                key = (origin, method, pattern)
        registry = self._registry
        policies = registry.get(key)
        if policies is not None:
            if len(registry) > 1:
                try:  # noqa: SIM105 - suppress() would cost a context manager per call
                    registry.move_to_end(key)
                except KeyError:
                    # Evicted by another thread meanwhile (it was idle): this request
                    # still runs under the policies it found.
                    pass
            return policies
        with self._registry_lock:
            return self._add(key, origin, method, pattern, config)

    def _add(self, key: object, origin: str, method: str, pattern: str,
             config: ClientPolicy | None) -> _HostPolicies:
        """Keep new policies for ``key`` (lock held), or share the overflow's.

        Room is made by evicting an idle host whose breaker is closed, one without a
        recent failure first; a host with a request in flight (its bulkhead and
        permits live on) or with an open breaker (exactly the state worth keeping)
        never goes. When none of the least recently used can go, the new host
        shares the overflow policies (named ``_other``) instead: a flood of new
        hosts never resets the state of the hosts in use.
        """
        registry = self._registry
        policies = registry.get(key)
        if policies is not None:
            return policies
        pinned = config is None and origin in self._hosts
        if config is None:
            config = self._hosts.get(origin, self._config)
        if len(registry) >= self._max_hosts and not pinned:
            victim = self._evict()
            if victim is None:
                return self._overflowing(key, origin, method, pattern, config)
            self._report(victim.name, "evicted")
        name = origin if isinstance(key, str) else f"{method} {origin}{pattern}"
        policies = _HostPolicies(name, config, self._budget, self._clock, self._listeners,
                                 self._rng, self._label(origin))
        registry[key] = policies
        return policies

    def _evict(self) -> _HostPolicies | None:
        """Drop (and return) the policies of one evictable host among the oldest, if any.

        Looks at no more than ``_EVICTION_SCAN`` hosts, so a registry full of busy or
        open hosts costs a new host microseconds, not a walk of every host; those
        looked at and kept move to the recent end, so the next scan sees others.
        """
        registry = self._registry
        now = self._clock.monotonic()
        second: object = None
        for _ in range(min(_EVICTION_SCAN, len(registry))):
            key = next(iter(registry))
            rank = registry[key].evictable(now)
            if rank == 2:
                return registry.pop(key)
            if rank == 1 and second is None:
                second = key
            registry.move_to_end(key)
        return None if second is None else registry.pop(second)

    def _overflowing(self, key: object, origin: str, method: str, pattern: str,
                     config: ClientPolicy) -> _HostPolicies:
        shared_key = _OTHER if isinstance(key, str) else (_OTHER, method, pattern)
        policies = self._overflow.get(shared_key)
        if policies is None:
            name = _OTHER if isinstance(key, str) else f"{method} {_OTHER}{pattern}"
            policies = _HostPolicies(name, config, self._budget, self._clock, self._listeners,
                                     self._rng, _OTHER)
            self._overflow[shared_key] = policies
        self._report(origin, "overflow")
        return policies

    def _report(self, name: str, kind: str) -> None:
        if self._listeners or global_listeners():
            dispatch(self._listeners, HostEvicted(policy="client", name=name, kind=kind))

    def _label(self, origin: str) -> str:
        """The ``host`` label of ``origin``: itself for the first ``max_hosts``, then ``_other``.

        Hosts come and go (evicted, called again); their labels stay, so the series
        of a metrics backend, and a listener's cache of them, stay bounded however
        many hosts a hostile or busy caller makes the transport see.
        """
        labels = self._labels
        if origin in labels:
            return origin
        if len(labels) < self._max_hosts or origin in self._hosts:
            labels.add(origin)
            return origin
        return _OTHER

    # -- one request: admission and outcomes -------------------------------------------

    def _begin(self, request: httpx.Request, hp: _HostPolicies | None = None) -> _Call:
        """Start a request: fail at once when no time is left, else count it in the budget.

        ``hp``: the request's policies when already looked up (by the observation).
        """
        deadline = current_deadline()
        if hp is None:
            hp = self._policies(request)
        if deadline is not None and deadline.remaining() <= 0:
            raise self._expired(hp, deadline)
        cfg = hp.config
        # In flight from here until the shell calls _ended or the answer's body closes.
        next(hp.starts)
        hp.budget.deposit()
        idempotent = request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers
        # A body from an iterator or generator can be sent once: a retry or a hedge would
        # fail (StreamConsumed), send it empty, or split it between two attempts.
        idempotent = idempotent and replayable(request.stream)
        return _Call(hp, deadline, cfg.attempts > 1 and idempotent,
                     cfg.hedge_after is not None and idempotent)

    def _admit(self, call: _Call, request: httpx.Request) -> BreakerPermit | None:
        """The breaker permit of the next attempt, its timeout and headers set on ``request``.

        ``None`` means stop and answer ``call.last`` (the deadline passed or the
        breaker opened during retries: the last answer says more than an error).
        """
        hp = call.hp
        limit = hp.config.attempt_timeout
        deadline = call.deadline
        if deadline is not None:
            remaining = deadline.remaining()
            if remaining <= 0:
                if call.last is not None:
                    return None
                raise self._expired(hp, deadline)
            if limit is None or remaining < limit:
                limit = remaining
        try:
            permit = hp.breaker.try_acquire()
        except Exception:
            if call.last is not None:
                return None
            raise
        headers = request.headers
        if limit is not None:
            headers[TIMEOUT_HEADER] = format_timeout_ms(limit)
            _attempt_timeout(request, limit)
        headers[ATTEMPT_HEADER] = str(call.attempt)
        return permit

    def _after_error(self, call: _Call, exc: Exception,
                     permit: BreakerPermit) -> tuple[float | None, Exception]:
        """Settle a failed attempt: ``(wait before the next one or None, error to raise)``."""
        hp = call.hp
        deadline = call.deadline
        error: Exception = exc
        if (deadline is not None and isinstance(exc, httpx.TimeoutException)
                and deadline.remaining() <= 0):
            error = self._expired(hp, deadline)
        # A PoolTimeout is a wait for our own pool (the request never left): even when
        # the deadline ended it, it says nothing about the host.
        if isinstance(error, _FAILURES) and not isinstance(exc, httpx.PoolTimeout):
            permit.failure(error)
            hp.failed_at = self._clock.monotonic()
        else:
            permit.release()
        call.last = None  # the last outcome is this error, not an older response
        planned = None
        if isinstance(error, _RETRYABLE):
            if call.retries:
                planned = self._plan(call, None, error)
            else:
                mark_retries_exhausted()
        return planned, error

    def _after_response(self, call: _Call, response: httpx.Response,
                        permit: BreakerPermit) -> float | None:
        """Settle an attempt that answered: the wait before retrying, or ``None`` to return it.

        A response returned (``None``) below 500 leaves ``permit`` to the shell, to
        settle when its body is complete: a body cut mid-response is a failure.
        """
        status = response.status_code
        hp = call.hp
        if status >= 500:
            permit.failure()
            hp.failed_at = self._clock.monotonic()
        if status not in hp.config.retry_statuses:
            return None
        if status < 500:
            permit.success()
        if not call.retries or NO_RETRY_HEADER in response.headers:
            # Not ours to retry (not idempotent), or the hop below already retried
            # and gave up: tell our own caller not to retry either.
            mark_retries_exhausted()
            return None
        hint = parse_retry_after(response.headers.get("retry-after"), self._clock.time())
        return self._plan(call, hint, None)

    def _expired(self, hp: _HostPolicies, deadline: Deadline) -> DeadlineExceededError:
        if self._listeners or global_listeners():
            dispatch(self._listeners, DeadlineExceeded(
                policy="client", name=hp.name, timeout=max(0.0, deadline.remaining()),
            ))
        return TransportDeadlineExceededError(f"no time left for a request to {hp.name}")

    @staticmethod
    def _plan(call: _Call, hint: float | None, error: BaseException | None) -> float | None:
        """The wait before the next attempt, or ``None`` to stop (the planner sends the event).

        A ``Retry-After`` beyond ``max_retry_after`` (``999999999``, a date in 2999)
        stops at once: the host said "not soon", and waiting the cap would stall the
        caller for nothing.
        """
        decision = call.hp.retry.plan(call.attempt, previous=call.delay, error=error,
                                      retry_after=hint, deadline=call.deadline)
        if decision.reason is not None:
            # Whatever we answer our own caller now, it must not be retried again.
            mark_retries_exhausted()
            return None
        return decision.delay

    # -- the steps of an attempt, shared by both shells --------------------------------

    def _failed(self, call: _Call, exc: Exception, permit: BreakerPermit,
                slot: BulkheadPermit | None) -> float:
        """Settle an attempt that raised; the wait before the next one, or raise."""
        if slot is not None:
            slot.release()
        planned, error = self._after_error(call, exc, permit)
        if planned is None:
            if error is exc:
                raise exc
            raise error from exc
        return planned

    @staticmethod
    def _ended(call: _Call) -> None:
        """The request is over without an answer whose body is still open."""
        next(call.hp.ends)

    @staticmethod
    def _abandoned(permit: BreakerPermit, slot: BulkheadPermit | None) -> None:
        """Give back what a cancelled (or interrupted) attempt held.

        Cut by its fournines deadline (an enclosing ``Timeout`` ran out), the attempt
        failed: a hung host must open its breaker. Cancelled from elsewhere (a
        caller that went away), it says nothing about the host.
        """
        if slot is not None:
            slot.release()
        permit.cancelled()

    def _answered(self, call: _Call, response: httpx.Response, permit: BreakerPermit,
                  slot: BulkheadPermit | None) -> float | None:
        """Settle an attempt that answered: ``None`` to return it, else the wait to retry.

        On a retry the shell reads and closes ``response`` (its connection goes back).
        """
        planned = self._after_response(call, response, permit)
        if planned is None:
            # A success is settled by the body: it may yet be cut mid-response.
            # Not a half-open probe's: a long body must not hold the only probe.
            if permit.probe:
                permit.success()
            _hold(response, slot, permit, call.hp)  # the body ends the request
            return None
        _hold(response, slot, None)
        return planned

    # -- fallbacks -----------------------------------------------------------------------

    def _instead_of_error(self, pattern: str, hook: FallbackHook | StaleCache[Any],
                          request: httpx.Request, exc: Exception) -> httpx.Response:
        """What answers a call that raised ``exc``: the hook's answer, a stale one, or raise."""
        if not isinstance(hook, StaleCache):
            return self._fallback(pattern, hook, request, exc)
        stale = self._stale(hook, request, exc)
        if stale is None:
            raise exc
        return stale

    @staticmethod
    def _keeps(hook: FallbackHook | StaleCache[Any], response: httpx.Response) -> bool:
        """Whether the shell reads ``response`` to keep it for a stale-cache route."""
        return isinstance(hook, StaleCache) and 200 <= response.status_code < 300

    def _instead_of_5xx(self, pattern: str, hook: FallbackHook | StaleCache[Any],
                        request: httpx.Request, response: httpx.Response) -> httpx.Response:
        """What answers ``response``: itself below 500, else a fallback's answer if any.

        The shell closes ``response`` when something else answers instead.
        """
        if response.status_code < 500:
            return response
        error = self._status_error(request, response)
        if isinstance(hook, StaleCache):
            stale = self._stale(hook, request, error)
            return response if stale is None else stale
        return self._fallback(pattern, hook, request, error)

    def _hook(self, request: httpx.Request) -> tuple[str, FallbackHook | StaleCache[Any]] | None:
        return self._fallbacks.match(request.method, request.url.path)

    @staticmethod
    def _status_error(request: httpx.Request, response: httpx.Response) -> httpx.HTTPStatusError:
        return httpx.HTTPStatusError(
            f"{response.status_code} from {request.url}", request=request, response=response
        )

    def _fallback(self, pattern: str, hook: FallbackHook, request: httpx.Request,
                  exc: BaseException) -> httpx.Response:
        response = hook(request, exc)
        if self._listeners or global_listeners():
            # Named by the route pattern: one name for every order id of a template.
            dispatch(self._listeners, FallbackUsed(
                policy="fallback", name=f"{request.method} {pattern}", error=exc,
            ))
        return response

    def _remember(self, cache: StaleCache[Any], request: httpx.Request,
                  response: httpx.Response, body: bytes) -> httpx.Response:
        """Keep a good answer of a stale-cache route; return it, body already read."""
        self._keep(cache, request, response, body, response.headers.raw)
        return httpx.Response(response.status_code, headers=response.headers.raw,
                              stream=httpx.ByteStream(body), extensions=response.extensions)

    def _remember_read(self, cache: StaleCache[Any], request: httpx.Request,
                       response: httpx.Response) -> httpx.Response:
        """Keep an answer the transport below had already read; return it as it is.

        ``httpx.MockTransport`` and in-process transports build their answers with
        the body, which reads (and decodes) it at once: its raw bytes are gone.
        """
        try:
            body = response.content
        except httpx.ResponseNotRead:
            return response  # streamed by someone else: nothing left to keep
        headers = response.headers.raw
        if "content-encoding" in response.headers:
            # The body is decoded: the kept copy must not claim an encoding.
            headers = [(k, v) for k, v in headers
                       if k.lower() not in (b"content-encoding", b"content-length")]
            headers.append((b"content-length", str(len(body)).encode()))
        self._keep(cache, request, response, body, headers)
        return response

    def _keep(self, cache: StaleCache[Any], request: httpx.Request, response: httpx.Response,
              body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        # A 206 holds part of the resource: never serve it as the whole answer.
        status = response.status_code
        if 200 <= status < 300 and status != 206 and len(body) <= self._max_stale_bytes:
            snapshot = _Snapshot(response, headers, body, self._clock.monotonic())
            cache.store(_stale_key(request), snapshot)

    def _stale(self, cache: StaleCache[Any], request: httpx.Request,
               exc: Exception) -> httpx.Response | None:
        """The cached answer for ``request`` if fresh enough (the cache sends FallbackUsed)."""
        try:
            snapshot: _Snapshot = cache.serve_stale(_stale_key(request), exc)
        except Exception:
            return None
        age = max(0.0, self._clock.monotonic() - snapshot.stored_at)
        if self._tracer is not None:
            self._tracer.record_event(FallbackUsed(
                policy="fallback", name=cache.name, error=exc, stale_age=age))
        headers = [(k, v) for k, v in snapshot.headers
                   if k.lower() not in (b"age", STALE_HEADER.encode())]
        headers += [(STALE_HEADER.encode(), b"stale"), (b"age", str(int(age)).encode())]
        return httpx.Response(
            snapshot.status, headers=headers, stream=httpx.ByteStream(snapshot.body),
            extensions={**snapshot.extensions, STALE_AGE_EXTENSION: age},
        )

    # -- observation -----------------------------------------------------------------

    def _observing(self) -> bool:
        return self._tracer is not None or bool(self._listeners) or bool(global_listeners())

    def _observe_start(self, request: httpx.Request) -> _Observation:
        # The label of the request's policies: bounded, "_other" for the overflow.
        hp = self._policies(request)
        host = hp.label
        announced = bool(self._listeners or global_listeners())
        if announced:
            dispatch(self._listeners, ClientRequestStarted(
                policy="client", name=host, method=_method_label(request.method)))
        span = token = None
        tracer = self._tracer
        if tracer is not None:
            # Tracing never fails a request, nor leaves it counted in flight for ever.
            try:
                span, token = tracer.start(request)
            except Exception:
                tracer.failed("start")
        return _Observation(hp, self._clock.monotonic(), span, token, announced)

    def _observe_end(self, obs: _Observation, request: httpx.Request,
                     response: httpx.Response | None, error: BaseException | None) -> None:
        tracer = self._tracer
        if tracer is not None and obs.span is not None:
            try:
                tracer.end(obs.span, obs.token, response, error)
            except Exception:
                tracer.failed("end")
        if obs.announced:
            dispatch(self._listeners, ClientRequestFinished(
                policy="client", name=obs.host, method=_method_label(request.method),
                status_code=None if response is None else response.status_code,
                duration=max(0.0, self._clock.monotonic() - obs.start),
                error_type=None if error is None else type(error).__qualname__,
            ))


class ReleasingStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that gives the bulkhead slot back when it is closed (sync or async).

    With ``outcome``, the breaker permit of the attempt is settled by the body: a
    body cut by the network (the connection closed or reset mid-response) is a
    failure although its headers were fine; a complete or closed body a success.
    """

    __slots__ = ("_hp", "_outcome", "_permit", "_stream")

    def __init__(self, stream: Any, permit: BulkheadPermit | None,
                 outcome: BreakerPermit | None = None, hp: _HostPolicies | None = None) -> None:
        self._stream = stream
        self._permit = permit
        self._outcome = outcome
        # With ``hp``, closing the body ends the request (its host may be evicted after).
        self._hp = hp

    def cut(self, exc: BaseException) -> None:
        """The body was cut by the network: the attempt failed (an adapter's reader says so)."""
        if self._outcome is not None:
            self._outcome.failure(exc)

    def _closed(self) -> None:
        if self._outcome is not None:
            self._outcome.success()  # ignored when the body already failed
        if self._permit is not None:
            self._permit.release()
        hp = self._hp
        if hp is not None:
            self._hp = None  # closed twice, counted once
            next(hp.ends)

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except _FAILURES as exc:
            self.cut(exc)
            raise

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except _FAILURES as exc:
            self.cut(exc)
            raise
        except asyncio.CancelledError:
            # A body that hangs until its deadline cuts it is a failure, like a hung
            # request; a caller that went away gives the permit back without one.
            if self._outcome is not None:
                self._outcome.cancelled()
            raise

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._closed()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._closed()


class ResumedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body of which ``head`` was read already: the rest still comes from ``response``."""

    __slots__ = ("_head", "_response", "_rest")

    def __init__(self, head: list[bytes], rest: Any, response: httpx.Response) -> None:
        self._head = head
        self._rest = rest
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        yield from self._head
        yield from self._rest

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._head:
            yield chunk
        async for chunk in self._rest:
            yield chunk

    def close(self) -> None:
        self._response.close()

    async def aclose(self) -> None:
        await self._response.aclose()


def resumed(response: httpx.Response, head: list[bytes], rest: Any) -> httpx.Response:
    """A response like ``response`` (whose body was started) with ``head`` + ``rest`` as body."""
    return httpx.Response(response.status_code, headers=response.headers.raw,
                          stream=ResumedStream(head, rest, response),
                          extensions=response.extensions)


def _hold(response: httpx.Response, slot: BulkheadPermit | None,
          outcome: BreakerPermit | None, hp: _HostPolicies | None = None) -> None:
    """Keep the bulkhead slot (and leave ``outcome`` unsettled) until the body is closed.

    With ``hp``, the request to that host ends when the body is closed too.
    """
    if response.is_closed:
        # A response built with its content (a mock, a cache) was read and closed
        # at construction: nobody will close its stream again.
        if outcome is not None:
            outcome.success()
        if slot is not None:
            slot.release()
        if hp is not None:
            next(hp.ends)
    elif slot is not None or outcome is not None or hp is not None:
        response.stream = ReleasingStream(response.stream, slot, outcome, hp)


# Headers that say who is asking: a cached answer is only ever served to the same ones.
_CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie")


def _stale_key(request: httpx.Request) -> str:
    """The stale-cache key of ``request``: its URL and, hashed, the credentials it carried.

    Keyed on the URL alone, one user's last good answer (their payment status, their
    profile) would be served to another user whose call failed.
    """
    credentials = [f"{name}:{value}" for name in _CREDENTIAL_HEADERS
                   for value in request.headers.get_list(name)]
    if not credentials:
        return str(request.url)
    digest = hashlib.sha256("\n".join(credentials).encode()).hexdigest()
    return f"{request.url} as {digest}"
