"""Server interceptors: deadline, golden metrics, rate limits and shedding for gRPC services.

:class:`AioServerInterceptor` (``grpc.aio``) and :class:`ServerInterceptor`
(sync ``grpcio``) make the same decisions, in this order, for every RPC to a
method the server has a handler for (the ``exempt_methods``, the health service
by default, pass untouched)::

    draining and refuse_when_draining  ->  UNAVAILABLE "draining"
    gRPC deadline already passed       ->  DEADLINE_EXCEEDED, the handler never runs
    a rate limit has no room           ->  RESOURCE_EXHAUSTED "rate limited"
    the shedder is at its limit        ->  RESOURCE_EXHAUSTED "load shed"
    otherwise the handler runs under a fournines deadline = the gRPC deadline

Refusals carry the trailer ``grpc-retry-pushback-ms`` (gRFC A6, the server
pushback of gRPC's own retry design) with the limiter's or shedder's
``retry_after``: gRPC's retry policy and fournines' client interceptors wait
that long, and retry ``RESOURCE_EXHAUSTED`` only because of it. ``UNAVAILABLE``
says "try another backend": gRPC clients retry it by default.

Inside the handler :func:`fournines.current_deadline` is the caller's
deadline (``context.time_remaining()``), so fournines policies respect it and
outgoing calls through :class:`AioClientInterceptor` send what is left of it
downstream. A :class:`~fournines.DeadlineExceededError` escaping the handler
is answered ``DEADLINE_EXCEEDED`` (not ``UNKNOWN``).

The shedder is the ASGI one (:class:`fournines.asgi.LoadShedder`), used
through its sans-I/O decision (``try_acquire`` / ``release``): one adaptive
concurrency limit, learnt from handler latencies; the ``x-priority: critical``
metadata marks a critical call as the header does over HTTP. Build one with
:func:`load_shedder`. Rate limits are the core limiters
(:class:`~fournines.TokenBucket`, :class:`~fournines.Gcra`,
:class:`~fournines.SlidingWindow`, or a :class:`~fournines.KeyedLimiter` with
a ``key``), given as :class:`RpcRateLimit`.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import AsyncIterator, Callable, Collection, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from .._clock import Clock, system_clock
from .._deadline import deadline_after
from .._errors import (
    ConfigurationError,
    DeadlineExceededError,
    LoadShedError,
    RateLimitedError,
    check_number,
)
from .._events import Listener
from ..asgi import LoadShedder, Phase, ServiceState
from ..policies.adaptive import ConcurrencyLimit
from ..policies.rate_limit import KeyedLimiter
from ._metrics import RpcMetrics

__all__ = [
    "DEFAULT_EXEMPT_METHODS",
    "PUSHBACK_KEY",
    "AioServerInterceptor",
    "RpcRateLimit",
    "ServerInterceptor",
    "load_shedder",
]

PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""The trailer of gRFC A6 server pushback: milliseconds the client should wait to retry."""

DEFAULT_EXEMPT_METHODS: frozenset[str] = frozenset({
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
})
"""Methods never shed, limited nor counted: a probe that fails under load restarts a busy
but healthy process."""

RateKey = Callable[[str, Any], Hashable | None]
"""``key(method, context) -> key`` of a keyed rate limit; ``None`` exempts the call."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcRateLimit:
    """One rate limit of a gRPC server.

    - ``limiter``: a core limiter (``TokenBucket``, ``Gcra``, ``SlidingWindow``:
      one budget for every caller), or a ``KeyedLimiter`` with ``key``.
    - ``methods``: full method names (``/pkg.Service/Method``) or service
      prefixes ending in ``/`` (``/pkg.Service/``) it applies to; ``None``: all.
    - ``key``: ``key(method, context)`` names the caller for a ``KeyedLimiter``
      (e.g. ``lambda m, ctx: ctx.peer()``, or a metadata value).
    - ``cost``: units each call takes.
    """

    limiter: Any
    methods: Collection[str] | None = None
    key: RateKey | None = None
    cost: int = 1

    def __post_init__(self) -> None:
        owner = "RpcRateLimit"
        if isinstance(self.limiter, KeyedLimiter):
            if self.key is None:
                raise ConfigurationError(
                    f"{owner}.key is required with a KeyedLimiter: a function "
                    "(method, context) -> key")
        elif not callable(getattr(self.limiter, "try_acquire", None)):
            raise ConfigurationError(
                f"{owner}.limiter must be a TokenBucket, Gcra, SlidingWindow or KeyedLimiter, "
                f"got {self.limiter!r}")
        if self.key is not None and not callable(self.key):
            raise ConfigurationError(f"{owner}.key must be callable, got {self.key!r}")
        if self.methods is not None and (isinstance(self.methods, str) or not all(
                isinstance(m, str) and m.startswith("/") for m in self.methods)):
            raise ConfigurationError(
                f"{owner}.methods must be a collection of '/pkg.Service/Method' names or "
                f"'/pkg.Service/' prefixes, got {self.methods!r}")
        check_number(owner, "cost", self.cost, minimum=1, integer=True)

    def applies(self, method: str) -> bool:
        """Whether calls to ``method`` count against this limit."""
        methods = self.methods
        if methods is None or method in methods:
            return True
        return any(m.endswith("/") and method.startswith(m) for m in methods)


async def _no_asgi_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    raise RuntimeError("a gRPC load shedder is used through try_acquire/release only")


def load_shedder(
    limit: ConcurrencyLimit | None = None,
    *,
    critical_header: str | None = "x-priority",
    critical_values: Collection[str] = ("critical",),
    critical_headroom: float = 1.5,
    retry_after: float = 1.0,
    clock: Clock = system_clock,
    listeners: Sequence[Listener] = (),
    name: str = "grpc_shedder",
) -> LoadShedder:
    """A :class:`fournines.asgi.LoadShedder` for a gRPC server's interceptor.

    The same adaptive concurrency limit (``Gradient2Limit`` by default) and the
    same critical rule (``critical_header`` is a metadata key here), used
    through its decision API only: no ASGI app behind it, no event-loop lag
    sampler (gRPC's own threads and loop are not the shedder's to watch).
    """
    return LoadShedder(
        _no_asgi_app, limit=limit, max_loop_lag=None, queue_target=None, body_timeout=None,
        critical_header=critical_header, critical_values=critical_values,
        critical_headroom=critical_headroom, never_shed_paths=(), retry_after=retry_after,
        clock=clock, listeners=listeners, name=name,
    )


_OK = grpc.StatusCode.OK
_UNKNOWN = grpc.StatusCode.UNKNOWN
_CANCELLED = grpc.StatusCode.CANCELLED
_DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

_KINDS = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}
_ATTRIBUTES = {
    "unary": "unary_unary",
    "server_stream": "unary_stream",
    "client_stream": "stream_unary",
    "bidi_stream": "stream_stream",
}
_FACTORIES = {
    "unary": grpc.unary_unary_rpc_method_handler,
    "server_stream": grpc.unary_stream_rpc_method_handler,
    "client_stream": grpc.stream_unary_rpc_method_handler,
    "bidi_stream": grpc.stream_stream_rpc_method_handler,
}


class _Scope(dict[str, Any]):
    """The two keys of an ASGI scope the shedder reads; headers built only if it asks."""

    __slots__ = ("_context",)

    def __init__(self, method: str, context: Any) -> None:
        super().__init__(path=method)
        self._context = context

    def __missing__(self, key: str) -> Any:
        if key != "headers":
            raise KeyError(key)
        headers = [
            (str(k).encode("latin-1"), v if isinstance(v, bytes) else str(v).encode("latin-1"))
            for k, v in (self._context.invocation_metadata() or ())
        ]
        self["headers"] = headers
        return headers


Refusal = tuple[grpc.StatusCode, str, float | None]


class _Core:
    """The decisions shared by the sync and asyncio interceptors (no I/O)."""

    def __init__(
        self,
        owner: str,
        *,
        metrics: RpcMetrics | None,
        shedder: LoadShedder | None,
        rate_limits: Sequence[RpcRateLimit],
        state: ServiceState | None,
        refuse_when_draining: bool,
        exempt_methods: Collection[str],
        clock: Clock,
        lock: bool,
    ) -> None:
        if metrics is not None and not isinstance(metrics, RpcMetrics):
            raise ConfigurationError(f"{owner}.metrics must be an RpcMetrics, got {metrics!r}")
        if shedder is not None and not isinstance(shedder, LoadShedder):
            raise ConfigurationError(
                f"{owner}.shedder must be a LoadShedder (see load_shedder()), got {shedder!r}")
        limits = tuple(rate_limits)
        for rule in limits:
            if not isinstance(rule, RpcRateLimit):
                raise ConfigurationError(
                    f"{owner}.rate_limits must hold RpcRateLimit objects, got {rule!r}")
        if state is not None and not isinstance(state, ServiceState):
            raise ConfigurationError(f"{owner}.state must be a ServiceState, got {state!r}")
        if refuse_when_draining and state is None:
            raise ConfigurationError(
                f"{owner}.refuse_when_draining needs state= (the ServiceState that drains)")
        if isinstance(exempt_methods, str):
            raise ConfigurationError(
                f"{owner}.exempt_methods must be a collection of method names, "
                f"got {exempt_methods!r}")
        self.metrics = metrics
        self.shedder = shedder
        self.rate_limits = limits
        self.state = state
        self.refuse_when_draining = refuse_when_draining
        self.exempt = frozenset(exempt_methods)
        self.now = clock.monotonic
        # The shedder's counters are plain ints: a sync server's threads take turns.
        self.lock = threading.Lock() if lock and shedder is not None else None
        self._cache: dict[str, tuple[Any, Any]] = {}

    def refusal(self, method: str, context: Any) -> Refusal | None:
        """Why the call is refused before its handler runs (None: it is not)."""
        state = self.state
        if self.refuse_when_draining and state is not None and state.phase in (
                Phase.DRAINING, Phase.STOPPED):
            return _UNAVAILABLE, "draining", None
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return _DEADLINE, "deadline exceeded before the handler ran", None
        for rule in self.rate_limits:
            if not rule.applies(method):
                continue
            try:
                if rule.key is None:
                    rule.limiter.try_acquire(rule.cost)
                else:
                    key = rule.key(method, context)
                    if key is not None:
                        rule.limiter.try_acquire(key, rule.cost)
            except RateLimitedError as exc:
                return _EXHAUSTED, "rate limited", exc.retry_after
        return None

    def acquire(self, method: str, context: Any) -> int | Refusal:
        """The shedder's permit (0 without a shedder), or its refusal."""
        shedder = self.shedder
        if shedder is None:
            return 0
        lock = self.lock
        if lock is not None:
            lock.acquire()
        try:
            return shedder.try_acquire(_Scope(method, context))
        except LoadShedError as exc:
            return _EXHAUSTED, "load shed", exc.retry_after
        finally:
            if lock is not None:
                lock.release()

    def release(self, permit: int, duration: float, code: grpc.StatusCode) -> None:
        shedder = self.shedder
        if shedder is None:
            return
        # As the ASGI shedder learns: a timeout is an overload signal, a completed call
        # a latency sample, a failed or cancelled one nothing.
        dropped = True if code is _DEADLINE else None if code in (_UNKNOWN, _CANCELLED) else False
        lock = self.lock
        if lock is not None:
            lock.acquire()
        try:
            shedder.release(permit, duration, dropped=dropped)
        finally:
            if lock is not None:
                lock.release()

    def wrapped(self, method: str, handler: Any, wrap: Callable[[str, str, Any], Any]) -> Any:
        """``handler`` with its behaviour wrapped, built once per method and handler."""
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        kind = _KINDS[(bool(handler.request_streaming), bool(handler.response_streaming))]
        behaviour = getattr(handler, _ATTRIBUTES[kind])
        new = _FACTORIES[kind](
            wrap(kind, method, behaviour),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._cache[method] = (handler, new)
        return new


def _pushback(context: Any, retry_after: float | None) -> None:
    if retry_after is not None:
        context.set_trailing_metadata(((PUSHBACK_KEY, str(max(0, round(retry_after * 1000)))),))


def _code_of(context: Any) -> grpc.StatusCode:
    code = context.code()
    return _OK if code is None else code


def _deadline_of(context: Any) -> Any:
    remaining = context.time_remaining()
    return deadline_after(float("inf") if remaining is None else max(0.0, remaining))


class AioServerInterceptor(grpc.aio.ServerInterceptor):
    """The ``grpc.aio`` server interceptor (see the module docstring).

    ``grpc.aio.server(interceptors=[AioServerInterceptor(...)])``.

    :param metrics: per-method golden metrics (:class:`RpcMetrics`), if any.
    :param shedder: an adaptive load shedder (:func:`load_shedder`), if any.
    :param rate_limits: :class:`RpcRateLimit` rules; every one that applies counts.
    :param state: the process's :class:`~fournines.asgi.ServiceState` (the one
        the health service and :func:`aio_stop_gracefully` share).
    :param refuse_when_draining: answer ``UNAVAILABLE`` while ``state`` drains
        (for clients that retry on another backend). Off by default: during the
        drain delay calls are served, as over HTTP, while health says NOT_SERVING.
    :param exempt_methods: full method names passed through untouched.
    :param clock: times handlers for the metrics and the shedder.
    """

    def __init__(
        self,
        *,
        metrics: RpcMetrics | None = None,
        shedder: LoadShedder | None = None,
        rate_limits: Sequence[RpcRateLimit] = (),
        state: ServiceState | None = None,
        refuse_when_draining: bool = False,
        exempt_methods: Collection[str] = DEFAULT_EXEMPT_METHODS,
        clock: Clock = system_clock,
    ) -> None:
        self._core = _Core("AioServerInterceptor", metrics=metrics, shedder=shedder,
                           rate_limits=rate_limits, state=state,
                           refuse_when_draining=refuse_when_draining,
                           exempt_methods=exempt_methods, clock=clock, lock=False)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """The handler of the call, wrapped unless it is exempt or unknown."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._core.exempt:
            return handler
        return self._core.wrapped(method, handler, self._wrap)

    def _wrap(self, kind: str, method: str, behaviour: Any) -> Any:
        core = self._core
        metrics = core.metrics
        now = core.now

        async def admitted(context: Any) -> int:
            refusal = core.refusal(method, context)
            if refusal is None:
                permit = core.acquire(method, context)
                if isinstance(permit, int):
                    return permit
                refusal = permit
            code, details, retry_after = refusal
            if metrics is not None:
                # Refusals are what the caller saw: they count against the objective.
                metrics.started()
                metrics.observe(kind, method, code.name, 0.0)
            _pushback(context, retry_after)
            await context.abort(code, details)
            raise AssertionError("unreachable: abort raises")  # pragma: no cover

        def ended(permit: int, start: float, code: grpc.StatusCode) -> None:
            duration = now() - start
            core.release(permit, duration, code)
            if metrics is not None:
                metrics.observe(kind, method, code.name, duration)

        if inspect.isasyncgenfunction(behaviour):
            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                permit = await admitted(context)
                if metrics is not None:
                    metrics.started()
                start = now()
                code = _UNKNOWN
                try:
                    with _deadline_of(context):
                        async for item in behaviour(request, context):
                            yield item
                    code = _code_of(context)
                except DeadlineExceededError:
                    code = _DEADLINE
                    await context.abort(_DEADLINE, "deadline exceeded")
                except BaseException:
                    code = _outcome(context)
                    raise
                finally:
                    ended(permit, start, code)

            return streaming

        async def unary(request: Any, context: Any) -> Any:
            permit = await admitted(context)
            if metrics is not None:
                metrics.started()
            start = now()
            code = _UNKNOWN
            try:
                with _deadline_of(context):
                    response = await behaviour(request, context)
                code = _code_of(context)
                return response
            except DeadlineExceededError:
                code = _DEADLINE
                await context.abort(_DEADLINE, "deadline exceeded")
            except BaseException:
                code = _outcome(context)
                raise
            finally:
                ended(permit, start, code)

        return unary


def _outcome(context: Any) -> grpc.StatusCode:
    """The code of a call whose handler raised: aborted with one, cancelled, or UNKNOWN."""
    code = context.code()
    if code is not None and code is not _OK:
        return code  # type: ignore[no-any-return]
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return _DEADLINE
    return _UNKNOWN


class ServerInterceptor(grpc.ServerInterceptor):
    """The sync ``grpcio`` server interceptor: :class:`AioServerInterceptor`'s twin.

    ``grpc.server(executor, interceptors=[ServerInterceptor(...)])``; same
    parameters, same decisions, safe for the server's threads.
    """

    def __init__(
        self,
        *,
        metrics: RpcMetrics | None = None,
        shedder: LoadShedder | None = None,
        rate_limits: Sequence[RpcRateLimit] = (),
        state: ServiceState | None = None,
        refuse_when_draining: bool = False,
        exempt_methods: Collection[str] = DEFAULT_EXEMPT_METHODS,
        clock: Clock = system_clock,
    ) -> None:
        self._core = _Core("ServerInterceptor", metrics=metrics, shedder=shedder,
                           rate_limits=rate_limits, state=state,
                           refuse_when_draining=refuse_when_draining,
                           exempt_methods=exempt_methods, clock=clock, lock=True)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """The handler of the call, wrapped unless it is exempt or unknown."""
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._core.exempt:
            return handler
        return self._core.wrapped(method, handler, self._wrap)

    def _wrap(self, kind: str, method: str, behaviour: Any) -> Any:
        core = self._core
        metrics = core.metrics
        now = core.now

        def admitted(context: Any) -> int:
            refusal = core.refusal(method, context)
            if refusal is None:
                permit = core.acquire(method, context)
                if isinstance(permit, int):
                    return permit
                refusal = permit
            code, details, retry_after = refusal
            if metrics is not None:
                # Refusals are what the caller saw: they count against the objective.
                metrics.started()
                metrics.observe(kind, method, code.name, 0.0)
            _pushback(context, retry_after)
            context.abort(code, details)
            raise AssertionError("unreachable: abort raises")  # pragma: no cover

        def ended(permit: int, start: float, code: grpc.StatusCode) -> None:
            duration = now() - start
            core.release(permit, duration, code)
            if metrics is not None:
                metrics.observe(kind, method, code.name, duration)

        if kind in ("server_stream", "bidi_stream"):
            def streaming(request: Any, context: Any) -> Iterator[Any]:
                permit = admitted(context)
                if metrics is not None:
                    metrics.started()
                start = now()
                code = _UNKNOWN
                try:
                    with _deadline_of(context):
                        yield from behaviour(request, context)
                    code = _code_of(context)
                except DeadlineExceededError:
                    code = _DEADLINE
                    context.abort(_DEADLINE, "deadline exceeded")
                except BaseException:
                    code = _outcome(context)
                    raise
                finally:
                    ended(permit, start, code)

            return streaming

        def unary(request: Any, context: Any) -> Any:
            permit = admitted(context)
            if metrics is not None:
                metrics.started()
            start = now()
            code = _UNKNOWN
            try:
                with _deadline_of(context):
                    response = behaviour(request, context)
                code = _code_of(context)
                return response
            except DeadlineExceededError:
                code = _DEADLINE
                context.abort(_DEADLINE, "deadline exceeded")
            except BaseException:
                code = _outcome(context)
                raise
            finally:
                ended(permit, start, code)

        return unary
