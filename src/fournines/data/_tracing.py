"""Traces across a message: the producer's context in the headers, a consumer span after.

:func:`inject_context` adds the current OpenTelemetry context (W3C ``traceparent`` /
``tracestate`` with the default propagator) to a message's headers when
:func:`~fournines.data.outbox.add` writes it; the relay sends the headers as they are,
and :class:`MessageTracer` opens one ``CONSUMER`` span per delivery whose parent is
that context, current while the handler runs, so the handler's own spans and
outgoing calls join the producer's trace. Nothing here depends on the broker: the
RabbitMQ consumer passes ``system="rabbitmq"``, a Kafka one would pass ``"kafka"``.

Span name and attributes follow OpenTelemetry's messaging semantic conventions:
``process <destination>``, ``messaging.system``, ``messaging.destination.name``,
``messaging.operation.type`` / ``.name`` = ``process``, ``messaging.message.id``,
plus ``fournines.consumer.outcome`` and ``fournines.consumer.attempt``.

Headers are untrusted input: a value that is not text, or a malformed
``traceparent``, starts a new trace rather than failing the delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

from .._errors import ConfigurationError

__all__ = ["MessageTracer", "inject_context"]

_log = logging.getLogger("fournines.data")

_propagate: Any = None  # opentelemetry.propagate once imported; False when not installed


def _propagate_module() -> Any:
    global _propagate  # noqa: PLW0603 - one import attempt per process
    if _propagate is None:
        try:
            from opentelemetry import propagate  # noqa: PLC0415 - optional dependency
        except ImportError:
            _propagate = False
        else:
            _propagate = propagate
    return _propagate


def inject_context(headers: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Add the current trace context to ``headers`` (unless they carry one); return them.

    Without OpenTelemetry, or without a current span, ``headers`` are left as they are.
    """
    propagate = _propagate_module()
    if propagate is False:
        return headers
    carrier: dict[str, str] = {}
    try:
        propagate.inject(carrier)
    except Exception:  # a broken propagator must not fail the business transaction
        _log.debug("could not inject the trace context into a message", exc_info=True)
        return headers
    for name, value in carrier.items():
        headers.setdefault(name, value)
    return headers


def _getter() -> Any:
    from opentelemetry.propagators.textmap import Getter  # noqa: PLC0415

    class HeaderGetter(Getter[Mapping[str, Any]]):
        """Reads AMQP/Kafka headers: text or UTF-8 bytes; anything else is absent."""

        def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
            value = carrier.get(key)
            if isinstance(value, bytes):
                try:
                    value = value.decode()
                except UnicodeDecodeError:
                    return None
            return [value] if isinstance(value, str) else None

        def keys(self, carrier: Mapping[str, Any]) -> list[str]:
            return [key for key in carrier if isinstance(key, str)]

    return HeaderGetter()


class MessageTracer:
    """Opens and ends the ``CONSUMER`` span of each delivery (tracing on).

    :param owner: what to name in a configuration error (``"consumer"``).
    :param tracer_provider: where spans go (default: OpenTelemetry's global provider).
    :param system: ``messaging.system`` (``"rabbitmq"``, ``"kafka"``).
    """

    __slots__ = ("_attach", "_current_span", "_detach", "_error", "_extract", "_getter",
                 "_kind", "_set_span_in_context", "_status", "_system", "_tracer")

    def __init__(self, owner: str, tracer_provider: Any, *, system: str) -> None:
        try:
            from opentelemetry import context, propagate, trace  # noqa: PLC0415
        except ImportError as exc:
            raise ConfigurationError(
                f"{owner}(tracing=True) needs OpenTelemetry (opentelemetry-api and "
                "opentelemetry-sdk): pip install 'fournines[otel]'") from exc
        from .. import __version__  # noqa: PLC0415

        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._tracer = provider.get_tracer("fournines.data", __version__)
        self._kind = trace.SpanKind.CONSUMER
        self._extract = propagate.extract
        self._getter = _getter()
        self._set_span_in_context = trace.set_span_in_context
        self._attach = context.attach
        self._detach = context.detach
        self._status = trace.Status
        self._error = trace.StatusCode.ERROR
        self._system = system
        self._current_span = trace.get_current_span

    def start(self, headers: Mapping[str, Any], destination: str, message_id: str | None,
              attributes: Mapping[str, Any] | None = None) -> Any:
        """Open a span continuing the context in ``headers``; end it with ``span.end()``."""
        try:
            parent = self._extract(headers, getter=self._getter)
        except Exception:  # untrusted headers: a new trace, never a failed delivery
            parent = None
        span_attributes: dict[str, Any] = {
            "messaging.system": self._system,
            "messaging.destination.name": destination,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            # Overwritten when the delivery is settled; left as is if it never was
            # (the channel closed: the broker delivers it again).
            "fournines.consumer.outcome": "unsettled",
        }
        if message_id:
            span_attributes["messaging.message.id"] = message_id
        if attributes:
            span_attributes.update({k: v for k, v in attributes.items() if v is not None})
        return self._tracer.start_span(
            f"process {destination}", context=parent, kind=self._kind,
            attributes=span_attributes, record_exception=False, set_status_on_exception=False)

    def enter(self, span: Any) -> Any:
        """Make ``span`` current; the token to pass to :meth:`leave`."""
        return self._attach(self._set_span_in_context(span))

    def leave(self, token: Any) -> None:
        """Restore the context :meth:`enter` replaced."""
        self._detach(token)

    def record(self, span: Any, outcome: str, error: BaseException | None = None) -> None:
        """Set ``span``'s outcome (and the failure, if any); a failure marks it ``ERROR``."""
        span.set_attribute("fournines.consumer.outcome", outcome)
        if error is not None:
            span.set_attribute("error.type", type(error).__qualname__)
            span.record_exception(error)
            span.set_status(self._status(self._error, f"{type(error).__name__}: {error}"))

    def record_current(self, outcome: str, error: BaseException | None = None) -> None:
        """:meth:`record` on the current span (the delivery's, during its settlement)."""
        self.record(self._current_span(), outcome, error)
