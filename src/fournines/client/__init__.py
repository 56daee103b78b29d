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

The same policies reach the other clients, decided by the same transports:
:class:`ResilientAdapter` is a ``requests`` ``HTTPAdapter`` (``requests`` extra) and
:class:`ResilientMiddleware` an aiohttp client middleware (``aiohttp`` extra); each
raises twins that are that client's errors too. Both load on first use, so
``import fournines.client`` needs neither.
"""

from typing import TYPE_CHECKING

from .._errors import NoEndpointsError
from .._events import (
    ClientRequestFinished,
    ClientRequestStarted,
    EndpointEjected,
    HostEvicted,
)
from .._lazy import lazy_attributes
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

_REQUESTS = ("fournines.client._requests", "pip install 'fournines[requests]'")
_AIOHTTP = ("fournines.client._aiohttp", "pip install 'fournines[aiohttp]'")
__getattr__, __dir__ = lazy_attributes("fournines.client", {
    "ResilientAdapter": _REQUESTS,
    "RequestsFallbackHook": _REQUESTS,
    "RequestsRejectedError": _REQUESTS,
    "RequestsCircuitOpenError": _REQUESTS,
    "RequestsRateLimitedError": _REQUESTS,
    "RequestsBulkheadFullError": _REQUESTS,
    "RequestsLoadShedError": _REQUESTS,
    "RequestsNoEndpointsError": _REQUESTS,
    "RequestsDeadlineExceededError": _REQUESTS,
    "ResilientMiddleware": _AIOHTTP,
    "AiohttpFallbackHook": _AIOHTTP,
    "AiohttpRejectedError": _AIOHTTP,
    "AiohttpCircuitOpenError": _AIOHTTP,
    "AiohttpRateLimitedError": _AIOHTTP,
    "AiohttpBulkheadFullError": _AIOHTTP,
    "AiohttpLoadShedError": _AIOHTTP,
    "AiohttpNoEndpointsError": _AIOHTTP,
    "AiohttpDeadlineExceededError": _AIOHTTP,
}, globals())

if TYPE_CHECKING:  # the real types for a user's type checker; never imported at run time
    from ._aiohttp import (
        AiohttpBulkheadFullError,
        AiohttpCircuitOpenError,
        AiohttpDeadlineExceededError,
        AiohttpFallbackHook,
        AiohttpLoadShedError,
        AiohttpNoEndpointsError,
        AiohttpRateLimitedError,
        AiohttpRejectedError,
        ResilientMiddleware,
    )
    from ._requests import (
        RequestsBulkheadFullError,
        RequestsCircuitOpenError,
        RequestsDeadlineExceededError,
        RequestsFallbackHook,
        RequestsLoadShedError,
        RequestsNoEndpointsError,
        RequestsRateLimitedError,
        RequestsRejectedError,
        ResilientAdapter,
    )

__all__ = [
    "IDEMPOTENT_METHODS",
    "STALE_AGE_EXTENSION",
    "STALE_HEADER",
    "AiohttpBulkheadFullError",
    "AiohttpCircuitOpenError",
    "AiohttpDeadlineExceededError",
    "AiohttpFallbackHook",
    "AiohttpLoadShedError",
    "AiohttpNoEndpointsError",
    "AiohttpRateLimitedError",
    "AiohttpRejectedError",
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
    "RequestsBulkheadFullError",
    "RequestsCircuitOpenError",
    "RequestsDeadlineExceededError",
    "RequestsFallbackHook",
    "RequestsLoadShedError",
    "RequestsNoEndpointsError",
    "RequestsRateLimitedError",
    "RequestsRejectedError",
    "ResilientAdapter",
    "ResilientMiddleware",
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
