"""The retry budget: retries as a bounded share of requests (Finagle's RetryBudget).

Each request deposits ``ratio`` of a retry; each retry withdraws one. Deposits
expire after ``ttl`` seconds (a little earlier: they are kept in buckets of ttl/10),
a withdrawal counts for at least ``ttl``, and a floor of ``min_per_second`` retries is
always allowed so that a quiet service can still retry. Shared by several
``Retry`` policies (every caller of one dependency, say), it keeps retries from
multiplying load during an outage: with ratio 0.2 the dependency sees at most
1.2x its normal traffic, however many layers retry.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .._clock import Clock, system_clock
from .._errors import check_number
from .._events import BudgetExhausted, Listener, dispatch, global_listeners
from ._window import Rolling

__all__ = ["RetryBudget"]

_BUCKETS = 10


class RetryBudget:
    """Retries limited to ``ratio`` of requests plus ``min_per_second``, over ``ttl`` seconds.

    Settings are read-only after construction.
    """

    __slots__ = ("_listeners", "_lock", "_min_per_second", "_name", "_now", "_ratio", "_requests",
                 "_retries", "_ttl")

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        ttl: float = 10.0,
        name: str = "retry_budget",
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
    ) -> None:
        check_number("RetryBudget", "ratio", ratio, minimum=0, maximum=1000)
        check_number("RetryBudget", "min_per_second", min_per_second, minimum=0)
        check_number("RetryBudget", "ttl", ttl, minimum=0, exclusive_minimum=True)
        self._ratio = float(ratio)
        self._min_per_second = float(min_per_second)
        self._ttl = float(ttl)
        self._name = name
        self._now = clock.monotonic
        self._listeners = tuple(listeners)
        self._lock = threading.Lock()
        # Both counts live in ten buckets of ttl/10, so an entry is counted for between
        # 0.9 and 1.0 ttl with ten buckets, or between 1.0 and 1.1 ttl with eleven. Both
        # err on the safe side: deposits may expire a little early (ten buckets) and a
        # spent retry always counts for a full ttl (eleven), so the budget can never be
        # spent twice within one ttl.
        width = self._ttl / _BUCKETS
        self._requests = Rolling(width, _BUCKETS, 1)
        self._retries = Rolling(width, _BUCKETS + 1, 1)

    @property
    def ratio(self) -> float:
        """Retries allowed per request deposited."""
        return self._ratio

    @property
    def min_per_second(self) -> float:
        """Retries allowed per second whatever the traffic."""
        return self._min_per_second

    @property
    def ttl(self) -> float:
        """Seconds a deposit (and a withdrawal) counts for."""
        return self._ttl

    @property
    def name(self) -> str:
        """The name of the ``BudgetExhausted`` events."""
        return self._name

    def deposit(self) -> None:
        """Record one request (call it once per logical request, not per attempt)."""
        now = self._now()
        requests = self._requests
        self._lock.acquire()
        try:
            if now < requests.end:  # still the same bucket: skip advance(), the common case
                requests.current[0] += 1
            else:
                requests.advance(now)[0] += 1
            requests.totals[0] += 1
        finally:
            self._lock.release()

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; ``False`` (and an event) when it is empty."""
        self._lock.acquire()
        try:
            now = self._now()
            self._requests.advance(now)
            retries = self._retries
            bucket = retries.advance(now)
            allowed = self._ratio * self._requests.totals[0] + self._min_per_second * self._ttl
            if retries.totals[0] + 1 <= allowed:
                bucket[0] += 1
                retries.totals[0] += 1
                return True
        finally:
            self._lock.release()
        if self._listeners or global_listeners():
            dispatch(self._listeners, BudgetExhausted(policy="retry_budget", name=self._name))
        return False

    @property
    def balance(self) -> float:
        """Retries that may be taken now."""
        self._lock.acquire()
        try:
            now = self._now()
            self._requests.advance(now)
            self._retries.advance(now)
            allowed = self._ratio * self._requests.totals[0] + self._min_per_second * self._ttl
            return allowed - self._retries.totals[0]
        finally:
            self._lock.release()

    def __repr__(self) -> str:
        return (f"RetryBudget(name={self.name!r}, ratio={self.ratio!r}, "
                f"min_per_second={self.min_per_second!r}, ttl={self.ttl!r})")
