"""Connection pool metrics for Prometheus, read from each pool's public API at scrape time.

:class:`PoolMetrics` is a ``prometheus_client`` collector: add the pools a service
uses (``metrics.add(pool, name="orders")``) and every scrape reports, per pool
(the ``pool`` label):

=================================================  =======  ===============================
name                                               type     from
=================================================  =======  ===============================
``fournines_db_pool_connections``                  gauge    open connections (all kinds)
``fournines_db_pool_in_use``                       gauge    checked out (all kinds)
``fournines_db_pool_idle``                         gauge    ready to hand out (all kinds)
``fournines_db_pool_max``                          gauge    the most it opens (asyncpg, psycopg)
``fournines_db_pool_waiting``                      gauge    requests waiting (all kinds)
``fournines_db_pool_acquires_total``               counter  connections requested (psycopg)
``fournines_db_pool_acquire_wait_seconds_total``   counter  time spent waiting (psycopg)
``fournines_db_pool_acquire_seconds``              histo.   time to get a connection (all)
=================================================  =======  ===============================

Sources: asyncpg's ``Pool.get_size()`` / ``get_idle_size()`` / ``get_max_size()``,
psycopg_pool's ``get_stats()``, SQLAlchemy's ``QueuePool.checkedin()`` /
``checkedout()``. A pool that cannot tell a number leaves that metric out rather
than guessing it from private attributes; the mean wait for a connection is
``rate(..._acquire_wait_seconds_total) / rate(..._acquires_total)``.
Reading is cheap and happens only when Prometheus scrapes.

Neither asyncpg nor SQLAlchemy has a hook where an acquire *starts* (SQLAlchemy's
``checkout`` event and asyncpg's ``setup`` run after the wait), so for them the
acquire latency histogram and ``waiting`` count the acquires fournines makes:
:func:`~fournines.data.transaction`, :func:`~fournines.data.transaction_sync` and
:func:`~fournines.data.pool_check` on a pool added here (a connection the application
takes by itself is not in them). psycopg_pool's ``waiting`` is its own (every request);
its histogram too counts fournines' acquires.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from .._errors import ConfigurationError
from .._histogram import bucket_labels, check_buckets
from ._watch import DEFAULT_BUCKETS, Watch, pool_key, unwatch, watch

__all__ = ["ConsumerMetrics", "PoolMetrics"]

_GAUGES = {
    "connections": "Open connections of the pool.",
    "in_use": "Connections of the pool checked out.",
    "idle": "Connections of the pool ready to hand out.",
    "max": "The most connections the pool opens.",
    "waiting": "Requests waiting for a connection of the pool.",
}
_COUNTERS = {
    "acquires": "Connections requested from the pool.",
    "acquire_wait_seconds": "Seconds requests waited for a connection of the pool.",
}


def _kind(pool: object) -> str | None:
    module = type(pool).__module__.partition(".")[0]
    if module == "asyncpg" and callable(getattr(pool, "get_idle_size", None)):
        return "asyncpg"
    if module == "psycopg_pool" and callable(getattr(pool, "get_stats", None)):
        return "psycopg"
    if module == "sqlalchemy":
        from sqlalchemy import Engine  # noqa: PLC0415 - drivers load on use
        from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: PLC0415

        if isinstance(pool, Engine | AsyncEngine):
            return "sqlalchemy"
    return None


def _read_pool(pool: Any) -> dict[str, float]:
    """The numbers ``pool`` tells through its public API (names as the metrics', no prefix)."""
    kind = _kind(pool)
    if kind == "asyncpg":
        size, idle = pool.get_size(), pool.get_idle_size()
        return {"connections": size, "in_use": size - idle, "idle": idle,
                "max": pool.get_max_size()}
    if kind == "psycopg":
        stats = pool.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        return {"connections": size, "in_use": size - idle, "idle": idle,
                "max": stats.get("pool_max", 0), "waiting": stats.get("requests_waiting", 0),
                "acquires": stats.get("requests_num", 0),
                "acquire_wait_seconds": stats.get("requests_wait_ms", 0) / 1000}
    if kind == "sqlalchemy":
        queue = pool.pool  # the engine's pool (AsyncEngine proxies it too)
        idle, in_use = queue.checkedin(), queue.checkedout()
        return {"connections": idle + in_use, "in_use": in_use, "idle": idle}
    raise ConfigurationError(
        "PoolMetrics.add.pool must be an asyncpg Pool, a psycopg_pool pool or a SQLAlchemy "
        f"Engine or AsyncEngine, got {type(pool).__name__}")


class PoolMetrics:
    """A ``prometheus_client`` collector of connection pools (see the table above).

    :param registry: a ``prometheus_client.CollectorRegistry`` (default: the global one).
    :param prefix: the metric names' prefix.
    :param buckets: the acquire latency histogram's upper bounds, in seconds (a pool
        watched by several ``PoolMetrics`` keeps the first one's).
    """

    def __init__(self, registry: Any = None, *, prefix: str = "fournines",
                 buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        try:
            import prometheus_client as prom  # noqa: PLC0415 - optional dependency
        except ImportError as exc:
            raise ConfigurationError(
                "PoolMetrics needs prometheus_client: pip install 'fournines[prometheus]'"
            ) from exc
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError(f"PoolMetrics.prefix must be a non-empty str, got {prefix!r}")
        self._buckets = check_buckets("PoolMetrics", buckets)
        self._prefix = f"{prefix}_db_pool"
        self._pools: dict[str, tuple[Any, Any, Watch]] = {}
        self._lock = threading.Lock()
        (registry if registry is not None else prom.REGISTRY).register(self)

    def add(self, pool: Any, *, name: str) -> None:
        """Report ``pool`` under the label ``pool=name`` (replacing one of that name)."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"PoolMetrics.add.name must be a non-empty str, got {name!r}")
        _read_pool(pool)  # refuses an unsupported pool now, not at the first scrape
        key = pool_key(pool)
        timing = watch(key, self._buckets)
        with self._lock:
            previous = self._pools.get(name)
            self._pools[name] = (pool, key, timing)
        if previous is not None:
            unwatch(previous[1])

    def remove(self, name: str) -> None:
        """Stop reporting the pool added as ``name`` (a pool closed for good)."""
        with self._lock:
            previous = self._pools.pop(name, None)
        if previous is not None:
            unwatch(previous[1])

    def collect(self) -> Iterator[Any]:
        """The metrics of every pool, read now (called by ``prometheus_client``)."""
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        with self._lock:
            pools = list(self._pools.items())
        families: dict[str, Any] = {
            **{key: GaugeMetricFamily(f"{self._prefix}_{key}", text, labels=["pool"])
               for key, text in _GAUGES.items()},
            **{key: CounterMetricFamily(f"{self._prefix}_{key}", text, labels=["pool"])
               for key, text in _COUNTERS.items()},
        }
        latency = HistogramMetricFamily(
            f"{self._prefix}_acquire_seconds",
            "Seconds fournines waited to get a connection of the pool.", labels=["pool"])
        for name, (pool, _, timing) in pools:
            try:
                values = _read_pool(pool)
            except Exception:  # a pool closed under us: no numbers this scrape
                continue
            counts, total, waiting = timing.snapshot()
            values.setdefault("waiting", waiting)
            for key, value in values.items():
                families[key].add_metric([name], value)
            cumulative, buckets = 0, []
            # The watch's own bounds: a pool watched by two PoolMetrics has the first's.
            for bound, count in zip(bucket_labels(timing.bounds), counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            latency.add_metric([name], buckets, total)
        yield from families.values()
        yield latency

    def describe(self) -> Iterator[Any]:
        """No fixed description: the metrics are read at each scrape."""
        return iter(())


class ConsumerMetrics:
    """A listener that counts what idempotent consumers do, for ``prometheus_client``.

    Pass it in a consumer's ``listeners`` (or :func:`~fournines.add_listener` it); per
    consumer (the ``consumer`` label) it reports ``fournines_consumer_consumed_total``,
    ``_acked_total``, ``_duplicates_total`` (redeliveries the inbox suppressed),
    ``_retried_total`` (label ``step``: the ladder step), ``_dead_lettered_total``
    (label ``reason``) and the histogram ``fournines_consumer_handler_seconds``
    (receipt to settlement).

    :param registry: a ``prometheus_client.CollectorRegistry`` (default: the global one).
    :param prefix: the metric names' prefix.
    """

    def __init__(self, registry: Any = None, *, prefix: str = "fournines") -> None:
        try:
            import prometheus_client as prom  # noqa: PLC0415 - optional dependency
        except ImportError as exc:
            raise ConfigurationError(
                "ConsumerMetrics needs prometheus_client: pip install 'fournines[prometheus]'"
            ) from exc
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError(
                f"ConsumerMetrics.prefix must be a non-empty str, got {prefix!r}")
        reg = registry if registry is not None else prom.REGISTRY
        name = f"{prefix}_consumer"
        self._consumed = prom.Counter(f"{name}_consumed", "Messages settled by the consumer.",
                                      ["consumer"], registry=reg)
        self._acked = prom.Counter(f"{name}_acked", "Messages applied and acked.",
                                   ["consumer"], registry=reg)
        self._duplicates = prom.Counter(
            f"{name}_duplicates", "Redeliveries the inbox recognised: acked, not applied again.",
            ["consumer"], registry=reg)
        self._retried = prom.Counter(f"{name}_retried", "Messages sent to a retry ladder step.",
                                     ["consumer", "step"], registry=reg)
        self._dead = prom.Counter(f"{name}_dead_lettered", "Messages sent to the dead letters.",
                                  ["consumer", "reason"], registry=reg)
        self._seconds = prom.Histogram(f"{name}_handler_seconds",
                                       "Seconds from receipt to settlement.", ["consumer"],
                                       registry=reg)

    def __call__(self, event: object) -> None:
        """Count a ``MessageHandled`` event; ignore every other."""
        from ._rabbitmq import MessageHandled  # noqa: PLC0415

        if not isinstance(event, MessageHandled):
            return
        self._consumed.labels(event.name).inc()
        self._seconds.labels(event.name).observe(event.seconds)
        if event.outcome == "acked":
            self._acked.labels(event.name).inc()
        elif event.outcome == "duplicate":
            self._acked.labels(event.name).inc()
            self._duplicates.labels(event.name).inc()
        elif event.outcome == "retried":
            self._retried.labels(event.name, str(event.step)).inc()
        else:
            self._dead.labels(event.name, event.reason or "").inc()
