"""Graceful shutdown: the service's lifecycle as seen by its middleware, and the drain settings.

:class:`LifecycleMiddleware` keeps a :class:`~fournines.asgi.ServiceState` true to life:
it marks the service ready once the app's lifespan startup has completed (or at
once when the app or the server does without lifespan), counts in-flight HTTP
requests, and while the service drains asks keep-alive clients to reconnect
(``connection: close``), so that their next request goes through the load
balancer to a pod that is still ready.

:class:`GracefulShutdown` holds the timing that :func:`fournines.asgi.server.serve`
applies on SIGTERM::

    SIGTERM ──> lifecycle hooks' on_drain first (deregistration), up to hook_timeout
           ──> readiness 503 (state.mark_draining())
           ──> keep serving, new connections too, for drain_delay
               (load balancers and kube-proxy notice and stop sending traffic)
           ──> stop accepting; wait for in-flight requests up to drain_timeout
           ──> cancel what is left; lifespan shutdown; exit with exit_code (0)
    second SIGTERM or SIGINT at any point: stop waiting, exit 128 + signal number

``drain_delay + drain_timeout`` must stay below ``grace_period`` (Kubernetes'
``terminationGracePeriodSeconds``, 30 s by default), leaving time for the
lifespan shutdown before the kubelet sends SIGKILL. The drain delay counts from
the signal, so hooks that finish within it (a deregistration takes milliseconds)
cost no extra time.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import ConfigurationError, check_number
from ._state import Phase, ServiceState
from ._types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["GracefulShutdown", "LifecycleMiddleware"]

# Module constants: a global lookup is cheaper than ``Phase.X`` (a class attribute
# lookup through the enum metaclass) on the per-request path.
_READY = Phase.READY
_STARTING = Phase.STARTING
_DRAINING = Phase.DRAINING
_CONNECTION_CLOSE = (b"connection", b"close")


@dataclass(frozen=True, slots=True, kw_only=True)
class GracefulShutdown:
    """How a service drains on SIGTERM (seconds; see the module docstring).

    ``drain_delay``: how long to keep serving, with readiness failing, before
    the listening socket closes. ``drain_timeout``: how long in-flight requests
    then have to finish before they are cancelled (``None``: wait forever, only
    allowed with ``grace_period=None``). ``grace_period``: the platform's limit
    (Kubernetes' ``terminationGracePeriodSeconds``); ``drain_delay +
    drain_timeout`` must be shorter, or the kubelet kills the process mid-drain.
    ``exit_code``: the exit status after a graceful drain. ``hook_timeout``: how
    long the state's lifecycle hooks (``on_drain``: deregistration) may hold
    readiness up after the signal before it fails anyway.
    """

    drain_delay: float = 5.0
    drain_timeout: float | None = 20.0
    grace_period: float | None = 30.0
    exit_code: int = 0
    hook_timeout: float = 1.0

    def __post_init__(self) -> None:
        check_number("GracefulShutdown", "drain_delay", self.drain_delay, minimum=0)
        check_number("GracefulShutdown", "drain_timeout", self.drain_timeout, minimum=0,
                     optional=True)
        check_number("GracefulShutdown", "grace_period", self.grace_period, minimum=0,
                     exclusive_minimum=True, optional=True)
        check_number("GracefulShutdown", "exit_code", self.exit_code, minimum=0, maximum=255,
                     integer=True)
        check_number("GracefulShutdown", "hook_timeout", self.hook_timeout, minimum=0)
        if self.grace_period is None:
            return
        if self.drain_timeout is None:
            raise ConfigurationError(
                "GracefulShutdown.drain_timeout must be a number when grace_period is set "
                f"({self.grace_period:g}), got None"
            )
        if self.drain_delay + self.drain_timeout >= self.grace_period:
            raise ConfigurationError(
                "GracefulShutdown.drain_delay + drain_timeout must be < grace_period "
                f"({self.grace_period:g}, the platform's termination grace period), "
                f"got {self.drain_delay:g} + {self.drain_timeout:g}"
            )


class LifecycleMiddleware:
    """Keep ``state`` in step with the app's life; count in-flight HTTP requests.

    - Lifespan: the service is marked ready after the app reports
      ``lifespan.startup.complete`` (a failed startup leaves it starting). An app
      that ignores or rejects the lifespan protocol is marked ready when its
      lifespan call ends, as the server then serves without it; with a server
      that sends no lifespan at all, the first HTTP request marks it ready.
      ``lifespan.shutdown`` marks the service draining, in case nothing did before
      (running the state's ``on_drain`` hooks first, for up to a second).
    - ``state.in_flight`` counts HTTP requests inside the app (WebSockets are
      long-lived and would distort it for load shedding, so they are not counted).
    - While draining, responses carry ``connection: close``: a keep-alive
      client then reconnects, and its load balancer routes it to a ready pod
      instead of a connection pinned to this one until the socket closes.
    - ``instance_header=True`` adds ``x-instance-id: <state.instance>`` to every
      HTTP response.

    Put it outermost (``protect()`` does), so it sees every request, the
    readiness probe included.
    """

    __slots__ = ("_extra_headers", "_lifespan_seen", "app", "state")

    def __init__(self, app: ASGIApp, *, state: ServiceState, instance_header: bool = False) -> None:
        self.app = app
        self.state = state
        # Built once: the per-request cost of the header is one list build in send.
        self._extra_headers: tuple[tuple[bytes, bytes], ...] = (
            ((b"x-instance-id", state.instance.encode("latin-1")),) if instance_header else ()
        )
        self._lifespan_seen = False

    @property
    def response_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The headers added to every HTTP response while the service is ready.

        A server protocol that answers a request itself, before the app
        (:mod:`fournines.asgi.protocol`), adds these to keep its answers alike.
        """
        return self._extra_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app for one connection scope."""
        scope_type = scope["type"]
        if scope_type == "http":
            state = self.state
            phase = state.phase
            extra = self._extra_headers
            if phase is not _READY:
                # Rare states only: the common case pays one identity test.
                if phase is _STARTING and not self._lifespan_seen:
                    state.mark_ready()
                elif phase is _DRAINING and scope.get("http_version", "1.1").startswith("1"):
                    # HTTP/1 only: HTTP/2 forbids connection-specific header fields.
                    extra = (*extra, _CONNECTION_CLOSE)
            if extra:
                send = _add_headers(send, extra)
            state.in_flight += 1
            try:
                await self.app(scope, receive, send)
            finally:
                state.in_flight -= 1
        elif scope_type == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._lifespan_seen = True
        state = self.state
        reported = False

        async def lifespan_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                # Plain uvicorn stopped accepting already; serve() ran the hooks earlier.
                await state.drain()
            return message

        async def lifespan_send(message: Message) -> None:
            nonlocal reported
            kind = message["type"]
            if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
                reported = True
            await send(message)
            if kind == "lifespan.startup.complete":
                # After the server has the message: ready means startup truly ended.
                state.mark_ready()

        try:
            await self.app(scope, lifespan_receive, lifespan_send)
        finally:
            if not reported:
                # The app ignored lifespan (returned) or rejected it (raised); the
                # server serves without it, so startup is over.
                state.mark_ready()


def _add_headers(send: Send, extra: tuple[tuple[bytes, bytes], ...]) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            # A new dict: the app may reuse its message object for every response.
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return send_with_headers
