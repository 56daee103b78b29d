"""ASGI service protection: health probes, golden metrics, deadlines, shedding, limits.

``protect(app)`` stacks every part in the right order; each part is also a plain
ASGI middleware of its own. ``serve(app)`` runs it under uvicorn with a draining
shutdown (imported lazily: it needs the ``serve`` extra).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ._state import InstanceLogFilter, LifecycleHook, Phase, ServiceState, instance_id
from .checks import (
    Check,
    CheckFailed,
    event_loop_lag_check,
    http_check,
    postgres_check,
    rabbitmq_check,
    redis_check,
)
from .deadline import DeadlineMiddleware
from .health import HealthMiddleware, HealthStatus, health_app
from .limits import RateLimitMiddleware, RateLimitRule
from .protect import protect
from .shedding import LoadShedder
from .shutdown import GracefulShutdown, LifecycleMiddleware

# Parts that import optional packages (prometheus_client, opentelemetry, uvicorn) load on
# first use, so `import fournines.asgi` works with none of them installed.
__getattr__, __dir__ = lazy_attributes("fournines.asgi", {
    "MetricsMiddleware": ("fournines.asgi.metrics", "pip install 'fournines[asgi]'"),
    "TracingMiddleware": ("fournines.asgi.tracing", "pip install 'fournines[otel]'"),
    "TraceContextFilter": ("fournines.asgi.tracing", "pip install 'fournines[otel]'"),
    "serve": ("fournines.asgi.server", "pip install 'fournines[serve]'"),
}, globals())

if TYPE_CHECKING:  # the real types for a user's type checker; never imported at run time
    from .metrics import MetricsMiddleware
    from .server import serve
    from .tracing import TraceContextFilter, TracingMiddleware

__all__ = [
    "Check",
    "CheckFailed",
    "DeadlineMiddleware",
    "GracefulShutdown",
    "HealthMiddleware",
    "HealthStatus",
    "InstanceLogFilter",
    "LifecycleHook",
    "LifecycleMiddleware",
    "LoadShedder",
    "MetricsMiddleware",
    "Phase",
    "RateLimitMiddleware",
    "RateLimitRule",
    "ServiceState",
    "TraceContextFilter",
    "TracingMiddleware",
    "event_loop_lag_check",
    "health_app",
    "http_check",
    "instance_id",
    "postgres_check",
    "protect",
    "rabbitmq_check",
    "redis_check",
    "serve",
]
