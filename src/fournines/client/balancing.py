"""Client-side load balancing: power of two choices over latency * load, with outlier ejection.

One service, several endpoints (``http://10.0.0.5:8000``, ...). For every
attempt :class:`P2CBalancer` draws two distinct healthy endpoints at random and
sends the attempt to the one with the lower score::

    score = latency EWMA * (in-flight + 1) / health

(go-zero's and Kratos's p2c use the same load; the health divisor is Kratos's
success-rate factor). Two random choices instead of
"the best of all" keep many clients from stampeding onto the same endpoint,
and the in-flight factor reacts at once, before any latency sample arrives.

Latency is a time-decayed EWMA: a sample ``dt`` seconds after the previous one
weighs ``1 - exp(-dt / 10 s)`` (go-zero's tau), but at least 5 %, so a burst of
samples within a millisecond still moves the average. Only successful
attempts are sampled: a refused connection answers in a millisecond and must
not make a dead endpoint look fast. Failures lower ``health`` instead: it starts
at 1, each failure multiplies it by 0.3 (down to 0.001) and each success moves
it halfway back to 1 (all the way for the probe that ends an ejection), so a
dead endpoint scores 11 times worse after two failures and 37 times after
three, and loses its traffic well before outlier ejection takes it out. An
endpoint without samples yet scores as well as the fastest sampled one
(warm-up: new endpoints get tried at once, and their in-flight count keeps
them from being flooded before the first answer). An endpoint that lost every
draw for a second gets the next one it takes part in, as long as nothing is in
flight to it, so a once-slow (or once-failing) endpoint can show that it recovered.

:class:`OutlierEjection` takes an endpoint out after consecutive failures (5xx
or transport errors) for ``base_ejection * 2^(n-1)`` seconds at its ``n``-th
ejection in a row, capped at ``max_ejection``. When the period ends the
endpoint is half-open: one attempt at a time; a success brings it fully back
(and resets the growth), a failure ejects it again for twice as long. Never
more than ``max_ejected_ratio`` of the endpoints are out at once, and never
all of them: ejection protects against a bad endpoint, not against the whole
service being down (the breaker above handles that).

The core (:meth:`P2CBalancer.pick`, :meth:`P2CBalancer.release`) is sans-I/O
and takes time from its clock; :class:`AsyncBalancingTransport` is the httpx
shell, meant to sit under the resilient transport so that a retry can go to
another endpoint::

    transport = AsyncResilientTransport(
        transport=AsyncBalancingTransport(["http://127.0.0.1:8001", "http://127.0.0.1:8002"]))
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx

from .._clock import Clock, system_clock
from .._deadline import cancelled_by_deadline
from .._errors import ConfigurationError, NoEndpointsError, RejectedError, check_number
from .._events import EndpointEjected, Listener, dispatch, has_listeners
from ._errors import at_the_edge

__all__ = [
    "AsyncBalancingTransport",
    "BalancingTransport",
    "Endpoint",
    "EndpointEjected",
    "EndpointSource",
    "NoEndpointsError",
    "OutlierEjection",
    "P2CBalancer",
    "StaticEndpoints",
]

_DECAY_TAU = 10.0
"""Seconds for the latency EWMA to forget ~63 % of its past (go-zero's tau)."""

_MIN_WEIGHT = 0.05
"""Least weight of a new latency sample, so samples close together still count."""

_FORCE_PICK_AFTER = 1.0
"""Seconds without a pick after which an idle endpoint wins its next draw."""

_HEALTH_PENALTY = 0.3
"""Factor applied to an endpoint's health by each failure."""

_HEALTH_RECOVERY = 0.5
"""Share of the way back to full health that each success covers."""

_MIN_HEALTH = 0.001
"""Floor of an endpoint's health, so its score stays finite and it can come back."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierEjection:
    """When to take a failing endpoint out of rotation, and for how long.

    ``consecutive_failures`` failures in a row eject an endpoint for
    ``base_ejection * 2^(n-1)`` seconds (``n``: ejections in a row), at most
    ``max_ejection``; at most ``max_ejected_ratio`` of the endpoints (and never
    all) are ejected at once.
    """

    consecutive_failures: int = 5
    base_ejection: float = 1.0
    max_ejection: float = 30.0
    max_ejected_ratio: float = 0.5

    def __post_init__(self) -> None:
        owner = "OutlierEjection"
        check_number(owner, "consecutive_failures", self.consecutive_failures,
                     minimum=1, integer=True)
        check_number(owner, "base_ejection", self.base_ejection, minimum=0,
                     exclusive_minimum=True)
        check_number(owner, "max_ejection", self.max_ejection, minimum=0,
                     exclusive_minimum=True)
        check_number(owner, "max_ejected_ratio", self.max_ejected_ratio, minimum=0, maximum=1)
        if self.max_ejection < self.base_ejection:
            raise ConfigurationError(
                f"{owner}.max_ejection must be >= base_ejection ({self.base_ejection!r}), "
                f"got {self.max_ejection!r}"
            )

    def duration(self, times: int) -> float:
        """Seconds of the ``times``-th ejection in a row (``times`` >= 1)."""
        # min() on the exponent first: 2.0 ** 5000 would overflow.
        return min(self.base_ejection * 2.0 ** min(times - 1, 64), self.max_ejection)


@runtime_checkable
class EndpointSource(Protocol):
    """Where the endpoints of a service come from (a static list now, a registry later).

    ``endpoints()`` is called on every pick, so it must be cheap: return the same
    sequence object while nothing changed (the balancer then skips all work).
    """

    def endpoints(self) -> Sequence[str]:
        """The base URLs (``scheme://host:port``) of the service's endpoints now."""


class StaticEndpoints:
    """A fixed list of endpoints."""

    __slots__ = ("_urls",)

    def __init__(self, urls: Sequence[str]) -> None:
        if isinstance(urls, str):
            raise ConfigurationError(
                f"StaticEndpoints.urls must be a sequence of URLs, not one string: {urls!r}"
            )
        self._urls = tuple(urls)

    def endpoints(self) -> Sequence[str]:
        """The endpoints given at construction (always the same tuple)."""
        return self._urls

    def __repr__(self) -> str:
        return f"StaticEndpoints({list(self._urls)!r})"


class Endpoint:
    """One endpoint of the service and what the balancer knows about it.

    All times are on the balancer's clock. ``latency`` is ``None`` until the
    first successful attempt.
    """

    __slots__ = (
        "consecutive_failures",
        "ejected_until",
        "failures",
        "health",
        "host",
        "in_flight",
        "last_pick",
        "last_sample",
        "latency",
        "port",
        "scheme",
        "successes",
        "times_ejected",
        "url",
    )

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            port = parts.port
        except ValueError:
            port = -1
        if scheme not in _DEFAULT_PORTS or not parts.hostname or port == -1 or (
            parts.path not in ("", "/") or parts.query or parts.fragment
        ):
            raise ConfigurationError(
                f"P2CBalancer.source must give base URLs like 'http://host:port', got {url!r}"
            )
        self.scheme = scheme
        self.host = parts.hostname
        self.port = port if port is not None else _DEFAULT_PORTS[scheme]
        self.url = f"{scheme}://{parts.netloc}"
        self.latency: float | None = None
        self.last_sample = 0.0
        self.last_pick = 0.0
        self.in_flight = 0
        self.consecutive_failures = 0
        self.times_ejected = 0
        self.ejected_until = 0.0
        self.successes = 0
        self.failures = 0
        self.health = 1.0

    @property
    def netloc(self) -> str:
        """``host`` or ``host:port`` as it belongs in a ``Host`` header."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def is_ejected(self, now: float) -> bool:
        """Whether the endpoint is out of rotation at ``now``."""
        return now < self.ejected_until

    def is_half_open(self, now: float) -> bool:
        """Whether the endpoint is back from an ejection but not yet proven healthy."""
        return self.times_ejected > 0 and now >= self.ejected_until

    def __repr__(self) -> str:
        latency = "-" if self.latency is None else f"{self.latency * 1000:.1f}ms"
        return (f"Endpoint({self.url!r}, latency={latency}, in_flight={self.in_flight}, "
                f"failures_in_a_row={self.consecutive_failures})")


class P2CBalancer:
    """Power-of-two-choices balancer over ``source``'s endpoints, with outlier ejection.

    Two steps per attempt: ``endpoint = pick()``, then ``release(endpoint,
    latency, failed)`` with the attempt's outcome (or ``cancel(endpoint)`` when
    it ended without one). Endpoints that stay when the source changes keep
    their statistics. Safe to share between threads and tasks.
    """

    def __init__(
        self,
        source: EndpointSource | Sequence[str],
        *,
        clock: Clock = system_clock,
        rng: random.Random | None = None,
        ejection: OutlierEjection | None = None,
        name: str = "p2c",
        listeners: Sequence[Listener] = (),
    ) -> None:
        if isinstance(source, str):
            raise ConfigurationError(
                f"P2CBalancer.source must be a sequence of URLs or an EndpointSource, "
                f"not one string: {source!r}"
            )
        self.source: EndpointSource = (
            source if isinstance(source, EndpointSource) else StaticEndpoints(source)
        )
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.ejection = ejection if ejection is not None else OutlierEjection()
        self.name = name
        self.listeners = tuple(listeners)
        self._lock = threading.Lock()
        self._seen: Sequence[str] | None = None
        self._seen_tuple: tuple[str, ...] | None = None
        self._by_url: dict[str, Endpoint] = {}
        self._list: list[Endpoint] = []
        self._refresh()

    @property
    def endpoints(self) -> list[Endpoint]:
        """The current endpoints (a copy of the list; the objects are live)."""
        with self._lock:
            self._refresh()
            return list(self._list)

    def _refresh(self) -> None:
        """Follow the source; endpoints that stay keep their objects and stats."""
        urls = self.source.endpoints()
        if urls is self._seen:
            return
        as_tuple = tuple(urls)
        if as_tuple == self._seen_tuple:
            self._seen = urls
            return
        fresh = [Endpoint(url) for url in as_tuple]
        by_url: dict[str, Endpoint] = {}
        for endpoint in fresh:
            by_url.setdefault(endpoint.url, self._by_url.get(endpoint.url, endpoint))
        self._by_url = by_url
        self._list = list(by_url.values())
        self._seen = urls
        self._seen_tuple = as_tuple

    def pick(self) -> Endpoint:
        """Choose the endpoint for the next attempt and count it in flight."""
        with self._lock:
            self._refresh()
            endpoints = self._list
            if not endpoints:
                raise NoEndpointsError(self.name)
            now = self.clock.monotonic()
            # Half-open endpoints take one attempt at a time, like a breaker's probe.
            healthy = [e for e in endpoints
                       if now >= e.ejected_until and not (e.times_ejected and e.in_flight)]
            if not healthy:
                healthy = [e for e in endpoints if now >= e.ejected_until] or endpoints
            if len(healthy) == 1:
                chosen = healthy[0]
            else:
                count = len(healthy)
                i = self.rng.randrange(count)
                j = self.rng.randrange(count - 1)
                first, second = healthy[i], healthy[j + 1 if j >= i else j]
                chosen = self._better(first, second, now, healthy)
            chosen.in_flight += 1
            chosen.last_pick = now
            return chosen

    def _better(self, a: Endpoint, b: Endpoint, now: float, peers: list[Endpoint]) -> Endpoint:
        """The lower-scored of two candidates, unless the other one went stale."""
        sampled = [e.latency for e in peers if e.latency is not None]
        # Unsampled endpoints score like the fastest one: optimistic, so they get tried.
        neutral = min(sampled) if sampled else 1.0
        score_a = (neutral if a.latency is None else a.latency) * (a.in_flight + 1) / a.health
        score_b = (neutral if b.latency is None else b.latency) * (b.in_flight + 1) / b.health
        best, other = (a, b) if score_a <= score_b else (b, a)
        if other.in_flight == 0 and now - other.last_pick > _FORCE_PICK_AFTER:
            return other
        return best

    def release(self, endpoint: Endpoint, latency: float, failed: bool) -> None:
        """Record the outcome of an attempt sent to ``endpoint`` by :meth:`pick`.

        ``failed`` is true for 5xx answers and transport errors; ``latency`` is
        the attempt's duration in seconds (sampled only when it succeeded).
        """
        event: EndpointEjected | None = None
        with self._lock:
            now = self.clock.monotonic()
            endpoint.in_flight = max(endpoint.in_flight - 1, 0)
            if not failed:
                endpoint.successes += 1
                endpoint.health += (1.0 - endpoint.health) * _HEALTH_RECOVERY
                self._sample(endpoint, max(latency, 0.0), now)
                if not endpoint.is_ejected(now):
                    if endpoint.times_ejected:
                        endpoint.health = 1.0  # a half-open probe succeeded: fully back
                    endpoint.consecutive_failures = 0
                    endpoint.times_ejected = 0
                return
            endpoint.failures += 1
            endpoint.health = max(endpoint.health * _HEALTH_PENALTY, _MIN_HEALTH)
            if endpoint.is_ejected(now):
                # A straggler started before the ejection: already accounted for.
                return
            endpoint.consecutive_failures += 1
            if (endpoint.times_ejected > 0
                    or endpoint.consecutive_failures >= self.ejection.consecutive_failures):
                event = self._eject(endpoint, now)
        if event is not None:
            dispatch(self.listeners, event)

    def cancel(self, endpoint: Endpoint) -> None:
        """Give back an attempt that ended without an outcome (e.g. it was cancelled)."""
        with self._lock:
            endpoint.in_flight = max(endpoint.in_flight - 1, 0)

    def _sample(self, endpoint: Endpoint, latency: float, now: float) -> None:
        if endpoint.latency is None:
            endpoint.latency = latency
        else:
            weight = max(1.0 - math.exp(-(now - endpoint.last_sample) / _DECAY_TAU), _MIN_WEIGHT)
            endpoint.latency += (latency - endpoint.latency) * weight
        endpoint.last_sample = now

    def _eject(self, endpoint: Endpoint, now: float) -> EndpointEjected | None:
        """Eject ``endpoint`` if the ratio allows it (called with the lock held)."""
        total = len(self._list)
        allowed = min(int(self.ejection.max_ejected_ratio * total), total - 1)
        if endpoint.url not in self._by_url:
            return None
        ejected = sum(1 for e in self._list if e.is_ejected(now))
        if ejected >= allowed:
            return None
        endpoint.times_ejected += 1
        duration = self.ejection.duration(endpoint.times_ejected)
        endpoint.ejected_until = now + duration
        endpoint.consecutive_failures = 0
        if not has_listeners(self.listeners):
            return None
        return EndpointEjected(policy="balancer", name=self.name, endpoint=endpoint.url,
                               duration=duration, times=endpoint.times_ejected)

    def __repr__(self) -> str:
        return f"P2CBalancer({self.source!r}, name={self.name!r})"


def _attempt_request(request: httpx.Request, endpoint: Endpoint) -> httpx.Request:
    """A copy of ``request`` aimed at ``endpoint`` (the caller's request stays as it was)."""
    headers = request.headers.copy()
    headers["Host"] = endpoint.netloc
    return httpx.Request(
        request.method,
        request.url.copy_with(scheme=endpoint.scheme, host=endpoint.host, port=endpoint.port),
        headers=headers,
        stream=request.stream,
        extensions=request.extensions,
    )


class _Balancing:
    """What both balancing shells share: the pick and the outcome, reported to the balancer."""

    balancer: P2CBalancer

    def _pick(self, request: httpx.Request) -> tuple[Endpoint, httpx.Request, float]:
        """The endpoint of this attempt, the request aimed at it, and its start time."""
        balancer = self.balancer
        try:
            endpoint = balancer.pick()
        except NoEndpointsError as exc:
            raise at_the_edge(exc, request)  # noqa: B904 - the cause is set on it
        return endpoint, _attempt_request(request, endpoint), balancer.clock.monotonic()

    def _failed(self, endpoint: Endpoint, start: float, exc: BaseException) -> None:
        balancer = self.balancer
        # A refusal below us (a transport's policy, a fault), a wait for our own
        # connection pool or a cancellation from elsewhere says nothing of the endpoint;
        # any other transport error is its failure, and so is an attempt cut by its
        # fournines deadline (a hung endpoint must lose its traffic).
        if isinstance(exc, httpx.TransportError):
            failed = not isinstance(exc, RejectedError | httpx.PoolTimeout)
        else:
            failed = isinstance(exc, asyncio.CancelledError) and cancelled_by_deadline()
        if failed:
            balancer.release(endpoint, balancer.clock.monotonic() - start, failed=True)
        else:
            balancer.cancel(endpoint)

    def _answered(self, endpoint: Endpoint, start: float, response: httpx.Response) -> None:
        balancer = self.balancer
        balancer.release(endpoint, balancer.clock.monotonic() - start,
                         failed=response.status_code >= 500)


class BalancingTransport(_Balancing, httpx.BaseTransport):
    """The sync twin of :class:`AsyncBalancingTransport` (same balancer, same rules)."""

    def __init__(
        self,
        endpoints: P2CBalancer | EndpointSource | Sequence[str],
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.balancer = endpoints if isinstance(endpoints, P2CBalancer) else P2CBalancer(endpoints)
        self._transport = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to the picked endpoint and report the outcome to the balancer."""
        endpoint, attempt, start = self._pick(request)
        try:
            response = self._transport.handle_request(attempt)
        except BaseException as exc:
            self._failed(endpoint, start, exc)
            raise
        self._answered(endpoint, start, response)
        return response

    def close(self) -> None:
        """Close the wrapped transport."""
        self._transport.close()


class AsyncBalancingTransport(_Balancing, httpx.AsyncBaseTransport):
    """An httpx transport that sends each request to an endpoint picked by a balancer.

    The request keeps its method, path, query, headers and body; its scheme,
    host and port become the picked endpoint's, and ``Host`` names that
    endpoint. The attempt is timed until the response headers arrive; 5xx
    answers, ``httpx.TransportError`` and attempts cut by their fournines deadline
    (an enclosing ``Timeout`` ran out) count as failures, anything else below 500
    as success, and other exceptions (a cancellation from elsewhere, a refusal
    from a policy below, a ``PoolTimeout`` waiting for our own connection pool)
    release the endpoint without an outcome.
    An empty source raises :class:`~fournines.client.TransportNoEndpointsError`
    (a :class:`~fournines.NoEndpointsError` and an ``httpx.TransportError``).
    """

    def __init__(
        self,
        endpoints: P2CBalancer | EndpointSource | Sequence[str],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.balancer = endpoints if isinstance(endpoints, P2CBalancer) else P2CBalancer(endpoints)
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to the picked endpoint and report the outcome to the balancer."""
        endpoint, attempt, start = self._pick(request)
        try:
            response = await self._transport.handle_async_request(attempt)
        except BaseException as exc:
            self._failed(endpoint, start, exc)
            raise
        self._answered(endpoint, start, response)
        return response

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()
