"""One worker process of ``fournines serve``: uvicorn on the supervisor's sockets.

Started by the supervisor as ``python -m fournines.serve._worker SPEC`` (SPEC is
JSON), so every worker imports the app afresh: a reload runs the code on disk
now, not what the supervisor once imported (it never imports the app at all).

It talks to the supervisor over the write end of a pipe, one line per message:

- ``ready``: uvicorn's startup (lifespan included) completed and the worker
  accepts on the sockets;
- ``beat N RSS``: once a second from uvicorn's tick, N the requests served so
  far, RSS the resident memory in bytes (``/proc/self/statm``; 0 where there is
  none); a blocked event loop sends none, and the supervisor replaces the worker;
- ``limit N``: sent by the request that reaches the worker's ``max_requests``
  (counted per request, not per heartbeat), so the supervisor starts the
  replacement at exactly that count;
- ``error TEXT``: the app could not be loaded or started (then exit 4).

A write that fails because the supervisor is gone starts the worker's drain:
an orphan serves its in-flight requests and exits instead of living forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import json
import os
import signal
import socket
import sys
from typing import Any

from ..asgi import GracefulShutdown
from ..asgi.server import DrainingServer, make_server

EXIT_LOAD_FAILED = 4
# After its listener closes, a worker still serves for this long before uvicorn
# closes idle connections: a connection the kernel handed over just before the close
# may not have had its request read yet, and closing it then would fail a request
# that another worker would have served.
_ACCEPT_SETTLE = 0.25


class _Reporter:
    """Lines to the supervisor over a non-blocking pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.gone = False
        os.set_blocking(fd, False)

    def send(self, line: str) -> None:
        if self.gone:
            return
        try:
            os.write(self.fd, (line.replace("\n", " ") + "\n").encode())
        except BlockingIOError:
            pass  # a supervisor that is not reading loses a heartbeat, not the worker
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                raise
            self.gone = True


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    """The resident memory of this process in bytes (0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", "rb") as file:
            return int(file.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


class _RequestLimit:
    """Counts HTTP requests and tells the supervisor at the one that reaches ``limit``.

    uvicorn's own count reaches the supervisor with the heartbeat only (once a
    second), so a busy worker would overshoot its limit by a second of requests
    before its replacement even started.
    """

    def __init__(self, app: Any, limit: int, reporter: _Reporter) -> None:
        self.app = app
        self.limit = limit
        self.reporter = reporter
        self.count = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.count += 1
            if self.count == self.limit:
                self.reporter.send(f"limit {self.count}")
        await self.app(scope, receive, send)


class WorkerServer(DrainingServer):
    """A :class:`DrainingServer` that reports readiness and heartbeats to its supervisor."""

    reporter: _Reporter

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does; then tell the supervisor this worker is ready."""
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self.reporter.send("ready")

    async def on_tick(self, counter: int) -> bool:
        """Heartbeat once a second; drain when the supervisor has gone."""
        if counter % 10 == 0:
            self.reporter.send(f"beat {self.server_state.total_requests} {_rss()}")
            if self.reporter.gone and self.exit_signal is None:
                self.handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Close the listeners, let just-accepted connections be read, then drain."""
        for server in getattr(self, "servers", []):
            server.close()
        if not self.force_exit:
            await asyncio.sleep(_ACCEPT_SETTLE)
        await super().shutdown(sockets=sockets)


def load_app(target: str, *, factory: bool) -> Any:
    """The object ``module:attribute`` names (called first if ``factory``)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"app must be 'module:attribute', got {target!r}")
    module = importlib.import_module(module_name)
    app: Any = module
    for part in attribute.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if factory:
        app = app()
    return app


def main(argv: list[str]) -> int:
    """Run one worker from the JSON spec in ``argv[1]``; returns its exit status."""
    return serve(json.loads(argv[1]))


def preload() -> None:
    """Import what a worker needs before its app, so a forked worker starts without it.

    uvicorn imports its protocol, loop and lifespan modules only when it starts;
    importing them here (in the supervisor, with ``fork``) spares every forked
    worker that time. prometheus_client is not among them: it must be imported
    after ``PROMETHEUS_MULTIPROC_DIR`` is set.
    """
    for name in ("uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.http.h11_impl",
                 "uvicorn.loops.uvloop",
                 "uvicorn.loops.asyncio", "uvicorn.lifespan.on", "fournines.asgi.protocol"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def serve(spec: dict[str, Any]) -> int:
    """Run one worker from its spec (what :func:`main` parses); returns its exit status."""
    reporter = _Reporter(spec["pipe"])
    # Signals the supervisor sends between spawn and uvicorn's own handlers: a worker
    # told to stop before it serves just exits.
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(0))
    app_dir = spec["app_dir"]
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        app = load_app(spec["app"], factory=spec["factory"])
    except Exception as exc:  # any failure of the app's import is reported, in one line
        reporter.send(f"error cannot load {spec['app']}: {type(exc).__name__}: {exc}")
        return EXIT_LOAD_FAILED
    sockets = [socket.socket(fileno=fd) for fd in spec["fds"]]
    # The supervisor checked the grace period; a worker only applies the two drain times.
    shutdown = GracefulShutdown(drain_delay=spec["drain_delay"],
                                drain_timeout=spec["drain_timeout"], grace_period=None)
    server = make_server(app, shutdown=shutdown, log_level=spec["log_level"],
                         forwarded_allow_ips=spec["forwarded_allow_ips"],
                         header_timeout=spec["header_timeout"], server_class=WorkerServer,
                         **spec["uvicorn_options"])
    assert isinstance(server, WorkerServer)
    server.reporter = reporter
    if spec.get("max_requests"):
        # Wrapped after make_server, which looks for protect()'s state on the app itself.
        server.config.app = _RequestLimit(server.config.app, spec["max_requests"], reporter)
    try:
        server.run(sockets=sockets)
    except SystemExit:  # uvicorn exits 3 when the lifespan startup fails
        if not server.started:
            reporter.send("error the app's lifespan startup failed (see the log above)")
            return EXIT_LOAD_FAILED
        raise
    return server.exit_code or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
