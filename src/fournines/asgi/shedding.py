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
  (``reason="overload"``) otherwise; while the event loop lags it is shed
  whatever ``n`` is (``reason="loop_lag"``);
- a critical request is admitted while ``n < ceil(L * critical_headroom)``
  (1.5 by default: critical traffic keeps half the limit again in reserve);
  while the event loop lags, only while ``n < L``.

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
from collections.abc import Callable, Collection, Sequence

from .._clock import Clock, system_clock
from .._errors import ConfigurationError, LoadShedError, check_number, new_rejection
from .._events import CallRejected, Listener, dispatch, global_listeners
from ..policies.adaptive import ConcurrencyLimit, Gradient2Limit
from ._loop import current_task, running_loop
from ._types import PROBLEM_CONTENT_TYPE, ASGIApp, Receive, Scope, Send, problem, respond

__all__ = ["DEFAULT_NEVER_SHED_PATHS", "LoadShedder"]

DEFAULT_NEVER_SHED_PATHS = ("/livez", "/readyz", "/startupz", "/healthz", "/metrics")
"""Paths a :class:`LoadShedder` admits whatever the load: health probes and metrics."""

_BODY = problem(503, "Service Unavailable",
                "the service is overloaded: retry after the Retry-After seconds")


class LoadShedder:
    """ASGI middleware that sheds requests above an adaptive concurrency limit.

    See the module documentation for the admission rule. Parameters:

    - ``limit``: the algorithm (anything with ``limit`` and ``on_sample``,
      see :mod:`fournines.policies.adaptive`); by default a
      ``Gradient2Limit()``. Give each shedder its own.
    - ``max_loop_lag``: seconds of event-loop lag above which non-critical
      requests are shed (``None``: do not measure lag); ``lag_interval``: how
      often the lag is measured.
    - ``critical_header``, ``critical_values``, ``critical_paths``, ``priority``:
      what makes a request critical; ``critical_headroom`` (>= 1): how far
      above the limit critical requests are still admitted.
    - ``never_shed_paths``: exact paths that are never shed nor counted.
    - ``retry_after``: seconds sent in ``Retry-After`` (rounded up to an integer).
    - ``clock``: measures request durations; ``listeners`` receive the events.

    Counters: :attr:`shed` (all), :attr:`shed_overload`,
    :attr:`shed_loop_lag`, :attr:`admitted`; live values: :attr:`limit`,
    :attr:`in_flight`, :attr:`loop_lag`, :attr:`lagging`.
    """

    __slots__ = (
        "_admit",
        "_critical_admit",
        "_critical_header",
        "_critical_paths",
        "_critical_values",
        "_headers",
        "_lag_interval",
        "_listeners",
        "_max_lag",
        "_never",
        "_now",
        "_priority",
        "_sampler",
        "_sampler_loop",
        "admitted",
        "algorithm",
        "app",
        "critical_headroom",
        "in_flight",
        "lagging",
        "loop_lag",
        "name",
        "retry_after",
        "shed_loop_lag",
        "shed_overload",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: ConcurrencyLimit | None = None,
        max_loop_lag: float | None = 0.1,
        lag_interval: float = 0.05,
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
        self._limit_changed(limit.limit)
        self.in_flight = 0
        """Requests being served now (never-shed paths excluded)."""
        self.admitted = 0
        """Requests admitted so far (never-shed paths excluded)."""
        self.shed_overload = 0
        """Requests shed because the concurrency limit was reached."""
        self.shed_loop_lag = 0
        """Requests shed because the event loop lagged."""
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
        return self.shed_overload + self.shed_loop_lag

    def _limit_changed(self, limit: int) -> None:
        self._admit = limit
        self._critical_admit = max(limit, math.ceil(limit * self.critical_headroom))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit the request and time it, or answer 503 at once."""
        if scope["type"] != "http" or scope["path"] in self._never:
            await self.app(scope, receive, send)
            return
        try:
            permit = self.try_acquire(scope)
        except LoadShedError:
            await respond(send, 503, _BODY, content_type=PROBLEM_CONTENT_TYPE,
                          headers=self._headers)
            return
        if self._sampler_loop is not running_loop() and self._max_lag is not None:
            self._start_sampler()
        now = self._now
        start = now()
        try:
            await self.app(scope, receive, send)
        except TimeoutError:
            self.release(permit, now() - start, dropped=True)
            raise
        except BaseException:
            # A failing or cancelled request says nothing about capacity.
            self.release(permit, 0.0, dropped=None)
            raise
        self.release(permit, now() - start, dropped=False)

    def try_acquire(self, scope: Scope) -> int:
        """Admit the request ``scope`` describes, or raise :class:`~fournines.LoadShedError`.

        The sans-I/O decision (the middleware is its shell; a message consumer can use
        it the same way): it counts the shed and sends the ``CallRejected`` event
        before raising. The permit it returns is the number of requests in flight
        with this one, a plain int so that admission allocates nothing; give it back
        to :meth:`release` when the work ends.
        """
        inflight = self.in_flight
        if (inflight >= self._admit or self.lagging) and self._refuse(scope, inflight):
            reason = "loop_lag" if self.lagging else "overload"
            if reason == "overload":
                self.shed_overload += 1
            else:
                self.shed_loop_lag += 1
            if self._listeners or global_listeners():
                dispatch(self._listeners, CallRejected(
                    policy="load_shedder", name=self.name, reason=reason,
                    retry_after=self.retry_after,
                ))
            # __new__ alone: no Python __init__ on a path that runs thousands of times
            # a second under overload (see fournines._errors).
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

    def _refuse(self, scope: Scope, inflight: int) -> bool:
        """Whether to shed a request that arrives above the limit or while lagging."""
        if self._is_critical(scope):
            return inflight >= (self._admit if self.lagging else self._critical_admit)
        return True

    def _is_critical(self, scope: Scope) -> bool:
        if self._critical_paths and scope["path"].startswith(self._critical_paths):
            return True
        name = self._critical_header
        if name is not None:
            for key, value in scope["headers"]:
                if key == name:
                    if value.lower() in self._critical_values:
                        return True
                    break
        priority = self._priority
        return priority is not None and bool(priority(scope))

    def _sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        algorithm = self.algorithm
        algorithm.on_sample(rtt, inflight, dropped)
        limit = algorithm.limit
        if limit != self._admit:
            self._limit_changed(limit)

    def observe_loop_lag(self, lag: float) -> None:
        """Record one event-loop lag measurement, in seconds (the sampler calls this)."""
        self.loop_lag = lag if lag > 0.0 else 0.0
        self.lagging = self._max_lag is not None and lag > self._max_lag

    def _start_sampler(self) -> None:
        # Called when the running loop is not the sampler's: the first request, or a
        # new loop after an old one was closed without cancelling our task (whose
        # stale "lagging" must not shed everything on the new loop).
        loop = running_loop()
        if loop is None:  # not asyncio (trio): no lag signal
            return
        self._sampler_loop = loop
        self.lagging = False
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
        finally:
            # The loop is closing (or aclose() was called): forget the signal, and let
            # the next request on a new loop start a new sampler.
            self.lagging = False
            if self._sampler is current_task():
                self._sampler = None
                self._sampler_loop = None

    async def aclose(self) -> None:
        """Stop the lag sampler (it restarts with the next request)."""
        task = self._sampler
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._sampler = None

    def __repr__(self) -> str:
        return (f"LoadShedder(name={self.name!r}, limit={self._admit}, "
                f"in_flight={self.in_flight}, shed={self.shed}, algorithm={self.algorithm!r})")
