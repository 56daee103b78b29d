"""Golden metrics of a gRPC server, per method and status code.

=================================  =========  ===============================================
metric                             type       labels / meaning
=================================  =========  ===============================================
``grpc_server_handling_seconds``   histogram  grpc_type, grpc_service, grpc_method, grpc_code:
                                              time inside the handler
``grpc_server_handled_total``      counter    the same labels (the histogram's count)
``grpc_server_in_flight``          gauge      RPCs inside their handler now
=================================  =========  ===============================================

The names and labels are those of go-grpc-prometheus / py-grpc-prometheus, so
the dashboards and SLO queries written for them carry over; the buckets are the
ASGI metrics' (:data:`fournines.asgi.metrics.DEFAULT_BUCKETS`, with the 300 ms
bound). Calls the interceptor refuses (shed, rate limited, draining, expired)
are counted with their code and a duration of 0: they are what the callers
saw. ``grpc_type`` is ``unary``, ``client_stream``, ``server_stream`` or
``bidi_stream``; ``grpc_code`` the status code's name (``OK``,
``RESOURCE_EXHAUSTED``). Only methods the server has a handler for are
counted, so a client cannot mint label values with made-up method names.

As in :class:`~fournines.asgi.MetricsMiddleware`, the request path keeps plain
per-series bucket counts (one dict look-up, one bisect) and a collector turns
them into metric families when Prometheus scrapes. Serve them the usual way:
``prometheus_client.start_http_server(port, registry=...)``.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from .._errors import ConfigurationError
from .._histogram import Series, bucket_labels, check_buckets, fill_families

# The ASGI metrics' bounds: one set of buckets for every edge of a service, so one
# latency objective reads the same everywhere.
from ..asgi.metrics import DEFAULT_BUCKETS

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = ["RpcMetrics"]

LABELS = ("grpc_type", "grpc_service", "grpc_method", "grpc_code")



class _Collector:
    def __init__(self, owner: RpcMetrics) -> None:
        self._owner = owner

    def describe(self) -> Iterable[Metric]:
        return self._families(samples=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(samples=True)

    def _families(self, *, samples: bool) -> Iterator[Metric]:
        from prometheus_client.metrics_core import (  # noqa: PLC0415 - optional dependency
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        owner = self._owner
        histogram = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Time gRPC handlers took, in seconds.", labels=LABELS)
        counter = CounterMetricFamily("grpc_server_handled_total",
                                      "RPCs completed on the server.", labels=LABELS)
        in_flight = GaugeMetricFamily("grpc_server_in_flight", "RPCs inside their handler.")
        if samples:
            fill_families(histogram, counter, list(owner._series.values()),
                          owner._bucket_labels)
            in_flight.add_metric([], float(owner.in_flight))
        yield histogram
        yield counter
        yield in_flight


class RpcMetrics:
    """Per-method golden metrics of a gRPC server (see the module docstring).

    Give it to :class:`ServerInterceptor` or :class:`AioServerInterceptor`
    (``metrics=``). Safe for the threads of a sync server.

    :param registry: a ``prometheus_client.CollectorRegistry`` to register on
        (default: prometheus_client's global ``REGISTRY``).
    :param buckets: histogram bounds in seconds, increasing.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None,
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        try:
            import prometheus_client as prom  # noqa: PLC0415 - optional dependency
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "RpcMetrics needs prometheus_client: pip install 'fournines[grpc,prometheus]'"
            ) from exc
        self._bounds = check_buckets("RpcMetrics", buckets)
        self._bucket_labels = bucket_labels(self._bounds)
        self._series: dict[tuple[str, str, str], Series] = {}
        self._lock = threading.Lock()
        self.in_flight = 0
        """RPCs inside their handler now."""
        self.registry = registry if registry is not None else prom.REGISTRY
        try:
            self.registry.register(_Collector(self))
        except ValueError as exc:
            raise ConfigurationError(
                f"RpcMetrics: {exc}. An RpcMetrics is already registered on this registry; "
                "pass registry=prometheus_client.CollectorRegistry() to each server"
            ) from exc

    def started(self) -> None:
        """One RPC entered its handler."""
        self._lock.acquire()
        self.in_flight += 1
        self._lock.release()

    def observe(self, kind: str, method: str, code: str, duration: float) -> None:
        """One RPC of ``kind`` to ``method`` (``/pkg.Service/Method``) ended with ``code``."""
        key = (kind, method, code)
        self._lock.acquire()
        try:
            self.in_flight -= 1
            series = self._series.get(key)
            if series is None:
                service, _, name = method.lstrip("/").rpartition("/")
                series = Series((kind, service, name, code), len(self._bounds) + 1)
                self._series[key] = series
            series.counts[bisect_left(self._bounds, duration)] += 1
            series.total += duration
        finally:
            self._lock.release()

    def __repr__(self) -> str:
        return f"RpcMetrics(series={len(self._series)}, in_flight={self.in_flight})"
