"""``protect_aiohttp(app)``: fournines' ASGI service protection around aiohttp handlers.

One aiohttp middleware, first in ``app.middlewares``, turns each request into an
ASGI scope and runs it through the same stack :func:`fournines.asgi.protect`
builds, outermost first:

1. :class:`~fournines.asgi.LoadShedder` — 503 with ``Retry-After`` for what would
   overload the process (probes and ``/metrics`` never shed);
2. :class:`~fournines.asgi.HealthMiddleware` — ``/livez``, ``/readyz``,
   ``/startupz``, ``/healthz`` with the given checks;
3. :class:`~fournines.asgi.MetricsMiddleware` — ``/metrics`` and the golden metrics,
   the same names as for ASGI, labelled with the aiohttp resource's canonical path
   (``/orders/{id}``; no route: ``<unmatched>``);
4. :class:`~fournines.asgi.DeadlineMiddleware` — the caller's
   ``x-request-timeout-ms`` / ``grpc-timeout`` becomes the handler's
   :func:`~fournines.current_deadline` (so outgoing calls send what is left),
   504 at once for a spent one;
5. :class:`~fournines.asgi.RateLimitMiddleware` — only with ``rate_limits``: 429
   with ``RateLimit`` headers for clients over their quota (``key="ip"`` is the TCP
   peer's address);
6. the aiohttp handler (with the middlewares after this one).

The handler's own response object is returned as it is (the layers above only see
its status, and may add headers to it); an answer of a layer (a probe, a 503, a
504, ``/metrics``) becomes a ``web.Response``. ``web.HTTPException`` raised by the
handler is counted with its status and raised on. The application's
``on_startup`` marks the service ready, ``on_shutdown`` draining (readiness fails).

The request body is read by aiohttp, not through ASGI, so the shedder's body
timeout does not apply (it is off); bound body reads with aiohttp's own
``client_max_size`` and the server's timeouts. Nor does the shedder's queueing-delay
(CoDel) rule: aiohttp reports no arrival time. A WebSocket handler is one request
in flight for the socket's whole life.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from aiohttp import web

from .._errors import ConfigurationError
from ..asgi import (
    DeadlineMiddleware,
    HealthMiddleware,
    LoadShedder,
    RateLimitMiddleware,
    RateLimitRule,
    ServiceState,
)
from ..asgi.checks import Check, event_loop_lag_check
from ..asgi.routes import UNMATCHED
from ..policies.adaptive import ConcurrencyLimit

__all__ = ["AiohttpProtection", "protect_aiohttp"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The scope key carrying the aiohttp request and what the innermost app found.
_KEY = "fournines.aiohttp"


class _Exchange:
    """One request's crossing of the ASGI stack."""

    __slots__ = ("body", "error", "handler", "headers", "request", "response", "status")

    def __init__(self, request: web.Request, handler: Handler) -> None:
        self.request = request
        self.handler = handler
        self.response: web.StreamResponse | None = None
        self.error: web.HTTPException | None = None
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []


async def _receive() -> dict[str, Any]:
    # aiohttp reads the body for the handler; the ASGI layers never need it.
    return {"type": "http.request", "body": b"", "more_body": False}


async def _handler_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """The innermost ASGI app: the aiohttp handler, its answer reported as a bare status."""
    exchange: _Exchange = scope[_KEY]
    try:
        response = await exchange.handler(exchange.request)
    except web.HTTPException as exc:
        exchange.error = exc
        status = exc.status
    else:
        exchange.response = response
        status = response.status
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _route_of(scope: MutableMapping[str, Any]) -> str:
    """The metric label of a request: its aiohttp resource's canonical path."""
    exchange: _Exchange | None = scope.get(_KEY)
    if exchange is None:
        return UNMATCHED
    info = exchange.request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(info, "http_exception", None) is not None:
        return UNMATCHED
    return str(resource.canonical)


class AiohttpProtection:
    """The aiohttp middleware :func:`protect_aiohttp` adds; its parts are attributes.

    :attr:`state` is the shared :class:`~fournines.asgi.ServiceState`;
    :attr:`shedder`, :attr:`health`, :attr:`metrics`, :attr:`deadline` the ASGI
    parts (``None`` when turned off).
    """

    def __init__(self, *, state: ServiceState, shedder: LoadShedder | None,
                 health: HealthMiddleware, metrics: Any, deadline: DeadlineMiddleware) -> None:
        self.state = state
        self.shedder = shedder
        self.health = health
        self.metrics = metrics
        self.deadline = deadline
        self._stack: Any = shedder if shedder is not None else health
        # aiohttp's marker of a new-style middleware.
        self.__middleware_version__ = 1

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Run ``request`` through the protection stack, then ``handler``."""
        exchange = _Exchange(request, handler)
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": request.method, "scheme": request.scheme, "path": request.path,
            "raw_path": request.raw_path.partition("?")[0].encode(), "root_path": "",
            "query_string": request.query_string.encode(),
            "headers": [(k.lower(), v) for k, v in request.raw_headers],
            "client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
            "server": None, "state": {}, _KEY: exchange,
        }

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                exchange.headers = list(message.get("headers", ()))
            elif message["type"] == "http.response.body":
                exchange.body.append(message.get("body", b""))

        state = self.state
        state.in_flight += 1
        try:
            await self._stack(scope, _receive, send)
        finally:
            state.in_flight -= 1
        if exchange.error is not None:
            _add_headers(exchange.error.headers, exchange.headers)
            raise exchange.error
        response = exchange.response
        if response is not None:
            if not response.prepared:
                _add_headers(response.headers, exchange.headers)
            return response
        # A layer answered (a probe, /metrics, a shed, an expired deadline).
        answer = web.Response(status=exchange.status, body=b"".join(exchange.body))
        for name, value in exchange.headers:
            if name.lower() != b"content-length":
                answer.headers.add(name.decode("latin-1"), value.decode("latin-1"))
        return answer

    def __repr__(self) -> str:
        return f"AiohttpProtection(state={self.state!r})"


def _add_headers(target: Any, headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Headers a layer added to the handler's answer (pushback, ids) onto the real one."""
    for name, value in headers:
        text = name.decode("latin-1")
        if text.lower() != "content-length":
            target[text] = value.decode("latin-1")


def protect_aiohttp(
    app: web.Application,
    *,
    service: str = "service",
    version: str | None = None,
    state: ServiceState | None = None,
    checks: Sequence[Check] = (),
    loop_lag_check: bool = True,
    health_cache_ttl: float = 1.0,
    metrics: bool = True,
    registry: Any = None,
    resilience_events: bool = True,
    max_timeout: float | None = 30.0,
    shedding: bool = True,
    concurrency_limit: ConcurrencyLimit | None = None,
    max_loop_lag: float | None = 0.025,
    lag_floor: int = 4,
    critical_paths: Sequence[str] = (),
    rate_limits: Sequence[RateLimitRule] = (),
) -> AiohttpProtection:
    """Protect ``app`` (before it starts): see the module docstring; returns the middleware.

    The parameters mean what they mean for :func:`fournines.asgi.protect`;
    ``rate_limits`` are :class:`~fournines.asgi.RateLimitRule` (its ``rate_limit``
    given as rules).
    """
    if not isinstance(app, web.Application):
        raise ConfigurationError(
            f"protect_aiohttp.app must be an aiohttp.web.Application, got {app!r}")
    if app.frozen:
        raise ConfigurationError(
            "protect_aiohttp.app has started already: protect it before running it")
    state = state if state is not None else ServiceState(service=service)
    if not isinstance(state, ServiceState):
        raise ConfigurationError(f"protect_aiohttp.state must be a ServiceState, got {state!r}")
    inner: Any = _handler_app
    if rate_limits:
        if not all(isinstance(rule, RateLimitRule) for rule in rate_limits):
            raise ConfigurationError(
                f"protect_aiohttp.rate_limits must be RateLimitRule objects, got {rate_limits!r}")
        inner = RateLimitMiddleware(inner, rules=rate_limits)
    inner = DeadlineMiddleware(inner, max_timeout=max_timeout)
    deadline = inner
    all_checks = [*checks, event_loop_lag_check()] if loop_lag_check else list(checks)
    health = HealthMiddleware(None, checks=all_checks, state=state, cache_ttl=health_cache_ttl,
                              version=version, service_id=service)
    shedder = (
        LoadShedder(health, limit=concurrency_limit, max_loop_lag=max_loop_lag,
                    lag_floor=lag_floor, queue_target=None, body_timeout=None,
                    critical_paths=critical_paths)
        if shedding else None
    )
    recorder = None
    if metrics:
        from ..asgi.metrics import MetricsMiddleware  # noqa: PLC0415 - needs prometheus_client

        recorder = inner = MetricsMiddleware(inner, registry=registry, state=state,
                                             route_of=_route_of,
                                             resilience_events=resilience_events)
    health.app = inner
    protection = AiohttpProtection(state=state, shedder=shedder, health=health,
                                   metrics=recorder, deadline=deadline)
    app.middlewares.insert(0, protection)

    async def started(_: web.Application) -> None:
        state.mark_ready()

    async def stopping(_: web.Application) -> None:
        # The state's on_drain hooks (deregistration) first, then readiness fails.
        await state.drain()

    app.on_startup.append(started)
    app.on_shutdown.append(stopping)
    return protection
