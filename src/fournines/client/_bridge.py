"""What the requests and aiohttp adapters share: they drive the httpx transports.

The resilient transports decide on ``httpx.Request`` / ``httpx.Response``
(:mod:`fournines.client._core`). An adapter for another client does not decide
again: it describes its request as an ``httpx.Request`` (method, URL, headers,
whether the body can be sent twice), hands it to a resilient transport whose
innermost transport is a *sender* that sends the client's own request with the
client's own machinery, and turns the answer back into the client's response.
So every policy (breaker, budgeted retries, ``Retry-After``, deadline header and
timeout, bulkhead, fallbacks, stale cache, metrics events, tracing) is the one
the httpx transports run, decided in the same place.

What crosses the bridge:

- headers the transport sets on an attempt (the deadline, the attempt number,
  the trace context: :data:`PROPAGATED`) are copied onto the client's request
  (:func:`changed_headers`);
- the client's errors become the httpx errors the core classifies
  (:func:`bridged`), carrying the original, which the adapter raises again
  (:func:`original`): a caller of requests still catches ``requests``' errors;
- the transport's rejections become twins that are also the client's errors
  (:func:`twin`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

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
from .._propagation import ATTEMPT_HEADER, TIMEOUT_HEADER

E = TypeVar("E", bound=BaseException)

# The request extension that carries the adapter's own request to its sender.
CARRY = "fournines.bridge"

_ORIGINAL = "_fournines_original"

# Parsed URLs by their text: parsing is most of what describing a request costs (httpx
# URLs are immutable, so one may serve every request to it). Bounded: cleared when full.
_URLS: dict[str, httpx.URL] = {}
_MAX_URLS = 1024


def url_of(text: str) -> httpx.URL:
    """``httpx.URL(text)``, parsed once for URLs called again."""
    url = _URLS.get(text)
    if url is None:
        url = httpx.URL(text)
        if len(_URLS) >= _MAX_URLS:
            _URLS.clear()
        _URLS[text] = url
    return url


# What a resilient transport sets on an attempt: the deadline, the attempt number and,
# with tracing, the W3C trace context.
PROPAGATED = (TIMEOUT_HEADER, ATTEMPT_HEADER, "traceparent", "tracestate", "baggage")


def changed_headers(request: httpx.Request, original: Mapping[str, Any]
                    ) -> Iterable[tuple[str, str]]:
    """The headers the transport set or changed on ``request`` (vs. the client's ``original``).

    Only :data:`PROPAGATED` names are looked at: httpx adds ``Host`` and
    ``Content-Length`` when it builds a request, and the client sets its own.
    """
    headers = request.headers
    for name in PROPAGATED:
        value = headers.get(name)
        if value is not None and original.get(name) != value:
            yield name, value


def bridged(kind: type[httpx.HTTPError], exc: BaseException,
            request: httpx.Request) -> httpx.HTTPError:
    """An httpx error of ``kind`` for the core to classify, carrying the client's ``exc``."""
    error = kind(str(exc) or type(exc).__name__, request=request)  # type: ignore[call-arg]
    setattr(error, _ORIGINAL, exc)
    error.__cause__ = exc
    return error


def original(exc: BaseException) -> BaseException | None:
    """The client's own error behind a bridged httpx error (or its cause), if any."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        found = getattr(current, _ORIGINAL, None)
        if found is not None:
            return found  # type: ignore[no-any-return]
        current = current.__cause__
        seen += 1
    return None


# Most specific first: the twin of a subclass before its base's.
REJECTIONS: tuple[type[RejectedError], ...] = (
    CircuitOpenError, RateLimitedError, BulkheadFullError, LoadShedError, NoEndpointsError,
)


def twin(exc: BaseException, twins: Mapping[type[BaseException], type[E]],
         deadline: type[E], **fields: Any) -> BaseException:
    """``exc`` as the adapter raises it: its twin that is also the client's error.

    ``twins`` maps each fournines rejection type (and ``RejectedError``) to its twin;
    ``fields`` are set on the twin (the client's request). A rejection type of the
    user's own comes back as it is.
    """
    made: BaseException
    if isinstance(exc, RejectedError):
        for kind in REJECTIONS:
            if isinstance(exc, kind):
                edge = twins[kind]
                break
        else:
            if type(exc).__module__.startswith("fournines") or type(exc) is RejectedError:
                edge = twins[RejectedError]
            else:
                return exc
        # Built like the hot paths build rejections: args only, no Python __init__.
        made = edge.__new__(edge, *exc.args)
    elif isinstance(exc, DeadlineExceededError):
        made = deadline.__new__(deadline, str(exc))
        made.args = (str(exc),)
    else:
        return exc
    for name, value in fields.items():
        setattr(made, name, value)
    made.__cause__ = exc
    made.__suppress_context__ = True
    return made
