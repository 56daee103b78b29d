"""The errors the httpx transports raise: fournines errors that are httpx errors too.

A user who wraps a client in :class:`~fournines.client.AsyncResilientTransport`
already has ``except httpx.HTTPError`` (or ``httpx.TransportError``,
``httpx.TimeoutException``) around their calls. So what a transport refuses is
raised as a class that is both::

    RejectedError ──────────┐         httpx.TransportError
      CircuitOpenError      ├── TransportRejectedError
      RateLimitedError      │     ├── TransportCircuitOpenError    (also CircuitOpenError)
      BulkheadFullError     │     ├── TransportRateLimitedError    (also RateLimitedError)
      LoadShedError         │     ├── TransportBulkheadFullError   (also BulkheadFullError)
      NoEndpointsError      │     ├── TransportLoadShedError       (also LoadShedError)
                            │     └── TransportNoEndpointsError    (also NoEndpointsError)
    DeadlineExceededError ──┴── TransportDeadlineExceededError     (also httpx.TimeoutException)

``except CircuitOpenError`` and ``except httpx.TransportError`` both catch an
open breaker; ``except DeadlineExceededError``, ``except TimeoutError`` and
``except httpx.TimeoutException`` all catch a spent deadline. A rejection
subclass of the user's own passes through unchanged.

The requests adapter and the aiohttp middleware raise twins of the same shape
(their module docstrings and :mod:`fournines._errors` draw them)::

    RejectedError ──┬── RequestsRejectedError   (also requests.ConnectionError)
                    └── AiohttpRejectedError    (also aiohttp.ClientConnectionError)
    CircuitOpenError ── RequestsCircuitOpenError, AiohttpCircuitOpenError, ... (each kind)
    DeadlineExceededError ──┬── RequestsDeadlineExceededError  (also requests.Timeout)
                            └── AiohttpDeadlineExceededError   (also aiohttp.ServerTimeoutError)
"""

from __future__ import annotations

from typing import Any

import httpx

from .._errors import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    LoadShedError,
    NoEndpointsError,
    RateLimitedError,
    RejectedError,
)

__all__ = [
    "TransportBulkheadFullError",
    "TransportCircuitOpenError",
    "TransportDeadlineExceededError",
    "TransportLoadShedError",
    "TransportNoEndpointsError",
    "TransportRateLimitedError",
    "TransportRejectedError",
]


class TransportRejectedError(RejectedError, httpx.TransportError):
    """A policy of the transport refused the request (a RejectedError, an httpx.TransportError)."""

    # httpx's __init__ takes one message; the fournines fields live in ``args``.
    def __init__(self, name: str = "", retry_after: float | None = None, *,
                 request: httpx.Request | None = None) -> None:
        Exception.__init__(self, name, retry_after)
        self._request = request


class TransportCircuitOpenError(CircuitOpenError, TransportRejectedError):
    """The host's breaker is open: a CircuitOpenError and an httpx.TransportError."""


class TransportRateLimitedError(RateLimitedError, TransportRejectedError):
    """A rate limit refused the request: a RateLimitedError and an httpx.TransportError."""


class TransportBulkheadFullError(BulkheadFullError, TransportRejectedError):
    """The host's bulkhead is full: a BulkheadFullError and an httpx.TransportError."""


class TransportLoadShedError(LoadShedError, TransportRejectedError):
    """Load was shed below the transport: a LoadShedError and an httpx.TransportError."""


class TransportNoEndpointsError(NoEndpointsError, TransportRejectedError):
    """The balancer has no endpoint: a NoEndpointsError and an httpx.TransportError."""


class TransportDeadlineExceededError(DeadlineExceededError, httpx.TimeoutException):
    """No time was left: a DeadlineExceededError (a TimeoutError) and httpx.TimeoutException."""

    def __init__(self, message: str = "", *, request: httpx.Request | None = None) -> None:
        Exception.__init__(self, message)
        self._request = request


# Most specific first: a subclass is matched before its base.
_EDGES: tuple[tuple[type[RejectedError], type[TransportRejectedError]], ...] = (
    (CircuitOpenError, TransportCircuitOpenError),
    (RateLimitedError, TransportRateLimitedError),
    (BulkheadFullError, TransportBulkheadFullError),
    (LoadShedError, TransportLoadShedError),
    (NoEndpointsError, TransportNoEndpointsError),
)
_BY_TYPE: dict[type[BaseException], type[Any]] = {kind: edge for kind, edge in _EDGES}


def at_the_edge(exc: Exception, request: httpx.Request | None) -> Exception:
    """``exc`` as the transport raises it: the twin that is also an httpx error.

    An error that already is an httpx error, or a rejection type of the user's
    own, comes back as it is.
    """
    if isinstance(exc, httpx.HTTPError):
        return exc
    edge = _BY_TYPE.get(type(exc))
    if edge is not None:
        # Built like the hot paths build rejections: args only, no Python __init__.
        error: Exception = edge.__new__(edge, *exc.args)
        error._request = request  # type: ignore[attr-defined]
    elif type(exc) is DeadlineExceededError:
        error = TransportDeadlineExceededError(str(exc), request=request)
    else:
        return exc
    error.__cause__ = exc
    error.__suppress_context__ = True
    return error
