"""Where time comes from: the ``Clock`` protocol and the real ``SystemClock``.

Policies never call ``time.*`` themselves; they take a clock, so tests can drive
them with :class:`fournines.testing.FakeClock` and run minutes of logic in
microseconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "system_clock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time and a way to wait for it."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for intervals)."""

    def time(self) -> float:
        """Seconds since the Unix epoch (for timestamps shown to people)."""

    def sleep(self, seconds: float) -> None:
        """Block the current thread for ``seconds``."""

    async def asleep(self, seconds: float) -> None:
        """Suspend the current task for ``seconds``."""


class _TestingState:
    """Process-wide switches set by :func:`fournines.testing.set_testing`."""

    __slots__ = ("attempts", "enabled")

    def __init__(self) -> None:
        self.enabled = False
        self.attempts: int | None = None


testing_state = _TestingState()


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time``, ``time.sleep``, ``asyncio.sleep``.

    In testing mode (``fournines.testing.set_testing(True)``) its sleeps return at
    once, so code under test never waits for real backoff delays.
    """

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` (not at all in testing mode)."""
        if seconds > 0 and not testing_state.enabled:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """Suspend for ``seconds`` (only yield once in testing mode)."""
        await asyncio.sleep(0 if testing_state.enabled else max(seconds, 0.0))

    def __repr__(self) -> str:
        return "SystemClock()"


system_clock = SystemClock()
