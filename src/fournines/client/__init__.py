"""Resilient outgoing HTTP calls: httpx transports with per-host policies and balancing.

Users keep ``httpx.AsyncClient`` and all their habits; only the transport changes::

    client = httpx.AsyncClient(transport=AsyncResilientTransport(
        transport=AsyncBalancingTransport(["http://10.0.0.1:8000", "http://10.0.0.2:8000"]),
    ))

Work in progress (issue 4): a sync transport, client metrics and spans are not
built yet.
"""

from .balancing import (
    AsyncBalancingTransport,
    Endpoint,
    EndpointEjected,
    EndpointSource,
    NoEndpointsError,
    OutlierEjection,
    P2CBalancer,
    StaticEndpoints,
)
from .transport import (
    IDEMPOTENT_METHODS,
    AsyncResilientTransport,
    ClientPolicy,
    FallbackHook,
    parse_retry_after,
)

__all__ = [
    "IDEMPOTENT_METHODS",
    "AsyncBalancingTransport",
    "AsyncResilientTransport",
    "ClientPolicy",
    "Endpoint",
    "EndpointEjected",
    "EndpointSource",
    "FallbackHook",
    "NoEndpointsError",
    "OutlierEjection",
    "P2CBalancer",
    "StaticEndpoints",
    "parse_retry_after",
]
