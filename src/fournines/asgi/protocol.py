"""A uvicorn HTTP protocol that sheds on arrival and bounds the time a request head takes.

:class:`ShedHttpToolsProtocol` is uvicorn's httptools protocol with two changes,
and :func:`fournines.asgi.server.serve` uses it whenever httptools is installed
(uvicorn's own choice then) and ``http=`` is not given. With plain uvicorn, name it:
``uvicorn --http fournines.asgi.protocol:ShedHttpToolsProtocol app:app``.

Shedding on arrival. Under overload most requests are refused, so a refusal must
cost far less than a request. The ASGI middleware
(:class:`~fournines.asgi.shedding.LoadShedder`) can only refuse once the server has
built a scope, created a task and the event loop has come round to it, which is
where a backlog hides that the middleware never sees. This protocol asks the
app's shedder (found by following ``.app`` from the app the server runs) as soon
as a request's headers are parsed: a shed request is answered with the
shedder's precomputed 503 bytes in one write, with no scope, no task and no ASGI
call, and the connection stays open for the client's retry; an admitted request
carries its ticket into the scope, so that the middleware measures how long it
waited to start (the queueing delay the shedder's CoDel rule decides on) and does
not count it twice. The protocol leaves the decision to the middleware, as
without it, for pipelined requests (answers must keep their order), upgrades,
HTTP/1.0, absolute-form targets, a server run with ``limit_concurrency``, and
when the shedder has a ``priority`` function (which needs the scope), and while
the service is not ready (starting or draining: the lifecycle middleware that
:func:`~fournines.asgi.protect` puts outside the shedder then has work to do, such
as ``connection: close`` while draining). Shed requests do not reach that
middleware, so the protocol adds its headers (``x-instance-id``) itself; they are
counted by the shedder (``fournines_rejections_total{policy="load_shedder"}``) as
before.

Request-head timeout. uvicorn limits neither how long a connection may stay
silent before its first request nor how long a request's headers may take to
arrive (``timeout_keep_alive`` runs only between requests), so a client that
opens connections and trickles header bytes holds them for ever. Here a
connection that has not completed a request head within :attr:`header_timeout`
seconds (10 by default; set it with ``serve(header_timeout=...)``) of its
opening, or of the first byte of a later request, gets ``408 Request Timeout``
and is closed. The timer is armed only when a head does not arrive in one read,
so a request that comes whole costs nothing more. Timeouts are counted by the
shedder when there is one (:attr:`LoadShedder.header_timeouts`,
``fournines_rejections_total{reason="header_timeout"}``). A request head larger
than :attr:`max_head_size` (64 KiB; httptools has no limit of its own) gets
``431 Request Header Fields Too Large`` and the connection is closed.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ._state import Phase
from ._types import PROBLEM_CONTENT_TYPE, problem
from .shedding import TICKET, LoadShedder
from .shutdown import LifecycleMiddleware

__all__ = ["ShedHttpToolsProtocol", "find_shedder"]

_MAX_APP_DEPTH = 32
_READY = Phase.READY
_LINGER = 1.0  # seconds a connection answered 408/431 drains the client's bytes
_TIMEOUT_BODY = problem(408, "Request Timeout", "the request head did not arrive in time")
_TOO_LARGE_BODY = problem(431, "Request Header Fields Too Large",
                         "the request head is larger than the server accepts")


def _status_head(status: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: "
            + PROBLEM_CONTENT_TYPE + b"\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n")


_TIMEOUT_HEAD = _status_head(b"408 Request Timeout", _TIMEOUT_BODY)
_TOO_LARGE_HEAD = _status_head(b"431 Request Header Fields Too Large", _TOO_LARGE_BODY)


def find_shedder(app: object) -> LoadShedder | None:
    """The :class:`LoadShedder` in ``app``'s middleware chain (following ``.app``), if any."""
    return _find_shedder(app)[0]


def _find_shedder(app: object) -> tuple[LoadShedder | None, LifecycleMiddleware | None]:
    """The shedder in ``app``'s chain and the lifecycle middleware outside it, if any."""
    lifecycle = None
    for _ in range(_MAX_APP_DEPTH):
        if isinstance(app, LoadShedder):
            return app, lifecycle
        if isinstance(app, LifecycleMiddleware) and lifecycle is None:
            lifecycle = app
        app = getattr(app, "app", None)
        if app is None:
            break
    return None, None


class _Answered:
    """Stands in for the request/response cycle of a request answered on arrival.

    The parser goes on feeding that request's body, which uvicorn drops once the
    cycle's response is complete; the connection's next request starts a real cycle.
    """

    __slots__ = ()
    response_complete = True
    disconnected = True
    message_event = asyncio.Event()


_ANSWERED: Any = _Answered()


class ShedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, shedding on arrival (see the module documentation)."""

    header_timeout: ClassVar[float | None] = 10.0
    """Seconds a connection may take to send a complete request head (``None``: no limit)."""

    max_head_size: ClassVar[int] = 65536
    """Bytes a request head (target and header lines) may take before ``431``."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._shedder, lifecycle = _find_shedder(self.app)
        # Answered here, a shed request never reaches the lifecycle middleware: the
        # protocol adds its headers, and leaves the request to the middleware while the
        # service is not ready (starting: the first request marks it ready; draining:
        # answers close the connection).
        self._state = None if lifecycle is None else lifecycle.state
        self._extra_headers = () if lifecycle is None else lifecycle.response_headers
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # until the first request head is complete
        self._head_size = 0
        self._discarding = False  # answered and closing: the rest is dropped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept the connection; its first request head must come within the timeout."""
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection (and its head timer)."""
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse ``data``; time and size a request head that is still incomplete after it."""
        if self._discarding:
            return
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # Counted per read, not per header callback, so that a head that comes whole
            # (nearly all of them) pays nothing; a head may overshoot the limit by at
            # most one read.
            self._head_size += len(data)
            if self._head_size > self.max_head_size:
                # httptools sets no limit of its own: without this, one request head
                # may grow until memory runs out.
                self._answer_and_close(_TOO_LARGE_HEAD, _TOO_LARGE_BODY)
            elif self._head_timer is None:
                self._arm_head_timer()

    def on_message_begin(self) -> None:
        """A request starts: its head is now being read."""
        self._in_head = True
        self._head_size = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        """Shed the request on arrival, or pass it on with its ticket."""
        self._in_head = False
        self._cancel_head_timer()
        if self._discarding or self.transport.is_closing():
            return  # answered 431 already: the rest of this read is not a request
        shedder = self._shedder
        cycle = self.cycle
        url = self.url
        parser = self.parser
        if (shedder is None
                or (cycle is not None and not cycle.response_complete)
                or self.limit_concurrency is not None
                or url[:1] != b"/"
                or parser.should_upgrade()
                or parser.get_http_version() != "1.1"
                or not parser.should_keep_alive()
                or self.flow.write_paused
                or (self._state is not None and self._state.phase is not _READY)):
            super().on_headers_complete()
            return
        end = url.find(b"?")
        path = (url if end < 0 else url[:end]).decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        ticket = shedder.arrive(self.root_path + path, self.headers)
        if ticket is None:
            self.transport.write(shedder.shed_response(self.server_state.default_headers,
                                                       self._extra_headers))
            self.cycle = _ANSWERED
            self.on_response_complete()
            return
        if ticket:
            # uvicorn's scope type names only the standard extensions.
            self.scope["extensions"] = {TICKET: ticket}  # type: ignore[dict-item]
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        timeout = self.header_timeout
        if timeout is not None:
            self._head_timer = self.loop.call_later(timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        timer = self._head_timer
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if not self._in_head or transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined head behind a response still being written: our 408 cannot
            # go out before it. Look again later.
            self._arm_head_timer()
            return
        if self._shedder is not None:
            self._shedder.header_timed_out()
        self._answer_and_close(_TIMEOUT_HEAD, _TIMEOUT_BODY)

    def _answer_and_close(self, head: bytes, body: bytes) -> None:
        lines = [head]
        lines += [name + b": " + value + b"\r\n" for name, value in
                  self.server_state.default_headers]
        transport = self.transport
        transport.write(b"".join(lines) + b"\r\n" + body)
        if not transport.can_write_eof():
            transport.close()
            return
        # A close with the client's bytes still unread makes the kernel send a reset,
        # and the client loses the answer: end our side, read and drop what still
        # comes for a moment (a lingering close), then close.
        transport.write_eof()
        self._discarding = True
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(_LINGER, transport.close)
