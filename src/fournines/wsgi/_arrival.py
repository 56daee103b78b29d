"""When the request being served on this thread arrived at the worker.

A WSGI environ says nothing about how long a request waited for a thread, so
the server side says it here: :class:`fournines.wsgi.gunicorn.ThreadWorker`
stamps each connection as it is queued for the thread pool, and the thread that
picks it up calls :func:`mark_arrival` before it parses the request. The
protection reads it once per request (:func:`take_arrival`), so a stamp never
outlives its request.
"""

from __future__ import annotations

import threading

__all__ = ["ARRIVAL_KEY", "mark_arrival", "take_arrival"]

ARRIVAL_KEY = "fournines.arrival"
"""The environ key of a request's arrival time (``time.monotonic()`` seconds), for
servers that can put it there themselves; it wins over :func:`mark_arrival`."""

_local = threading.local()


def mark_arrival(at: float | None) -> None:
    """Say that the request this thread serves next arrived at ``at`` (monotonic seconds).

    ``None`` forgets a stamp. Servers call it; applications never need to.
    """
    _local.at = at


def take_arrival() -> float | None:
    """The arrival time marked on this thread (and forget it), or ``None``."""
    at: float | None = getattr(_local, "at", None)
    if at is not None:
        _local.at = None
    return at
