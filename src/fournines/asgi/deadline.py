"""Server side of deadline propagation: each request runs under the budget its caller sent.

Request headers read (names are case-insensitive, as always in HTTP):

- ``x-request-timeout-ms: 1500`` — fournines' own: the caller's remaining
  budget in milliseconds, ASCII digits with an optional fraction (``1500``,
  ``2.5``), at most 32 characters. fournines' outgoing HTTP clients send it.
  It wins when both are present.
- ``grpc-timeout: 1500m`` — gRPC's: at most 8 digits and a unit (``H``,
  ``M``, ``S``, ``m``, ``u``, ``n``), for callers that speak it.

The budget is capped at ``max_timeout`` (a caller cannot make this service hold
work for an hour) and, when no header is sent, ``default_timeout`` applies
(``None``: no deadline at all). The request then runs under that deadline
(:func:`fournines.current_deadline`), so every fournines policy inside it
respects it: retries never sleep past it, limiters and bulkheads stop
waiting, outgoing calls forward what is left. The middleware does not cancel
the app when the deadline passes; wrap handlers in ``Timeout`` for that.

A request whose budget is already spent is answered ``504 Gateway Timeout`` at
once, without calling the app: its caller has given up on it. Spent means 0 or
less: ``x-request-timeout-ms: 0``, ``-0`` or ``-5`` (a ``-`` before the digits:
what a caller has left after overrunning its budget), ``grpc-timeout: 0S``, or
an enclosing deadline that has passed.

The 504's body is an RFC 9457 problem (``application/problem+json``), like every
early rejection of fournines' middleware.

A malformed value is ignored, as if absent: for ``x-request-timeout-ms``
anything but the digits above (``abc``, ``+5``, ``1e3``, ``0x10``, ``inf``,
``1_000``, ``.5``, non-ASCII digits, 33 characters or more); for
``grpc-timeout`` anything but its format (``5x``, 9 digits, ``-1S``). It is
counted in :attr:`DeadlineMiddleware.malformed`; listeners receive a
:class:`~fournines.MalformedHeader` event (the Prometheus listener counts them
as ``fournines_malformed_headers_total{name, header}``), and ``on_malformed``
(if given) is called with the header's name and raw value. It never causes an
error response: a caller's bad header must not take a request down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .._clock import Clock, system_clock
from .._deadline import push_deadline, reset_deadline
from .._errors import ConfigurationError, check_number
from .._events import DeadlineExceeded, Listener, MalformedHeader, dispatch, global_listeners
from .._http import EXPIRED_PROBLEM
from .._propagation import (
    GRPC_TIMEOUT_HEADER,
    NO_RETRY_HEADER,
    TIMEOUT_HEADER,
    begin_pushback,
    end_pushback,
    parse_grpc_timeout,
    parse_timeout_ms,
)
from ._types import PROBLEM_CONTENT_TYPE, ASGIApp, Message, Receive, Scope, Send, respond

__all__ = ["DeadlineMiddleware"]

_log = logging.getLogger("fournines")

_TIMEOUT = TIMEOUT_HEADER.encode("latin-1")
_FAST_LEN = 32  # parse_timeout_ms refuses longer values
_GRPC = GRPC_TIMEOUT_HEADER.encode("latin-1")
_NO_RETRY = (NO_RETRY_HEADER.encode("latin-1"), b"1")
_EXPIRED_BODY = EXPIRED_PROBLEM

OnMalformed = Callable[[str, bytes], object]
"""Called as ``on_malformed(header_name, raw_value)`` for each malformed header."""


class DeadlineMiddleware:
    """ASGI middleware that runs each HTTP request under the deadline its caller sent.

    See the module documentation for the headers. ``max_timeout`` caps every
    budget (``None``: no cap); ``default_timeout`` applies when no valid header
    came (``None``: no deadline). ``clock`` is where deadlines are measured.

    Counters for metrics: :attr:`malformed` (headers ignored as malformed),
    :attr:`expired` (requests answered 504 without running). Listeners receive
    a :class:`~fournines.DeadlineExceeded` event (``policy="deadline"``)
    for each expired request.
    """

    __slots__ = (
        "_clock",
        "_default",
        "_listeners",
        "_max",
        "app",
        "expired",
        "malformed",
        "name",
        "on_malformed",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_timeout: float | None = 30.0,
        default_timeout: float | None = None,
        clock: Clock = system_clock,
        on_malformed: OnMalformed | None = None,
        listeners: Sequence[Listener] = (),
        name: str = "deadline",
    ) -> None:
        check_number("DeadlineMiddleware", "max_timeout", max_timeout, minimum=0,
                     exclusive_minimum=True, optional=True)
        check_number("DeadlineMiddleware", "default_timeout", default_timeout, minimum=0,
                     exclusive_minimum=True, optional=True)
        if on_malformed is not None and not callable(on_malformed):
            raise ConfigurationError(
                f"DeadlineMiddleware.on_malformed must be callable or None, got {on_malformed!r}"
            )
        self.app = app
        self.name = name
        self.on_malformed = on_malformed
        self._clock = clock
        self._listeners = tuple(listeners)
        # inf rather than None: one comparison per request instead of a None test and one.
        self._max = float("inf") if max_timeout is None else float(max_timeout)
        if default_timeout is not None and default_timeout > self._max:
            default_timeout = self._max
        self._default = None if default_timeout is None else float(default_timeout)
        self.malformed = 0
        """Headers ignored because their value was malformed."""
        self.expired = 0
        """Requests answered 504 because their budget was already spent."""

    @property
    def max_timeout(self) -> float | None:
        """The cap on every request's budget, in seconds (``None``: no cap)."""
        return None if self._max == float("inf") else self._max

    @property
    def default_timeout(self) -> float | None:
        """The budget of a request that sent none, in seconds (``None``: no deadline)."""
        return self._default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request under its deadline, or answer 504 if it has none left."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        marker, pushback = begin_pushback()

        # A plain function returning send's awaitable: no extra coroutine per message.
        def send_pushback(message: Message) -> Any:
            if (marker.exhausted and message["type"] == "http.response.start"
                    and message["status"] >= 500):
                # Our outgoing call already retried and gave up: our caller must not
                # retry this answer too (retry at one layer only).
                message = {**message, "headers": [*message.get("headers", ()), _NO_RETRY]}
            return send(message)

        try:
            await self._serve(scope, receive, send_pushback)
        finally:
            end_pushback(pushback)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        timeout_value = grpc_value = None
        for key, value in scope["headers"]:
            if key == _TIMEOUT:
                timeout_value = value
            elif key == _GRPC:
                grpc_value = value
        seconds = None
        if timeout_value is not None:
            # The common case inline: plain ASCII digits (bytes.isdigit() is ASCII-only).
            # Anything else goes to parse_timeout_ms, which has the last word.
            if timeout_value.isdigit() and len(timeout_value) <= _FAST_LEN:
                seconds = float(timeout_value) / 1000.0
            else:
                seconds = parse_timeout_ms(timeout_value)
                if seconds is None:
                    self._malformed(TIMEOUT_HEADER, timeout_value)
        if seconds is None and grpc_value is not None:
            seconds = parse_grpc_timeout(grpc_value)
            if seconds is None:
                self._malformed(GRPC_TIMEOUT_HEADER, grpc_value)
        if seconds is None:
            seconds = self._default
            if seconds is None:
                await self.app(scope, receive, send)
                return
        elif seconds > self._max:
            seconds = self._max
        deadline, token = push_deadline(seconds, self._clock)
        try:
            if deadline.at <= self._clock.monotonic():
                await self._expired(send, seconds)
                return
            await self.app(scope, receive, send)
        finally:
            reset_deadline(token)

    def _malformed(self, header: str, value: bytes) -> None:
        self.malformed += 1
        if self._listeners or global_listeners():
            dispatch(self._listeners,
                     MalformedHeader(policy="deadline", name=self.name, header=header))
        callback = self.on_malformed
        if callback is not None:
            try:
                callback(header, value)
            except Exception:
                _log.exception("fournines DeadlineMiddleware.on_malformed %r failed", callback)

    async def _expired(self, send: Send, seconds: float) -> None:
        self.expired += 1
        if self._listeners or global_listeners():
            dispatch(self._listeners,
                     DeadlineExceeded(policy="deadline", name=self.name, timeout=seconds))
        await respond(send, 504, _EXPIRED_BODY, content_type=PROBLEM_CONTENT_TYPE)

    def __repr__(self) -> str:
        return (f"DeadlineMiddleware(max_timeout={self.max_timeout!r}, "
                f"default_timeout={self._default!r}, malformed={self.malformed}, "
                f"expired={self.expired})")
