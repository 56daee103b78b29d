"""The supervisor: N uvicorn workers on sockets bound once, replaced without downtime.

``run("pkg.app:app", workers=2, bind=["0.0.0.0:8000"])`` binds the sockets, starts
the workers (fresh interpreters that import the app themselves) and keeps them
alive until SIGTERM/SIGINT:

- **readiness**: a worker counts once it reports that uvicorn's startup (the
  lifespan included) completed, over a pipe; never after a sleep;
- **heartbeat**: a ready worker reports once a second from its event loop; one
  silent for ``heartbeat_timeout`` is killed (SIGKILL) and replaced;
- **SIGHUP**: a rolling reload, new first: a replacement starts, and only once it
  is ready does one old worker get SIGTERM (it drains: readiness fails, it serves
  ``drain_delay`` more, stops accepting, gives in-flight requests
  ``drain_timeout``); then the next. A replacement that fails to load, exits or is
  not ready within ``startup_timeout`` aborts the reload: the old workers keep
  serving, and the log says why;
- **crashes**: a worker that exits on its own is restarted at once the first
  time in ``crash_window`` seconds, then after a backoff
  (:class:`~fournines.policies.backoff.Backoff`, growing with the crashes of the
  window); ``max_crashes`` in that window and the
  supervisor gives up (:class:`ServeError`);
- **reload batches**: ``reload_batch`` replacements start at once (each old
  worker drains once its own replacement is ready), so a reload of many workers
  takes about ``workers / reload_batch`` startups; never more than ``workers``;
- **recycling**: with ``max_requests``, a worker that has served that many (plus
  up to ``max_requests_jitter``, drawn per worker) is replaced new first, like a
  reload: the worker counts its requests itself and asks for its replacement at
  the request that reaches its limit (it serves on until the replacement is
  ready, so it overshoots by the requests of one worker startup). With
  ``max_rss`` (MiB), a worker whose resident memory exceeds it at a heartbeat is
  replaced the same way. Up to ``reload_batch`` recycles run at a time;
- **SIGUSR2**: the supervisor replaces itself (a binary upgrade, as gunicorn's
  USR2): it starts a new supervisor with the same command line
  (``sys.orig_argv``) that inherits the listening sockets and the control socket
  as file descriptors (named in ``FOURNINES_SERVE_UPGRADE``), so nothing is
  bound again and no queued connection is lost. The new one starts its own
  workers; once they are all ready it says so over a pipe, and only then does
  the old one drain its workers and exit 0 (the new one is not its worker: it
  lives on, reparented). If the new supervisor exits or is not ready within
  ``startup_timeout``, the upgrade is aborted and the old one keeps serving;
- **SIGTERM / SIGINT**: every worker drains at once; the supervisor exits when
  they have (``run`` returns). A second signal forces: workers stop waiting for
  in-flight requests, and ``run`` raises ``SystemExit(128 + signal)``.

With ``NOTIFY_SOCKET`` set (systemd ``Type=notify``) the supervisor sends
``READY=1`` once the first workers are ready, ``RELOADING=1`` / ``READY=1``
around a reload, ``MAINPID=`` the new supervisor after an upgrade and
``STOPPING=1`` at shutdown.

**Starting workers.** By default each worker is a fresh interpreter
(``python -m fournines.serve._worker``), which imports fournines, uvicorn and the
app: on a loaded machine about a second before it is ready. With ``fork``, the
supervisor imports fournines' worker and uvicorn once and forks every worker
from itself; the child imports only the app (still afresh, so a reload runs the
code on disk). A replacement is ready sooner, but fournines and uvicorn are then
the supervisor's: upgrading those is a SIGUSR2, not a SIGHUP. The supervisor
falls back to starting interpreters (and logs why) where a fork would copy state
it must not: threads running in it (a ``run()`` called from a busy program),
the app's module or prometheus_client already imported.

**Metrics and probes.** A worker's ``/livez``, ``/readyz`` and ``/metrics`` are
its app's (a request on the shared port reaches any one worker). With more than
one worker and no ``PROMETHEUS_MULTIPROC_DIR`` set, the supervisor creates one
(removed at exit) and hands it to the workers, so :func:`fournines.asgi.protect`'s
``/metrics`` merges every worker's series whichever worker answers; a worker
that exits has its live gauges removed (prometheus_client's
``mark_process_dead``), its counters stay. With ``metrics_bind``, the supervisor
serves its own endpoint (plain HTTP, one request per connection): ``/metrics`` with
``fournines_serve_workers{state}``, ``fournines_serve_worker_restarts_total{cause}``
(``crash``, ``hung``, ``startup``, ``reload``, ``max_requests``, ``max_rss``),
``fournines_serve_reloads_total{outcome}``, ``fournines_serve_generation`` and
``fournines_serve_supervisor_start_time_seconds`` (an upgrade changes it);
``/livez``, 200 while the supervisor's loop turns (its liveness is that loop,
not the workers': a supervisor restarting crashed workers is alive);
``/readyz``, 200 while a worker is ready and the supervisor is not stopping.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import ConfigurationError, FourNinesError, check_number
from .._events import SupervisorUpgraded, WorkerExited, WorkersReloaded, dispatch
from ..asgi import GracefulShutdown
from ..policies.backoff import Backoff
from . import _probe
from . import control as _control
from . import sockets as _sockets

__all__ = ["ServeError", "run"]

logger = logging.getLogger("fournines.serve")

_TICK = 0.1
# How long past drain_delay + drain_timeout a stopping worker may take (lifespan
# shutdown, interpreter exit) before it is killed.
_STOP_MARGIN = 10.0
# The environment variable that hands an upgrading supervisor's descriptors to its successor.
UPGRADE_ENV = "FOURNINES_SERVE_UPGRADE"
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Names the multi-process directory a supervisor created (and its successor removes).
_OWNED_DIR_ENV = "FOURNINES_SERVE_METRICS_DIR"
_RESTART_CAUSES = ("crash", "hung", "startup", "reload", "max_requests", "max_rss")


class ServeError(FourNinesError, RuntimeError):
    """The supervisor could not serve (also a ``RuntimeError``).

    A socket could not be bound, the first workers could not start, or workers
    crashed too often: the message says which, in one line.
    """


class _Forked:
    """A forked worker, with the part of ``subprocess.Popen`` the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit status once the child has exited (reaped here), else ``None``."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # pragma: no cover - reaped elsewhere
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the child unless it has been reaped (its PID may be reused)."""
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the child."""
        self.send_signal(signal.SIGKILL)


@dataclass(slots=True, eq=False)
class _Worker:
    proc: subprocess.Popen[bytes] | _Forked
    pipe: int
    generation: int
    started: float
    replaces: _Worker | None = None  # set on a reload/recycle candidate
    replaced_for: str | None = None  # set on the worker a candidate replaces: why
    ready: bool = False
    last_beat: float = 0.0
    requests: int = 0
    max_requests: int | None = None
    limit_reached: bool = False
    rss: int = 0
    stop_cause: str | None = None  # why the supervisor stopped or killed it
    stopping: bool = False
    stop_deadline: float = 0.0
    killed_for: str | None = None
    error: str | None = None
    buffer: bytes = b""

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass(slots=True)
class _Reload:
    generation: int
    candidates: list[_Worker] = field(default_factory=list)
    waiters: list[_control.Connection] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Upgrade:
    """A successor supervisor starting (SIGUSR2), and the pipe it reports ready on."""

    proc: subprocess.Popen[bytes]
    pipe: int
    deadline: float
    ready: bool = False


@dataclass(slots=True)
class _Options:
    app: str
    workers: int
    factory: bool
    app_dir: str
    shutdown: GracefulShutdown
    startup_timeout: float
    heartbeat_timeout: float
    restart_backoff: Backoff
    max_crashes: int
    crash_window: float
    max_requests: int | None
    max_requests_jitter: int
    reload_batch: int
    max_rss: int | None  # bytes
    fork: bool
    log_level: str
    forwarded_allow_ips: str | list[str] | None
    header_timeout: float | None
    control: str | None = None
    uvicorn_options: dict[str, Any] = field(default_factory=dict)


def run(
    app: str,
    *,
    workers: int = 1,
    bind: str | Sequence[str] | None = None,
    factory: bool = False,
    app_dir: str = ".",
    shutdown: GracefulShutdown | None = None,
    startup_timeout: float = 30.0,
    heartbeat_timeout: float = 10.0,
    restart_backoff: Backoff | None = None,
    max_crashes: int = 5,
    crash_window: float = 60.0,
    max_requests: int | None = None,
    max_requests_jitter: int = 0,
    reload_batch: int = 1,
    max_rss: float | None = None,
    fork: bool = False,
    log_level: str = "info",
    forwarded_allow_ips: str | Sequence[str] | None = None,
    header_timeout: float | None = 10.0,
    control: str | None = None,
    metrics_bind: str | None = None,
    **uvicorn_options: Any,
) -> None:
    """Serve the ASGI app ``app`` (``"module:attribute"``) with ``workers`` uvicorn workers.

    ``bind``: one address or a list (``HOST:PORT``, ``unix:PATH``, ``fd://N``; see
    :mod:`fournines.serve.sockets`); default the systemd-activated sockets, else
    ``127.0.0.1:8000``. ``factory``: ``app`` names a function that returns the
    app. ``app_dir``: put first on the workers' ``sys.path`` (the current
    directory by default, as uvicorn does). ``shutdown``: each worker's drain (see
    :class:`~fournines.asgi.GracefulShutdown`), also on reloads. The other
    settings are described in the module docstring; ``log_level``,
    ``forwarded_allow_ips``, ``header_timeout`` and the remaining keyword
    arguments (JSON values only) go to each worker's
    :func:`fournines.asgi.server.make_server`. ``control``: the path of a unix
    socket (mode 0600) for ``fournines serve --reload`` / ``--status`` (see
    :mod:`fournines.serve.control`). ``reload_batch``: workers replaced at a time
    on a reload or recycle. ``max_rss``: recycle a worker above this many MiB of
    resident memory. ``fork``: fork workers from the supervisor instead of
    starting interpreters (faster replacements; see the module docstring).
    ``metrics_bind``: ``HOST:PORT`` of the supervisor's own
    ``/metrics``, ``/livez`` and ``/readyz`` (off by default; use a loopback or
    pod-internal address, it needs no token because it only reads).

    Blocks until SIGTERM/SIGINT has drained every worker, then returns. Raises
    :class:`~fournines.ConfigurationError` for bad settings, :class:`ServeError`
    when serving fails, ``SystemExit(128 + signal)`` after a forced stop.
    """
    options = _options(app, workers=workers, factory=factory, app_dir=app_dir, shutdown=shutdown,
                       startup_timeout=startup_timeout, heartbeat_timeout=heartbeat_timeout,
                       restart_backoff=restart_backoff, max_crashes=max_crashes,
                       crash_window=crash_window, max_requests=max_requests,
                       max_requests_jitter=max_requests_jitter, reload_batch=reload_batch,
                       max_rss=max_rss, fork=fork, log_level=log_level,
                       forwarded_allow_ips=forwarded_allow_ips, header_timeout=header_timeout,
                       uvicorn_options=uvicorn_options)
    options.control = control
    inherited = _inherited()
    control_sock = None
    metrics_sock = None
    if inherited is not None:
        listeners, control_sock, ready_fd, metrics_sock = inherited
    else:
        ready_fd = None
        binds = [bind] if isinstance(bind, str) else list(bind or [])
        try:
            listeners = _sockets.bind_sockets(binds)
        except OSError as exc:
            raise ServeError(f"cannot bind {', '.join(binds) or 'the default address'}: "
                             f"{exc.strerror or exc}") from None
    supervisor = None
    owned_dir = None
    try:
        if metrics_bind is not None and metrics_sock is None:
            metrics_sock = _bind_metrics(metrics_bind)
        owned_dir = _multiprocess_dir(options.workers)
        if os.environ.get(_MULTIPROC_ENV):
            logger.info("Workers share the metrics directory %s (prometheus_client "
                        "multi-process mode)", os.environ[_MULTIPROC_ENV])
        if control is not None and control_sock is None:
            try:
                control_sock = _control.listen(control)
            except _control.ControlError as exc:
                raise ServeError(str(exc)) from None
        supervisor = _Supervisor(options, listeners, control_sock, ready_fd=ready_fd,
                                 metrics=metrics_sock)
        code = supervisor.run()
    finally:
        for sock in [*listeners, *([metrics_sock] if metrics_sock is not None else [])]:
            with contextlib.suppress(OSError):
                sock.close()
        if owned_dir is not None and (supervisor is None or not supervisor.handed_over):
            shutil.rmtree(owned_dir, ignore_errors=True)
        if control_sock is not None:
            control_sock.close()
            # After an upgrade the path belongs to the successor, which listens on it.
            if supervisor is None or not supervisor.handed_over:
                with contextlib.suppress(OSError):
                    os.unlink(str(control))
    if code:
        raise SystemExit(code)


def _bind_metrics(bind: str) -> socket.socket:
    """The supervisor's own endpoint socket (``HOST:PORT`` only)."""
    if bind.startswith(("unix:", "fd://")) or ":" not in bind:
        raise ConfigurationError(f"serve.run metrics_bind must be HOST:PORT, got {bind!r}")
    try:
        [sock] = _sockets.bind_sockets([bind])
    except OSError as exc:
        raise ServeError(f"cannot bind the metrics endpoint {bind}: "
                         f"{exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _multiprocess_dir(workers: int) -> str | None:
    """Create the workers' prometheus_client multi-process directory if none is set.

    Returns the directory this supervisor owns (to remove at exit), if any. One
    worker keeps the cheaper single-process metrics: with one worker, one
    process's counters are the whole service's.
    """
    current = os.environ.get(_MULTIPROC_ENV)
    if current:
        # A predecessor's directory (SIGUSR2) is this supervisor's to remove now.
        return current if os.environ.get(_OWNED_DIR_ENV) == current else None
    if workers < 2:
        return None
    directory = tempfile.mkdtemp(prefix="fournines-serve-metrics-")
    # In the environment: the workers and a successor supervisor inherit it.
    os.environ[_MULTIPROC_ENV] = directory
    os.environ[_OWNED_DIR_ENV] = directory
    return directory


def _mark_process_dead(pid: int) -> None:
    """Remove a dead worker's live-gauge files (its counters and histograms stay).

    What prometheus_client's ``multiprocess.mark_process_dead`` does, without
    importing prometheus_client into the supervisor.
    """
    directory = os.environ.get(_MULTIPROC_ENV)
    if not directory:
        return
    for path in Path(directory).glob(f"gauge_live*_{pid}.db"):
        with contextlib.suppress(OSError):
            path.unlink()


def _inherited() -> tuple[list[socket.socket], socket.socket | None, int,
                          socket.socket | None] | None:
    """The sockets and ready pipe a predecessor handed over on SIGUSR2, if any."""
    text = os.environ.pop(UPGRADE_ENV, None)
    if not text:
        return None
    spec = json.loads(text)
    if spec.get("parent") != os.getppid():
        return None  # meant for another process (inherited through a child, say)
    listeners = [socket.socket(fileno=fd) for fd in spec["fds"]]
    control = None
    if spec.get("control") is not None:
        control = socket.socket(fileno=spec["control"])
        control.setblocking(False)
    metrics = None
    if spec.get("metrics") is not None:
        metrics = socket.socket(fileno=spec["metrics"])
        metrics.setblocking(False)
    return listeners, control, int(spec["ready"]), metrics


def _options(app: str, *, workers: int, factory: bool, app_dir: str,
             shutdown: GracefulShutdown | None, startup_timeout: float,
             heartbeat_timeout: float, restart_backoff: Backoff | None, max_crashes: int,
             crash_window: float, max_requests: int | None, max_requests_jitter: int,
             reload_batch: int, max_rss: float | None, fork: bool, log_level: str,
             forwarded_allow_ips: str | Sequence[str] | None,
             header_timeout: float | None, uvicorn_options: dict[str, Any]) -> _Options:
    module, _, attribute = app.partition(":") if isinstance(app, str) else ("", "", "")
    if not module or not attribute:
        raise ConfigurationError(f"serve.run app must be 'module:attribute', got {app!r}")
    check_number("serve.run", "workers", workers, minimum=1, integer=True)
    check_number("serve.run", "startup_timeout", startup_timeout, minimum=0,
                 exclusive_minimum=True)
    check_number("serve.run", "heartbeat_timeout", heartbeat_timeout, minimum=1)
    check_number("serve.run", "max_crashes", max_crashes, minimum=1, integer=True)
    check_number("serve.run", "crash_window", crash_window, minimum=0, exclusive_minimum=True)
    check_number("serve.run", "max_requests", max_requests, minimum=1, integer=True,
                 optional=True)
    check_number("serve.run", "max_requests_jitter", max_requests_jitter, minimum=0,
                 integer=True)
    check_number("serve.run", "reload_batch", reload_batch, minimum=1, integer=True)
    check_number("serve.run", "max_rss", max_rss, minimum=0, exclusive_minimum=True,
                 optional=True)
    for name in ("workers", "reload", "fd", "uds", "host", "port", "timeout_graceful_shutdown"):
        if name in uvicorn_options:
            raise ConfigurationError(f"serve.run does not take {name!r}: the supervisor "
                                     f"owns the processes, sockets and drain")
    try:
        json.dumps(uvicorn_options)
    except TypeError:
        raise ConfigurationError("serve.run's uvicorn options must be JSON values (they "
                                 "travel to the worker processes)") from None
    proxies = (forwarded_allow_ips if forwarded_allow_ips is None
               or isinstance(forwarded_allow_ips, str) else list(forwarded_allow_ips))
    return _Options(
        app=app, workers=workers, factory=factory, app_dir=str(Path(app_dir).resolve()),
        shutdown=shutdown if shutdown is not None else GracefulShutdown(),
        startup_timeout=startup_timeout, heartbeat_timeout=heartbeat_timeout,
        restart_backoff=restart_backoff or Backoff(initial=0.2, multiplier=2.0, cap=10.0),
        max_crashes=max_crashes, crash_window=crash_window, max_requests=max_requests,
        max_requests_jitter=max_requests_jitter, reload_batch=reload_batch,
        max_rss=None if max_rss is None else int(max_rss * 1024 * 1024), fork=bool(fork),
        log_level=log_level,
        forwarded_allow_ips=proxies, header_timeout=header_timeout,
        uvicorn_options=uvicorn_options)


class _Supervisor:
    """The loop: one thread, one selector over the workers' pipes and a signal pipe."""

    def __init__(self, options: _Options, listeners: list[socket.socket],
                 control: socket.socket | None = None, *, ready_fd: int | None = None,
                 metrics: socket.socket | None = None) -> None:
        self.options = options
        self.ready_fd = ready_fd  # tell the predecessor (SIGUSR2) once all workers are ready
        self.upgrade: _Upgrade | None = None
        self.handed_over = False
        self.listeners = listeners
        self.control = control
        self.pending_waiters: list[_control.Connection] = []
        self.last_reload: dict[str, Any] | None = None
        self.workers: list[_Worker] = []
        self.generation = 0
        self.reload: _Reload | None = None
        self.reload_pending = False
        self.ever_ready = False
        self.announced_ready = False
        self.crashes: deque[float] = deque()
        self.restart_at: float | None = None
        self.last_delay = 0.0
        self.stopping_signal: int | None = None
        self.forced = False
        self.failure: str | None = None
        self.signals: deque[int] = deque()
        self.selector = selectors.DefaultSelector()
        self.rng = random.Random()
        self.recycle_blocked_until = 0.0
        self.metrics = metrics
        self.probes: list[_probe.ProbeConnection] = []
        self.restarts: Counter[str] = Counter()
        self.reloads: Counter[str] = Counter()
        self.started_at = time.time()
        self.wake: tuple[socket.socket, socket.socket] | None = None
        self.forking = False

    # -- the loop ----------------------------------------------------------------

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self.wake = (wake_r, wake_w)
        self.forking = self._fork_possible()
        self.selector.register(wake_r, selectors.EVENT_READ, None)
        if self.control is not None:
            self.selector.register(self.control, selectors.EVENT_READ, self.control)
        if self.metrics is not None:
            self.selector.register(self.metrics, selectors.EVENT_READ, self.metrics)
            logger.info("Supervisor metrics and probes on %s", _sockets.describe(self.metrics))
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        # A worker's death closes its pipe a moment before it can be reaped; SIGCHLD
        # (through the wakeup fd) wakes the loop again once it can, instead of the
        # next tick: a crashed worker is replaced as soon as it is gone.
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _wake_only)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        try:
            for sock in self.listeners:
                logger.info("Listening on %s", _sockets.describe(sock))
            logger.info("Starting %d worker(s) of %s", self.options.workers, self.options.app)
            for _ in range(self.options.workers):
                self._spawn(self.generation)
            while True:
                for key, _events in self.selector.select(_TICK):
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            wake_r.recv(4096)
                    elif isinstance(key.data, _Worker):
                        self._read(key.data)
                    elif isinstance(key.data, _Upgrade):
                        self._read_upgrade(key.data)
                    elif isinstance(key.data, _control.Connection):
                        self._control_request(key.data)
                    elif isinstance(key.data, _probe.ProbeConnection):
                        self._probe_request(key.data)
                    elif key.data is self.metrics:
                        self._probe_accept()
                    else:
                        self._control_accept()
                while self.signals:
                    self._handle_signal(self.signals.popleft())
                self._step()
                if self.stopping_signal is not None and not self.workers:
                    break
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in self.workers:  # only after an exception: the loop waits for all
                with contextlib.suppress(OSError):
                    worker.proc.kill()
            for probe in self.probes:
                probe.close()
            self.selector.close()
            wake_r.close()
            wake_w.close()
        if self.failure is not None:
            raise ServeError(self.failure)
        for waiter in self.pending_waiters:
            waiter.reply({"ok": False, "message": "the supervisor stopped"})
        if self.forced and self.stopping_signal is not None:
            return 128 + self.stopping_signal
        if self.handed_over and self.upgrade is not None:
            logger.info("Upgrade complete: supervisor %d hands over to supervisor %d",
                        os.getpid(), self.upgrade.proc.pid)
            os.close(self.upgrade.pipe)
            return 0
        logger.info("All workers stopped; supervisor exiting")
        return 0

    def _on_signal(self, sig: int, frame: object) -> None:
        # A signal handler only records; the loop acts (logging here could deadlock).
        self.signals.append(sig)

    def _handle_signal(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            self._request_reload("SIGHUP received", None)
            return
        if sig == signal.SIGUSR2:
            self._start_upgrade()
            return
        if self.stopping_signal is None:
            self._stop_all(sig, f"{signal.Signals(sig).name} received: draining every worker")
            return
        if not self.forced:
            self.forced = True
            logger.warning("Second signal: forcing the workers to stop now")
            for worker in self.workers:
                self._signal(worker, signal.SIGTERM)

    def _stop_all(self, sig: int, message: str) -> None:
        self.stopping_signal = sig
        if self.reload is not None:
            self.pending_waiters += self.reload.waiters
        self.reload = None
        self.reload_pending = False
        logger.info("%s", message)
        _notify("STOPPING=1")
        upgrade = self.upgrade
        if upgrade is not None and not upgrade.ready:
            # A successor still starting would otherwise serve on alone, unsupervised.
            logger.info("Stopping the new supervisor %d too: the upgrade is abandoned",
                        upgrade.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                upgrade.proc.send_signal(signal.SIGTERM)
        for worker in self.workers:
            self._stop(worker)

    # -- workers -----------------------------------------------------------------

    def _spawn(self, generation: int, replaces: _Worker | None = None) -> _Worker:
        options = self.options
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        fds = [sock.fileno() for sock in self.listeners]
        max_requests = None
        if options.max_requests is not None:
            max_requests = options.max_requests + self.rng.randint(0, options.max_requests_jitter)
        spec = {
            "app": options.app, "factory": options.factory, "app_dir": options.app_dir,
            "fds": fds, "pipe": write_fd, "max_requests": max_requests,
            "drain_delay": options.shutdown.drain_delay,
            "drain_timeout": options.shutdown.drain_timeout,
            "log_level": options.log_level, "forwarded_allow_ips": options.forwarded_allow_ips,
            "header_timeout": options.header_timeout, "uvicorn_options": options.uvicorn_options,
        }
        proc: subprocess.Popen[bytes] | _Forked
        try:
            if self.forking:
                proc = self._fork(spec, write_fd)
            else:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "fournines.serve._worker", json.dumps(spec)],
                    pass_fds=(*fds, write_fd),
                    # Its own session: Ctrl-C in a terminal reaches the supervisor only,
                    # which then drains each worker once (a second signal would force them).
                    start_new_session=True)
        finally:
            os.close(write_fd)
        now = time.monotonic()
        worker = _Worker(proc=proc, pipe=read_fd, generation=generation, started=now,
                         replaces=replaces, last_beat=now, max_requests=max_requests)
        self.workers.append(worker)
        self.selector.register(read_fd, selectors.EVENT_READ, worker)
        logger.info("Worker %d started (generation %d)", worker.pid, generation)
        return worker

    def _fork_possible(self) -> bool:
        if not self.options.fork:
            return False
        import threading  # noqa: PLC0415

        module = self.options.app.partition(":")[0]
        why = ("other threads run in the supervisor" if threading.active_count() > 1
               else f"the app's module {module} is imported in the supervisor"
               if module in sys.modules
               else "prometheus_client is imported in the supervisor"
               if "prometheus_client" in sys.modules else None)
        if why is not None:
            logger.warning("Not forking workers: %s; starting interpreters instead", why)
            return False
        from . import _worker  # noqa: PLC0415

        _worker.preload()
        return True

    def _fork(self, spec: dict[str, Any], write_fd: int) -> _Forked:
        pid = os.fork()
        if pid:
            return _Forked(pid)
        code = 1
        try:  # the child: never returns into the supervisor's loop
            self._forget_supervisor(keep=write_fd)
            from . import _worker  # noqa: PLC0415

            code = _worker.serve(spec)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback  # noqa: PLC0415

            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _forget_supervisor(self, *, keep: int) -> None:
        """In a forked worker: drop the supervisor's signals, session and descriptors."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2,
                    signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()  # as start_new_session: Ctrl-C reaches the supervisor only
        self.selector.close()
        for sock in (*(self.wake or ()), self.control, self.metrics,
                     *(p.sock for p in self.probes)):
            if sock is not None:
                sock.close()
        fds = [w.pipe for w in self.workers]
        fds += [fd for fd in (self.ready_fd, self.upgrade.pipe if self.upgrade else None)
                if fd is not None]
        for fd in fds:
            if fd != keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        logging.getLogger("fournines.serve").handlers.clear()

    def _read(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.pipe, 65536)
        except BlockingIOError:
            return
        if not data:
            # The worker closed its end: it is exiting; _reap collects it.
            self.selector.unregister(worker.pipe)
            return
        worker.buffer += data
        *lines, worker.buffer = worker.buffer.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            kind, _, rest = line.partition(" ")
            if kind == "ready":
                worker.last_beat = time.monotonic()
                self._on_ready(worker)
            elif kind == "beat":
                worker.last_beat = time.monotonic()
                count, _, rss = rest.partition(" ")
                if count.isdigit() and not worker.limit_reached:
                    # After the limit line the count stays the one it was decided at.
                    worker.requests = int(count)
                if rss.isdigit():
                    worker.rss = int(rss)
            elif kind == "limit":
                worker.limit_reached = True
                if rest.isdigit():
                    worker.requests = int(rest)
            elif kind == "error":
                worker.error = rest

    def _on_ready(self, worker: _Worker) -> None:
        worker.ready = True
        logger.info("Worker %d ready", worker.pid)
        if worker.stopping:
            return
        replaced = worker.replaces
        worker.replaces = None
        if replaced is not None and replaced in self.workers and not replaced.stopping:
            self._stop(replaced)
        elif len(self._members()) > self.options.workers:
            oldest = min((w for w in self._members() if w is not worker),
                         key=lambda w: (w.generation, w.started))
            self._stop(oldest)
        if self.reload is not None and worker in self.reload.candidates:
            self.reload.candidates.remove(worker)
        if not self.ever_ready and all(w.ready for w in self._members()):
            self.ever_ready = True
        if not self.announced_ready and len([w for w in self._members() if w.ready]) >= \
                self.options.workers:
            self.announced_ready = True
            logger.info("All %d worker(s) ready", self.options.workers)
            _notify("READY=1")
            if self.ready_fd is not None:
                with contextlib.suppress(OSError):
                    os.write(self.ready_fd, b"ready\n")
                os.close(self.ready_fd)
                self.ready_fd = None

    def _members(self) -> list[_Worker]:
        """Workers that count towards ``workers``: not stopping, not a pending candidate."""
        return [w for w in self.workers if not w.stopping and w.replaces is None
                and not (self.reload is not None and w in self.reload.candidates)]

    def _stop(self, worker: _Worker) -> None:
        if worker.stopping:
            return
        worker.stopping = True
        if worker.replaced_for is not None:
            worker.stop_cause = worker.replaced_for
        drain = self.options.shutdown
        # No drain_timeout means waiting for in-flight requests however long they take.
        worker.stop_deadline = (0.0 if drain.drain_timeout is None else time.monotonic()
                                + drain.drain_delay + drain.drain_timeout + _STOP_MARGIN)
        self._signal(worker, signal.SIGTERM)

    def _signal(self, worker: _Worker, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            worker.proc.send_signal(sig)

    def _kill(self, worker: _Worker, reason: str, cause: str) -> None:
        worker.killed_for = reason
        if worker.stop_cause is None:
            worker.stop_cause = cause
        logger.error("Worker %d %s: killing it", worker.pid, reason)
        self._signal(worker, signal.SIGKILL)

    # -- one step of the loop ----------------------------------------------------

    def _step(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.proc.poll() is not None:
                self._reap(worker, now)
            elif worker.killed_for is not None:
                continue
            elif worker.stopping:
                if worker.stop_deadline and now > worker.stop_deadline:
                    self._kill(worker, "did not finish draining in time", "hung")
            elif not worker.ready:
                if now - worker.started > self.options.startup_timeout:
                    self._kill(worker, f"was not ready within {self.options.startup_timeout:g}s",
                               "startup")
            elif now - worker.last_beat > self.options.heartbeat_timeout:
                self._kill(worker, f"sent no heartbeat for {self.options.heartbeat_timeout:g}s "
                                   "(event loop blocked?)", "hung")
        for probe in [p for p in self.probes if now > p.deadline]:
            self._forget_probe(probe)
            probe.close()
        if self.stopping_signal is not None:
            return
        self._check_upgrade(now)
        self._fill(now)
        self._advance_reload()
        self._recycle(now)

    def _reap(self, worker: _Worker, now: float) -> None:
        self.workers.remove(worker)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(worker.pipe)
        self._drain_pipe(worker)
        os.close(worker.pipe)
        code = worker.proc.returncode
        assert code is not None  # reaped: poll() returned it
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        self._exited(worker, how)
        _mark_process_dead(worker.pid)
        if self.stopping_signal is None:
            cause = (worker.stop_cause if worker.stop_cause is not None
                     else None if worker.stopping  # an aborted candidate, a surplus worker
                     else "startup" if not worker.ready else "crash")
            if cause in _RESTART_CAUSES:
                self.restarts[cause] += 1
            if worker.replaces is not None:  # a failed replacement: its target stays
                worker.replaces.replaced_for = None
        if worker.stopping and worker.killed_for is None:
            logger.info("Worker %d stopped (%s)", worker.pid, how)
            return
        if self.stopping_signal is not None:
            logger.info("Worker %d exited (%s)", worker.pid, how)
            return
        reason = worker.error or worker.killed_for or how
        reload = self.reload
        if reload is not None and worker in reload.candidates:
            reload.candidates.remove(worker)
            message = (f"Reload aborted: the new worker {worker.pid} failed to start "
                       f"({reason}); the old workers keep serving")
            logger.error("%s", message)
            self._finish_reload(ok=False, message=message)
            return
        if worker.replaces is not None:
            logger.error("Recycling worker %d aborted: its replacement %d failed to start (%s)",
                         worker.replaces.pid, worker.pid, reason)
            self.recycle_blocked_until = now + self.options.startup_timeout
            return
        if not worker.ready and not self.ever_ready:
            self.failure = f"worker failed to start: {reason}"
            self._stop_all(signal.SIGTERM, f"Worker {worker.pid} failed to start ({reason}); "
                                           "stopping")
            return
        if worker.stopping:  # killed while draining: it was being replaced anyway
            return
        self._crashed(worker, reason, now)

    def _exited(self, worker: _Worker, how: str) -> None:
        if worker.killed_for is not None:
            cause, reason = "killed", worker.killed_for
        elif worker.stopping:
            cause, reason = "stopped", how
        elif not worker.ready:
            cause, reason = "failed to start", worker.error or how
        else:
            cause, reason = "crashed", worker.error or how
        dispatch((), WorkerExited(policy="serve", name=self.options.app, pid=worker.pid,
                                  generation=worker.generation, cause=cause, reason=reason))

    def _drain_pipe(self, worker: _Worker) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = os.read(worker.pipe, 65536)
                if not data:
                    break
                worker.buffer += data
        for raw in worker.buffer.split(b"\n"):
            line = raw.decode(errors="replace")
            if line.startswith("error "):
                worker.error = line[len("error "):]

    def _crashed(self, worker: _Worker, reason: str, now: float) -> None:
        crashes = self.crashes
        crashes.append(now)
        while crashes and now - crashes[0] > self.options.crash_window:
            crashes.popleft()
        if len(crashes) >= self.options.max_crashes:
            self.failure = (f"crash loop: {len(crashes)} worker crashes within "
                            f"{self.options.crash_window:g}s (last: worker {worker.pid}, "
                            f"{reason}); giving up")
            self._stop_all(signal.SIGTERM, f"Worker {worker.pid} died ({reason}); "
                                           f"{self.failure}")
            return
        # One crash in the window is no loop: replace it at once (capacity is down by one
        # worker until then); the backoff starts with the second.
        delay = (0.0 if len(crashes) == 1 else
                 self.options.restart_backoff.delay(len(crashes) - 1, self.last_delay, self.rng))
        self.last_delay = delay
        at = now + delay
        self.restart_at = at if self.restart_at is None else min(self.restart_at, at)
        logger.error("Worker %d died (%s); restarting in %.2fs (%d crash(es) in the last %gs)",
                     worker.pid, reason, delay, len(crashes), self.options.crash_window)

    def _fill(self, now: float) -> None:
        missing = self.options.workers - len(self._members())
        if missing <= 0:
            return
        if self.restart_at is not None and now < self.restart_at:
            return
        self.restart_at = None
        for _ in range(missing):
            self._spawn(self.generation)

    # -- reloads and recycling ---------------------------------------------------

    def _request_reload(self, why: str, waiter: _control.Connection | None) -> None:
        if self.stopping_signal is not None:
            if waiter is not None:
                waiter.reply({"ok": False, "message": "the supervisor is stopping"})
            return
        if self.reload is not None:
            logger.info("%s during a reload: another reload follows this one", why)
            self.reload_pending = True
            if waiter is not None:
                self.pending_waiters.append(waiter)
            return
        self._start_reload(why)
        if waiter is not None and self.reload is not None:
            self.reload.waiters.append(waiter)

    def _start_reload(self, why: str) -> None:
        self.generation += 1
        self.reload = _Reload(generation=self.generation, waiters=self.pending_waiters)
        self.pending_waiters = []
        logger.info("%s: rolling reload to generation %d, new workers first", why,
                    self.generation)
        _notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def _finish_reload(self, *, ok: bool, message: str) -> None:
        reload = self.reload
        self.reload = None
        self.reloads["completed" if ok else "aborted"] += 1
        for candidate in reload.candidates if reload is not None else []:
            # The rest of an aborted batch: stop them before they replace anyone.
            if candidate.replaces is not None:
                candidate.replaces.replaced_for = None
            candidate.replaces = None
            self._stop(candidate)
        _notify("READY=1")
        self.last_reload = {"ok": ok, "generation": self.generation, "message": message}
        dispatch((), WorkersReloaded(policy="serve", name=self.options.app, ok=ok,
                                     generation=self.generation, message=message))
        for waiter in reload.waiters if reload is not None else []:
            self._forget(waiter)
            waiter.reply(self.last_reload)
        self._after_reload()

    # -- supervisor upgrades (SIGUSR2) --------------------------------------------

    def _start_upgrade(self) -> None:
        if self.stopping_signal is not None or self.upgrade is not None:
            logger.warning("SIGUSR2 ignored: the supervisor is %s",
                           "stopping" if self.upgrade is None else "already upgrading")
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        fds = [sock.fileno() for sock in self.listeners]
        control = self.control.fileno() if self.control is not None else None
        metrics = self.metrics.fileno() if self.metrics is not None else None
        spec = {"parent": os.getpid(), "fds": fds, "control": control, "ready": write_fd,
                "metrics": metrics}
        inherit = (*fds, write_fd, *([] if control is None else [control]),
                   *([] if metrics is None else [metrics]))
        try:
            proc = subprocess.Popen([sys.executable, *sys.orig_argv[1:]],
                                    env={**os.environ, UPGRADE_ENV: json.dumps(spec)},
                                    pass_fds=inherit)
        except OSError as exc:
            os.close(read_fd)
            logger.error("Upgrade aborted: cannot start a new supervisor (%s)", exc)
            return
        finally:
            os.close(write_fd)
        self.upgrade = _Upgrade(proc=proc, pipe=read_fd, deadline=time.monotonic()
                                + self.options.startup_timeout + _STOP_MARGIN)
        self.selector.register(read_fd, selectors.EVENT_READ, self.upgrade)
        logger.info("SIGUSR2 received: new supervisor %d starting; this one serves until "
                    "its workers are ready", proc.pid)

    def _read_upgrade(self, upgrade: _Upgrade) -> None:
        try:
            data = os.read(upgrade.pipe, 4096)
        except BlockingIOError:
            return
        self.selector.unregister(upgrade.pipe)
        if b"ready" not in data:
            code = upgrade.proc.wait()
            self._abort_upgrade(f"the new supervisor {upgrade.proc.pid} exited (code {code}) "
                                "before its workers were ready")
            return
        upgrade.ready = True
        self.handed_over = True
        for sock in (self.control, self.metrics):
            # Control requests and probes go to the successor now; a waiting one is
            # answered below.
            if sock is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(sock)
        _notify(f"MAINPID={upgrade.proc.pid}")
        dispatch((), SupervisorUpgraded(policy="serve", name=self.options.app,
                                        old_pid=os.getpid(), new_pid=upgrade.proc.pid))
        self.stopping_signal = signal.SIGTERM
        if self.reload is not None:
            self.pending_waiters += self.reload.waiters
        self.reload = None
        self.reload_pending = False
        logger.info("New supervisor %d is ready: draining this one's workers",
                    upgrade.proc.pid)
        for worker in self.workers:
            self._stop(worker)

    def _check_upgrade(self, now: float) -> None:
        upgrade = self.upgrade
        if upgrade is None or upgrade.ready or now < upgrade.deadline:
            return
        upgrade.proc.kill()
        upgrade.proc.wait()
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(upgrade.pipe)
        self._abort_upgrade(f"the new supervisor {upgrade.proc.pid} was not ready within "
                            f"{self.options.startup_timeout + _STOP_MARGIN:g}s (killed)")

    def _abort_upgrade(self, why: str) -> None:
        assert self.upgrade is not None
        os.close(self.upgrade.pipe)
        self.upgrade = None
        logger.error("Upgrade aborted: %s; this supervisor keeps serving", why)

    # -- the control socket ------------------------------------------------------

    def _control_accept(self) -> None:
        assert self.control is not None
        try:
            sock, _ = self.control.accept()
        except BlockingIOError:
            return
        connection = _control.Connection(sock)
        self.selector.register(sock, selectors.EVENT_READ, connection)

    def _forget(self, connection: _control.Connection) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(connection.sock)

    def _control_request(self, connection: _control.Connection) -> None:
        request = connection.read()
        if request is None:
            return
        self._forget(connection)
        command = request.get("command")
        if command == "status":
            connection.reply(self._status())
        elif command == "reload":
            self._request_reload("Reload requested on the control socket", connection)
        else:
            connection.reply({"ok": False, "message": f"unknown command {command!r}"})

    def _status(self) -> dict[str, Any]:
        return {
            "ok": True, "pid": os.getpid(), "app": self.options.app,
            "generation": self.generation, "reloading": self.reload is not None,
            "stopping": self.stopping_signal is not None, "last_reload": self.last_reload,
            "workers": [{"pid": w.pid, "generation": w.generation, "ready": w.ready,
                         "stopping": w.stopping, "requests": w.requests}
                        for w in self.workers],
        }

    def _advance_reload(self) -> None:
        reload = self.reload
        if reload is None:
            return
        old = [w for w in self._members() if w.generation < reload.generation]
        if not old and not reload.candidates:
            if any(w.generation < reload.generation for w in self.workers):
                return  # complete once the old workers have drained and exited
            message = (f"Reload complete: {len(self._members())} worker(s) of generation "
                       f"{reload.generation} serving")
            logger.info("%s", message)
            self._finish_reload(ok=True, message=message)
            return
        if any(not w.ready for w in self._members()):
            return  # a crash replacement is starting: wait for it first
        targeted = [c.replaces for c in reload.candidates]
        free = sorted((w for w in old if w not in targeted), key=lambda w: w.started)
        for target in free[:self.options.reload_batch - len(reload.candidates)]:
            target.replaced_for = "reload"
            reload.candidates.append(self._spawn(reload.generation, replaces=target))

    def _after_reload(self) -> None:
        if self.reload_pending:
            self.reload_pending = False
            self._start_reload("Queued reload")

    def _recycle_reason(self, worker: _Worker) -> str | None:
        options = self.options
        if worker.limit_reached:  # the worker counts, exactly (uvicorn's count lags)
            return "max_requests"
        if options.max_rss is not None and worker.rss > options.max_rss:
            return "max_rss"
        return None

    def _recycle(self, now: float) -> None:
        if self.reload is not None or now < self.recycle_blocked_until:
            return
        running = sum(w.replaces is not None for w in self.workers)
        for worker in self._members():
            if running >= self.options.reload_batch:
                return
            if worker.replaced_for is not None:
                continue  # its replacement is starting
            reason = self._recycle_reason(worker) if worker.ready else None
            if reason is None:
                continue
            if reason == "max_requests":
                logger.info("Worker %d served %d requests (max %d): replacing it, new first",
                            worker.pid, worker.requests, worker.max_requests or 0)
            else:
                logger.info("Worker %d uses %.1f MiB (max %.1f): replacing it, new first",
                            worker.pid, worker.rss / 1048576,
                            (self.options.max_rss or 0) / 1048576)
            worker.replaced_for = reason
            self._spawn(self.generation, replaces=worker)
            running += 1

    # -- the supervisor's own endpoint -------------------------------------------

    def _probe_accept(self) -> None:
        assert self.metrics is not None
        try:
            sock, _ = self.metrics.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:  # out of descriptors, say: serving workers matters more
            logger.warning("Supervisor endpoint cannot accept: %s", exc)
            return
        if len(self.probes) >= _probe.MAX_CONNECTIONS:
            sock.close()
            return
        probe = _probe.ProbeConnection(sock)
        self.probes.append(probe)
        self.selector.register(sock, selectors.EVENT_READ, probe)

    def _forget_probe(self, probe: _probe.ProbeConnection) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(probe.sock)
        with contextlib.suppress(ValueError):
            self.probes.remove(probe)

    def _probe_request(self, probe: _probe.ProbeConnection) -> None:
        request = probe.read()
        if request is None:
            return
        self._forget_probe(probe)
        method, path = request
        text = "text/plain; charset=utf-8"
        if not method:
            probe.reply(400, "bad request\n", text)
        elif method not in ("GET", "HEAD"):
            probe.reply(405, "only GET\n", text)
        elif path == "/metrics":
            probe.reply(200, self._metrics_text(), "text/plain; version=0.0.4; charset=utf-8",
                        head=method == "HEAD")
        elif path == "/livez":
            probe.reply(200, json.dumps({"status": "alive", "pid": os.getpid()}) + "\n",
                        "application/json", head=method == "HEAD")
        elif path == "/readyz":
            ready = sum(w.ready for w in self._members())
            ok = ready > 0 and self.stopping_signal is None
            probe.reply(200 if ok else 503,
                        json.dumps({"status": "ready" if ok else "not ready",
                                    "workers_ready": ready}) + "\n",
                        "application/json", head=method == "HEAD")
        else:
            probe.reply(404, "not found\n", text)

    def _metrics_text(self) -> str:
        states = {"ready": 0, "starting": 0, "stopping": 0}
        for worker in self.workers:
            states["stopping" if worker.stopping else "ready" if worker.ready
                   else "starting"] += 1
        return _probe.render([
            ("fournines_serve_workers", "gauge",
             "Worker processes of the supervisor, by state.",
             [("fournines_serve_workers", {"state": k}, v) for k, v in states.items()]),
            ("fournines_serve_worker_restarts", "counter",
             "Workers replaced (by exit or new first), by cause.",
             [("fournines_serve_worker_restarts_total", {"cause": c}, self.restarts[c])
              for c in _RESTART_CAUSES]),
            ("fournines_serve_reloads", "counter", "Rolling reloads ended, by outcome.",
             [("fournines_serve_reloads_total", {"outcome": o}, self.reloads[o])
              for o in ("completed", "aborted")]),
            ("fournines_serve_supervisor_start_time_seconds", "gauge",
             "When this supervisor process started (an upgrade changes it), Unix time.",
             [("fournines_serve_supervisor_start_time_seconds", {}, self.started_at)]),
            ("fournines_serve_generation", "gauge",
             "The code generation new workers start with (one more per reload).",
             [("fournines_serve_generation", {}, self.generation)]),
        ])


def _wake_only(sig: int, frame: object) -> None:
    """A Python-level handler, so the signal reaches the wakeup fd; nothing else to do."""


def _notify(*lines: str) -> None:
    """Tell systemd (``NOTIFY_SOCKET``) about the service's state; nothing without it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto("\n".join(lines).encode(), address)
