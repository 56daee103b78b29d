"""Adaptive load shedding for ASGI apps: refuse early and cheaply what cannot be served well.

:class:`LoadShedder` counts the HTTP requests in flight and admits a new one
only while that count is below a concurrency limit learnt from the service's
own latency (by default :class:`~fournines.policies.adaptive.Gradient2Limit`).
What it refuses gets ``503 Service Unavailable`` with ``Retry-After`` at once:
no call into the app, no waiting on anything but sending the answer. The body is
an RFC 9457 problem (``application/problem+json``), as for every early rejection
of fournines' middleware. The decision itself is sans-I/O:
:meth:`LoadShedder.try_acquire` admits or raises :class:`~fournines.LoadShedError`,
:meth:`LoadShedder.release` ends the admitted work. The
answer is a normal complete response (with ``content-length``), so the
client's keep-alive connection stays open for its retry.

The admission rule, for a request that arrives with ``n`` requests in flight
and the limit at ``L``:

- a non-critical request is admitted while ``n < L``, and shed
  (``reason="overload"``) otherwise; while the event loop lags and
  ``n >= lag_floor`` it is shed whatever the limit says (``reason="loop_lag"``);
- a critical request is admitted while ``n < ceil(L * critical_headroom)``
  (1.5 by default: critical traffic keeps half the limit again in reserve);
  while the event loop lags and ``n >= lag_floor``, only while ``n < L``.

``n`` counts the requests the service is working on: a request whose app is
waiting in ``receive()`` for body bytes that the client has not sent yet is not
counted while it waits (see "Slow clients" below).

Requests to ``never_shed_paths`` (health probes and metrics, by default) are
never shed and not counted: a probe that fails under load would make the
orchestrator restart a busy but healthy process, and metrics are how anyone
finds out about the overload.

A request is critical when its ``critical_header`` (``x-priority`` by default)
has one of ``critical_values`` (``critical``), when its path starts with one
of ``critical_paths``, or when ``priority(scope)`` returns true. Clients can set
headers: let a trusted gateway set or strip the priority header.

Event-loop lag is the CPU-saturation signal of an asyncio process: a
background task sleeps ``lag_interval`` seconds and measures how late it
wakes. While the last measurement exceeds ``max_loop_lag``, non-critical
requests are shed, whatever the limit says: latency is already rising for
everyone, and new work would only add to it. The task starts with the first
request, on the server's event loop, and costs nothing per request.

Lag alone never sheds while fewer than ``lag_floor`` requests (4 by default)
are in flight: then the lag comes from outside the service (other processes on
a busy host, a stop of the whole machine), and refusing the few requests there
are would relieve nothing. Each lag measurement above ``max_loop_lag`` taken
while in-flight work is below the floor is counted in :attr:`lag_unrelieved`
and sent as a :class:`~fournines.LoopLagUnrelieved` event (at most one per
``lag_interval``, from the sampler: nothing on the request path), which the
Prometheus listener counts as ``fournines_loop_lag_unrelieved_total``.

Slow clients: time spent waiting on the client is not service time. While the
app waits in ``receive()`` for request body bytes, the request leaves
:attr:`in_flight` (it is counted in :attr:`waiting_for_body`), and the waiting
is taken out of the duration the limit algorithm learns from. So connections
that trickle their bodies cannot fill the concurrency limit and turn every
other request away. Each body also has a read timeout: the app may wait at most
``body_timeout`` seconds (10 by default) in all for the body, plus one second
per ``min_body_rate`` bytes received (64 KiB/s by default, so a large upload at
a fair rate is never cut). When that runs out the client gets ``408 Request
Timeout`` (an ``application/problem+json`` body, ``Connection: close``) unless
the app has begun its response, the app's ``receive()`` raises
:class:`RequestBodyTimeout` (any later response of the app is dropped: the 408
is the answer), and the timeout is counted in :attr:`body_timeouts` and sent as
a ``CallRejected`` event with ``reason="body_timeout"``
(``fournines_rejections_total{policy="load_shedder",reason="body_timeout"}``).
Only requests that announce a body (``Content-Length`` other than 0, or
``Transfer-Encoding``) are watched, and not ``GET`` or ``HEAD`` ones (whose
bodies apps do not read); the others cost nothing more. The timeout
needs asyncio (under another event loop the waiting is still not counted, but
not timed). Headers are read by the server before the app is called, so they
never count here; see :func:`fournines.asgi.server.serve` for their limits.

Every completed request's duration feeds the limit algorithm (``dropped`` is
true when the app raised ``TimeoutError``, which includes
:class:`~fournines.DeadlineExceededError`; other exceptions and cancelled
requests teach it nothing).

Each shed request sends a :class:`~fournines.CallRejected` event
(``policy="load_shedder"``, ``reason="overload"`` or ``"loop_lag"``) to the
listeners; counters and the current limit are attributes, for metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
from collections.abc import Callable, Collection, Sequence
from typing import Any

from .._clock import Clock, system_clock
from .._errors import ConfigurationError, LoadShedError, check_number, new_rejection
from .._events import CallRejected, Listener, LoopLagUnrelieved, dispatch, global_listeners
from .._http import SHED_PROBLEM
from ..policies.adaptive import ConcurrencyLimit, Gradient2Limit
from ._loop import current_task, running_loop
from ._types import (
    PROBLEM_CONTENT_TYPE,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    problem,
    respond,
)

__all__ = ["DEFAULT_NEVER_SHED_PATHS", "TICKET", "LoadShedder", "RequestBodyTimeout", "Ticket"]

DEFAULT_NEVER_SHED_PATHS = ("/livez", "/readyz", "/startupz", "/healthz", "/metrics")
"""Paths a :class:`LoadShedder` admits whatever the load: health probes and metrics."""

_BODY = SHED_PROBLEM
_TIMEOUT_BODY = problem(408, "Request Timeout",
                        "the request body did not arrive in time")
_TIMEOUT_HEADERS = ((b"connection", b"close"),)
# Apps do not read GET and HEAD bodies (RFC 9110 gives them no meaning), and a body
# never read is never waited for: those requests skip the header scan, the most
# common ones on the admitted path.
_UNREAD_BODIES = frozenset({"GET", "HEAD"})


TICKET = "fournines.shedder_ticket"
"""The ``scope["extensions"]`` key of a request admitted on arrival (see
:meth:`LoadShedder.arrive`)."""

Ticket = tuple[Any, ...]
"""What :meth:`LoadShedder.arrive` hands the protocol: ``(shedder, permit, arrival)``,
or ``()`` when it does not decide."""

_REPORT_INTERVAL = 0.1
_UNCAPPED = sys.maxsize  # no lag cap: the algorithm's limit alone decides


class RequestBodyTimeout(Exception):
    """Raised by ``receive()`` when the request body did not arrive within its timeout.

    The client has already been answered ``408``; the app should stop working on
    the request (letting it propagate is right: the shedder catches it).
    """


class LoadShedder:
    """ASGI middleware that sheds requests above an adaptive concurrency limit.

    See the module documentation for the admission rule. Parameters:

    - ``limit``: the algorithm (anything with ``limit`` and ``on_sample``,
      see :mod:`fournines.policies.adaptive`); by default a
      ``Gradient2Limit()``. Give each shedder its own.
    - ``max_loop_lag``: seconds of event-loop lag above which the shedder caps
      the requests in flight (``None``: do not measure lag): each measurement
      above it lowers the cap to three quarters of what was in flight, each one
      below raises it by an eighth until the algorithm's limit rules again
      (:attr:`lag_cap`); non-critical requests at the cap are shed, critical ones
      lose their headroom. ``lag_interval``: how often the lag is measured;
      ``lag_floor``: the cap never goes below it (lag with fewer requests in
      flight comes from elsewhere, and is counted as unrelieved).
    - ``body_timeout``: seconds the app may wait for a request body in all
      (``None``: no timeout), plus one second per ``min_body_rate`` bytes received.
    - ``critical_header``, ``critical_values``, ``critical_paths``, ``priority``:
      what makes a request critical; ``critical_headroom`` (>= 1): how far
      above the limit critical requests are still admitted.
    - ``never_shed_paths``: exact paths that are never shed nor counted.
    - ``retry_after``: seconds sent in ``Retry-After`` (rounded up to an integer).
    - ``clock``: measures request durations; ``listeners`` receive the events.

    Counters: :attr:`shed` (all), :attr:`shed_overload`,
    :attr:`shed_loop_lag`, :attr:`admitted`, :attr:`body_timeouts`,
    :attr:`lag_unrelieved`; live values: :attr:`limit`, :attr:`in_flight`,
    :attr:`waiting_for_body`, :attr:`loop_lag`, :attr:`lagging`.
    """

    __slots__ = (
        "_admit",
        "_body_timeout",
        "_critical_admit",
        "_critical_header",
        "_critical_paths",
        "_critical_values",
        "_first_above",
        "_gate",
        "_headers",
        "_lag_cap",
        "_lag_floor",
        "_lag_interval",
        "_listeners",
        "_max_lag",
        "_min_body_rate",
        "_never",
        "_now",
        "_priority",
        "_queue_interval",
        "_queue_target",
        "_reported_at",
        "_responses",
        "_sampler",
        "_sampler_loop",
        "_unreported",
        "admitted",
        "algorithm",
        "app",
        "body_timeouts",
        "critical_headroom",
        "dropping",
        "header_timeouts",
        "in_flight",
        "lag_unrelieved",
        "lagging",
        "loop_lag",
        "name",
        "retry_after",
        "shed_loop_lag",
        "shed_overload",
        "shed_queue_delay",
        "waiting_for_body",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: ConcurrencyLimit | None = None,
        max_loop_lag: float | None = 0.025,
        lag_interval: float = 0.05,
        lag_floor: int = 4,
        queue_target: float | None = 0.005,
        queue_interval: float = 0.1,
        body_timeout: float | None = 10.0,
        min_body_rate: float = 65536.0,
        critical_header: str | None = "x-priority",
        critical_values: Collection[str] = ("critical",),
        critical_paths: Collection[str] = (),
        priority: Callable[[Scope], bool] | None = None,
        critical_headroom: float = 1.5,
        never_shed_paths: Collection[str] = DEFAULT_NEVER_SHED_PATHS,
        retry_after: float = 1.0,
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
        name: str = "load_shedder",
    ) -> None:
        owner = "LoadShedder"
        if limit is None:
            limit = Gradient2Limit()
        elif not isinstance(limit, ConcurrencyLimit):
            raise ConfigurationError(
                f"{owner}.limit must have a 'limit' property and 'on_sample', got {limit!r}"
            )
        check_number(owner, "max_loop_lag", max_loop_lag, minimum=0, exclusive_minimum=True,
                     optional=True)
        check_number(owner, "lag_interval", lag_interval, minimum=0, exclusive_minimum=True)
        check_number(owner, "lag_floor", lag_floor, minimum=0, integer=True)
        check_number(owner, "queue_target", queue_target, minimum=0, exclusive_minimum=True,
                     optional=True)
        check_number(owner, "queue_interval", queue_interval, minimum=0,
                     exclusive_minimum=True)
        if queue_target is not None and queue_target >= queue_interval:
            raise ConfigurationError(
                f"{owner}.queue_target ({queue_target!r}) must be shorter than queue_interval "
                f"({queue_interval!r}): the target is the wait allowed in overload, the "
                "interval the wait allowed otherwise")
        check_number(owner, "body_timeout", body_timeout, minimum=0, exclusive_minimum=True,
                     optional=True)
        check_number(owner, "min_body_rate", min_body_rate, minimum=0, exclusive_minimum=True)
        check_number(owner, "critical_headroom", critical_headroom, minimum=1)
        check_number(owner, "retry_after", retry_after, minimum=0)
        if priority is not None and not callable(priority):
            raise ConfigurationError(f"{owner}.priority must be callable, got {priority!r}")
        for field, paths in (("critical_paths", critical_paths),
                             ("never_shed_paths", never_shed_paths),
                             ("critical_values", critical_values)):
            if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
                raise ConfigurationError(
                    f"{owner}.{field} must be a collection of str, got {paths!r}"
                )
            if field != "critical_values":
                # A path without its leading slash never equals nor prefixes a request's.
                for path in paths:
                    if not path.startswith("/"):
                        raise ConfigurationError(
                            f"{owner}.{field} entries must start with '/', got {path!r}")
        if critical_header is not None and not isinstance(critical_header, str):
            raise ConfigurationError(
                f"{owner}.critical_header must be a str or None, got {critical_header!r}"
            )
        self.app = app
        self.algorithm = limit
        self.name = name
        self.critical_headroom = float(critical_headroom)
        self.retry_after = float(retry_after)
        self._max_lag = max_loop_lag
        self._lag_interval = float(lag_interval)
        self._lag_floor = lag_floor
        self._queue_target = None if queue_target is None else float(queue_target)
        self._queue_interval = float(queue_interval)
        self._first_above = 0.0
        self._unreported: dict[str, int] = {}
        self._reported_at: dict[str, float] = {}
        self._responses: tuple[object, object, bytes] | None = None
        self._body_timeout = None if body_timeout is None else float(body_timeout)
        self._min_body_rate = float(min_body_rate)
        self._critical_header = (
            None if critical_header is None else critical_header.lower().encode("latin-1")
        )
        self._critical_values = frozenset(v.lower().encode("latin-1") for v in critical_values)
        self._critical_paths = tuple(critical_paths)
        self._priority = priority
        self._never = frozenset(never_shed_paths)
        self._headers = ((b"retry-after", str(math.ceil(self.retry_after)).encode()),)
        self._listeners = tuple(listeners)
        self._now = clock.monotonic
        self._sampler: asyncio.Task[None] | None = None
        self._sampler_loop: asyncio.AbstractEventLoop | None = None
        self._admit = 0
        self._critical_admit = 0
        self._lag_cap = _UNCAPPED
        self._gate = 0
        self._limit_changed(limit.limit)
        self.in_flight = 0
        """Requests being served now (never-shed paths and those waiting for their body
        excluded)."""
        self.waiting_for_body = 0
        """Admitted requests whose app waits in ``receive()`` for body bytes now."""
        self.body_timeouts = 0
        """Requests whose body did not arrive in time (answered 408 unless the app had
        begun its response)."""
        self.header_timeouts = 0
        """Connections closed with 408 because a request head did not arrive in time (counted
        by :class:`fournines.asgi.protocol.ShedHttpToolsProtocol`)."""
        self.lag_unrelieved = 0
        """Lag measurements above ``max_loop_lag`` taken below ``lag_floor`` (not shed)."""
        self.admitted = 0
        """Requests admitted so far (never-shed paths excluded)."""
        self.shed_overload = 0
        """Requests shed because the concurrency limit was reached."""
        self.shed_loop_lag = 0
        """Requests shed because the event loop lagged."""
        self.shed_queue_delay = 0
        """Requests shed at their start because they had waited too long to start."""
        self.dropping = False
        """Whether requests have waited longer than ``queue_target`` to start for at least
        ``queue_interval`` (a standing queue: overload)."""
        self.loop_lag = 0.0
        """The last event-loop lag measured, in seconds."""
        self.lagging = False
        """Whether the last lag measured exceeded ``max_loop_lag``."""

    @property
    def limit(self) -> int:
        """The current concurrency limit for non-critical requests."""
        return self._admit

    @property
    def shed(self) -> int:
        """Requests shed so far, for any reason."""
        return self.shed_overload + self.shed_loop_lag + self.shed_queue_delay

    @property
    def lag_cap(self) -> int | None:
        """The in-flight cap that event-loop lag has set (``None``: no cap now)."""
        return None if self._lag_cap == _UNCAPPED else self._lag_cap

    def _limit_changed(self, limit: int) -> None:
        self._admit = limit
        self._critical_admit = max(limit, math.ceil(limit * self.critical_headroom))
        self._gate = min(limit, self._lag_cap)

    @property
    def lag_floor(self) -> int:
        """The in-flight count below which event-loop lag alone never sheds."""
        return self._lag_floor

    @property
    def body_timeout(self) -> float | None:
        """Seconds the app may wait for a request body (plus ``min_body_rate`` credit)."""
        return self._body_timeout

    @property
    def min_body_rate(self) -> float:
        """Bytes per second of body that earn one more second of ``body_timeout``."""
        return self._min_body_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit the request and time it, or answer 503 at once."""
        if scope["type"] != "http" or scope["path"] in self._never:
            await self.app(scope, receive, send)
            return
        now = self._now
        extensions = scope.get("extensions")
        ticket = extensions.get(TICKET) if extensions else None
        if ticket is not None and ticket[0] is self:
            # Admitted by the server's protocol on arrival (fournines.asgi.protocol):
            # the time it took to get here is its queueing delay.
            permit = ticket[1]
            start = ticket[2]
            if self._queue_target is not None and self.late(now() - start, scope):
                self.release(permit, 0.0, dropped=None)
                await respond(send, 503, _BODY, content_type=PROBLEM_CONTENT_TYPE,
                              headers=self._headers)
                return
        else:
            try:
                permit = self.try_acquire(scope)
            except LoadShedError:
                await respond(send, 503, _BODY, content_type=PROBLEM_CONTENT_TYPE,
                              headers=self._headers)
                return
            start = now()
        if self._sampler_loop is not running_loop() and self._max_lag is not None:
            self._start_sampler()
        body = (_Body(self, receive, send)
                if scope.get("method") not in _UNREAD_BODIES and _announces_body(scope) else None)
        if body is not None:
            receive, send = body.receive, body.send
        try:
            await self.app(scope, receive, send)
        except RequestBodyTimeout:
            # Answered 408 already (or the response had begun); not an outcome of the
            # service's capacity.
            self.release(permit, 0.0, dropped=None)
            if body is None or not body.timed_out:
                raise
            return
        except TimeoutError:
            self.release(permit, _service_time(now() - start, body), dropped=True)
            raise
        except BaseException:
            # A failing or cancelled request says nothing about capacity.
            self.release(permit, 0.0, dropped=None)
            raise
        if body is not None and body.timed_out:
            self.release(permit, 0.0, dropped=None)
        else:
            self.release(permit, _service_time(now() - start, body), dropped=False)
        if self._unreported:
            self.report()

    def try_acquire(self, scope: Scope) -> int:
        """Admit the request ``scope`` describes, or raise :class:`~fournines.LoadShedError`.

        The sans-I/O decision (the middleware is its shell; a message consumer can use
        it the same way): it counts the shed (see :meth:`report` for its events)
        before raising. The permit it returns is the number of requests in flight
        with this one, a plain int so that admission allocates nothing; give it back
        to :meth:`release` when the work ends.
        """
        inflight = self.in_flight
        if inflight >= self._gate:
            reason = self._refusal(inflight, self._is_critical(scope))
            if reason is not None:
                self._count_shed(reason)
                # __new__ alone: no Python __init__ on a path that runs thousands of
                # times a second under overload (see fournines._errors).
                raise new_rejection(LoadShedError, self.name, self.retry_after)
        inflight += 1
        self.in_flight = inflight
        self.admitted += 1
        return inflight

    def release(self, permit: int, duration: float, *, dropped: bool | None) -> None:
        """End the work admitted with ``permit`` after ``duration`` seconds.

        ``dropped``: true when it timed out (the limit learns of an overload), false
        when it completed, ``None`` when it failed otherwise or was cancelled (it
        says nothing about capacity: no sample).
        """
        self.in_flight -= 1
        if dropped is not None:
            self._sample(duration, permit, dropped)

    def arrive(self, path: str, headers: Sequence[tuple[bytes, bytes]]) -> Ticket | None:
        """Decide on a request as it arrives, before an ASGI scope exists.

        The hook of a server's protocol (:mod:`fournines.asgi.protocol`): ``path``
        and ``headers`` (lower-case names, as in a scope) are all it looks at.
        Returns ``None`` when the request is shed (counted; answer it with
        :meth:`shed_response`), an empty tuple when it cannot be decided here (a
        never-shed path, or a ``priority`` function that needs the scope: the
        middleware decides as usual), or a ticket: the request is admitted (it is
        in flight from now on), and the ticket goes into the request's scope as
        ``scope["extensions"][TICKET]`` so that the middleware takes it over,
        measures how long the request waited to start and times it from its
        arrival. A ticket must reach the middleware: its permit is released there.
        """
        if self._priority is not None or path in self._never:
            return ()
        inflight = self.in_flight
        if inflight >= self._gate:
            reason = self._refusal(inflight, self._is_critical_head(path, headers))
            if reason is not None:
                self._count_shed(reason)
                return None
        inflight += 1
        self.in_flight = inflight
        self.admitted += 1
        return (self, inflight, self._now())

    def late(self, waited: float, scope: Scope) -> bool:
        """Whether a request that waited ``waited`` seconds to start is shed (and count it).

        Controlled delay on the queueing delay (CoDel, RFC 8289, as Facebook applies
        it to request queues in "Fail at Scale", 2015): while requests keep waiting
        longer than ``queue_target`` for ``queue_interval`` on end (a standing
        queue), a request that waited longer than ``queue_target`` is shed at its
        start; otherwise only one that waited longer than ``queue_interval``.
        Critical requests are held to ``queue_interval`` only. The caller releases
        the permit of a shed request (with no sample).
        """
        target = self._queue_target
        if target is None:
            return False
        if waited <= target:
            self._first_above = 0.0
            self.dropping = False
            return False
        now = self._now()
        first_above = self._first_above
        if first_above == 0.0:
            self._first_above = now + self._queue_interval
        elif now >= first_above:
            self.dropping = True
        allowed = target if self.dropping else self._queue_interval
        if waited > allowed and (waited > self._queue_interval or not self._is_critical(scope)):
            self._count_shed("queue_delay")
            return True
        return False

    def shed_response(self, default_headers: Sequence[tuple[bytes, bytes]] = (),
                      extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
        """The whole HTTP/1.1 503 answer of a request shed on arrival, as bytes.

        ``default_headers`` (the server's ``date`` and ``server`` headers) go first,
        ``extra_headers`` (e.g. ``x-instance-id``, from the lifecycle middleware's
        ``response_headers``) after them. Built once
        per distinct pair of objects (a server replaces its list when the date
        changes), so a shed costs two identity tests.
        """
        cached = self._responses
        if cached is not None and cached[0] is default_headers and cached[1] is extra_headers:
            return cached[2]
        lines = [b"HTTP/1.1 503 Service Unavailable"]
        lines += [name + b": " + value for name, value in default_headers]
        lines += [name + b": " + value for name, value in extra_headers]
        lines += [b"content-type: " + PROBLEM_CONTENT_TYPE,
                  b"content-length: " + str(len(_BODY)).encode()]
        lines += [name + b": " + value for name, value in self._headers]
        answer = b"\r\n".join(lines) + b"\r\n\r\n" + _BODY
        self._responses = (default_headers, extra_headers, answer)
        return answer

    def report(self) -> None:
        """Send the ``CallRejected`` events of the sheds not yet reported.

        Sheds are counted at once (:attr:`shed` and the per-reason counters) but
        reported in batches: the first shed of each reason is sent at once, then at
        most one event per reason every 0.1 s, whose ``count`` is the sheds since
        the last one. Under overload that is a few events a second where there are
        thousands of sheds. The middleware reports what is left when a request ends
        and the lag sampler on its tick; call this before reading a listener's
        totals in a test.
        """
        unreported = self._unreported
        if not unreported:
            return
        self._unreported = {}
        now = self._now()
        for reason, count in unreported.items():
            self._reported_at[reason] = now
            self._send_rejected(reason, count)

    def _count_shed(self, reason: str) -> None:
        if reason == "overload":
            self.shed_overload += 1
        elif reason == "loop_lag":
            self.shed_loop_lag += 1
        else:
            self.shed_queue_delay += 1
        if not (self._listeners or global_listeners()):
            return
        unreported = self._unreported
        unreported[reason] = count = unreported.get(reason, 0) + 1
        now = self._now()
        last = self._reported_at.get(reason)
        if last is None or now - last >= _REPORT_INTERVAL or now < last:
            del unreported[reason]
            self._reported_at[reason] = now
            self._send_rejected(reason, count)

    def _send_rejected(self, reason: str, count: int) -> None:
        dispatch(self._listeners, CallRejected(
            policy="load_shedder", name=self.name, reason=reason,
            retry_after=self.retry_after, count=count,
        ))

    def _refusal(self, inflight: int, critical: bool) -> str | None:
        """Why a request arriving at the limit or the lag cap is shed (None: it is not)."""
        lag = self._lag_cap <= self._admit
        if critical and inflight < (self._admit if lag else self._critical_admit):
            return None
        return "loop_lag" if lag else "overload"

    def _is_critical(self, scope: Scope) -> bool:
        if self._is_critical_head(scope["path"], scope["headers"]):
            return True
        priority = self._priority
        return priority is not None and bool(priority(scope))

    def _is_critical_head(self, path: str, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        if self._critical_paths and path.startswith(self._critical_paths):
            return True
        name = self._critical_header
        if name is not None:
            for key, value in headers:
                if key == name:
                    return value.lower() in self._critical_values
        return False

    def _sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        algorithm = self.algorithm
        algorithm.on_sample(rtt, inflight, dropped)
        limit = algorithm.limit
        if limit != self._admit:
            self._limit_changed(limit)

    def observe_loop_lag(self, lag: float) -> None:
        """Record one event-loop lag measurement, in seconds (the sampler calls this)."""
        self.loop_lag = lag if lag > 0.0 else 0.0
        self.lagging = lagging = self._max_lag is not None and lag > self._max_lag
        inflight = self.in_flight
        cap = self._lag_cap
        if lagging:
            # A loop that runs late answers everything late, refusals included, and
            # the lateness is the admitted work's CPU: lower the cap on what is
            # admitted below what was in flight (multiplicative decrease), never
            # below the floor. Each sample acts, so the cap follows the lag within
            # a few lag_intervals instead of shedding everything while it lasts.
            cap = max(self._lag_floor, min(cap, inflight) * 3 // 4)
        elif cap != _UNCAPPED:
            # Additive-multiplicative increase back to the algorithm's limit.
            cap += max(1, cap // 8)
            if cap >= self._admit:
                cap = _UNCAPPED
        if cap != self._lag_cap:
            self._lag_cap = cap
            self._gate = min(self._admit, cap)
        if lagging and inflight < self._lag_floor:
            # Lag the service does not cause: shedding its few requests would not help.
            self.lag_unrelieved += 1
            if self._listeners or global_listeners():
                dispatch(self._listeners, LoopLagUnrelieved(
                    policy="load_shedder", name=self.name, lag=lag, in_flight=self.in_flight,
                ))

    def _body_timed_out(self) -> None:
        self.body_timeouts += 1
        if self._listeners or global_listeners():
            dispatch(self._listeners, CallRejected(
                policy="load_shedder", name=self.name, reason="body_timeout"))

    def header_timed_out(self) -> None:
        """Count a request head that did not arrive in time (the server's protocol calls this)."""
        self.header_timeouts += 1
        if self._listeners or global_listeners():
            dispatch(self._listeners, CallRejected(
                policy="load_shedder", name=self.name, reason="header_timeout"))

    def _start_sampler(self) -> None:
        # Called when the running loop is not the sampler's: the first request, or a
        # new loop after an old one was closed without cancelling our task (whose
        # stale "lagging" must not shed everything on the new loop).
        loop = running_loop()
        if loop is None:  # not asyncio (trio): no lag signal
            return
        self._sampler_loop = loop
        self.lagging = False
        self._lag_cap = _UNCAPPED
        self._gate = self._admit
        self.loop_lag = 0.0
        self._sampler = loop.create_task(self._sample_lag(),
                                         name=f"fournines-{self.name}-loop-lag")

    async def _sample_lag(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._lag_interval
        try:
            while True:
                start = loop.time()
                await asyncio.sleep(interval)
                self.observe_loop_lag(loop.time() - start - interval)
                if self._unreported:
                    self.report()
        finally:
            # The loop is closing (or aclose() was called): forget the signal, and let
            # the next request on a new loop start a new sampler.
            self.lagging = False
            self._lag_cap = _UNCAPPED
            self._gate = self._admit
            if self._sampler is current_task():
                self._sampler = None
                self._sampler_loop = None

    async def aclose(self) -> None:
        """Report the sheds not yet reported and stop the lag sampler (it restarts)."""
        self.report()
        task = self._sampler
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._sampler = None

    def __repr__(self) -> str:
        return (f"LoadShedder(name={self.name!r}, limit={self._admit}, "
                f"in_flight={self.in_flight}, shed={self.shed}, algorithm={self.algorithm!r})")


def _announces_body(scope: Scope) -> bool:
    """Whether the request says a body follows (HTTP/1.1: RFC 9112 section 6.3)."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            return bool(value != b"0")
        if key == b"transfer-encoding":
            return True
    return False


def _service_time(duration: float, body: _Body | None) -> float:
    """``duration`` without the time spent waiting for the client's body."""
    if body is None:
        return duration
    service = duration - body.waited
    return service if service > 0.0 else 0.0


class _Body:
    """The ``receive`` and ``send`` of one request whose body is still to come.

    While the app waits for body bytes the request leaves the shedder's in-flight
    count, and the waits are timed against the body's allowance. Once the body is
    complete (or the client gone), ``receive`` passes straight through, so an app
    waiting for ``http.disconnect`` (a streaming response) is neither uncounted nor
    timed.
    """

    __slots__ = ("_receive", "_send", "_shedder", "done", "received", "started",
                 "timed_out", "waited")

    def __init__(self, shedder: LoadShedder, receive: Receive, send: Send) -> None:
        self._shedder = shedder
        self._receive = receive
        self._send = send
        self.done = False
        self.started = False
        self.timed_out = False
        self.received = 0
        self.waited = 0.0

    async def receive(self) -> Message:
        if self.done:
            return await self._receive()
        if self.timed_out:
            raise RequestBodyTimeout("the request body did not arrive in time")
        shedder = self._shedder
        timeout = shedder._body_timeout
        now = shedder._now
        start = now()
        shedder.in_flight -= 1
        shedder.waiting_for_body += 1
        try:
            if timeout is None or running_loop() is None:
                message = await self._receive()
            else:
                allowance = timeout + self.received / shedder._min_body_rate - self.waited
                try:
                    async with asyncio.timeout(allowance if allowance > 0.0 else 0.0):
                        message = await self._receive()
                except TimeoutError:
                    self.timed_out = True
        finally:
            shedder.in_flight += 1
            shedder.waiting_for_body -= 1
            self.waited += now() - start
        if self.timed_out:
            shedder._body_timed_out()
            if not self.started:
                self.started = True
                await respond(self._send, 408, _TIMEOUT_BODY,
                              content_type=PROBLEM_CONTENT_TYPE, headers=_TIMEOUT_HEADERS)
            raise RequestBodyTimeout("the request body did not arrive in time")
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.done = True
        else:
            self.done = True
        return message

    async def send(self, message: Message) -> None:
        if self.timed_out:
            return  # the 408 was the answer
        if not self.started and message["type"] == "http.response.start":
            self.started = True
        await self._send(message)
