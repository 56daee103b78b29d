"""A listener that counts fournines events in ``prometheus_client`` metrics.

Metric names (the ``fournines_`` prefix can be changed):

=====================================================  =========  ==========================
name                                                   type       labels
=====================================================  =========  ==========================
``fournines_circuit_breaker_state``                    gauge      name, state (1 = current)
``fournines_circuit_breaker_transitions_total``        counter    name, from_state, to_state
``fournines_rejections_total``                         counter    policy, name, reason
``fournines_retries_total``                            counter    name
``fournines_retries_exhausted_total``                  counter    name, reason
``fournines_retry_budget_exhausted_total``             counter    name
``fournines_fallbacks_total``                          counter    name, kind (value, stale)
``fournines_deadline_exceeded_total``                  counter    name
``fournines_client_hedges_total``                      counter    name (host)
``fournines_endpoint_ejections_total``                 counter    name, endpoint
``fournines_malformed_headers_total``                  counter    name, header
``fournines_loop_lag_unrelieved_total``                counter    name (shedder)
``fournines_keyed_limiter_evictions_total``            counter    name, kind (see below)
``fournines_registry_registered``                      gauge      service, instance (1 = in)
``fournines_registry_reregistrations_total``           counter    service, reason
``fournines_discovery_endpoints``                      gauge      service
``fournines_discovery_interruptions_total``            counter    service, reason
``fournines_discovery_stale_seconds``                  gauge      service
``fournines_config_revision``                          gauge      key
``fournines_config_changes_total``                     counter    key
``fournines_config_rejections_total``                  counter    key
``fournines_config_source``                            gauge      key, source (1 = current)
``http_client_request_duration_seconds``               histogram  host, method, status_class
``http_client_requests_in_flight``                     gauge      host
``http_client_host_evictions_total``                   counter    kind (evicted, overflow)
=====================================================  =========  ==========================

The ``http_client_*`` metrics are the client golden metrics of the resilient
httpx transports (from ``ClientRequestStarted`` / ``ClientRequestFinished``):
one observation per request, retries and hedges included, timed until the
response headers (or the error); ``host`` names at most ``max_hosts`` hosts (later
ones, and the overflow, are ``_other``); ``status_class`` is ``2xx`` ... ``5xx``, or
``error`` when no response came. ``fournines_loop_lag_unrelieved_total`` counts
the event-loop lag measurements a load shedder saw above its ``max_loop_lag``
with fewer requests in flight than its ``lag_floor`` (lag it did not shed for:
the service is not its cause); a 408 for a request body that did not arrive in
time is ``fournines_rejections_total{policy="load_shedder",reason="body_timeout"}``.
``fournines_keyed_limiter_evictions_total`` counts the keys a ``KeyedLimiter``
forgot (``kind="idle"``: full buckets, by time; ``"pressure"``: full buckets
dropped early at ``max_keys``) and the new keys it refused at ``max_keys``
(``"refused"``; also ``fournines_rejections_total{reason="max_keys"}``).
``fournines_registry_registered`` is 1 while a registry holds an instance's record
in the store and 0 once it lost it (or deregistered it); each ``re-registered`` after a
loss counts in ``fournines_registry_reregistrations_total`` under the loss's reason.
``fournines_discovery_endpoints`` is the number of endpoints discovery serves for a
service, and ``fournines_discovery_interruptions_total`` counts its losses of sight
(``compacted``, ``disconnected``); ``fournines_discovery_stale_seconds`` is, at each
scrape, how long a service's discovery has been out of sync (0 while it watches).
``fournines_config_revision`` is the etcd revision of the value a ``ConfigWatcher``
has in force (a snapshot's: the revision saved; 0: the default), and
``fournines_config_source`` says where it came from (``etcd``, ``snapshot``,
``default``); ``fournines_config_changes_total`` counts the values that changed the
configuration (the first one at start included) and
``fournines_config_rejections_total`` the values refused (the last good one stayed).
Both counters exist, at 0, from a key's first event on.
Hedges (``RetryScheduled`` with policy ``"hedge"``) are counted in
``fournines_client_hedges_total``, not as retries.

``prometheus_client`` is an optional dependency: ``pip install fournines[prometheus]``.
"""

from __future__ import annotations

import time
from typing import Any

from .._errors import ConfigurationError
from .._events import (
    BudgetExhausted,
    CallRejected,
    ClientRequestFinished,
    ClientRequestStarted,
    ConfigApplied,
    ConfigChanged,
    ConfigRejected,
    DeadlineExceeded,
    DiscoveryInterrupted,
    DiscoveryResumed,
    EndpointEjected,
    EndpointsChanged,
    Event,
    FallbackUsed,
    HostEvicted,
    KeysEvicted,
    LoopLagUnrelieved,
    MalformedHeader,
    RegistrationChanged,
    RetriesExhausted,
    RetryScheduled,
    StateChanged,
)

__all__ = ["PrometheusListener"]

_STATES = ("closed", "open", "half_open", "forced_open", "forced_closed")
_CONFIG_SOURCES = ("etcd", "snapshot", "default")


class PrometheusListener:
    """Count events in Prometheus metrics registered on ``registry``.

    :param registry: a ``prometheus_client.CollectorRegistry`` (default: the global one).
    :param prefix: the metric name prefix.
    """

    def __init__(self, registry: Any = None, *, prefix: str = "fournines") -> None:
        try:
            import prometheus_client as prom  # noqa: PLC0415 - optional dependency
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "PrometheusListener needs prometheus_client: pip install 'fournines[prometheus]'"
            ) from exc
        reg = registry if registry is not None else prom.REGISTRY
        p = prefix
        self.state = prom.Gauge(f"{p}_circuit_breaker_state",
                                "Circuit breaker state (1 for the current one).",
                                ["name", "state"], registry=reg)
        self.transitions = prom.Counter(f"{p}_circuit_breaker_transitions",
                                        "Circuit breaker state transitions.",
                                        ["name", "from_state", "to_state"], registry=reg)
        self.rejections = prom.Counter(f"{p}_rejections", "Calls rejected by a policy.",
                                       ["policy", "name", "reason"], registry=reg)
        self.retries = prom.Counter(f"{p}_retries", "Retries scheduled.", ["name"], registry=reg)
        self.exhausted = prom.Counter(f"{p}_retries_exhausted", "Retrying gave up.",
                                      ["name", "reason"], registry=reg)
        self.budget = prom.Counter(f"{p}_retry_budget_exhausted",
                                   "Retries refused by an empty retry budget.", ["name"],
                                   registry=reg)
        self.fallbacks = prom.Counter(f"{p}_fallbacks", "Answers given by a fallback.",
                                      ["name", "kind"], registry=reg)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.deadlines = prom.Counter(f"{p}_deadline_exceeded", "Calls that hit their deadline.",
                                      ["name"], registry=reg)
        self.hedges = prom.Counter(f"{p}_client_hedges", "Hedged attempts sent.", ["name"],
                                   registry=reg)
        self.ejections = prom.Counter(f"{p}_endpoint_ejections",
                                      "Endpoints ejected by a client balancer.",
                                      ["name", "endpoint"], registry=reg)
        self.malformed = prom.Counter(f"{p}_malformed_headers",
                                      "Request headers ignored because their value was "
                                      "malformed.", ["name", "header"], registry=reg)
        self.lag_unrelieved = prom.Counter(
            f"{p}_loop_lag_unrelieved",
            "Event-loop lag measurements above a load shedder's max_loop_lag taken "
            "below its lag_floor (not shed for).", ["name"], registry=reg)
        self.key_evictions = prom.Counter(
            f"{p}_keyed_limiter_evictions",
            "Keys a KeyedLimiter forgot (idle: full buckets; pressure: full, dropped early "
            "at max_keys) or new keys it refused at max_keys.", ["name", "kind"],
            registry=reg)
        self.registered = prom.Gauge(
            f"{p}_registry_registered",
            "Whether a service registry holds the instance's record (1) or lost it (0).",
            ["service", "instance"], registry=reg)
        self.reregistrations = prom.Counter(
            f"{p}_registry_reregistrations",
            "Instances registered again after their record was lost.", ["service", "reason"],
            registry=reg)
        self.discovered = prom.Gauge(f"{p}_discovery_endpoints",
                                     "Endpoints discovery serves for a service.", ["service"],
                                     registry=reg)
        self.interruptions = prom.Counter(
            f"{p}_discovery_interruptions",
            "Times discovery lost its watch (the last known endpoints stay in use).",
            ["service", "reason"], registry=reg)
        self.config_revision = prom.Gauge(
            f"{p}_config_revision", "The etcd revision of the configuration in force.",
            ["key"], registry=reg)
        self.config_changes = prom.Counter(
            f"{p}_config_changes", "Values that changed a configuration.", ["key"],
            registry=reg)
        self.config_rejections = prom.Counter(
            f"{p}_config_rejections",
            "Configuration values refused (the last good one stayed in force).", ["key"],
            registry=reg)
        self.config_source = prom.Gauge(
            f"{p}_config_source",
            "Where the configuration in force came from (1 for the current source).",
            ["key", "source"], registry=reg)
        self.stale = _StaleCollector(f"{p}_discovery_stale_seconds")
        reg.register(self.stale)
        self.client_duration = prom.Histogram(
            "http_client_request_duration_seconds",
            "Outgoing HTTP request duration in seconds (retries and hedges included).",
            ["host", "method", "status_class"], registry=reg)
        self.client_in_flight = prom.Gauge("http_client_requests_in_flight",
                                           "Outgoing HTTP requests in progress.", ["host"],
                                           registry=reg)
        self.host_evictions = prom.Counter(
            "http_client_host_evictions",
            "Hosts whose client policies were evicted, or that shared the overflow's "
            "(thrashing: max_hosts too small).", ["kind"], registry=reg)

    def _child(self, metric: Any, *labels: str) -> Any:
        # labels() costs several microseconds (validation, a lock, a dict of tuples);
        # a shedding server sends thousands of rejections a second through here.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def __call__(self, event: Event) -> None:
        """Count ``event``."""
        if isinstance(event, CallRejected):
            self._child(self.rejections, event.policy, event.name, event.reason).inc(event.count)
        elif isinstance(event, StateChanged):
            self.transitions.labels(event.name, event.old, event.new).inc()
            for state in _STATES:
                self.state.labels(event.name, state).set(1 if state == event.new else 0)
        elif isinstance(event, ClientRequestFinished):
            status = event.status_code
            status_class = "error" if status is None else f"{status // 100}xx"
            self._child(self.client_in_flight, event.name).dec()
            self._child(self.client_duration, event.name, event.method,
                        status_class).observe(event.duration)
        elif isinstance(event, ClientRequestStarted):
            self._child(self.client_in_flight, event.name).inc()
        elif isinstance(event, RetryScheduled):
            if event.policy == "hedge":
                self._child(self.hedges, event.name).inc()
            else:
                self._child(self.retries, event.name).inc()
        elif isinstance(event, RetriesExhausted):
            self.exhausted.labels(event.name, event.reason).inc()
        elif isinstance(event, BudgetExhausted):
            self.budget.labels(event.name).inc()
        elif isinstance(event, FallbackUsed):
            kind = "value" if event.stale_age is None else "stale"
            self.fallbacks.labels(event.name, kind).inc()
        elif isinstance(event, DeadlineExceeded):
            self.deadlines.labels(event.name).inc()
        elif isinstance(event, EndpointEjected):
            self.ejections.labels(event.name, event.endpoint).inc()
        elif isinstance(event, MalformedHeader):
            self._child(self.malformed, event.name, event.header).inc()
        elif isinstance(event, HostEvicted):
            self._child(self.host_evictions, event.kind).inc()
        elif isinstance(event, LoopLagUnrelieved):
            self._child(self.lag_unrelieved, event.name).inc()
        elif isinstance(event, KeysEvicted):
            self._child(self.key_evictions, event.name, event.kind).inc(event.count)
        elif isinstance(event, RegistrationChanged):
            held = event.kind in ("registered", "re-registered")
            self.registered.labels(event.name, event.instance).set(1 if held else 0)
            if event.kind == "re-registered":
                self.reregistrations.labels(event.name, event.reason or "unknown").inc()
        elif isinstance(event, EndpointsChanged):
            self.discovered.labels(event.name).set(event.count)
        elif isinstance(event, DiscoveryInterrupted):
            self.interruptions.labels(event.name, event.reason).inc()
            self.stale.since.setdefault(event.name, time.monotonic())
        elif isinstance(event, DiscoveryResumed):
            self.stale.since.pop(event.name, None)
            self.stale.services.add(event.name)
        elif isinstance(event, ConfigApplied | ConfigChanged | ConfigRejected):
            self._config(event)

    def _config(self, event: ConfigApplied | ConfigChanged | ConfigRejected) -> None:
        # Both counters from the key's first event on: rate() needs the 0 before the 1.
        changes = self._child(self.config_changes, event.key)
        rejections = self._child(self.config_rejections, event.key)
        if isinstance(event, ConfigChanged):
            changes.inc()
        elif isinstance(event, ConfigRejected):
            rejections.inc()
        else:
            self._child(self.config_revision, event.key).set(event.revision)
            for source in _CONFIG_SOURCES:
                self._child(self.config_source, event.key, source).set(
                    1 if source == event.source else 0)


class _StaleCollector:
    """``<prefix>_discovery_stale_seconds``: computed at scrape time from the events seen."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.since: dict[str, float] = {}  # service -> monotonic time it lost its watch
        self.services: set[str] = set()

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415 - optional

        family = GaugeMetricFamily(
            self.name, "Seconds a service's discovery has been out of sync with its store "
            "(serving its last known endpoints); 0 while it watches.", labels=["service"])
        now = time.monotonic()
        for service in sorted(self.services | set(self.since)):
            since = self.since.get(service)
            family.add_metric([service], 0.0 if since is None else now - since)
        yield family
