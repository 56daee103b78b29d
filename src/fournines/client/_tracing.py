"""One OpenTelemetry ``CLIENT`` span per outgoing request (imported only when tracing is on).

The span is named after the method (semconv: ``{method}`` when there is no
route template) and carries the stable HTTP client attributes
(``http.request.method``, ``server.address``, ``server.port``, ``url.full``,
``url.scheme``, ``http.response.status_code``, ``error.type``). As semconv asks
of client spans, 4xx and 5xx answers and exceptions set its status to
``ERROR``. While the request runs the span is the current one: the W3C
``traceparent`` (or the configured propagator's headers) goes downstream with
every attempt, and the transport's resilience events (retries, hedges, breaker
rejections and state changes, fallbacks) are added to it as span events.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from .._errors import ConfigurationError
from .._events import ClientRequestFinished, ClientRequestStarted, Event, global_listeners

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT",
                      "TRACE"))
_DEFAULT_PORTS = {"http": 80, "https": 443}
_log = logging.getLogger("fournines.client")


class ClientTracer:
    """Starts and ends the client spans of one transport."""

    __slots__ = ("_attach", "_detach", "_error", "_events", "_global_events", "_inject",
                 "_kind", "_set_span_in_context", "_status", "_tracer", "_warned")

    def __init__(self, owner: str, tracer_provider: Any) -> None:
        try:
            from opentelemetry import context, trace  # noqa: PLC0415 - optional dependency
        except ImportError as exc:
            raise ConfigurationError(
                f"{owner}(tracing=True) needs OpenTelemetry (opentelemetry-api and "
                f"opentelemetry-sdk): pip install 'fournines[otel]'"
            ) from exc
        from .. import __version__  # noqa: PLC0415
        from ..asgi.tracing import SpanEventListener, _span_events, inject_headers  # noqa: PLC0415

        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._tracer = provider.get_tracer("fournines.client", __version__)
        self._kind = trace.SpanKind.CLIENT
        self._set_span_in_context = trace.set_span_in_context
        self._attach = context.attach
        self._detach = context.detach
        self._status = trace.Status
        self._error = trace.StatusCode.ERROR
        self._inject = inject_headers
        self._events = SpanEventListener()
        # TracingMiddleware's process-wide listener already records every event on the
        # current span (ours, during a request): recording again would double them.
        self._global_events = _span_events
        self._warned = False

    def record_event(self, event: Event) -> None:
        """Add a resilience event to the current span (a listener of the transport)."""
        if isinstance(event, ClientRequestStarted | ClientRequestFinished):
            return
        if self._global_events in global_listeners():
            return
        self._events(event)

    def start(self, request: httpx.Request) -> tuple[Any, Any]:
        """Open the request's span, make it current and put its context in the headers."""
        url = request.url
        raw = request.method
        method = raw if raw in _METHODS else "_OTHER"
        if url.userinfo:
            url = url.copy_with(username=None, password=None)
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "server.address": url.host,
            "server.port": url.port or _DEFAULT_PORTS.get(url.scheme, 0),
            "url.full": str(url),
            "url.scheme": url.scheme,
        }
        if method != raw:
            attributes["http.request.method_original"] = raw
        span = self._tracer.start_span(
            method if method != "_OTHER" else "HTTP", kind=self._kind, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        )
        token = None
        try:
            token = self._attach(self._set_span_in_context(span))
            self._inject(request.headers)
        except BaseException:
            # Half started is not started: leave the caller's context and no open span.
            if token is not None:
                self._detach(token)
            span.end()
            raise
        return span, token

    def failed(self, step: str) -> None:
        """Log that a span could not ``step`` (the request goes on); a traceback once."""
        if self._warned:
            _log.debug("fournines client span could not %s", step, exc_info=True)
            return
        self._warned = True
        _log.warning("fournines client span could not %s; requests go on untraced "
                     "(logged once per transport)", step, exc_info=True)

    def end(self, span: Any, token: Any, response: httpx.Response | None,
            error: BaseException | None) -> None:
        """Record the outcome on the span, end it and restore the caller's context."""
        try:
            if response is not None:
                status = response.status_code
                span.set_attribute("http.response.status_code", status)
                if status >= 400:
                    span.set_attribute("error.type", str(status))
                    span.set_status(self._status(self._error))
            elif error is not None:
                span.set_attribute("error.type", type(error).__qualname__)
                span.record_exception(error)
                span.set_status(self._status(self._error, f"{type(error).__name__}: {error}"))
        finally:
            self._detach(token)
            span.end()
