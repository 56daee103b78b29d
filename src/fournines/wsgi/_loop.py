"""One background event loop per process, for the async health checks of a WSGI app.

Health checks are coroutine functions (the registry is the ASGI edge's, see
:mod:`fournines.asgi.checks`), and their cache and shared refresh live on one
event loop. A WSGI worker has none, so the first probe starts a daemon thread
running one; probes on any thread hand it their report and wait. A forked
child (a gunicorn worker of a preloaded app) starts its own: threads do not
survive ``fork``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid = 0


def _running_loop() -> asyncio.AbstractEventLoop:
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="fournines-wsgi-checks",
                                      daemon=True)
            thread.start()
            _loop, _pid = loop, os.getpid()
        return _loop


def run(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run ``coro`` on the background loop; wait at most ``timeout`` seconds for it."""
    future = asyncio.run_coroutine_threadsafe(coro, _running_loop())
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise
