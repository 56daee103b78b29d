"""How long taking a connection from a watched pool takes, and how many wait for one.

asyncpg pools and SQLAlchemy's QueuePool tell their size and use through public
methods, but neither has a hook at the start of an acquire (SQLAlchemy's ``checkout``
event fires after the wait; asyncpg's ``setup`` too), so the wait cannot be read
from them. It is measured where fournines itself takes a connection instead: in
:func:`~fournines.data.transaction` / :func:`~fournines.data.transaction_sync` and
:func:`~fournines.data.pool_check`, for the pools a :class:`~fournines.data.PoolMetrics`
watches. Unwatched pools cost one dict look-up per transaction.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

__all__ = ["DEFAULT_BUCKETS", "Watch", "acquiring", "pool_key", "unwatch", "watch"]

DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)
"""Acquire latency buckets (s): a free connection takes well under 1 ms, a wait far more."""


class Watch:
    """The acquire latency histogram (non-cumulative counts, the last +Inf) and waiters."""

    __slots__ = ("_lock", "bounds", "counts", "total", "users", "waiting")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.waiting = 0
        self.users = 0  # PoolMetrics watching this pool
        self._lock = threading.Lock()  # sync pools are shared by threads

    def snapshot(self) -> tuple[list[int], float, int]:
        """The bucket counts, the sum of seconds, and the acquires waiting now."""
        with self._lock:
            return list(self.counts), self.total, self.waiting


class _Timing:
    __slots__ = ("_began", "_watch")

    def __init__(self, watch: Watch) -> None:
        self._watch = watch
        self._began = 0.0

    def __enter__(self) -> None:
        with self._watch._lock:
            self._watch.waiting += 1
        self._began = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        seconds = time.perf_counter() - self._began
        watch = self._watch
        index = bisect.bisect_left(watch.bounds, seconds)
        with watch._lock:
            watch.waiting -= 1
            watch.counts[index] += 1
            watch.total += seconds


class _Unwatched:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        return None


_UNWATCHED = _Unwatched()
# id(pool) -> its watch; PoolMetrics holds the pool while it is here, so ids are not reused.
_WATCHES: dict[int, Watch] = {}
_LOCK = threading.Lock()


def pool_key(target: Any) -> Any:
    """The pool object a target's connections come from (SQLAlchemy: the engine's pool)."""
    module = type(target).__module__.partition(".")[0]
    if module == "sqlalchemy":
        bind = target.kw.get("bind") if hasattr(target, "kw") else target
        return getattr(bind, "pool", None)
    return target


def acquiring(pool: Any) -> _Timing | _Unwatched:
    """A context manager around taking a connection from ``pool`` (timed if watched)."""
    watch = _WATCHES.get(id(pool))
    return _UNWATCHED if watch is None else _Timing(watch)


def watch(pool: Any, bounds: Sequence[float]) -> Watch:
    """Start timing the acquires of ``pool`` (the watch is shared by its watchers)."""
    with _LOCK:
        found = _WATCHES.get(id(pool))
        if found is None:
            found = _WATCHES[id(pool)] = Watch(bounds)
        found.users += 1
        return found


def unwatch(pool: Any) -> None:
    """One watcher of ``pool`` fewer; the last one stops the timing."""
    with _LOCK:
        found = _WATCHES.get(id(pool))
        if found is not None:
            found.users -= 1
            if found.users <= 0:
                del _WATCHES[id(pool)]
