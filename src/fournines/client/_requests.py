"""``ResilientAdapter``: the resilient transport's per-host policies for a requests ``Session``.

Mount it like any adapter; every ``requests`` habit stays::

    session = requests.Session()
    session.mount("http://", ResilientAdapter(config=ClientPolicy(attempts=3)))
    session.mount("https://", ResilientAdapter(config=ClientPolicy(attempts=3)))

Each request goes through a :class:`~fournines.client.ResilientTransport` whose
innermost transport sends it with ``HTTPAdapter.send`` (urllib3's pool, the
session's ``verify``, ``cert`` and proxies): the decisions are the transport's,
made in one place (see :mod:`fournines.client._bridge`). So, per host (origin, or
``host_key`` group), there is one breaker, one retry budget and one optional
bulkhead; retries go only to idempotent requests (or those with an
``Idempotency-Key``) whose body can be sent again (``None``, bytes or text; not a
file or a generator), honour ``Retry-After`` and never sleep past the current
deadline; each attempt sends the remaining deadline in ``x-request-timeout-ms``
and its number in ``x-request-attempt``, and its ``timeout`` (connect, read) is
shortened to the remaining deadline. ``fallbacks`` are requests-flavoured hooks
``hook(prepared_request, error) -> requests.Response`` or a
:class:`~fournines.StaleCache`.

The transport's refusals are raised as twins that are ``requests`` errors too
(:class:`RequestsCircuitOpenError` is a ``CircuitOpenError`` and a
``requests.ConnectionError``; :class:`RequestsDeadlineExceededError` a
``DeadlineExceededError`` and a ``requests.Timeout``), and urllib3's errors come out
as requests' own, as with a plain ``HTTPAdapter``. ``HTTPAdapter``'s own
``max_retries`` stays 0 by default: fournines does the retrying.

A body read to the end (``stream=False``, or a streamed body read through
``iter_content`` / ``content``) or closed settles the attempt: its breaker success
and bulkhead slot are given back then, and a body cut mid-response is a breaker
failure. A streamed response must be closed (``with session.get(..., stream=True)``),
as requests asks anyway.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx
import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

from .._clock import Clock, system_clock
from .._errors import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    FourNinesError,
    LoadShedError,
    NoEndpointsError,
    RateLimitedError,
    RejectedError,
)
from .._events import Listener
from ..policies.budget import RetryBudget
from ..policies.fallback import StaleCache
from ._bridge import CARRY, bridged, changed_headers, original, twin, url_of
from ._core import ClientPolicy, HostKey
from .transport import ResilientTransport

__all__ = [
    "RequestsBulkheadFullError",
    "RequestsCircuitOpenError",
    "RequestsDeadlineExceededError",
    "RequestsFallbackHook",
    "RequestsLoadShedError",
    "RequestsNoEndpointsError",
    "RequestsRateLimitedError",
    "RequestsRejectedError",
    "ResilientAdapter",
]

RequestsFallbackHook = Callable[[requests.PreparedRequest, BaseException], requests.Response]
"""``hook(request, error) -> response``: answers instead of a failed call (requests types)."""


class RequestsRejectedError(RejectedError, requests.ConnectionError):
    """The adapter's policies refused the request: a RejectedError and a requests.ConnectionError.

    Like every ``requests`` error it has ``request`` (the prepared request) and
    ``response`` (``None``: nothing was received).
    """

    def __init__(self, name: str = "", retry_after: float | None = None, *,
                 request: requests.PreparedRequest | None = None) -> None:
        Exception.__init__(self, name, retry_after)
        self.request = request
        self.response = None


class RequestsCircuitOpenError(CircuitOpenError, RequestsRejectedError):
    """The host's breaker is open: a CircuitOpenError and a requests.ConnectionError."""


class RequestsRateLimitedError(RateLimitedError, RequestsRejectedError):
    """A rate limit refused the request: a RateLimitedError and a requests.ConnectionError."""


class RequestsBulkheadFullError(BulkheadFullError, RequestsRejectedError):
    """The host's bulkhead is full: a BulkheadFullError and a requests.ConnectionError."""


class RequestsLoadShedError(LoadShedError, RequestsRejectedError):
    """Load was shed below the adapter: a LoadShedError and a requests.ConnectionError."""


class RequestsNoEndpointsError(NoEndpointsError, RequestsRejectedError):
    """No endpoint to send to: a NoEndpointsError and a requests.ConnectionError."""


class RequestsDeadlineExceededError(DeadlineExceededError, requests.Timeout):
    """No time was left: a DeadlineExceededError (a TimeoutError) and a requests.Timeout."""

    def __init__(self, message: str = "", *,
                 request: requests.PreparedRequest | None = None) -> None:
        Exception.__init__(self, message)
        self.request = request
        self.response = None


_TWINS: dict[type[BaseException], type[Any]] = {
    CircuitOpenError: RequestsCircuitOpenError,
    RateLimitedError: RequestsRateLimitedError,
    BulkheadFullError: RequestsBulkheadFullError,
    LoadShedError: RequestsLoadShedError,
    NoEndpointsError: RequestsNoEndpointsError,
    RejectedError: RequestsRejectedError,
}

# The request extension carrying the prepared request and the send() arguments.
_ANSWER = "fournines.requests.response"
# A fallback hook's own requests.Response, handed back as it is.
_FALLBACK = "fournines.requests.fallback"


def _edge(exc: BaseException, request: requests.PreparedRequest) -> BaseException:
    """What the adapter raises for ``exc``: requests' own error or a fournines twin."""
    if isinstance(exc, FourNinesError):
        return twin(exc, _TWINS, RequestsDeadlineExceededError, request=request, response=None)
    found = original(exc)
    return exc if found is None else found


class _Carried:
    """What the sender needs besides the httpx request: the real request and send() options."""

    __slots__ = ("options", "prepared")

    def __init__(self, prepared: requests.PreparedRequest, options: dict[str, Any]) -> None:
        self.prepared = prepared
        self.options = options


class _Body(httpx.SyncByteStream):
    """A requests response's body as the transport reads it: decoded, requests' errors bridged."""

    __slots__ = ("_done", "_raw", "_request")

    def __init__(self, raw: Any, request: httpx.Request) -> None:
        self._raw = raw
        self._request = request
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._raw.stream(64 * 1024, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise bridged(httpx.ReadTimeout, exc, self._request) from exc
        except (urllib3.exceptions.ProtocolError, OSError) as exc:
            raise bridged(httpx.ReadError, exc, self._request) from exc
        self._done = True

    def close(self) -> None:
        raw = self._raw
        # As requests.Response.close does: a body not read to the end loses its
        # connection (half a response must not go back to the pool).
        if not self._done:
            raw.close()
        release = getattr(raw, "release_conn", None)
        if release is not None:
            release()


class _Raw:
    """``response.raw`` of an answer the transport returned: read through the transport.

    requests reads ``raw.stream(...)`` for ``content`` and ``iter_content``; the chunks
    come through the transport's body (already decoded), so reading to the end (or
    closing) settles the breaker and the bulkhead, and a body cut mid-response is a
    breaker failure. Everything else is the urllib3 response's own.
    """

    def __init__(self, raw: Any, answer: httpx.Response) -> None:
        self._fournines_raw = raw
        self._fournines_answer = answer

    def stream(self, amt: int | None = None, decode_content: bool | None = None
               ) -> Iterator[bytes]:
        answer = self._fournines_answer
        try:
            for chunk in answer.iter_raw():
                if amt is None or len(chunk) <= amt:
                    yield chunk
                else:  # as urllib3's stream(): at most ``amt`` bytes at a time
                    for start in range(0, len(chunk), amt):
                        yield chunk[start:start + amt]
        except httpx.HTTPError as exc:
            found = original(exc)
            if found is None:
                raise
            raise found from None
        finally:
            answer.close()

    def read(self, amt: int | None = None, decode_content: bool | None = None,
             cache_content: bool = False) -> bytes:
        # Read once, whole: reading in pieces would need a buffer for what is left.
        answer = self._fournines_answer
        if answer.is_stream_consumed or answer.is_closed:
            return b""  # as urllib3 answers a read past the end (requests does, on redirects)
        return b"".join(self.stream())

    def close(self) -> None:
        self._fournines_answer.close()

    def release_conn(self) -> None:
        self._fournines_answer.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fournines_raw, name)


class _Sender(httpx.BaseTransport):
    """The innermost transport: sends the carried requests request with ``HTTPAdapter.send``."""

    def __init__(self, adapter: ResilientAdapter) -> None:
        self._adapter = adapter

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        carried: _Carried = request.extensions[CARRY]
        prepared = carried.prepared.copy()
        for name, value in changed_headers(request, carried.prepared.headers):
            prepared.headers[name] = value
        options = dict(carried.options)
        timeout = request.extensions.get("timeout")
        if timeout:
            options["timeout"] = (timeout.get("connect"), timeout.get("read"))
        try:
            response = HTTPAdapter.send(self._adapter, prepared, stream=True, **options)
        except requests.ConnectTimeout as exc:
            raise bridged(httpx.ConnectTimeout, exc, request) from exc
        except requests.ReadTimeout as exc:
            raise bridged(httpx.ReadTimeout, exc, request) from exc
        except requests.exceptions.SSLError:
            raise  # not the host's health, not worth a retry: passes through as it is
        except requests.ConnectionError as exc:
            raise bridged(httpx.ConnectError, exc, request) from exc
        headers = [(k, v) for k, v in response.headers.items()
                   if k.lower() not in ("content-encoding", "content-length")]
        return httpx.Response(response.status_code, headers=headers,
                              stream=_Body(response.raw, request),
                              extensions={_ANSWER: response})


class _AdapterTransport(ResilientTransport):
    """The adapter's transport: its settings errors name the adapter."""

    _owner = "ResilientAdapter"


class ResilientAdapter(HTTPAdapter):
    """A requests ``HTTPAdapter`` that protects every request; see the module docstring.

    :param config: the policy of every host without an override.
    :param per_route: overrides keyed by origin or ``(method, path pattern)``, as for
        :class:`~fournines.client.ResilientTransport`.
    :param budget: one retry budget shared by all hosts (default: one per host).
    :param fallbacks: keyed by ``(method, path pattern)``: a hook
        ``hook(prepared_request, error) -> requests.Response`` called when a request
        fails (an error, or a 5xx as ``requests.HTTPError``), or a
        :class:`~fournines.StaleCache`.
    :param listeners: receive the events of every policy (named by host).
    :param clock: where time comes from.
    :param max_hosts: hosts whose policies are kept (as for the transport).
    :param host_key: ``host_key(request) -> str | None`` on the ``httpx.Request`` the
        policies see (method, URL, headers of the requests request): requests with
        one key share one set of policies.
    :param rng: the random source of backoff jitter.
    :param tracing: one OpenTelemetry client span per request (needs OpenTelemetry).
    :param tracer_provider: where spans go (implies ``tracing``).
    :param adapter_options: passed to ``HTTPAdapter`` (``pool_connections``,
        ``pool_maxsize``, ``pool_block``, ``max_retries``).
    """

    def __init__(
        self,
        config: ClientPolicy | None = None,
        *,
        per_route: Mapping[str | tuple[str, str], ClientPolicy] | None = None,
        budget: RetryBudget | None = None,
        fallbacks: Mapping[tuple[str, str], RequestsFallbackHook | StaleCache[Any]] | None = None,
        listeners: Sequence[Listener] = (),
        clock: Clock = system_clock,
        max_hosts: int = 1000,
        host_key: HostKey | None = None,
        rng: random.Random | None = None,
        tracing: bool = False,
        tracer_provider: Any = None,
        **adapter_options: Any,
    ) -> None:
        super().__init__(**adapter_options)
        hooks = {key: hook if isinstance(hook, StaleCache) else _httpx_hook(hook)
                 for key, hook in (fallbacks or {}).items()}
        self.transport = _AdapterTransport(
            _Sender(self), config=config, per_route=per_route, budget=budget,
            fallbacks=hooks, listeners=listeners, clock=clock, max_hosts=max_hosts,
            rng=rng, tracing=tracing, tracer_provider=tracer_provider, host_key=host_key,
        )
        """The :class:`~fournines.client.ResilientTransport` that decides (``policies_for``)."""

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: bool | str = True, cert: Any = None,
             proxies: Mapping[str, str] | None = None) -> requests.Response:
        """Send ``request`` under the policies of its host."""
        connect, read = _timeouts(timeout)
        body = request.body
        content = body if body is None or isinstance(body, bytes | str) else None
        message = httpx.Request(
            request.method or "GET", url_of(request.url or ""),
            headers=[(k, v if isinstance(v, str) else v.decode("latin-1"))
                     for k, v in request.headers.items()],
            # A body that can be sent twice is replayable to the transport; any
            # other (a file, a generator) is one it must not retry.
            stream=httpx.ByteStream(b"") if content is not None or body is None
            else _OneShot(),
            extensions={"timeout": {"connect": connect, "read": read, "write": read,
                                    "pool": read}},
        )
        message.extensions[CARRY] = _Carried(
            request, {"timeout": timeout, "verify": verify, "cert": cert, "proxies": proxies})
        try:
            answer = self.transport.handle_request(message)
        except Exception as exc:
            edge = _edge(exc, request)
            if edge is exc:
                raise
            raise edge  # noqa: B904 - a twin has its cause set; an original keeps its own
        return self._response(request, answer, stream)

    def _response(self, request: requests.PreparedRequest, answer: httpx.Response,
                  stream: bool) -> requests.Response:
        made = answer.extensions.get(_FALLBACK)
        if made is not None:
            answer.close()
            return made  # type: ignore[no-any-return]
        real: requests.Response | None = answer.extensions.get(_ANSWER)
        if answer.is_stream_consumed or isinstance(answer.stream, httpx.ByteStream):
            # Read already (a retried answer, a kept or stale copy): hand over its bytes.
            body = answer.read()
            answer.close()
            response = real if real is not None else _built(request, answer, self)
            response._content = body
            response._content_consumed = True
            return response
        assert real is not None
        real.raw = _Raw(real.raw, answer)
        return real

    def close(self) -> None:
        """Close the connection pools (and the transport's)."""
        super().close()

    def __repr__(self) -> str:
        return f"ResilientAdapter({self.transport!r})"


class _OneShot(httpx.SyncByteStream):
    """Stands for a body the adapter cannot send twice (a file, a generator)."""

    def __iter__(self) -> Iterator[bytes]:
        yield b""


def _timeouts(timeout: Any) -> tuple[float | None, float | None]:
    """``(connect, read)`` seconds of a requests ``timeout``."""
    if timeout is None:
        return None, None
    if isinstance(timeout, tuple):
        connect, read = timeout
        return connect, read
    if isinstance(timeout, int | float):
        return float(timeout), float(timeout)
    # urllib3's Timeout object
    connect_timeout = getattr(timeout, "connect_timeout", None)
    read_timeout = getattr(timeout, "read_timeout", None)
    return (connect_timeout if isinstance(connect_timeout, int | float) else None,
            read_timeout if isinstance(read_timeout, int | float) else None)


def _built(request: requests.PreparedRequest, answer: httpx.Response,
           adapter: HTTPAdapter) -> requests.Response:
    """A requests response for an answer no server sent just now (a fallback, a stale copy)."""
    response = requests.Response()
    response.status_code = answer.status_code
    response.headers = CaseInsensitiveDict(answer.headers.items())
    response.encoding = get_encoding_from_headers(response.headers)
    response.reason = answer.reason_phrase
    response.url = request.url or ""
    response.request = request
    response.connection = adapter
    return response


def _httpx_hook(hook: RequestsFallbackHook) -> Callable[[httpx.Request, BaseException],
                                                         httpx.Response]:
    """The transport's hook for a requests one: requests types in, the response carried out."""
    if not callable(hook):
        return hook  # the transport names the bad setting
    def bridged_hook(message: httpx.Request, error: BaseException) -> httpx.Response:
        carried: _Carried = message.extensions[CARRY]
        prepared = carried.prepared
        if isinstance(error, httpx.HTTPStatusError):
            cause: BaseException = requests.HTTPError(
                str(error), request=prepared,
                response=error.response.extensions.get(_ANSWER))
        else:
            cause = _edge(error, prepared)
        made = hook(prepared, cause)
        return httpx.Response(made.status_code, extensions={_FALLBACK: made})
    return bridged_hook
