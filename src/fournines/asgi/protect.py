"""``protect(app)``: one call that gives an ASGI app everything a fournines service wears.

The middleware it stacks, outermost first, and why in that order:

1. :class:`~fournines.asgi.shutdown.LifecycleMiddleware` — sees every request,
   probes included: counts requests in flight, turns ready after startup,
   adds ``x-instance-id``;
2. :class:`~fournines.asgi.shedding.LoadShedder` — refuses with 503 what
   would overload the process, before any other work is spent on it: under
   overload, clients that ignore ``Retry-After`` send several shed requests
   per served one, so each must cost as little as possible (bench/asgi_overload.py).
   Probes and ``/metrics`` are never shed; sheds are counted as
   ``fournines_rejections_total{policy="load_shedder"}``. It also times request
   bodies (``408`` when one does not arrive within ``body_timeout``), and does not
   count a request waiting for its body as in flight: slow clients cannot use up
   its capacity;
3. :class:`~fournines.asgi.health.HealthMiddleware` — answers ``/livez``,
   ``/readyz``, ``/startupz``, ``/healthz``;
4. :class:`~fournines.asgi.metrics.MetricsMiddleware` — serves ``/metrics``
   and records every other request, the 429s and 504s of the layers below
   included;
5. :class:`~fournines.asgi.tracing.TracingMiddleware` — only when tracing is
   configured: one server span per request;
6. :class:`~fournines.asgi.deadline.DeadlineMiddleware` — sets the request's
   deadline from its header, answers 504 at once when it has passed;
7. :class:`~fournines.asgi.limits.RateLimitMiddleware` — only when rate
   limits are given: 429 for clients over their quota;
8. the app.

Every part is a plain ASGI middleware usable on its own; ``protect`` only
chooses an order and shares one :class:`~fournines.asgi.ServiceState` among
them. Run the result with :func:`fournines.asgi.server.serve` for the draining
shutdown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .._errors import ConfigurationError
from ..policies.adaptive import ConcurrencyLimit
from ..policies.rate_limit import RateLimiter
from ._state import LifecycleHook, ServiceState
from ._types import ASGIApp
from .checks import Check, event_loop_lag_check
from .deadline import DeadlineMiddleware
from .health import HealthMiddleware
from .limits import RateLimitMiddleware, RateLimitRule
from .shedding import LoadShedder
from .shutdown import LifecycleMiddleware

__all__ = ["protect"]


def protect(
    app: ASGIApp,
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
    tracer_provider: Any = None,
    tracing: bool = False,
    max_timeout: float | None = 30.0,
    shedding: bool = True,
    concurrency_limit: ConcurrencyLimit | None = None,
    max_loop_lag: float | None = 0.025,
    lag_floor: int = 4,
    queue_target: float | None = 0.005,
    queue_interval: float = 0.1,
    body_timeout: float | None = 10.0,
    critical_paths: Sequence[str] = (),
    rate_limit: Callable[[], RateLimiter] | Sequence[RateLimitRule] | None = None,
    rate_limit_key: str = "ip",
    instance_header: bool = True,
    hooks: Sequence[LifecycleHook] = (),
) -> LifecycleMiddleware:
    """Wrap ``app`` in fournines' service protection (see the module docstring).

    :param service: the service name (health ``serviceId``, logs).
    :param version: reported by ``/healthz``.
    :param state: the lifecycle state to share (one is made if not given).
    :param checks: dependency checks for ``/readyz`` and ``/healthz``.
    :param loop_lag_check: add the (non-critical) event-loop lag check.
    :param metrics: serve ``/metrics`` and record the golden metrics.
    :param registry: the ``prometheus_client`` registry (default: the global one).
    :param resilience_events: also count fournines policy events in ``registry``.
    :param tracer_provider: an OpenTelemetry tracer provider; tracing is on when
        it is given or when ``tracing`` is true (then the global provider is used).
    :param max_timeout: the longest deadline a request may ask for, in seconds.
    :param shedding: shed load adaptively (``concurrency_limit``: the algorithm,
        Gradient2 by default; ``max_loop_lag``: the event-loop lag that sheds
        non-critical requests, but never while fewer than ``lag_floor`` requests
        are in flight; ``queue_target`` and ``queue_interval``: CoDel on each
        request's queueing delay, the time from its arrival to its handler's
        start: once requests have waited longer than ``queue_target`` for a whole
        ``queue_interval``, those that waited longer than ``queue_target`` are
        shed, ``None`` turns it off; ``body_timeout``: seconds a request body may take to
        arrive before ``408``, see :class:`~fournines.asgi.shedding.LoadShedder`,
        whose in-flight count leaves out requests waiting for their body;
        ``critical_paths``: path prefixes shed last).
    :param rate_limit: a factory of local limiters (one per client, keyed by
        ``rate_limit_key``), or a list of
        :class:`~fournines.asgi.limits.RateLimitRule`.
    :param rate_limit_key: ``"ip"`` (the peer address the server reports: the
        proxy's behind a proxy, unless ``serve(forwarded_allow_ips=...)`` names
        it), ``"header:<name>"`` or ``"global"``; see ``RateLimitRule.key``.
    :param instance_header: add ``x-instance-id`` to every response.
    :param hooks: lifecycle hooks added to the state (see
        :class:`~fournines.asgi.LifecycleHook`): ``on_ready`` once the service is
        ready, ``on_drain`` first thing on drain, before readiness fails. A
        :class:`fournines.discovery.RegistrationHook` registers the instance in a
        service registry this way.
    :returns: the outermost middleware; ``.state`` is the shared state.
    """
    state = state if state is not None else ServiceState(service=service)
    if not isinstance(state, ServiceState):
        raise ConfigurationError(f"protect.state must be a ServiceState, got {state!r}")
    _check_options(rate_limit=rate_limit, rate_limit_key=rate_limit_key, shedding=shedding,
                   concurrency_limit=concurrency_limit, critical_paths=critical_paths,
                   metrics=metrics, registry=registry)
    bad = [hook for hook in hooks if not isinstance(hook, LifecycleHook)]
    if bad:
        raise ConfigurationError("protect.hooks must be lifecycle hooks (async on_ready(state) "
                                 f"and on_drain(state)), got {bad[0]!r}")
    for hook in hooks:
        state.add_hook(hook)
    inner: ASGIApp = app
    if rate_limit is not None:
        if callable(rate_limit):
            rules: Sequence[RateLimitRule] = [
                RateLimitRule(name="default", limiter=rate_limit, key=rate_limit_key)
            ]
        elif isinstance(rate_limit, Sequence) and all(
            isinstance(rule, RateLimitRule) for rule in rate_limit
        ):
            rules = rate_limit
        else:
            raise ConfigurationError(
                "protect.rate_limit must be a limiter factory or a list of RateLimitRule, "
                f"got {rate_limit!r}"
            )
        inner = RateLimitMiddleware(inner, rules=rules)
    inner = DeadlineMiddleware(inner, max_timeout=max_timeout)
    if tracing or tracer_provider is not None:
        from .tracing import TracingMiddleware  # noqa: PLC0415 - needs the otel extra

        inner = TracingMiddleware(inner, tracer_provider=tracer_provider)
    # The outer layers validate their options before the metrics register theirs, so a
    # refused option leaves nothing behind in the registry and a corrected call succeeds.
    all_checks = [*checks, event_loop_lag_check()] if loop_lag_check else list(checks)
    health = HealthMiddleware(None, checks=all_checks, state=state, cache_ttl=health_cache_ttl,
                              version=version, service_id=service)
    shedder = (
        LoadShedder(health, limit=concurrency_limit, max_loop_lag=max_loop_lag,
                    lag_floor=lag_floor, queue_target=queue_target,
                    queue_interval=queue_interval, body_timeout=body_timeout,
                    critical_paths=critical_paths)
        if shedding else None
    )
    if metrics:
        from .metrics import MetricsMiddleware  # noqa: PLC0415 - needs prometheus_client

        inner = MetricsMiddleware(inner, registry=registry, state=state,
                                  resilience_events=resilience_events)
    health.app = inner
    outer: ASGIApp = health if shedder is None else shedder
    return LifecycleMiddleware(outer, state=state, instance_header=instance_header)


def _check_options(*, rate_limit: object, rate_limit_key: object, shedding: bool,
                   concurrency_limit: object, critical_paths: Sequence[str], metrics: bool,
                   registry: object) -> None:
    """Refuse options that could never act, naming them (before anything is built)."""
    if rate_limit is None and rate_limit_key != "ip":
        raise ConfigurationError(
            f"protect.rate_limit_key {rate_limit_key!r} needs a rate limit: pass "
            "rate_limit=lambda: TokenBucket(...) too, or leave rate_limit_key out")
    if rate_limit is not None and not callable(rate_limit) and rate_limit_key != "ip":
        raise ConfigurationError(
            f"protect.rate_limit_key {rate_limit_key!r} applies only to a limiter factory: "
            "with a list of RateLimitRule, each rule's key= says how to key it")
    if callable(rate_limit) and not (
        isinstance(rate_limit_key, str)
        and (rate_limit_key in ("ip", "global")
             or (rate_limit_key.startswith("header:") and len(rate_limit_key) > 7))
    ):
        raise ConfigurationError(
            "protect.rate_limit_key must be 'ip', 'header:<name>' or 'global', "
            f"got {rate_limit_key!r}")
    if not shedding:
        for name, value, given in (
            ("concurrency_limit", concurrency_limit, concurrency_limit is not None),
            ("critical_paths", critical_paths, bool(critical_paths)),
        ):
            if given:
                raise ConfigurationError(
                    f"protect.{name} {value!r} has no effect with shedding=False")
    if not metrics and registry is not None:
        raise ConfigurationError(f"protect.registry {registry!r} has no effect with "
                                 "metrics=False")
