"""Deadlines: one per task or thread context, nesting to the earliest.

Like trio's cancel scopes, a deadline is computed when its scope is entered,
and an inner scope can only shorten it. Policies read :func:`current_deadline`
so that retries never sleep past it, waits give up in time, and outgoing calls
can send the remaining budget downstream.
"""

from __future__ import annotations

import asyncio
import math
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from ._clock import Clock, system_clock
from ._errors import ConfigurationError

__all__ = ["Deadline", "cancelled_by_deadline", "current_deadline", "deadline_after"]


class Deadline:
    """An instant on ``clock``'s monotonic timeline by which work must finish.

    Read-only: nested scopes share one ``Deadline``, so moving it would move
    theirs. (A plain slotted class with properties rather than a frozen
    dataclass: one is built per ``Timeout`` call, and a frozen dataclass costs
    twice as much.)
    """

    __slots__ = ("_at", "_cancelled", "_clock")

    def __init__(self, at: float, clock: Clock = system_clock) -> None:
        self._at = at
        self._clock = clock
        self._cancelled = False

    @property
    def at(self) -> float:
        """The instant, on ``clock.monotonic()``'s timeline."""
        return self._at

    @property
    def clock(self) -> Clock:
        """The clock the instant is on."""
        return self._clock

    def cancel(self, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` because this deadline passed, and remember that it did.

        Code that the cancellation unwinds can then tell it from any other
        (:func:`cancelled_by_deadline`): a breaker counts a call that its
        deadline cancelled as a failure, and a call whose caller went away as
        nothing at all.
        """
        self._cancelled = True
        task.cancel()

    def remaining(self) -> float:
        """Seconds left; negative once the deadline has passed."""
        return self._at - self._clock.monotonic()

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self._clock.monotonic() >= self._at

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Deadline):
            return NotImplemented
        return (self._at, self._clock) == (other._at, other._clock)

    def __hash__(self) -> int:
        return hash((self._at, id(self._clock)))

    def __repr__(self) -> str:
        return f"Deadline(at={self._at!r}, remaining={self.remaining():.3f})"


_current: ContextVar[Deadline | None] = ContextVar("fournines_deadline", default=None)



def current_deadline() -> Deadline | None:
    """The deadline of the current context, or ``None`` when there is none."""
    return _current.get()



def push_deadline(seconds: float, clock: Clock) -> tuple[Deadline, Token[Deadline | None]]:
    """Set ``now + seconds`` (or the enclosing deadline, if earlier) as current."""
    outer = _current.get()
    if outer is not None and outer.remaining() <= seconds:
        deadline = outer
    else:
        deadline = Deadline(clock.monotonic() + seconds, clock)
    return deadline, _current.set(deadline)


reset_deadline = _current.reset


def cancelled_by_deadline() -> bool:
    """Whether the cancellation now unwinding this task came from a fournines deadline.

    True when the current deadline cancelled work (a ``Timeout`` whose time ran out,
    or any code that called :meth:`Deadline.cancel`); False for a cancellation
    from anywhere else, such as a client that went away. A deadline shared with
    an enclosing scope marks that scope: it has passed for all of them.
    """
    deadline = _current.get()
    return deadline is not None and deadline._cancelled


class deadline_after:
    """Context manager (sync and async) that sets a deadline ``seconds`` from entry.

    ``seconds`` is >= 0: 0 is a deadline that has already passed; ``math.inf`` sets
    none of its own (:func:`current_deadline` stays what it was outside, and the
    scope yields a ``Deadline`` that never expires when there was none); a negative
    or NaN duration raises ``ConfigurationError``.
    Nested scopes keep the earlier deadline. The scope does not interrupt code by
    itself: fournines policies inside it respect it (retries stop waiting,
    limiters and bulkheads give up, ``Timeout`` cancels async work).

    >>> with deadline_after(0.5) as deadline:
    ...     deadline.remaining() <= 0.5
    True
    """

    __slots__ = ("_clock", "_seconds", "_tokens")

    def __init__(self, seconds: float, *, clock: Clock = system_clock) -> None:
        # As trio's move_on_after: a negative or NaN duration is a bug in the caller, not
        # "already expired" (0 is that); infinity means no deadline of its own.
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ConfigurationError(f"deadline_after.seconds must be a number, got {seconds!r}")
        if not seconds >= 0:
            raise ConfigurationError(
                f"deadline_after.seconds must be >= 0 (0: already expired), got {seconds!r}"
            )
        self._seconds = float(seconds)
        self._clock = clock
        self._tokens: list[Token[Deadline | None]] = []

    def __enter__(self) -> Deadline:
        if self._seconds == math.inf:
            # No deadline of its own: the enclosing one (or none) stays current, so code
            # inside never meets an infinite budget (a header, an int() of milliseconds).
            outer = _current.get()
            self._tokens.append(_current.set(outer))
            return outer if outer is not None else Deadline(math.inf, self._clock)
        deadline, token = push_deadline(self._seconds, self._clock)
        self._tokens.append(token)
        return deadline

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current.reset(self._tokens.pop())

    async def __aenter__(self) -> Deadline:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
