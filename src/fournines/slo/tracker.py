"""An in-process error budget for services and tools that run without Prometheus.

:class:`BudgetTracker` counts good and bad events in rolling windows (the
burn-rate windows and the SLO period) and answers what a budget report would:
the remaining budget and the burn rate per window. The lab uses it to say
whether 99.99 % held; a service can export it as the gauge
``fournines_slo_error_budget_remaining_ratio`` (and
``fournines_slo_burn_rate``) with :meth:`BudgetTracker.export`.

Feeding it:

- ``tracker.record(success)`` for each outcome (``count=`` for batches);
- :class:`TrackingMiddleware` wraps an ASGI app and records every HTTP
  response, 5xx as bad by default (probes and ``/metrics`` excluded).

Each window is kept as 60 buckets of a sixtieth of its length, with running
sums: recording and reading cost O(windows), memory is bounded whatever the
traffic, and a window's edge is exact to within one bucket (1/60 of it).
Time comes from the injected clock (``FakeClock`` in tests).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._clock import Clock, system_clock
from .._errors import ConfigurationError, check_number
from .budget import BURN_RATE_WINDOWS, error_budget, parse_duration

if TYPE_CHECKING:
    from ..asgi._types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BudgetSnapshot", "BudgetTracker", "TrackingMiddleware"]

_BUCKETS = 60

_PERIODS = {"30d": 30 * 86400.0, "28d": 28 * 86400.0, "7d": 7 * 86400.0}


class _Window:
    """Good and bad counts over the last ``seconds``, in ``_BUCKETS`` buckets."""

    __slots__ = ("bad", "buckets", "good", "seconds", "width")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.width = seconds / _BUCKETS
        # [bucket index, good, bad]; lists so the newest bucket is updated in place.
        self.buckets: deque[list[float]] = deque()
        self.good = 0.0
        self.bad = 0.0

    def add(self, at: float, good: float, bad: float) -> None:
        index = float(int(at // self.width))
        buckets = self.buckets
        if not buckets or buckets[-1][0] < index:
            buckets.append([index, good, bad])
        else:
            # An outcome recorded late (``at`` in the past): find or make its bucket.
            position = len(buckets)
            while position and buckets[position - 1][0] > index:
                position -= 1
            if position and buckets[position - 1][0] == index:
                buckets[position - 1][1] += good
                buckets[position - 1][2] += bad
            else:
                buckets.insert(position, [index, good, bad])
        self.good += good
        self.bad += bad

    def expire(self, now: float) -> None:
        oldest = int(now // self.width) - _BUCKETS + 1
        buckets = self.buckets
        while buckets and buckets[0][0] < oldest:
            _, good, bad = buckets.popleft()
            self.good -= good
            self.bad -= bad
        if not buckets:
            # Running sums drift by float rounding; an empty window is exactly zero.
            self.good = self.bad = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetSnapshot:
    """What a tracker knew at one moment.

    :param good: good events over the period window.
    :param bad: bad ones.
    :param remaining_ratio: one minus the consumed budget (``None``: no events yet).
    :param burn_rates: burn rate per window name (``None`` where the window is empty).
    """

    name: str
    objective: float
    period: str
    good: float
    bad: float
    remaining_ratio: float | None
    burn_rates: Mapping[str, float | None]

    @property
    def error_ratio(self) -> float | None:
        """Bad over all events in the period window; ``None`` without events."""
        total = self.good + self.bad
        return None if total <= 0 else self.bad / total


class BudgetTracker:
    """Rolling error budget of one SLO, fed in process.

    :param name: the SLO's name (the ``slo`` label of the exported gauges).
    :param objective: the objective in percent (99.99).
    :param period: the budget period: ``"30d"``, ``"28d"``, ``"7d"`` or any duration
        (``"1h"`` makes a short lab run meaningful).
    :param windows: burn-rate window names (``5m``, ``1h``, ``6h``, ``1d``, ``3d`` by default);
        windows longer than the period are dropped.
    :param clock: the time source (``FakeClock`` in tests).
    """

    def __init__(
        self,
        *,
        name: str = "availability",
        objective: float = 99.99,
        period: str = "30d",
        windows: Sequence[str] = BURN_RATE_WINDOWS,
        clock: Clock = system_clock,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"BudgetTracker.name must be a non-empty string, got {name!r}")
        try:
            self._budget = error_budget(objective)
        except ConfigurationError as exc:
            raise ConfigurationError(f"BudgetTracker.{exc}") from None
        seconds = _PERIODS.get(period) or parse_duration(period,
                                                         field_name="BudgetTracker.period")
        self.name = name
        self.objective = float(objective)
        self.period = period
        self._clock = clock
        self._lock = threading.Lock()
        self._period = _Window(seconds)
        self._windows: dict[str, _Window] = {}
        for window in windows:
            length = parse_duration(window, field_name="BudgetTracker.windows")
            if length < seconds:
                self._windows[window] = _Window(length)

    @classmethod
    def for_slo(cls, slo: Any, *, clock: Clock = system_clock,
                windows: Sequence[str] = BURN_RATE_WINDOWS) -> BudgetTracker:
        """A tracker with the name, objective and period of a spec's SLO."""
        return cls(name=slo.name, objective=slo.objective, period=slo.period, windows=windows,
                   clock=clock)

    def record(self, success: bool, *, count: int = 1, at: float | None = None) -> None:
        """Count ``count`` events with one outcome.

        :param at: when they happened, on the tracker's clock (``clock.monotonic()``);
            now by default. Outcomes older than a window do not count in it.
        """
        check_number("BudgetTracker.record", "count", count, minimum=0, integer=True)
        check_number("BudgetTracker.record", "at", at, optional=True)
        good, bad = (float(count), 0.0) if success else (0.0, float(count))
        now = self._clock.monotonic()
        when = now if at is None or at > now else at
        with self._lock:
            for window in (self._period, *self._windows.values()):
                if when > now - window.seconds:
                    window.add(when, good, bad)
                window.expire(now)

    def _expire(self) -> None:
        now = self._clock.monotonic()
        self._period.expire(now)
        for window in self._windows.values():
            window.expire(now)

    def _burn(self, window: _Window) -> float | None:
        total = window.good + window.bad
        return None if total <= 0 else window.bad / total / self._budget

    def remaining_ratio(self) -> float | None:
        """One minus the fraction of the period's budget spent; ``None`` with no events."""
        with self._lock:
            self._expire()
            burn = self._burn(self._period)
        return None if burn is None else 1.0 - burn

    def burn_rate(self, window: str) -> float | None:
        """The burn rate over ``window`` (a name given at construction, or the period)."""
        with self._lock:
            self._expire()
            if window == self.period:
                return self._burn(self._period)
            if window not in self._windows:
                raise ConfigurationError(
                    f"BudgetTracker.burn_rate.window must be one of "
                    f"{[*self._windows, self.period]}, got {window!r}")
            return self._burn(self._windows[window])

    def snapshot(self) -> BudgetSnapshot:
        """Everything at once, consistent under concurrent recording."""
        with self._lock:
            self._expire()
            period_burn = self._burn(self._period)
            rates = {name: self._burn(window) for name, window in self._windows.items()}
            rates[self.period] = period_burn
            return BudgetSnapshot(
                name=self.name, objective=self.objective, period=self.period,
                good=self._period.good, bad=self._period.bad,
                remaining_ratio=None if period_burn is None else 1.0 - period_burn,
                burn_rates=rates)

    def export(self, registry: Any = None, *, prefix: str = "fournines") -> Callable[[], None]:
        """Export the gauges to a ``prometheus_client`` registry (the global one by default).

        ``{prefix}_slo_error_budget_remaining_ratio{slo}`` and
        ``{prefix}_slo_burn_rate{slo,window}``, read at scrape time; with no events
        yet the series are absent (no data, as in the generated rules). Returns a
        function that unregisters them.
        """
        try:
            import prometheus_client as prom  # noqa: PLC0415 - optional dependency
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "BudgetTracker.export needs prometheus_client: pip install "
                "'fournines[prometheus]'") from exc
        reg = registry if registry is not None else prom.REGISTRY
        collector = _Collector(self, prefix)
        reg.register(collector)
        return lambda: reg.unregister(collector)

    def __repr__(self) -> str:
        return (f"BudgetTracker(name={self.name!r}, objective={self.objective!r}, "
                f"period={self.period!r})")


class _Collector:
    """The tracker's gauges, built at scrape time."""

    def __init__(self, trackers: BudgetTracker, prefix: str) -> None:
        self._tracker = trackers
        self._prefix = prefix

    def describe(self) -> Iterable[Any]:
        return self._families(None)

    def collect(self) -> Iterable[Any]:
        return self._families(self._tracker.snapshot())

    def _families(self, snap: BudgetSnapshot | None) -> Iterator[Any]:
        from prometheus_client.metrics_core import GaugeMetricFamily  # noqa: PLC0415

        remaining = GaugeMetricFamily(
            f"{self._prefix}_slo_error_budget_remaining_ratio",
            "Error budget left over the SLO period (1 = untouched, below 0 = overspent).",
            labels=["slo"])
        burn = GaugeMetricFamily(
            f"{self._prefix}_slo_burn_rate",
            "Error budget burn rate per window (1 = spends the budget in exactly the period).",
            labels=["slo", "window"])
        if snap is not None:
            if snap.remaining_ratio is not None:
                remaining.add_metric([snap.name], snap.remaining_ratio)
            for window, rate in snap.burn_rates.items():
                if rate is not None:
                    burn.add_metric([snap.name, window], rate)
        yield remaining
        yield burn


def _server_error(status: int) -> bool:
    return status >= 500


class TrackingMiddleware:
    """An ASGI middleware that records each HTTP response in a :class:`BudgetTracker`.

    :param is_error: which status codes count against the budget (5xx by default;
        an exception escaping the app always does).
    :param exclude_paths: paths not counted (probes and ``/metrics``).
    """

    def __init__(
        self,
        app: ASGIApp,
        tracker: BudgetTracker,
        *,
        is_error: Callable[[int], bool] = _server_error,
        exclude_paths: Sequence[str] = ("/livez", "/readyz", "/startupz", "/healthz",
                                        "/metrics"),
    ) -> None:
        if not isinstance(tracker, BudgetTracker):
            raise ConfigurationError(
                f"TrackingMiddleware.tracker must be a BudgetTracker, got {tracker!r}")
        self.app = app
        self.tracker = tracker
        self.is_error = is_error
        self.exclude_paths = frozenset(exclude_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app and record the response's outcome."""
        if scope["type"] != "http" or scope.get("path") in self.exclude_paths:
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            self.tracker.record(False)
            raise
        self.tracker.record(status != 0 and not self.is_error(status))
