"""Resilient outgoing HTTP calls: httpx transports with per-host policies and balancing.

Users keep ``httpx.Client`` / ``httpx.AsyncClient`` and all their habits; only
the transport changes::

    client = httpx.AsyncClient(transport=AsyncResilientTransport(
        transport=AsyncBalancingTransport(["http://10.0.0.1:8000", "http://10.0.0.2:8000"]),
    ))

:class:`ResilientTransport` and :class:`BalancingTransport` are the sync twins
(the sync transport does not hedge).

What the transports refuse is raised as errors that are both fournines errors and
httpx errors (:mod:`fournines.client._errors` draws the tree):
``except fournines.CircuitOpenError`` and ``except httpx.TransportError`` both
catch an open breaker (:class:`TransportCircuitOpenError`), and
``except fournines.DeadlineExceededError`` and ``except httpx.TimeoutException``
both catch a spent deadline (:class:`TransportDeadlineExceededError`).
"""

from .._errors import NoEndpointsError
from .._events import (
    ClientRequestFinished,
    ClientRequestStarted,
    EndpointEjected,
    HostEvicted,
)
from ._errors import (
    TransportBulkheadFullError,
    TransportCircuitOpenError,
    TransportDeadlineExceededError,
    TransportLoadShedError,
    TransportNoEndpointsError,
    TransportRateLimitedError,
    TransportRejectedError,
)
from .balancing import (
    AsyncBalancingTransport,
    BalancingTransport,
    Endpoint,
    EndpointSource,
    OutlierEjection,
    P2CBalancer,
    StaticEndpoints,
)
from .transport import (
    IDEMPOTENT_METHODS,
    STALE_AGE_EXTENSION,
    STALE_HEADER,
    AsyncResilientTransport,
    ClientPolicy,
    FallbackHook,
    HostKey,
    ResilientTransport,
    parse_retry_after,
)

__all__ = [
    "IDEMPOTENT_METHODS",
    "STALE_AGE_EXTENSION",
    "STALE_HEADER",
    "AsyncBalancingTransport",
    "AsyncResilientTransport",
    "BalancingTransport",
    "ClientPolicy",
    "ClientRequestFinished",
    "ClientRequestStarted",
    "Endpoint",
    "EndpointEjected",
    "EndpointSource",
    "FallbackHook",
    "HostEvicted",
    "HostKey",
    "NoEndpointsError",
    "OutlierEjection",
    "P2CBalancer",
    "ResilientTransport",
    "StaticEndpoints",
    "TransportBulkheadFullError",
    "TransportCircuitOpenError",
    "TransportDeadlineExceededError",
    "TransportLoadShedError",
    "TransportNoEndpointsError",
    "TransportRateLimitedError",
    "TransportRejectedError",
    "parse_retry_after",
]
