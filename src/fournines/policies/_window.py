"""A rolling time window of counters, shared by breakers and retry budgets."""

from __future__ import annotations


class Rolling:
    """Counters over a rolling time window of ``n`` buckets of ``width`` seconds."""

    __slots__ = ("_epoch", "_n", "_slots", "_width", "current", "end", "totals")

    def __init__(self, width: float, n: int, fields: int) -> None:
        self._width = width
        self._n = n
        self._slots = [[0] * fields for _ in range(n)]
        self._epoch = [-1] * n
        self.totals = [0] * fields
        # The bucket of the last advance() and the instant it ends: until then, callers
        # may add to ``current`` (and ``totals``) directly, without calling advance().
        self.current = self._slots[0]
        self.end = float("-inf")

    def advance(self, now: float) -> list[int]:
        """Expire old buckets; return the current bucket's counters (mutable)."""
        index = int(now // self._width)
        slot = index % self._n
        if self._epoch[slot] != index:
            # Expire every bucket older than the window, not just this slot, so totals
            # stay right after a long idle period.
            for i in range(self._n):
                if self._epoch[i] != -1 and self._epoch[i] <= index - self._n:
                    self._drop(i)
            if self._epoch[slot] != -1:
                self._drop(slot)
            self._epoch[slot] = index
        self.current = bucket = self._slots[slot]
        self.end = (index + 1) * self._width
        return bucket

    def _drop(self, i: int) -> None:
        bucket = self._slots[i]
        totals = self.totals
        for f, v in enumerate(bucket):
            totals[f] -= v
            bucket[f] = 0
        self._epoch[i] = -1

    def add(self, now: float, *values: int) -> None:
        bucket = self.advance(now)
        totals = self.totals
        for f, v in enumerate(values):
            bucket[f] += v
            totals[f] += v

    def clear(self) -> None:
        for i in range(self._n):
            self._drop(i)
        self.end = float("-inf")
