"""One OpenTelemetry server span per HTTP request, with fournines' events on it.

:class:`TracingMiddleware` continues the caller's trace (W3C ``traceparent`` /
``tracestate``, or whatever propagator is configured), opens exactly one
``SERVER`` span around the app, and names it ``"GET /orders/{order_id}"`` once
the route is known. The span carries the stable HTTP semantic-convention
attributes (``http.request.method``, ``url.path``, ``url.scheme``,
``url.query``, ``http.route``, ``http.response.status_code``,
``server.address``, ``server.port``, ``client.address``, ``client.port``,
``network.protocol.version``, ``user_agent.original``); a 5xx answer or an
exception sets its status to ``ERROR``. opentelemetry-instrumentation-asgi
makes three spans per request (one more for every ``send`` and ``receive``),
which is most of its cost; this one makes one.

The response gets the trace id in ``x-trace-id`` (so a user can quote it in a
bug report), :class:`TraceContextFilter` adds ``trace_id`` and ``span_id`` to log
records, and :class:`SpanEventListener` records every fournines event sent while
the span is current (a breaker opening, a retry, a rejection) as a span event.
:func:`inject_headers` puts the current context into outgoing headers.

OpenTelemetry is optional (``pip install 'fournines[otel]'``): nothing here
imports it until a class is constructed, and constructing one without it
raises :class:`~fournines.ConfigurationError`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError
from .._events import Event, Listener, add_listener
from ._types import ASGIApp, Headers, Message, Receive, Scope, Send
from .metrics import DEFAULT_EXCLUDE_PATHS
from .routes import UNMATCHED, RouteOf, RouteTemplates

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import Getter, TextMapPropagator
    from opentelemetry.trace import Span, TracerProvider

__all__ = [
    "SpanEventListener",
    "TraceContextFilter",
    "TracingMiddleware",
    "inject_headers",
]

_INSTALL = "pip install 'fournines[otel]'"
_log = logging.getLogger("fournines.asgi")

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT",
                      "TRACE"))


def _require_otel(owner: str) -> None:
    try:
        import opentelemetry.trace  # noqa: F401, PLC0415 - optional dependency
    except ImportError as exc:
        raise ConfigurationError(
            f"{owner} needs OpenTelemetry (opentelemetry-api and opentelemetry-sdk): {_INSTALL}"
        ) from exc


class TracingMiddleware:
    """Trace every HTTP request as one OpenTelemetry ``SERVER`` span.

    :param app: the ASGI app to trace.
    :param tracer_provider: where spans go (default: OpenTelemetry's global provider;
        without an SDK configured that is a no-op and spans are not recorded).
    :param propagator: how the incoming context is read (default: the global one,
        W3C trace context and baggage unless ``OTEL_PROPAGATORS`` says otherwise).
    :param trace_id_header: response header carrying the trace id (``None``: none).
    :param exclude_paths: paths passed through without a span (probes, ``/metrics``).
    :param record_events: record fournines events as span events (adds a
        :class:`SpanEventListener` with :func:`fournines.add_listener`, kept in
        ``events_listener``; policies then build their events for every call).
    :param route_of: the route label, as for
        :class:`~fournines.asgi.metrics.MetricsMiddleware`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
        trace_id_header: str | None = "x-trace-id",
        exclude_paths: Iterable[str] = (*DEFAULT_EXCLUDE_PATHS, "/metrics"),
        record_events: bool = True,
        route_of: RouteOf | None = None,
    ) -> None:
        _require_otel("TracingMiddleware")
        from opentelemetry import context, propagate, trace  # noqa: PLC0415

        from .. import __version__  # noqa: PLC0415 - the package imports this module lazily

        self.app = app
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._tracer = provider.get_tracer("fournines.asgi", __version__)
        self._propagator = propagator if propagator is not None else propagate.get_global_textmap()
        self._getter = _header_getter()
        self._header = trace_id_header.lower().encode("latin-1") if trace_id_header else None
        self._skip = frozenset(exclude_paths)
        # The bound method, not the instance: calling an instance goes through
        # type(obj).__call__, a slower path on every request.
        self._route_of: RouteOf = route_of if route_of is not None else RouteTemplates(app).__call__
        # Bound once: attribute look-ups on modules cost on every request.
        self._server_kind = trace.SpanKind.SERVER
        self._set_span_in_context = trace.set_span_in_context
        self._attach = context.attach
        self._detach = context.detach
        self._status = trace.Status
        self._error = trace.StatusCode.ERROR
        self.events_listener: Listener | None = _span_events if record_events else None
        if record_events:
            add_listener(_span_events)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app for one connection scope, inside a span for HTTP requests."""
        if scope["type"] != "http" or scope["path"] in self._skip:
            await self.app(scope, receive, send)
            return
        headers: Headers = scope.get("headers") or []
        parent = self._propagator.extract(headers, getter=self._getter)
        raw_method = scope["method"]
        method = raw_method if raw_method in _METHODS else "_OTHER"
        # Semconv span names: "{method} {route}", "HTTP" for non-standard methods.
        name = method if method != "_OTHER" else "HTTP"
        span = self._tracer.start_span(
            name,
            context=parent,
            kind=self._server_kind,
            attributes=_request_attributes(scope, headers, method, raw_method),
            # Exceptions are recorded below, once, with the status set to match.
            record_exception=False,
            set_status_on_exception=False,
        )
        token = self._attach(self._set_span_in_context(span, parent))
        span_context = span.get_span_context()
        trace_header = self._header
        trace_value = (format(span_context.trace_id, "032x").encode("latin-1")
                       if trace_header is not None and span_context.is_valid else None)
        status = 0

        # A plain function returning send's awaitable: no extra coroutine per message.
        def send_traced(message: Message) -> Any:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if trace_value is not None:
                    # A new dict: the app may reuse its message object for every response.
                    message = {**message, "headers": [*message.get("headers", ()),
                                                      (trace_header, trace_value)]}
            return send(message)

        error_type: str | None = None
        try:
            await self.app(scope, receive, send_traced)
        except Exception as exc:
            error_type = type(exc).__qualname__
            span.record_exception(exc)
            span.set_status(self._status(self._error, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            try:
                try:
                    route = self._route_of(scope)
                except Exception:
                    # A broken route_of must not fail the request it names.
                    _log.exception("TracingMiddleware route_of failed for %r", scope.get("path"))
                    route = UNMATCHED
                if route != UNMATCHED:
                    span.set_attribute("http.route", route)
                    span.update_name(f"{name} {route}")
                if not status and error_type is not None:
                    status = 500  # what the server answers for an app that raised first
                if status:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500 and error_type is None:
                        error_type = str(status)
                        span.set_status(self._status(self._error))
                if error_type is not None:
                    # Semconv: the exception's type when one was raised, else the status.
                    span.set_attribute("error.type", error_type)
            finally:
                self._detach(token)
                span.end()


def _request_attributes(scope: Scope, headers: Headers, method: str,
                        raw_method: str) -> dict[str, Any]:
    """HTTP server span attributes known before the app runs (stable semconv names)."""
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.scheme": scope.get("scheme", "http"),
        "url.path": scope["path"],
    }
    if method != raw_method:
        attributes["http.request.method_original"] = raw_method
    query = scope.get("query_string")
    if query:
        attributes["url.query"] = query.decode("latin-1")
    http_version = scope.get("http_version")
    if http_version:
        attributes["network.protocol.version"] = http_version
    host = None
    for name, value in headers:
        if name == b"host":
            host = value.decode("latin-1")
        elif name == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
    address, port = _split_host(host) if host else (None, None)
    server = scope.get("server")
    if address is None and server:
        address, port = server[0], server[1]
    if address:
        attributes["server.address"] = address
    if port is not None:
        attributes["server.port"] = port
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
        if client[1] is not None:
            attributes["client.port"] = client[1]
    return attributes


def _split_host(host: str) -> tuple[str | None, int | None]:
    """``"example.com:8080"`` → ``("example.com", 8080)``; IPv6 in brackets too."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None, None
        address, rest = host[1:end], host[end + 1:]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        address, _, port_text = host.partition(":")
    port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else None
    return (address or None), port


def _header_getter() -> Getter[Headers]:
    """A propagator getter reading an ASGI header list without building a dict."""
    from opentelemetry.propagators.textmap import Getter  # noqa: PLC0415

    class HeaderGetter(Getter[Headers]):
        def get(self, carrier: Headers, key: str) -> list[str] | None:
            name = key.lower().encode("latin-1")
            values = [value.decode("latin-1") for header, value in carrier if header == name]
            return values or None

        def keys(self, carrier: Headers) -> list[str]:
            return [header.decode("latin-1") for header, _ in carrier]

    return HeaderGetter()


class SpanEventListener:
    """A fournines listener adding each event to the current span as a span event.

    The event's name is its class name (``StateChanged``, ``CallRejected``, …);
    its fields become attributes prefixed ``fournines.`` (an exception field
    becomes ``fournines.<field>.type`` and ``.message``). Nothing happens when no
    span is recording. :class:`TracingMiddleware` adds one with
    :func:`fournines.add_listener`; add it yourself to see events on other spans.
    """

    __slots__ = ("_current_span", "_fields")

    def __init__(self) -> None:
        _require_otel("SpanEventListener")
        from opentelemetry import trace  # noqa: PLC0415

        self._current_span = trace.get_current_span
        self._fields: dict[type[Event], tuple[str, ...]] = {}

    def __call__(self, event: Event) -> None:
        """Record ``event`` on the current span."""
        span: Span = self._current_span()
        if not span.is_recording():
            return
        span.add_event(type(event).__name__, self._attributes(event))

    def _attributes(self, event: Event) -> dict[str, Any]:
        names = self._fields.get(type(event))
        if names is None:
            names = tuple(f.name for f in dataclasses.fields(event))
            self._fields[type(event)] = names
        attributes: dict[str, Any] = {}
        for name in names:
            value = getattr(event, name)
            if value is None:
                continue
            key = f"fournines.{name}"
            if isinstance(value, bool | int | float | str):
                attributes[key] = value
            elif isinstance(value, BaseException):
                attributes[f"{key}.type"] = type(value).__qualname__
                attributes[f"{key}.message"] = str(value)
            else:
                attributes[key] = str(value)
        return attributes


class _LazyListener:
    """The process-wide span event listener, built on first use (OpenTelemetry is optional)."""

    __slots__ = ("_listener",)

    def __init__(self) -> None:
        self._listener: SpanEventListener | None = None

    def __call__(self, event: Event) -> None:
        listener = self._listener
        if listener is None:
            listener = self._listener = SpanEventListener()
        listener(event)


# One instance for the process: add_listener is idempotent for it, so any number of
# middleware instances record each event once.
_span_events = _LazyListener()


class TraceContextFilter(logging.Filter):
    """A logging filter adding ``trace_id`` and ``span_id`` (hex) to every record.

    Outside a span both are ``""``. Attach it to a *handler* so it sees records
    from every logger::

        handler.addFilter(TraceContextFilter())
        handler.setFormatter(logging.Formatter("%(trace_id)s %(message)s"))
    """

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        _require_otel("TraceContextFilter")
        from opentelemetry import trace  # noqa: PLC0415

        self._current_span = trace.get_current_span

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the ids; never drops a record."""
        span_context = self._current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        else:
            record.trace_id = record.span_id = ""
        return True


def inject_headers(headers: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Add the current trace context to ``headers`` (a new dict if ``None``); return it.

    Uses the global propagator (``traceparent``/``tracestate`` by default), e.g.
    ``httpx.get(url, headers=inject_headers())``. Without OpenTelemetry installed
    there is no context to send and ``headers`` come back unchanged.
    """
    carrier: MutableMapping[str, str] = {} if headers is None else headers
    try:
        from opentelemetry import propagate  # noqa: PLC0415 - optional dependency
    except ImportError:
        return carrier
    propagate.inject(carrier)
    return carrier
