"""Test helpers shipped with fournines: a fake clock, a recording listener, testing mode.

>>> from fournines.testing import FakeClock
>>> clock = FakeClock()
>>> clock.sleep(60)
>>> clock.monotonic()
60.0
"""

from __future__ import annotations

import asyncio
import threading
from typing import TypeVar

from ._clock import testing_state
from ._errors import ConfigurationError
from ._events import Event

__all__ = ["FakeClock", "RecordingListener", "is_testing", "set_testing"]

E = TypeVar("E", bound=Event)


class FakeClock:
    """A clock that only moves when told to, or when someone sleeps on it.

    ``sleep`` and ``asleep`` advance virtual time by the slept amount at once
    (``asleep`` also yields to the event loop once), and are recorded in
    :attr:`sleeps`, so tests of backoff, timeouts and breakers run instantly
    and can assert the exact waits.
    """

    def __init__(self, start: float = 0.0, *, wall: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._wall_offset = wall - float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The virtual monotonic time."""
        return self._now

    def time(self) -> float:
        """The virtual wall-clock time (moves with :meth:`monotonic`)."""
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ConfigurationError(f"FakeClock.advance.seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Record the sleep and advance virtual time; returns at once."""
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(seconds, 0.0)

    async def asleep(self, seconds: float) -> None:
        """Record the sleep, advance virtual time, and yield to the loop once."""
        self.sleep(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._now!r})"


class RecordingListener:
    """A listener that keeps every event it receives, for assertions.

    >>> rec = RecordingListener()
    >>> rec.events
    []
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        """Record ``event``."""
        with self._lock:
            self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        """The recorded events of type ``kind``, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self.events.clear()


class _Restore:
    """Returned by :func:`set_testing`; as a context manager, restores the old state."""

    __slots__ = ("_old",)

    def __init__(self, old: tuple[bool, int | None]) -> None:
        self._old = old

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        testing_state.enabled, testing_state.attempts = self._old


def set_testing(on: bool, *, attempts: int | None = None) -> _Restore:
    """Turn testing mode on or off for the whole process.

    In testing mode the system clock's sleeps return at once (backoff, limiter
    and bulkhead waits cost nothing), every wait a
    :class:`~fournines.policies.retry.RetryPlanner` plans is 0 (also on a
    ``FakeClock``), and, when ``attempts`` is given, every retry it plans
    (``Retry``, the httpx transports) makes at most that many attempts. Retry
    decisions otherwise stay as in production: a rejection is not retried, a
    ``retry_after`` hint beyond the longest wait still ends the retry. Like
    stamina's testing mode, it also works as a context manager that restores the
    previous state::

        with set_testing(True, attempts=1):
            ...
    """
    if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int)
                                 or attempts < 1):
        raise ConfigurationError(f"set_testing.attempts must be an int >= 1, got {attempts!r}")
    old = (testing_state.enabled, testing_state.attempts)
    testing_state.enabled = bool(on)
    testing_state.attempts = attempts if on else None
    return _Restore(old)


def is_testing() -> bool:
    """Whether testing mode is on."""
    return testing_state.enabled
