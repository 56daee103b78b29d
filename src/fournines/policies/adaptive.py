"""Adaptive concurrency limits: how many requests a service should run at once, learnt live.

A fixed concurrency limit is either too low (wasted capacity) or too high
(queues grow, latency explodes, everything times out together). These
algorithms estimate the limit from what the service measures anyway: the
round-trip time (RTT) of each completed request, how many were in flight, and
whether the request was dropped (timed out, rejected downstream).

They are sans-I/O: no clock, no lock, no task. The caller measures and reports
each sample with :meth:`ConcurrencyLimit.on_sample` and reads
:attr:`ConcurrencyLimit.limit` when it admits work. They are not thread-safe:
one caller (an event loop, or a caller holding its own lock) feeds each one.

The algorithms follow Netflix's concurrency-limits library
(https://github.com/Netflix/concurrency-limits, Apache 2.0), written anew here
from its published design:

- :class:`AimdLimit`: additive increase, multiplicative decrease, as TCP
  Reno does for its congestion window;
- :class:`Gradient2Limit`: compares a short-term RTT (the latest sample) with a
  long-term exponentially weighted average, and shrinks the limit when the
  short one rises above it, i.e. when requests start to queue;
- :class:`FixedLimit`: a constant, for tests and for services that know better.

Every algorithm's limit stays within ``[min_limit, max_limit]`` whatever it is
fed (``FixedLimit``'s is its value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .._errors import ConfigurationError, check_number

__all__ = [
    "AimdConfig",
    "AimdLimit",
    "ConcurrencyLimit",
    "FixedLimit",
    "Gradient2Config",
    "Gradient2Limit",
]


@runtime_checkable
class ConcurrencyLimit(Protocol):
    """What the load shedder needs of a limit algorithm."""

    @property
    def limit(self) -> int:
        """The current concurrency limit (at least 1)."""

    def on_sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        """Learn from one completed request.

        ``rtt`` is its duration in seconds, ``inflight`` how many requests were
        in flight when it started (itself included), ``dropped`` whether it
        failed in a way that signals overload (timed out, rejected downstream).
        """


def _check_limits(owner: str, initial: int, minimum: int, maximum: int) -> None:
    check_number(owner, "min_limit", minimum, minimum=1, integer=True)
    check_number(owner, "max_limit", maximum, minimum=1, integer=True)
    if maximum < minimum:
        raise ConfigurationError(
            f"{owner}.max_limit must be >= min_limit ({minimum}), got {maximum!r}"
        )
    check_number(owner, "initial_limit", initial, minimum=minimum, maximum=maximum,
                 integer=True)
    if maximum == minimum:
        raise ConfigurationError(
            f"{owner}.max_limit must be > min_limit ({minimum}): equal limits leave no room "
            f"to adapt; use FixedLimit({minimum}) for a constant limit"
        )


class FixedLimit:
    """A limit that never changes: samples are ignored."""

    __slots__ = ("_limit",)

    def __init__(self, limit: int) -> None:
        check_number("FixedLimit", "limit", limit, minimum=1, integer=True)
        self._limit = limit

    @property
    def limit(self) -> int:
        """The fixed limit."""
        return self._limit

    def on_sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        """Ignore the sample."""

    def __repr__(self) -> str:
        return f"FixedLimit({self._limit})"


@dataclass(frozen=True, slots=True, kw_only=True)
class AimdConfig:
    """Settings of :class:`AimdLimit` (defaults from Netflix's ``AIMDLimit``).

    ``backoff_ratio`` multiplies the limit on a drop, and a request slower than
    ``timeout`` seconds counts as dropped (``None``: only ``dropped`` does).
    """

    initial_limit: int = 20
    min_limit: int = 20
    max_limit: int = 200
    backoff_ratio: float = 0.9
    timeout: float | None = 5.0

    def __post_init__(self) -> None:
        _check_limits("AimdConfig", self.initial_limit, self.min_limit, self.max_limit)
        # Below 0.5 one unlucky drop would halve capacity more than once a window;
        # Netflix refuses it too.
        check_number("AimdConfig", "backoff_ratio", self.backoff_ratio, minimum=0.5,
                     maximum=1)
        if self.backoff_ratio == 1:
            raise ConfigurationError(
                "AimdConfig.backoff_ratio must be < 1 (1 would never decrease), got 1"
            )
        check_number("AimdConfig", "timeout", self.timeout, minimum=0, exclusive_minimum=True,
                     optional=True)


class AimdLimit:
    """Additive increase, multiplicative decrease (Netflix concurrency-limits ``AIMDLimit``).

    On a drop (or a request slower than ``timeout``) the limit is multiplied by
    ``backoff_ratio``; on a success while at least half the limit is in use it
    grows by one. A success while the service is mostly idle says nothing
    about its capacity, so it leaves the limit alone: otherwise a quiet night
    would raise the limit to ``max_limit`` and the first burst would overload.

    >>> aimd = AimdLimit(initial_limit=10, min_limit=1, max_limit=100)
    >>> aimd.on_sample(0.01, inflight=10, dropped=True)
    >>> aimd.limit
    9
    """

    __slots__ = ("_config", "_limit", "_timeout")

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 20,
        max_limit: int = 200,
        backoff_ratio: float = 0.9,
        timeout: float | None = 5.0,
    ) -> None:
        self._config = AimdConfig(
            initial_limit=initial_limit, min_limit=min_limit, max_limit=max_limit,
            backoff_ratio=backoff_ratio, timeout=timeout,
        )
        self._limit = initial_limit
        self._timeout = math.inf if timeout is None else float(timeout)

    @property
    def config(self) -> AimdConfig:
        """The settings (frozen; build a new limit to change them)."""
        return self._config

    @classmethod
    def from_config(cls, config: AimdConfig) -> AimdLimit:
        """An ``AimdLimit`` with the settings of ``config``."""
        return cls(
            initial_limit=config.initial_limit, min_limit=config.min_limit,
            max_limit=config.max_limit, backoff_ratio=config.backoff_ratio,
            timeout=config.timeout,
        )

    @property
    def limit(self) -> int:
        """The current limit."""
        return self._limit

    def on_sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        """Decrease on a drop or timeout; increase by one when the limit is in use."""
        if rtt != rtt:
            return  # NaN: a broken measurement, neither fast nor slow
        limit = self._limit
        config = self._config
        if dropped or rtt > self._timeout:
            limit = int(limit * config.backoff_ratio)
        elif inflight * 2 >= limit:
            limit += 1
        else:
            return
        if limit < config.min_limit:
            limit = config.min_limit
        elif limit > config.max_limit:
            limit = config.max_limit
        self._limit = limit

    def __repr__(self) -> str:
        return f"AimdLimit(limit={self._limit}, config={self._config!r})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Gradient2Config:
    """Settings of :class:`Gradient2Limit` (defaults from Netflix's ``Gradient2Limit``).

    - ``smoothing``: how much of each new estimate enters the limit (0..1];
    - ``rtt_tolerance``: how much slower than the long-term RTT a request may
      be before the limit shrinks (1.5: 50 % slower is still fine);
    - ``long_window``: samples in the long-term RTT average (its first 10
      samples are averaged plainly, to warm it up);
    - ``queue_size``: how far the limit may grow past the estimated capacity
      on each update; ``None`` uses the square root of the current limit, so
      that small limits probe gently and large ones quickly.
    """

    initial_limit: int = 20
    min_limit: int = 20
    max_limit: int = 200
    smoothing: float = 0.2
    rtt_tolerance: float = 1.5
    long_window: int = 600
    queue_size: int | None = None

    def __post_init__(self) -> None:
        _check_limits("Gradient2Config", self.initial_limit, self.min_limit, self.max_limit)
        check_number("Gradient2Config", "smoothing", self.smoothing, minimum=0,
                     exclusive_minimum=True, maximum=1)
        check_number("Gradient2Config", "rtt_tolerance", self.rtt_tolerance, minimum=1)
        check_number("Gradient2Config", "long_window", self.long_window, minimum=1,
                     integer=True)
        # With 0 the estimate is limit * gradient, never above the limit: it could only
        # shrink, and would stay at min_limit after the first slow spell.
        check_number("Gradient2Config", "queue_size", self.queue_size, minimum=1,
                     integer=True, optional=True)


# The long-term average is a plain mean over its first samples (an exponential
# average started from one sample would be that sample's noise for a long time).
_WARMUP = 10


class Gradient2Limit:
    """Netflix concurrency-limits ``Gradient2Limit``: a limit from the RTT's gradient.

    Each sample updates a long-term exponential average of the RTT
    (``long_window`` samples). The gradient ``rtt_tolerance * long / short``,
    clamped to [0.5, 1], says how much queueing the latest RTT (``short``)
    shows: 1 means none, so the limit grows by the queue size; below 1 the
    limit shrinks in proportion, but never by more than half at once, so that
    one outlier cannot collapse it. The new estimate is
    ``limit * gradient + queue_size``, blended into the limit with
    ``smoothing``, and clamped to ``[min_limit, max_limit]``.

    Two details of Netflix's design are kept:

    - when the service is mostly idle (fewer than half the limit in flight) the
      limit does not move: idle samples say nothing about capacity;
    - when the long-term RTT is more than twice the latest one (load has just
      gone away after a long overload), it is cut by 5 % per sample, so that
      the memory of the bad period fades faster than the window alone allows.

    ``dropped`` is not used, as in Netflix's version: an overloaded service
    shows it in its RTT first. Pair with a timeout so that stuck requests end
    and report their (long) RTT.
    """

    __slots__ = ("_config", "_count", "_estimate", "_factor", "_limit", "_long_rtt", "_sum")

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 20,
        max_limit: int = 200,
        smoothing: float = 0.2,
        rtt_tolerance: float = 1.5,
        long_window: int = 600,
        queue_size: int | None = None,
    ) -> None:
        self._config = Gradient2Config(
            initial_limit=initial_limit, min_limit=min_limit, max_limit=max_limit,
            smoothing=smoothing, rtt_tolerance=rtt_tolerance, long_window=long_window,
            queue_size=queue_size,
        )
        self._estimate = float(initial_limit)
        self._limit = initial_limit
        self._long_rtt = 0.0
        self._count = 0
        self._sum = 0.0
        self._factor = 2.0 / (long_window + 1)

    @property
    def config(self) -> Gradient2Config:
        """The settings (frozen; build a new limit to change them)."""
        return self._config

    @classmethod
    def from_config(cls, config: Gradient2Config) -> Gradient2Limit:
        """A ``Gradient2Limit`` with the settings of ``config``."""
        return cls(
            initial_limit=config.initial_limit, min_limit=config.min_limit,
            max_limit=config.max_limit, smoothing=config.smoothing,
            rtt_tolerance=config.rtt_tolerance, long_window=config.long_window,
            queue_size=config.queue_size,
        )

    @property
    def limit(self) -> int:
        """The current limit (the estimate, rounded down)."""
        return self._limit

    @property
    def long_rtt(self) -> float:
        """The long-term average RTT, in seconds (0.0 before the first sample)."""
        return self._long_rtt

    def on_sample(self, rtt: float, inflight: int, dropped: bool) -> None:
        """Update the long-term RTT and, unless the service is idle, the limit."""
        if not rtt > 0.0 or rtt == math.inf:
            return  # a zero, negative or NaN duration carries no information
        # Long-term RTT: plain mean while warming up, then an exponential average.
        if self._count < _WARMUP:
            self._count += 1
            self._sum += rtt
            long_rtt = self._sum / self._count
        else:
            factor = self._factor
            long_rtt = rtt * factor + self._long_rtt * (1.0 - factor)
        if long_rtt > 2.0 * rtt:
            long_rtt *= 0.95
        self._long_rtt = long_rtt

        estimate = self._estimate
        if inflight < estimate / 2:
            return
        config = self._config
        gradient = config.rtt_tolerance * long_rtt / rtt
        if gradient > 1.0:
            gradient = 1.0
        elif gradient < 0.5:
            gradient = 0.5
        queue = math.sqrt(estimate) if config.queue_size is None else config.queue_size
        target = estimate * gradient + queue
        estimate = estimate * (1.0 - config.smoothing) + target * config.smoothing
        if estimate < config.min_limit:
            estimate = float(config.min_limit)
        elif estimate > config.max_limit:
            estimate = float(config.max_limit)
        self._estimate = estimate
        self._limit = int(estimate)

    def __repr__(self) -> str:
        return (f"Gradient2Limit(limit={self._limit}, long_rtt={self._long_rtt:.6f}, "
                f"config={self._config!r})")
