"""gRPC services and stubs (``grpcio``, sync and ``grpc.aio``), protected by the core's policies.

Servers get interceptors and the standard health service::

    state = ServiceState(service="payments")
    health = HealthService(checks=[postgres_check(dsn)], state=state)
    server = grpc.aio.server(interceptors=[AioServerInterceptor(
        metrics=RpcMetrics(), shedder=load_shedder(), state=state)])
    health.add_to_aio_server(server)
    ...
    state.mark_ready()
    ...
    await aio_stop_gracefully(server, health)      # on SIGTERM

Clients get an interceptor per channel (one target, one breaker)::

    protect = AioClientInterceptor("payments:50051")
    channel = grpc.aio.insecure_channel("payments:50051", interceptors=protect.interceptors)

:class:`ServerInterceptor`, :class:`ClientInterceptor` and
:func:`stop_gracefully` are the sync twins. Inside this package ``import grpc``
is grpcio itself (imports are absolute): the package is named for what it
protects, like :mod:`fournines.asgi`. Needs the ``grpc`` extra
(``pip install 'fournines[grpc]'``: grpcio and grpcio-health-checking).

What the client interceptors refuse is raised as errors that are both fournines
errors and ``grpc.RpcError`` (:class:`GrpcCircuitOpenError`,
:class:`GrpcDeadlineExceededError`), with the ``code()`` a failed call would have.
"""

from ._client import AioClientInterceptor, ClientInterceptor, RpcClientPolicy, pushback
from ._errors import GrpcCircuitOpenError, GrpcDeadlineExceededError, GrpcRejectedError
from ._health import HEALTH_SERVICE, HealthService, aio_stop_gracefully, stop_gracefully
from ._metrics import RpcMetrics
from ._server import (
    DEFAULT_EXEMPT_METHODS,
    PUSHBACK_KEY,
    AioServerInterceptor,
    RpcRateLimit,
    ServerInterceptor,
    load_shedder,
)

__all__ = [
    "DEFAULT_EXEMPT_METHODS",
    "HEALTH_SERVICE",
    "PUSHBACK_KEY",
    "AioClientInterceptor",
    "AioServerInterceptor",
    "ClientInterceptor",
    "GrpcCircuitOpenError",
    "GrpcDeadlineExceededError",
    "GrpcRejectedError",
    "HealthService",
    "RpcClientPolicy",
    "RpcMetrics",
    "RpcRateLimit",
    "ServerInterceptor",
    "aio_stop_gracefully",
    "load_shedder",
    "pushback",
    "stop_gracefully",
]
