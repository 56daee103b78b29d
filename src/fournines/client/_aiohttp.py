"""``ResilientMiddleware``: the resilient transport's per-host policies for aiohttp's client.

An aiohttp client middleware (aiohttp 3.12 and later); every ``ClientSession`` habit stays::

    async with aiohttp.ClientSession(middlewares=[ResilientMiddleware(ClientPolicy())]) as s:
        async with s.get("http://payments/status") as response:
            ...

Each request goes through an :class:`~fournines.client.AsyncResilientTransport`
whose innermost transport calls the next aiohttp handler (connector, pool, TLS,
redirects stay aiohttp's): the decisions are the transport's, made in one place
(see :mod:`fournines.client._bridge`). So, per host, there is one breaker, one
retry budget and one optional bulkhead; retries go only to idempotent requests (or
those with an ``Idempotency-Key``) whose body can be sent again (none, bytes, text,
JSON, forms; not a stream or a file), honour ``Retry-After`` and never sleep past
the current deadline; each attempt sends the remaining deadline in
``x-request-timeout-ms`` and its number in ``x-request-attempt``, and waits for the
response headers at most ``min(attempt_timeout, remaining deadline)``. It does not
hedge (``hedge_after`` is ignored, as by the sync transport: a hedge would send the
one aiohttp request object twice at once). ``fallbacks`` hooks take the aiohttp
request and the error and return an ``httpx.Response`` (``httpx.Response(200,
json={...})``), served as an aiohttp response; a :class:`~fournines.StaleCache`
works too.

The transport's refusals are raised as twins that are aiohttp errors too
(:class:`AiohttpCircuitOpenError` is a ``CircuitOpenError`` and an
``aiohttp.ClientConnectionError``; :class:`AiohttpDeadlineExceededError` a
``DeadlineExceededError`` and an ``aiohttp.ServerTimeoutError``); aiohttp's own
errors come out as they were.

An answer settles its attempt (breaker success, bulkhead slot back) when its
connection is released: the body read to the end, or the response released or
closed (``async with`` does it). A body cut by the network (aiohttp's
``ClientPayloadError``) is a breaker failure.

aiohttp itself sends an idempotent request once more when its pooled connection
turns out to be closed (``ServerDisconnectedError``, ``ClientOSError``); that second
round passes through the middleware again, under the same breaker and retry budget
(each round counts as a request in the budget, so retries stay within its ratio).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import aiohttp
import httpx
from aiohttp.client_middlewares import ClientHandlerType
from aiohttp.client_reqrep import ClientRequest, ClientResponse
from aiohttp.helpers import TimerNoop
from aiohttp.payload import BytesPayload
from multidict import CIMultiDict, CIMultiDictProxy

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
from ._core import ClientPolicy, HostKey, ReleasingStream, _Call, _HostPolicies
from .transport import AsyncResilientTransport

__all__ = [
    "AiohttpBulkheadFullError",
    "AiohttpCircuitOpenError",
    "AiohttpDeadlineExceededError",
    "AiohttpFallbackHook",
    "AiohttpLoadShedError",
    "AiohttpNoEndpointsError",
    "AiohttpRateLimitedError",
    "AiohttpRejectedError",
    "ResilientMiddleware",
]

AiohttpFallbackHook = Callable[[ClientRequest, BaseException], httpx.Response]
"""``hook(request, error) -> httpx.Response``: answers instead of a failed call."""


class AiohttpRejectedError(RejectedError, aiohttp.ClientConnectionError):
    """The middleware's policies refused the request: a RejectedError and an aiohttp error."""


class AiohttpCircuitOpenError(CircuitOpenError, AiohttpRejectedError):
    """The host's breaker is open: a CircuitOpenError and an aiohttp.ClientConnectionError."""


class AiohttpRateLimitedError(RateLimitedError, AiohttpRejectedError):
    """A rate limit refused the request: a RateLimitedError and an aiohttp error."""


class AiohttpBulkheadFullError(BulkheadFullError, AiohttpRejectedError):
    """The host's bulkhead is full: a BulkheadFullError and an aiohttp error."""


class AiohttpLoadShedError(LoadShedError, AiohttpRejectedError):
    """Load was shed below the middleware: a LoadShedError and an aiohttp error."""


class AiohttpNoEndpointsError(NoEndpointsError, AiohttpRejectedError):
    """No endpoint to send to: a NoEndpointsError and an aiohttp error."""


class AiohttpDeadlineExceededError(DeadlineExceededError, aiohttp.ServerTimeoutError):
    """No time was left: a DeadlineExceededError and an aiohttp.ServerTimeoutError."""


_TWINS: dict[type[BaseException], type[Any]] = {
    CircuitOpenError: AiohttpCircuitOpenError,
    RateLimitedError: AiohttpRateLimitedError,
    BulkheadFullError: AiohttpBulkheadFullError,
    LoadShedError: AiohttpLoadShedError,
    NoEndpointsError: AiohttpNoEndpointsError,
    RejectedError: AiohttpRejectedError,
}

_ANSWER = "fournines.aiohttp.response"


def _edge(exc: BaseException) -> BaseException:
    if isinstance(exc, FourNinesError):
        return twin(exc, _TWINS, AiohttpDeadlineExceededError)
    found = original(exc)
    return exc if found is None else found


class _Carried:
    __slots__ = ("handler", "request")

    def __init__(self, request: ClientRequest, handler: ClientHandlerType) -> None:
        self.request = request
        self.handler = handler


class _Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """An aiohttp response's body as the transport reads it (a retried answer, a kept one)."""

    __slots__ = ("_request", "_response", "released")

    def __init__(self, response: ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request
        # Set when aiohttp released the connection itself: nothing left to close.
        self.released = False

    def __iter__(self) -> Iterator[bytes]:
        raise RuntimeError("an aiohttp body is read asynchronously")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except aiohttp.ClientPayloadError as exc:
            raise bridged(httpx.ReadError, exc, self._request) from exc

    def close(self) -> None:
        if not self.released:
            self.released = True
            self._response.release()

    async def aclose(self) -> None:
        self.close()


class _Sender(httpx.AsyncBaseTransport):
    """The innermost transport: calls the next aiohttp handler with the carried request."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        carried: _Carried = request.extensions[CARRY]
        real = carried.request
        for name, value in changed_headers(request, real.headers):
            real.headers[name] = value
        timeout = request.extensions.get("timeout") or {}
        limit = timeout.get("read")
        try:
            async with asyncio.timeout(limit):
                response = await carried.handler(real)
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise bridged(httpx.ConnectTimeout, exc, request) from exc
            if not isinstance(exc, aiohttp.ServerTimeoutError):
                # Our own bound on the attempt: raised as aiohttp would raise it.
                exc = aiohttp.ServerTimeoutError(
                    f"no response headers from {real.url} within {limit:.3f}s")
            raise bridged(httpx.ReadTimeout, exc, request) from exc
        except aiohttp.ClientSSLError:
            raise  # not the host's health, not worth a retry: passes through as it is
        except aiohttp.ClientConnectorError as exc:
            raise bridged(httpx.ConnectError, exc, request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise bridged(httpx.RemoteProtocolError, exc, request) from exc
        except aiohttp.ClientOSError as exc:
            raise bridged(httpx.ReadError, exc, request) from exc
        headers = [(k, v) for k, v in response.headers.items()
                   if k.lower() not in ("content-encoding", "content-length")]
        return httpx.Response(response.status, headers=headers,
                              stream=_Body(response, request),
                              extensions={_ANSWER: response})


class _MiddlewareTransport(AsyncResilientTransport):
    """The middleware's transport: its settings errors name the middleware; it never hedges."""

    _owner = "ResilientMiddleware"

    def _begin(self, request: httpx.Request, hp: _HostPolicies | None = None) -> _Call:
        call = super()._begin(request, hp)
        # A hedge would send the one aiohttp request object twice at once (its writer,
        # body and connection are per send); retries send it again only one at a time.
        call.hedge = False
        return call


class ResilientMiddleware:
    """An aiohttp client middleware that protects every request; see the module docstring.

    :param config: the policy of every host without an override.
    :param per_route: overrides keyed by origin or ``(method, path pattern)``, as for
        :class:`~fournines.client.AsyncResilientTransport`.
    :param budget: one retry budget shared by all hosts (default: one per host).
    :param fallbacks: keyed by ``(method, path pattern)``: a hook
        ``hook(request, error) -> httpx.Response`` called with the aiohttp request
        when a call fails (an error, or a 5xx as ``aiohttp.ClientResponseError``),
        or a :class:`~fournines.StaleCache`.
    :param listeners: receive the events of every policy (named by host).
    :param clock: where time comes from.
    :param max_hosts: hosts whose policies are kept (as for the transport).
    :param host_key: ``host_key(request) -> str | None`` on the ``httpx.Request`` the
        policies see (method, URL, headers of the aiohttp request).
    :param rng: the random source of backoff jitter.
    :param tracing: one OpenTelemetry client span per request (needs OpenTelemetry).
    :param tracer_provider: where spans go (implies ``tracing``).
    """

    def __init__(
        self,
        config: ClientPolicy | None = None,
        *,
        per_route: Mapping[str | tuple[str, str], ClientPolicy] | None = None,
        budget: RetryBudget | None = None,
        fallbacks: Mapping[tuple[str, str], AiohttpFallbackHook | StaleCache[Any]] | None = None,
        listeners: Sequence[Listener] = (),
        clock: Clock = system_clock,
        max_hosts: int = 1000,
        host_key: HostKey | None = None,
        rng: random.Random | None = None,
        tracing: bool = False,
        tracer_provider: Any = None,
    ) -> None:
        hooks = {key: hook if isinstance(hook, StaleCache) else _httpx_hook(hook)
                 for key, hook in (fallbacks or {}).items()}
        self.transport = _MiddlewareTransport(
            _Sender(), config=config, per_route=per_route, budget=budget, fallbacks=hooks,
            listeners=listeners, clock=clock, max_hosts=max_hosts, rng=rng, tracing=tracing,
            tracer_provider=tracer_provider, host_key=host_key,
        )
        """The :class:`~fournines.client.AsyncResilientTransport` that decides."""

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType
                       ) -> ClientResponse:
        """Send ``request`` through ``handler`` under the policies of its host."""
        body = request.body
        replayable = body == b"" or isinstance(body, BytesPayload)
        message = httpx.Request(
            request.method, url_of(str(request.url)), headers=list(request.headers.items()),
            stream=httpx.ByteStream(b"") if replayable else _OneShot(),
        )
        message.extensions[CARRY] = _Carried(request, handler)
        try:
            answer = await self.transport.handle_async_request(message)
        except Exception as exc:
            edge = _edge(exc)
            if edge is exc:
                raise
            raise edge  # noqa: B904 - a twin has its cause set; an original keeps its own
        return await _response(request, message, answer)


async def _response(request: ClientRequest, message: httpx.Request,
                    answer: httpx.Response) -> ClientResponse:
    real: ClientResponse | None = answer.extensions.get(_ANSWER)
    if answer.is_stream_consumed or isinstance(answer.stream, httpx.ByteStream):
        # Read already (a retried answer, a kept or stale copy, a fallback's).
        body = await answer.aread()
        await answer.aclose()
        if real is not None and real.status == answer.status_code:
            real._body = body
            return real
        return _built(request, answer, body)
    assert real is not None
    stream = answer.stream

    def settled() -> None:
        found = _inner(stream)
        if found is not None:
            # aiohttp released it (or had: the body came with the headers); releasing
            # it again would fail the body still buffered for the caller.
            found.released = True
        content = real.content
        error = content.exception() if content is not None else None
        # The connection was lost mid-body (not a release before the end, which sets a
        # plain ClientConnectionError): a failure of the host, as for the transport.
        if isinstance(error, aiohttp.ClientPayloadError) and isinstance(stream, ReleasingStream):
            stream.cut(bridged(httpx.ReadError, error, message))
        answer.close()

    connection = real.connection
    if connection is None:
        settled()
    else:
        connection.add_callback(settled)
    return real


def _inner(stream: Any) -> _Body | None:
    """Our body below the transport's wrapper (which settles breaker and bulkhead on close)."""
    inner = getattr(stream, "_stream", stream)
    return inner if isinstance(inner, _Body) else None


def _built(request: ClientRequest, answer: httpx.Response, body: bytes) -> ClientResponse:
    """An aiohttp response for an answer no server sent just now (a fallback, a stale copy)."""
    loop = asyncio.get_running_loop()
    response = ClientResponse(
        request.method, request.url, writer=None, continue100=None, timer=TimerNoop(),
        request_info=request.request_info, traces=[], loop=loop,
        session=None,  # type: ignore[arg-type]
        stream_writer=_Written(),  # type: ignore[arg-type]
    )
    response.status = answer.status_code
    response.reason = answer.reason_phrase
    headers = CIMultiDict(answer.headers.items())
    response._headers = CIMultiDictProxy(headers)
    response._raw_headers = tuple((k.encode(), v.encode()) for k, v in headers.items())
    response._body = body
    return response


class _Written:
    """Stands for the request writer of a response no server sent: nothing was written."""

    output_size = 0


class _OneShot(httpx.AsyncByteStream):
    """Stands for a body the middleware cannot send twice (a stream, a file)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b""


def _httpx_hook(hook: AiohttpFallbackHook) -> Callable[[httpx.Request, BaseException],
                                                         httpx.Response]:
    if not callable(hook):
        return hook  # the transport names the bad setting
    def bridged_hook(message: httpx.Request, error: BaseException) -> httpx.Response:
        carried: _Carried = message.extensions[CARRY]
        real = carried.request
        cause: BaseException
        if isinstance(error, httpx.HTTPStatusError):
            cause = aiohttp.ClientResponseError(
                real.request_info, (), status=error.response.status_code,
                message=error.response.reason_phrase, headers=None)
        else:
            cause = _edge(error)
        made = hook(real, cause)
        made.read()
        return httpx.Response(made.status_code, headers=made.headers.raw,
                              stream=httpx.ByteStream(made.content))
    return bridged_hook
