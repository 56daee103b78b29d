"""Bulkhead: at most ``max_concurrent`` calls at once, a bounded queue for the rest.

One bulkhead serves threads and asyncio tasks alike: the slot count is guarded
by a thread lock, and waiters (a thread lock per waiting thread, a future per
waiting task) queue in one FIFO. A released slot is handed straight to the
first waiter, so no newcomer can barge past the queue, and a waiter that gives
up (``max_wait``, the deadline, or cancellation) leaves the queue without
losing or leaking a slot.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

from .._clock import Clock, system_clock
from .._deadline import current_deadline
from .._errors import BulkheadFullError, ConfigurationError, check_number, new_rejection
from .._events import CallRejected, Listener, dispatch, global_listeners
from ._shell import Decorates

__all__ = ["Bulkhead", "BulkheadPermit"]

P = ParamSpec("P")
T = TypeVar("T")


class _Waiter:
    """One queued caller: a thread (``lock``) or a task (``future`` on ``loop``)."""

    __slots__ = ("future", "granted", "lock", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.granted = False
        self.loop = loop
        if loop is None:
            self.lock: threading.Lock | None = threading.Lock()
            self.lock.acquire()
            self.future: asyncio.Future[None] | None = None
        else:
            self.lock = None
            self.future = loop.create_future()

    def wake(self) -> None:
        """Hand the slot over (called with the bulkhead's lock held)."""
        self.granted = True
        if self.lock is not None:
            self.lock.release()
        elif self.loop is not None and self.future is not None:
            self.loop.call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class BulkheadPermit:
    """A held slot; :meth:`release` it exactly once (also a context manager)."""

    __slots__ = ("_bulkhead", "_released")

    def __init__(self, bulkhead: Bulkhead) -> None:
        self._bulkhead = bulkhead
        self._released = False

    def release(self) -> None:
        """Give the slot back (extra calls are ignored)."""
        if not self._released:
            self._released = True
            self._bulkhead._release()

    def __enter__(self) -> BulkheadPermit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Bulkhead(Decorates):
    """Limit concurrency to ``max_concurrent``; queue up to ``max_queue`` for ``max_wait`` s.

    ``max_queue=0`` (default) rejects at once when full; ``max_wait`` then has no
    use and is refused. ``max_wait=None`` lets a queued call wait until a slot
    frees or the current deadline passes; ``max_wait=0`` with a queue is refused
    (nothing could wait in it).
    Rejections raise :class:`~fournines.BulkheadFullError`.
    """

    __slots__ = ("_clock", "_free", "_listeners", "_lock", "_max_concurrent", "_max_queue",
                 "_max_wait", "_name", "_now", "_waiters")

    def __init__(
        self,
        *,
        max_concurrent: int = 10,
        max_queue: int = 0,
        max_wait: float | None = None,
        name: str = "bulkhead",
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
    ) -> None:
        check_number("Bulkhead", "max_concurrent", max_concurrent, minimum=1, integer=True)
        check_number("Bulkhead", "max_queue", max_queue, minimum=0, integer=True)
        check_number("Bulkhead", "max_wait", max_wait, minimum=0, optional=True)
        if max_wait is not None and max_queue == 0:
            raise ConfigurationError(
                f"Bulkhead.max_wait ({max_wait!r}) has no effect with max_queue=0, where no "
                "call ever waits: set max_queue to let calls queue for a slot"
            )
        if max_wait == 0 and max_queue > 0:
            raise ConfigurationError(
                f"Bulkhead.max_wait must be > 0 (or None) when max_queue is {max_queue}: "
                "with 0 a queued call gives up at once and the queue never serves"
            )
        self._max_concurrent = max_concurrent
        self._max_queue = max_queue
        self._max_wait = max_wait
        self._name = name
        self._clock = clock
        self._now = clock.monotonic
        self._listeners = tuple(listeners)
        self._lock = threading.Lock()
        # One entry per free slot. list.pop() and list.append() are atomic under the
        # GIL, so the uncontended path takes and returns a slot without the lock; the
        # lock only orders the queue of waiters.
        self._free: list[None] = [None] * max_concurrent
        self._waiters: deque[_Waiter] = deque()

    @property
    def max_concurrent(self) -> int:
        """Calls allowed to run at once."""
        return self._max_concurrent

    @property
    def max_queue(self) -> int:
        """Calls allowed to wait for a slot (0: none, full means rejected)."""
        return self._max_queue

    @property
    def max_wait(self) -> float | None:
        """Seconds a queued call waits at most (``None``: until the deadline)."""
        return self._max_wait

    @property
    def name(self) -> str:
        """Shown in errors, events and metrics."""
        return self._name

    @property
    def clock(self) -> Clock:
        """Where the bulkhead reads time."""
        return self._clock

    @property
    def active(self) -> int:
        """Calls holding a slot now."""
        return self._max_concurrent - len(self._free)

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiters)

    def __repr__(self) -> str:
        return (f"Bulkhead(name={self._name!r}, max_concurrent={self._max_concurrent!r}, "
                f"active={self.active!r}, queued={len(self._waiters)!r})")

    # -- core ------------------------------------------------------------------------

    def _reject(self, reason: str) -> BulkheadFullError:
        if self._listeners or global_listeners():
            dispatch(self._listeners,
                     CallRejected(policy="bulkhead", name=self._name, reason=reason))
        return new_rejection(BulkheadFullError, self._name, None)

    def _take(self) -> bool:
        try:
            self._free.pop()
        except IndexError:
            return False
        return True

    def _release(self) -> None:
        self._free.append(None)
        if self._waiters:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give free slots to waiters, first come first served."""
        self._lock.acquire()
        try:
            waiters = self._waiters
            while waiters and self._take():
                waiters.popleft().wake()
        finally:
            self._lock.release()

    def _enqueue(self, loop: asyncio.AbstractEventLoop | None) -> tuple[_Waiter | None, float]:
        """Take a slot (``None``) or join the queue; raise when neither is possible."""
        self._lock.acquire()
        try:
            waiter: _Waiter | None = None
            if not self._waiters and self._take():
                return None, 0.0
            full = len(self._waiters) >= self._max_queue
            if not full:
                waiter = _Waiter(loop)
                self._waiters.append(waiter)
                # A slot returned after our failed take, by a release that saw no waiter
                # yet, would sit unused: look once more now that we are in the queue.
                if self._waiters[0] is waiter and self._take():
                    self._waiters.popleft()
                    return None, 0.0
        finally:
            self._lock.release()
        if waiter is None:
            raise self._reject("full")
        wait = float("inf") if self._max_wait is None else self._max_wait
        deadline = current_deadline()
        if deadline is not None:
            wait = min(wait, deadline.remaining())
        return waiter, wait

    def _abandon(self, waiter: _Waiter) -> bool:
        """Leave the queue after giving up; ``True`` if a slot was granted meanwhile."""
        self._lock.acquire()
        try:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
        finally:
            self._lock.release()
        # Leaving may uncover a free slot that was waiting for us to take it in turn.
        if self._waiters and self._free:
            self._hand_over()
        return False

    def try_acquire(self) -> BulkheadPermit:
        """Take a free slot now, or raise ``BulkheadFullError`` (never queues)."""
        if self._take():
            return BulkheadPermit(self)
        raise self._reject("full")

    def acquire(self) -> BulkheadPermit:
        """Take a slot, waiting in the queue (blocking the thread) if allowed."""
        waiter, wait = self._enqueue(None)
        if waiter is not None:
            assert waiter.lock is not None
            got = waiter.lock.acquire(timeout=wait if wait != float("inf") else -1) \
                if wait > 0 else False
            if not got and not self._abandon(waiter):
                raise self._reject("timeout")
        return BulkheadPermit(self)

    async def aacquire(self) -> BulkheadPermit:
        """Take a slot, waiting in the queue (suspending the task) if allowed."""
        waiter, wait = self._enqueue(asyncio.get_running_loop())
        if waiter is not None:
            assert waiter.future is not None
            try:
                if wait > 0:
                    timeout = None if wait == float("inf") else wait
                    await asyncio.wait((waiter.future,), timeout=timeout)
            except BaseException:
                if self._abandon(waiter):
                    self._release()
                raise
            if not waiter.future.done() and not self._abandon(waiter):
                raise self._reject("timeout")
        return BulkheadPermit(self)

    # -- shells ----------------------------------------------------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn`` holding a slot."""
        if self._waiters or not self._take():
            self.acquire()
        try:
            return fn(*args, **kwargs)
        finally:
            self._release()

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn`` holding a slot."""
        if self._waiters or not self._take():
            await self.aacquire()
        try:
            return await fn(*args, **kwargs)
        finally:
            self._release()

    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]:
        """A closure that calls ``fn`` holding a slot (fast path inlined, as in ``call``)."""
        waiters, free, acquire, release = self._waiters, self._free, self.acquire, self._release

        def in_bulkhead(*args: Any, **kwargs: Any) -> Any:
            if waiters or not free:
                acquire()
            else:
                try:
                    free.pop()
                except IndexError:  # taken by another thread since the check
                    acquire()
            try:
                return fn(*args, **kwargs)
            finally:
                release()

        return in_bulkhead

    def awrap(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """A coroutine function that awaits ``fn`` holding a slot."""
        waiters, free, aacquire, release = (self._waiters, self._free, self.aacquire,
                                            self._release)

        async def in_bulkhead(*args: Any, **kwargs: Any) -> Any:
            if waiters or not free:
                await aacquire()
            else:
                try:
                    free.pop()
                except IndexError:  # taken by another thread since the check
                    await aacquire()
            try:
                return await fn(*args, **kwargs)
            finally:
                release()

        return in_bulkhead
