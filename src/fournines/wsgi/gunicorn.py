"""gunicorn integration: the queueing delay of gthread workers, and a draining shutdown.

Put this in ``gunicorn.conf.py`` (the hooks are plain gunicorn server hooks)::

    from fournines.wsgi.gunicorn import post_worker_init, worker_exit  # noqa: F401

    worker_class = "fournines.wsgi.gunicorn.ThreadWorker"  # or "sync"
    threads = 8
    graceful_timeout = 25  # >= drain_delay + drain_timeout of protect_wsgi(shutdown=...)

What each part does:

- :func:`post_worker_init` runs in each worker once its app is loaded: every
  :func:`~fournines.wsgi.protect_wsgi` app of the worker is marked ready, and the
  worker's SIGTERM handler is replaced by a draining one::

      SIGTERM ──> readiness 503 at once (state.mark_draining()); keep serving,
                  new connections too, for drain_delay (load balancers notice)
             ──> gunicorn's own graceful stop: stop accepting, finish what is in
                 flight (gunicorn's graceful_timeout), exit
      second SIGTERM: stop waiting, go straight to gunicorn's graceful stop

  ``drain_delay`` is the longest of the apps' ``GracefulShutdown.drain_delay``.
  The gunicorn master sends SIGTERM to every worker and SIGKILLs those still
  alive ``graceful_timeout`` seconds later: keep it above ``drain_delay`` plus
  the time in-flight requests need (a warning is logged otherwise).
- :func:`worker_exit` marks the apps stopped and closes their metrics (a dead
  worker's multi-process gauges stop counting).
- :class:`ThreadWorker` is gunicorn's ``gthread`` worker that also stamps each
  request with the time it was queued for a thread: the shedder's queueing delay
  (the time from the request's arrival at the worker to its view's start) and
  the deadline then count from the arrival, not from the view's start. With the
  ``sync`` worker the queue is the kernel's listen backlog, which a worker cannot
  see: pass ``protect_wsgi(request_start_header="x-request-start")`` behind a
  proxy that stamps it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Any

from gunicorn.workers.gthread import (  # type: ignore[import-untyped]
    ThreadWorker as _GThreadWorker,
)

from .._clock import SystemClock
from ._arrival import mark_arrival
from ._protect import protected_apps

__all__ = ["ThreadWorker", "drain_delay", "post_worker_init", "worker_exit", "worker_int"]

# The clock protect_wsgi measures with by default, so the two stamps compare.
_now = SystemClock.monotonic


def drain_delay() -> float:
    """The seconds this worker keeps serving after SIGTERM: the longest of its apps'."""
    return max((app.shutdown.drain_delay for app in protected_apps()), default=0.0)


def post_worker_init(worker: Any) -> None:
    """Gunicorn hook: mark the worker's apps ready and install the draining SIGTERM handler."""
    for app in protected_apps():
        app.state.mark_ready()
    delay = drain_delay()
    needed = max((app.shutdown.drain_delay + (app.shutdown.drain_timeout or 0.0)
                  for app in protected_apps()), default=0.0)
    graceful = getattr(getattr(worker, "cfg", None), "graceful_timeout", None)
    if isinstance(graceful, int | float) and graceful < needed:
        worker.log.warning(
            "fournines: gunicorn graceful_timeout (%ss) is shorter than drain_delay + "
            "drain_timeout (%ss): the master may kill this worker mid-drain", graceful, needed)
    stop = worker.handle_exit
    draining = threading.Event()

    def finish() -> None:
        stop(signal.SIGTERM, None)
        # The sync worker waits in select() on its pipe: wake it to see it must stop.
        pipe = getattr(worker, "PIPE", None)
        if pipe:
            with contextlib.suppress(OSError):  # the worker is already gone
                os.write(pipe[1], b"1")

    def handle_term(signum: int, frame: FrameType | None) -> None:
        if draining.is_set():  # a second SIGTERM: stop waiting
            finish()
            return
        draining.set()
        for app in protected_apps():
            app.state.mark_draining()
        # Kept-alive connections would stay pinned to this worker: a gthread worker
        # closes each one after its next response from now on.
        if hasattr(worker, "max_keepalived"):
            worker.max_keepalived = 0
        worker.log.info("fournines: draining for %.3gs before stopping", delay)
        timer = threading.Timer(delay, finish)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handle_term)


def worker_int(worker: Any) -> None:
    """Gunicorn hook (SIGINT/SIGQUIT: a quick stop): mark the worker's apps stopped."""
    for app in protected_apps():
        app.state.mark_stopped()


def worker_exit(server: Any, worker: Any) -> None:
    """Gunicorn hook: mark the worker's apps stopped and close their metrics."""
    for app in protected_apps():
        app.state.mark_stopped()
        app.close()


class ThreadWorker(_GThreadWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's gthread worker, telling fournines when each request arrived.

    A connection is stamped when it is queued for the thread pool (on accept, and
    each time a kept-alive one becomes readable); the thread that picks it up
    hands the stamp to :func:`fournines.wsgi.mark_arrival`.
    """

    def enqueue_req(self, conn: Any) -> None:
        """Stamp ``conn`` with its arrival, then queue it as gthread does."""
        conn.fournines_arrival = _now()
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        """Serve ``conn`` on this thread, its arrival marked for the app."""
        mark_arrival(getattr(conn, "fournines_arrival", None))
        try:
            return super().handle(conn)
        finally:
            mark_arrival(None)
