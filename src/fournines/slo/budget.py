"""Error-budget arithmetic on plain numbers: no Prometheus, no I/O.

An objective of 99.99 % over 30 days leaves an error budget of 0.01 % of the
period's requests, which, for traffic spread evenly over the period, is
4.32 minutes of total outage. The numbers here follow the SRE workbook
(chapter "Alerting on SLOs"):

- *error budget* ``b = 1 - objective / 100``;
- *burn rate* over a window: the window's error ratio divided by ``b`` (1 means
  the budget lasts exactly the period; 14.4 spends 2 % of a 30-day budget in an hour);
- *consumed*: the period's error ratio divided by ``b``; *remaining* is one
  minus that, and goes below zero once the budget is overspent.

Minutes are request-weighted: "3 minutes consumed" means the failed requests
equal what a total outage of 3 minutes would have failed at the period's
average traffic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .._errors import ConfigurationError

__all__ = [
    "BURN_RATE_WINDOWS",
    "Budget",
    "burn_rate",
    "compute_budget",
    "error_budget",
    "parse_duration",
]

BURN_RATE_WINDOWS: tuple[str, ...] = ("5m", "1h", "6h", "1d", "3d")
"""The windows a budget report shows burn rates for (the period itself comes last)."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str, *, field_name: str = "duration") -> float:
    """Seconds in a Prometheus-style duration: ``"5m"``, ``"1h30m"``, ``"30d"``, ``"90s"``."""
    if not isinstance(text, str) or not text:
        raise ConfigurationError(f"{field_name} must be a duration like '5m' or '30d', "
                                 f"got {text!r}")
    position, seconds = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text) or seconds <= 0:
        raise ConfigurationError(f"{field_name} must be a positive duration like '5m' or "
                                 f"'30d', got {text!r}")
    return seconds


def error_budget(objective: float) -> float:
    """The allowed error ratio for an objective in percent (99.9 -> 0.001), exact to 1e-12."""
    if isinstance(objective, bool) or not isinstance(objective, int | float) or not (
        0 < objective < 100
    ):
        raise ConfigurationError(f"objective must be a percentage in (0, 100), got {objective!r}")
    # round() removes binary noise such as 1 - 0.9999 = 9.999999999998899e-05.
    budget = round(1.0 - objective / 100.0, 12)
    if budget <= 0:
        # Every burn rate and budget share divides by it: refuse rather than divide by zero.
        raise ConfigurationError(f"objective {objective!r} leaves an error budget below 1e-12 "
                                 "of the events, which cannot be told from none")
    return budget


def _finite(value: float | None) -> float | None:
    """``value``, or ``None`` for NaN and infinities (no data is never a number)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def burn_rate(error_ratio: float | None, objective: float) -> float | None:
    """How many times faster than sustainable the budget burns; ``None`` without data."""
    ratio = _finite(error_ratio)
    return None if ratio is None else ratio / error_budget(objective)


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """One SLO's budget over its period.

    :param objective: the objective in percent (99.99).
    :param period_seconds: the SLO period (30 days is 2 592 000 s).
    :param error_ratio: failed / all events over the period; ``None`` without data.
    :param requests: all events over the period (``None`` when unknown).
    :param burn_rates: burn rate per window name (``"5m"`` ... and the period's own name);
        ``None`` where the window has no data.
    """

    objective: float
    period_seconds: float
    error_ratio: float | None
    requests: float | None = None
    burn_rates: Mapping[str, float | None] = field(default_factory=dict)

    @property
    def error_budget(self) -> float:
        """The allowed error ratio (0.0001 for 99.99 %)."""
        return error_budget(self.objective)

    @property
    def has_data(self) -> bool:
        """Whether the period's error ratio is known (no traffic means no data)."""
        return self.error_ratio is not None

    @property
    def total_minutes(self) -> float:
        """The budget as minutes of total outage (4.32 for 99.99 % over 30 days)."""
        return self.period_seconds / 60.0 * self.error_budget

    @property
    def total_requests(self) -> float | None:
        """The number of requests the budget allows to fail over the period."""
        return None if self.requests is None else self.requests * self.error_budget

    @property
    def consumed_ratio(self) -> float | None:
        """The fraction of the budget spent (above 1 when overspent)."""
        return None if self.error_ratio is None else self.error_ratio / self.error_budget

    @property
    def consumed_minutes(self) -> float | None:
        """The spent budget as minutes of total outage (request-weighted)."""
        consumed = self.consumed_ratio
        return None if consumed is None else consumed * self.total_minutes

    @property
    def consumed_requests(self) -> float | None:
        """The failed requests over the period."""
        if self.error_ratio is None or self.requests is None:
            return None
        return self.error_ratio * self.requests

    @property
    def remaining_ratio(self) -> float | None:
        """One minus the consumed fraction (negative when overspent); ``None`` without data."""
        consumed = self.consumed_ratio
        return None if consumed is None else 1.0 - consumed

    @property
    def remaining_percent(self) -> float | None:
        """:attr:`remaining_ratio` in percent."""
        remaining = self.remaining_ratio
        return None if remaining is None else remaining * 100.0

    def as_dict(self) -> dict[str, object]:
        """The budget as JSON-ready values (``None`` for unknown ones)."""
        return {
            "objective": self.objective,
            "period_seconds": self.period_seconds,
            "error_budget": self.error_budget,
            "error_ratio": self.error_ratio,
            "requests": self.requests,
            "total_minutes": self.total_minutes,
            "total_requests": self.total_requests,
            "consumed_ratio": self.consumed_ratio,
            "consumed_minutes": self.consumed_minutes,
            "consumed_requests": self.consumed_requests,
            "remaining_ratio": self.remaining_ratio,
            "remaining_percent": self.remaining_percent,
            "burn_rates": dict(self.burn_rates),
        }


def compute_budget(
    *,
    objective: float,
    period_seconds: float,
    error_ratio: float | None,
    requests: float | None = None,
    window_error_ratios: Mapping[str, float | None] | None = None,
) -> Budget:
    """Build a :class:`Budget`; NaN and infinite inputs count as no data.

    :param window_error_ratios: error ratio per window name; each becomes a burn rate.
    """
    error_budget(objective)  # validates
    if not isinstance(period_seconds, int | float) or not period_seconds > 0:
        raise ConfigurationError(f"period_seconds must be > 0, got {period_seconds!r}")
    ratio = _finite(error_ratio)
    if ratio is not None and ratio < 0:
        raise ConfigurationError(f"error_ratio must be >= 0, got {error_ratio!r}")
    total = _finite(requests)
    rates = {name: burn_rate(value, objective)
             for name, value in (window_error_ratios or {}).items()}
    return Budget(objective=objective, period_seconds=float(period_seconds), error_ratio=ratio,
                  requests=total, burn_rates=rates)
