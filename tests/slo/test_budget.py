"""Error-budget arithmetic: totals, consumption, remaining and burn rates on plain numbers."""

from __future__ import annotations

import math

import pytest

from fournines._errors import ConfigurationError
from fournines.slo.budget import burn_rate, compute_budget, error_budget, parse_duration

THIRTY_DAYS = 30 * 86400.0


def test_four_nines_over_thirty_days_is_four_point_three_two_minutes() -> None:
    budget = compute_budget(objective=99.99, period_seconds=THIRTY_DAYS, error_ratio=0.0)
    assert budget.total_minutes == pytest.approx(4.32)


def test_error_budget_has_no_binary_noise() -> None:
    assert error_budget(99.99) == 0.0001
    assert error_budget(99.9) == 0.001
    assert error_budget(95) == 0.05


def test_budget_in_requests_is_the_allowed_failures_of_the_period_traffic() -> None:
    budget = compute_budget(objective=99.9, period_seconds=THIRTY_DAYS, error_ratio=0.0005,
                            requests=2_000_000)
    assert budget.total_requests == pytest.approx(2000)
    assert budget.consumed_requests == pytest.approx(1000)


def test_half_the_allowed_error_ratio_consumes_half_the_budget() -> None:
    budget = compute_budget(objective=99.9, period_seconds=THIRTY_DAYS, error_ratio=0.0005)
    assert budget.consumed_ratio == pytest.approx(0.5)
    assert budget.remaining_percent == pytest.approx(50.0)
    assert budget.consumed_minutes == pytest.approx(budget.total_minutes / 2)


def test_an_overspent_budget_has_negative_remaining() -> None:
    budget = compute_budget(objective=99.9, period_seconds=THIRTY_DAYS, error_ratio=0.003)
    assert budget.remaining_ratio == pytest.approx(-2.0)


@pytest.mark.parametrize("missing", [None, math.nan, math.inf])
def test_no_traffic_or_nan_is_no_data_never_a_full_budget(missing: float | None) -> None:
    budget = compute_budget(objective=99.9, period_seconds=THIRTY_DAYS, error_ratio=missing,
                            requests=missing)
    assert not budget.has_data
    assert budget.remaining_ratio is None
    assert budget.total_requests is None


def test_burn_rate_is_the_error_ratio_over_the_budget() -> None:
    # SRE workbook: 14.4x over an hour spends 2 % of a 30-day budget.
    assert burn_rate(0.0144, 99.9) == pytest.approx(14.4)
    assert burn_rate(math.nan, 99.9) is None


def test_burn_rates_per_window_are_kept_by_name() -> None:
    budget = compute_budget(objective=99.0, period_seconds=THIRTY_DAYS, error_ratio=0.001,
                            window_error_ratios={"5m": 0.02, "1h": None, "30d": 0.001})
    assert budget.burn_rates == {"5m": pytest.approx(2.0), "1h": None,
                                 "30d": pytest.approx(0.1)}


def test_as_dict_is_json_ready() -> None:
    budget = compute_budget(objective=99.0, period_seconds=THIRTY_DAYS, error_ratio=None)
    data = budget.as_dict()
    assert data["remaining_ratio"] is None
    assert data["total_minutes"] == pytest.approx(432.0)


@pytest.mark.parametrize("objective", [100, 0, -1, 100.5, True, "99.9"])
def test_objective_outside_zero_to_hundred_is_refused(objective: object) -> None:
    with pytest.raises(ConfigurationError, match="objective"):
        compute_budget(objective=objective, period_seconds=60.0,  # type: ignore[arg-type]
                       error_ratio=0.0)


def test_negative_error_ratio_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="error_ratio"):
        compute_budget(objective=99.0, period_seconds=60.0, error_ratio=-0.1)


@pytest.mark.parametrize(("text", "seconds"), [
    ("5m", 300.0), ("1h30m", 5400.0), ("30d", THIRTY_DAYS), ("90s", 90.0), ("1w", 604800.0),
    ("250ms", 0.25),
])
def test_durations_read_like_prometheus(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "m5", "5 m", "0s", "5y", "-5m"])
def test_bad_durations_name_the_field(text: str) -> None:
    with pytest.raises(ConfigurationError, match="window"):
        parse_duration(text, field_name="window")


def test_objective_whose_budget_rounds_to_zero_is_refused_not_divided_by() -> None:
    with pytest.raises(ConfigurationError, match="error budget below 1e-12"):
        compute_budget(objective=99.99999999999999, period_seconds=60.0, error_ratio=0.0)
