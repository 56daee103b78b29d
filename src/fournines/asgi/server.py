"""Run an ASGI app on uvicorn with readiness-first graceful shutdown.

``serve(app)`` is ``uvicorn.run(app)`` with the drain sequence of
:class:`~fournines.asgi.shutdown.GracefulShutdown`: on SIGTERM (or SIGINT) the
readiness probe fails at once while the server keeps serving, new connections
included, for ``drain_delay``; then it stops accepting, gives in-flight requests
``drain_timeout`` to finish, cancels the rest, runs the lifespan shutdown and
exits 0. A second signal stops waiting and exits ``128 + signal``.

uvicorn alone stops accepting the moment SIGTERM arrives, while endpoints
still route traffic to the pod, and waits forever for in-flight requests. When
you run plain ``uvicorn`` instead of ``serve()``:

- pass ``--timeout-graceful-shutdown 20`` (shorter than the grace period), or
  a slow request holds the pod until the kubelet's SIGKILL;
- readiness cannot fail before uvicorn stops accepting, so delay SIGTERM
  itself with a Kubernetes ``preStop`` hook (``sleep 5``) for kube-proxy and
  load balancers to take the pod out first.

The server binds to 127.0.0.1 unless ``host`` or the ``HOST`` environment
variable says otherwise: exposing a service is a decision, not a default.

Client addresses: ``scope["client"]`` (what ``rate_limit_key="ip"`` keys on, what
traces record) is the TCP peer, unless ``forwarded_allow_ips`` (or the
``FORWARDED_ALLOW_IPS`` environment variable) names the proxies in front: then,
for requests from those peers only, uvicorn takes the client from
``X-Forwarded-For`` (the rightmost address that is not a named proxy) and the
scheme from ``X-Forwarded-Proto``. Nothing is trusted by default, where plain
uvicorn trusts every local peer (127.0.0.1, ::1): any local process could then
pick its own client address, and so a fresh rate-limit bucket per request.

Slow clients: request bodies are timed by the shedder (``protect(body_timeout=)``,
408). Request heads are read by the server before the app is called, so they hold
no shedder capacity. With httptools installed, ``serve()`` runs
:class:`~fournines.asgi.protocol.ShedHttpToolsProtocol`, which closes a
connection whose request head has not arrived within ``header_timeout`` seconds
(408) and refuses heads above 64 KiB (431). uvicorn alone limits neither the time
a head takes (``timeout_keep_alive`` closes idle connections between requests
only) nor, under httptools, its size; with ``http="h11"`` a head above
``h11_max_incomplete_event_size`` (16 KiB) gets 400 and its time is not limited.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Sequence
from types import FrameType
from typing import Any, cast

import uvicorn

from .._clock import system_clock
from .._errors import ConfigurationError, check_number
from ._state import ServiceState
from ._types import ASGIApp
from .protocol import ShedHttpToolsProtocol
from .shutdown import GracefulShutdown, LifecycleMiddleware

__all__ = ["DrainingServer", "find_state", "make_server", "serve"]

# uvicorn's own logger: its log config gives it a handler, and the drain is part of
# the server's story ("Shutting down", "Waiting for connections to close", ...).
logger = logging.getLogger("uvicorn.error")

# Options serve() owns, or that would put uvicorn's own process supervisor (with
# its own signal handling) between the signal and the drain.
_REFUSED_OPTIONS = {
    "timeout_graceful_shutdown": "use GracefulShutdown(drain_timeout=...)",
    "workers": "run one serve() per process (or container) instead",
    "reload": "use plain uvicorn --reload for development",
}
_FORWARDED_ALLOW_IPS_ENV = "FORWARDED_ALLOW_IPS"
_DEFAULT_HEADER_TIMEOUT = 10.0
_MAX_APP_DEPTH = 32


class DrainingServer(uvicorn.Server):
    """A ``uvicorn.Server`` that drains on SIGTERM/SIGINT as ``shutdown`` says.

    The first signal marks ``state`` draining at once (readiness fails) and
    keeps the server running for ``shutdown.drain_delay``; then uvicorn's own
    shutdown runs with ``config.timeout_graceful_shutdown`` as the drain
    timeout (:func:`serve` sets it from ``shutdown.drain_timeout``). A second
    signal sets uvicorn's ``force_exit`` (exit status ``128 +`` the first
    signal). After :meth:`run`, :attr:`exit_code`
    is the status the process should exit with.

    Built on your own ``uvicorn.Config``, it keeps that config's
    ``proxy_headers`` and ``forwarded_allow_ips`` (uvicorn's defaults believe
    forwarded headers from loopback); :func:`serve` believes none unless told.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        state: ServiceState,
        shutdown: GracefulShutdown | None = None,
    ) -> None:
        super().__init__(config)
        self.state = state
        self.graceful = shutdown if shutdown is not None else GracefulShutdown()
        self.exit_signal: int | None = None
        self.forced = False
        self._drain_until: float | None = None
        self._announced = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hooks_task: asyncio.Future[None] | None = None

    @property
    def exit_code(self) -> int | None:
        """The exit status after a signal (``None`` if the server stopped without one)."""
        if self.exit_signal is None:
            return None
        return 128 + self.exit_signal if self.forced else self.graceful.exit_code

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Start draining on the first signal; stop waiting on the second.

        Runs as a signal handler, so it only sets flags (logging here could
        deadlock on the handler's lock); :meth:`on_tick` reports and acts. It
        replaces uvicorn's, which would also re-raise the signal after shutdown
        and so turn a graceful exit into death by SIGTERM.
        """
        if self.exit_signal is not None:
            self.forced = True
            self.force_exit = True
            self.should_exit = True
            return
        self.exit_signal = sig
        signalled = system_clock.monotonic()
        loop = self._loop
        if self.state.hooks and loop is not None:
            # Hooks first (deregistration), readiness after them: on the loop, as a task.
            loop.call_soon_threadsafe(self._start_hooks_first, signalled)
            return
        self._begin_drain(self.state.ready, signalled)

    def _start_hooks_first(self, signalled: float) -> None:
        self._hooks_task = asyncio.ensure_future(self._hooks_first(signalled))

    async def _hooks_first(self, signalled: float) -> None:
        was_ready = self.state.ready
        await self.state.drain(timeout=self.graceful.hook_timeout)
        self._begin_drain(was_ready, signalled)

    def _begin_drain(self, was_ready: bool, signalled: float) -> None:
        self.state.mark_draining()
        if was_ready and self.graceful.drain_delay > 0:
            self._drain_until = signalled + self.graceful.drain_delay
        else:
            # Never ready means no load balancer sends traffic: nothing to wait for.
            self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does; the service is ready once it listens."""
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started:
            # Covers apps run without LifecycleMiddleware or with lifespan="off";
            # a no-op when the lifespan already marked it ready, or when draining.
            self.state.mark_ready()

    async def on_tick(self, counter: int) -> bool:
        """Uvicorn's 10 Hz tick: end the drain delay when its time has come."""
        drain_until = self._drain_until
        if drain_until is not None and not self.should_exit:
            if not self._announced:
                self._announced = True
                logger.info("%s received: readiness fails now; serving %gs more so load "
                            "balancers can notice", _signal_name(self.exit_signal),
                            self.graceful.drain_delay)
            if system_clock.monotonic() >= drain_until:
                logger.info("Drain delay over: closing the listener; in-flight requests "
                            "have %s to finish", _seconds(self.graceful.drain_timeout))
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Uvicorn's shutdown (stop accepting, wait, cancel, lifespan); then mark stopped."""
        # Stopping for another reason (limit_max_requests): readiness fails now too,
        # after the hooks (a no-op wait when the signal already ran them).
        await self.state.drain(timeout=self.graceful.hook_timeout)
        await super().shutdown(sockets=sockets)
        self.state.mark_stopped()
        if self.forced:
            logger.warning("Forced exit on a second signal: in-flight requests are dropped "
                           "and the lifespan shutdown is skipped")


def serve(
    app: ASGIApp,
    *,
    host: str | None = None,
    port: int | None = None,
    state: ServiceState | None = None,
    shutdown: GracefulShutdown | None = None,
    log_level: str | int | None = "info",
    forwarded_allow_ips: str | Sequence[str] | None = None,
    header_timeout: float | None = 10.0,
    **uvicorn_options: Any,
) -> None:
    """Serve ``app`` with uvicorn until SIGTERM/SIGINT, then drain gracefully.

    ``host``: ``HOST`` from the environment, else ``127.0.0.1`` (pass
    ``"0.0.0.0"`` to listen on every interface). ``port``: ``PORT`` from the
    environment, else 8000. ``state``: the :class:`ServiceState` that readiness
    reads; by default the one found on ``app`` (``app.state``, following
    ``.app`` through middleware), else a new one, with ``app`` wrapped in a
    :class:`LifecycleMiddleware`. ``shutdown``: the drain timing (see
    :class:`GracefulShutdown`). ``forwarded_allow_ips``: the proxies whose
    ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are believed, as addresses or
    networks (``"10.0.0.0/8"``), a list or one comma-separated string, ``"*"``
    for every peer (only when nothing but proxies can reach the port); default
    ``FORWARDED_ALLOW_IPS`` from the environment, else none: the client address
    is the TCP peer's, whatever headers it sends. ``header_timeout``: seconds a
    connection may take to send a complete request head before ``408`` (``None``:
    no limit). Unless ``http=`` is given, the server runs
    :class:`~fournines.asgi.protocol.ShedHttpToolsProtocol` when httptools is
    installed (uvicorn's own choice then): it sheds on arrival, before a scope
    exists, and applies ``header_timeout``; otherwise uvicorn's h11 protocol, and
    the shedder decides in its middleware. Other keyword arguments go to
    ``uvicorn.Config`` (``proxy_headers`` is set from ``forwarded_allow_ips``:
    ``proxy_headers=True`` alone is refused, since it would trust loopback).

    Returns after a graceful drain that exits 0, so a script ending in
    ``serve(app)`` exits 0; raises ``SystemExit`` with any other status (a
    forced exit is ``128 + signal``). Exits 3 if the server cannot start, as
    uvicorn does.
    """
    server = make_server(app, host=host, port=port, state=state, shutdown=shutdown,
                         log_level=log_level, forwarded_allow_ips=forwarded_allow_ips,
                         header_timeout=header_timeout, **uvicorn_options)
    server.run()
    code = server.exit_code
    if code:
        raise SystemExit(code)


def make_server(
    app: ASGIApp,
    *,
    host: str | None = None,
    port: int | None = None,
    state: ServiceState | None = None,
    shutdown: GracefulShutdown | None = None,
    log_level: str | int | None = "info",
    forwarded_allow_ips: str | Sequence[str] | None = None,
    header_timeout: float | None = 10.0,
    server_class: type[DrainingServer] | None = None,
    **uvicorn_options: Any,
) -> DrainingServer:
    """The server :func:`serve` runs, built and checked but not started.

    The arguments are :func:`serve`'s; ``server_class`` is a subclass of
    :class:`DrainingServer` to build instead. Run it with ``server.run()``, or
    ``server.run(sockets=[...])`` on sockets bound elsewhere (what
    :mod:`fournines.serve`'s workers do with the supervisor's sockets).
    """
    for name, advice in _REFUSED_OPTIONS.items():
        if name in uvicorn_options:
            raise ConfigurationError(f"serve() does not take {name!r}: {advice}")
    proxies = _trusted_proxies(forwarded_allow_ips, uvicorn_options.pop("proxy_headers", None))
    _choose_protocol(uvicorn_options, header_timeout)
    shutdown = shutdown if shutdown is not None else GracefulShutdown()
    if state is None:
        state = find_state(app)
        if state is None:
            state = ServiceState()
            app = LifecycleMiddleware(app, state=state)
    # uvicorn annotates timeout_graceful_shutdown as int but only hands it to
    # asyncio.wait_for, which takes float seconds.
    drain_timeout = cast("int | None", shutdown.drain_timeout)
    config = uvicorn.Config(
        app,
        host=_bind_host(host),
        port=_bind_port(port),
        log_level=log_level,
        timeout_graceful_shutdown=drain_timeout,
        proxy_headers=proxies is not None,
        forwarded_allow_ips=proxies,
        **uvicorn_options,
    )
    return (server_class or DrainingServer)(config, state=state, shutdown=shutdown)


def _choose_protocol(options: dict[str, Any], header_timeout: float | None) -> None:
    """Run fournines' protocol unless the caller chose one (see :func:`serve`)."""
    check_number("serve", "header_timeout", header_timeout, minimum=0, exclusive_minimum=True,
                 optional=True)
    if "http" in options:
        chosen = options["http"]
        if not (isinstance(chosen, type) and issubclass(chosen, ShedHttpToolsProtocol)):
            if header_timeout != _DEFAULT_HEADER_TIMEOUT:
                raise ConfigurationError(
                    f"serve.header_timeout {header_timeout!r} needs fournines' protocol; "
                    f"http={chosen!r} does not apply it (leave http= out)")
            return
        protocol = chosen
    else:
        if importlib.util.find_spec("httptools") is None:
            return  # uvicorn runs h11; the shedder decides in its middleware
        protocol = ShedHttpToolsProtocol
    if protocol.header_timeout != header_timeout:
        protocol = type(protocol.__name__, (protocol,), {"header_timeout": header_timeout})
    options["http"] = protocol


def find_state(app: object) -> ServiceState | None:
    """The :class:`ServiceState` of ``app``: its ``.state``, or that of an ``.app`` inside."""
    for _ in range(_MAX_APP_DEPTH):
        candidate = getattr(app, "state", None)
        if isinstance(candidate, ServiceState):
            return candidate
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def _trusted_proxies(value: str | Sequence[str] | None, proxy_headers: object) -> list[str] | None:
    """The proxies named by ``forwarded_allow_ips`` or the environment (None: trust none)."""
    if proxy_headers is not None and not isinstance(proxy_headers, bool):
        raise ConfigurationError(f"serve.proxy_headers must be a bool, got {proxy_headers!r}")
    field = "serve.forwarded_allow_ips"
    if proxy_headers is False:
        if value is not None:
            raise ConfigurationError(
                f"{field} {value!r} has no effect with proxy_headers=False")
        return None
    if value is None:
        value = os.environ.get(_FORWARDED_ALLOW_IPS_ENV, "").strip() or None
        field = _FORWARDED_ALLOW_IPS_ENV
        if value is None:
            if proxy_headers:
                raise ConfigurationError(
                    "serve.proxy_headers=True names no proxy to trust: name them with "
                    "forwarded_allow_ips= (uvicorn would trust every local peer)")
            return None
    if isinstance(value, str):
        entries = [entry.strip() for entry in value.split(",")]
    elif isinstance(value, Sequence) and all(isinstance(entry, str) for entry in value):
        entries = [entry.strip() for entry in value]
    else:
        raise ConfigurationError(
            f"{field} must be a str or a list of str naming proxies, got {value!r}")
    if not entries or not all(entries):
        raise ConfigurationError(f"{field} must name at least one proxy, and no empty "
                                 f"entry, got {value!r}")
    for entry in entries:
        if entry == "*":
            if len(entries) > 1:
                raise ConfigurationError(f"{field}: '*' trusts every peer; it cannot be "
                                         f"combined with other entries, got {value!r}")
            continue
        try:
            # uvicorn would take a typo ("10.0.0.0/33") as a literal host name matching nothing.
            if "/" in entry:
                ipaddress.ip_network(entry)
            else:
                ipaddress.ip_address(entry)
        except ValueError:
            raise ConfigurationError(
                f"{field} entries must be IP addresses, networks (10.0.0.0/8) or '*', "
                f"got {entry!r}") from None
    return entries


def _bind_host(host: str | None) -> str:
    if host is not None:
        return host
    # Loopback unless told: a service reachable from everywhere by accident is a risk.
    return os.environ.get("HOST", "").strip() or "127.0.0.1"


def _bind_port(port: int | None) -> int:
    if port is not None:
        return port
    text = os.environ.get("PORT", "").strip()
    if not text:
        return 8000
    try:
        return int(text)
    except ValueError:
        raise ConfigurationError(f"PORT must be an integer, got {text!r}") from None


def _signal_name(sig: int | None) -> str:
    try:
        return signal.Signals(sig).name if sig is not None else "signal"
    except ValueError:
        return f"signal {sig}"


def _seconds(value: float | None) -> str:
    return "unlimited time" if value is None else f"{value:g}s"
