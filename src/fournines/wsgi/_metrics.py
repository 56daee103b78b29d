"""The golden metrics of a WSGI app: the ASGI edge's names and labels, recorded from threads.

The series are those of :mod:`fournines.asgi.metrics` (``http_request_duration_seconds``,
``http_requests_total`` with ``method``, ``route``, ``status``, and
``http_requests_in_flight``), so dashboards, SLO specs and alerts written for an
ASGI service read a Django or Flask one unchanged. The event-loop gauges are left
out: a WSGI worker has no event loop.

WSGI workers serve requests on threads, so the values live in prometheus_client's
own (locked) metric objects, their children resolved once per series; in
multi-process mode (``PROMETHEUS_MULTIPROC_DIR``: gunicorn with several workers)
the same objects write the shared files, and ``/metrics`` merges every worker's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError
from .._events import add_listener, remove_listener
from ..asgi.metrics import LABELS, REQUEST_DURATION, REQUESTS_TOTAL

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ..instrumentation.prometheus import PrometheusListener

__all__ = ["WsgiMetrics"]

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class WsgiMetrics:
    """The request histogram, counter and in-flight gauge of one protected WSGI app."""

    def __init__(self, *, registry: CollectorRegistry | None, buckets: Sequence[float],
                 multiprocess: bool | None, resilience_events: bool,
                 process_metrics: bool = True) -> None:
        try:
            import prometheus_client as prom  # noqa: PLC0415 - optional dependency
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "protect_wsgi(metrics=True) needs prometheus_client: "
                "pip install 'fournines[wsgi]'") from exc
        multiproc_dir = os.environ.get(_MULTIPROC_ENV)
        if multiprocess is None:
            multiprocess = bool(multiproc_dir)
        if multiprocess and not multiproc_dir:
            raise ConfigurationError(
                f"protect_wsgi.multiprocess needs {_MULTIPROC_ENV} set to a writable "
                "directory (before prometheus_client is imported)")
        self.multiprocess = multiprocess
        self.events_listener: PrometheusListener | None = None
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        if multiprocess:
            from prometheus_client import multiprocess as mp  # noqa: PLC0415

            self.registry = registry if registry is not None else prom.CollectorRegistry()
            mp.MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
            target = None
            events_registry: CollectorRegistry = prom.CollectorRegistry()
        else:
            self.registry = registry if registry is not None else prom.REGISTRY
            target = self.registry
            events_registry = self.registry
        try:
            self._duration = prom.Histogram(REQUEST_DURATION, "HTTP request duration in seconds.",
                                            LABELS, buckets=tuple(buckets), registry=target)
            self._count = prom.Counter(REQUESTS_TOTAL, "HTTP requests handled.", LABELS,
                                       registry=target)
            self._in_flight = prom.Gauge("http_requests_in_flight", "HTTP requests in progress.",
                                         registry=target, multiprocess_mode="livesum")
            if not multiprocess and process_metrics and self.registry is not prom.REGISTRY:
                prom.ProcessCollector(registry=self.registry)
                prom.PlatformCollector(registry=self.registry)
        except ValueError as exc:
            raise _duplicate(exc) from exc
        if resilience_events:
            from ..instrumentation.prometheus import PrometheusListener  # noqa: PLC0415

            try:
                self.events_listener = PrometheusListener(events_registry)
            except ValueError as exc:
                raise _duplicate(exc) from exc
            add_listener(self.events_listener)
        self.started = self._in_flight.inc
        self.ended = self._in_flight.dec

    def observe(self, key: tuple[str, str, int], duration: float) -> None:
        """Count one request of (method, route, status) that took ``duration`` seconds."""
        series = self._series.get(key)
        if series is None:
            labels = (key[0], key[1], str(key[2]))
            # Two threads may resolve the same children at once: labels() returns the
            # same objects to both, so the race costs nothing.
            series = (self._duration.labels(*labels), self._count.labels(*labels))
            self._series[key] = series
        series[0].observe(duration)
        series[1].inc()

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The body and content type of a scrape with this ``Accept`` header."""
        from prometheus_client.exposition import choose_encoder  # noqa: PLC0415

        try:
            encoder, content_type = choose_encoder(accept)
        except (TypeError, ValueError):
            # A client's odd Accept parameters must not turn every scrape into a 500.
            encoder, content_type = choose_encoder("")
        return encoder(self.registry), content_type

    def close(self) -> None:
        """Stop counting policy events into this registry; a dying worker's gauges stop."""
        if self.events_listener is not None:
            remove_listener(self.events_listener)
            self.events_listener = None
        if self.multiprocess:
            from prometheus_client import multiprocess as mp  # noqa: PLC0415

            mp.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _duplicate(exc: ValueError) -> ConfigurationError:
    return ConfigurationError(
        f"protect_wsgi: {exc}. The golden metrics are already registered on this "
        "registry; pass registry=prometheus_client.CollectorRegistry() to each app instance")
