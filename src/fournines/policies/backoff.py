"""Backoff: how long to wait before the n-th retry.

The jitter formulas are those of Marc Brooker's "Exponential Backoff And
Jitter" (AWS Architecture Blog, 2015): *full* jitter draws uniformly from
``[0, min(cap, initial * multiplier**(n-1))]``; *decorrelated* jitter draws
from ``[initial, previous * 3]`` capped; *equal* keeps half the exponential
delay and jitters the other half; *none* is the plain exponential.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from .._errors import ConfigurationError, check_number

__all__ = ["Backoff"]

Jitter = Literal["full", "decorrelated", "equal", "none"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential backoff with jitter and a cap (all in seconds).

    >>> Backoff(initial=0.1, multiplier=2, cap=1, jitter="none").delay(3, 0.0, random.Random())
    0.4
    """

    initial: float = 0.1
    multiplier: float = 2.0
    cap: float = 10.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        check_number("Backoff", "initial", self.initial, minimum=0)
        check_number("Backoff", "multiplier", self.multiplier, minimum=1)
        check_number("Backoff", "cap", self.cap, minimum=0)
        if self.cap < self.initial:
            raise ConfigurationError(
                f"Backoff.cap must be >= Backoff.initial ({self.initial!r}), got {self.cap!r}"
            )
        if self.jitter == "decorrelated" and self.initial <= 0:
            raise ConfigurationError(
                "Backoff.initial must be > 0 with jitter='decorrelated' (each delay grows "
                f"from the previous one), got {self.initial!r}"
            )
        if self.jitter not in ("full", "decorrelated", "equal", "none"):
            raise ConfigurationError(
                "Backoff.jitter must be 'full', 'decorrelated', 'equal' or 'none', "
                f"got {self.jitter!r}"
            )

    def exponential(self, retry: int) -> float:
        """The un-jittered delay before retry number ``retry`` (1-based), capped."""
        delay = self.initial
        # Multiply step by step instead of ``multiplier ** n``: no overflow for huge n,
        # and the loop stops as soon as the cap is reached.
        for _ in range(retry - 1):
            delay *= self.multiplier
            if delay >= self.cap:
                return self.cap
        return min(delay, self.cap)

    def delay(self, retry: int, previous: float, rng: random.Random) -> float:
        """The delay before retry number ``retry``; ``previous`` is the last delay used."""
        jitter = self.jitter
        if jitter == "decorrelated":
            low = self.initial
            high = max(low, (previous or low) * 3)
            return min(self.cap, rng.uniform(low, high))
        base = self.exponential(retry)
        if jitter == "full":
            return rng.uniform(0.0, base)
        if jitter == "equal":
            return base / 2 + rng.uniform(0.0, base / 2)
        return base
