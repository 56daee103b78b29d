"""BudgetTracker: rolling windows, remaining budget and burn rates on a fake clock."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fournines._errors import ConfigurationError
from fournines.slo.tracker import BudgetTracker, TrackingMiddleware
from fournines.testing import FakeClock


def tracker(clock: FakeClock, **kwargs: object) -> BudgetTracker:
    options: dict[str, object] = {"name": "api", "objective": 99.0, "period": "1d",
                                  "windows": ("5m", "1h"), "clock": clock, **kwargs}
    return BudgetTracker(**options)  # type: ignore[arg-type]


def test_an_untouched_tracker_has_no_data() -> None:
    budget = tracker(FakeClock())
    assert budget.remaining_ratio() is None
    assert budget.burn_rate("5m") is None


def test_all_good_events_leave_the_whole_budget() -> None:
    budget = tracker(FakeClock())
    budget.record(True, count=1000)
    assert budget.remaining_ratio() == 1.0
    assert budget.burn_rate("1h") == 0.0


def test_errors_at_the_objective_spend_exactly_the_budget() -> None:
    budget = tracker(FakeClock())
    budget.record(True, count=990)
    budget.record(False, count=10)
    assert budget.remaining_ratio() == pytest.approx(0.0)
    assert budget.burn_rate("5m") == pytest.approx(1.0)


def test_a_short_burst_leaves_the_short_window_but_stays_in_the_period() -> None:
    clock = FakeClock()
    budget = tracker(clock)
    budget.record(False, count=5)
    budget.record(True, count=95)
    clock.advance(10 * 60)
    budget.record(True, count=100)
    assert budget.burn_rate("5m") == 0.0
    assert budget.burn_rate("1h") == pytest.approx(2.5)
    assert budget.remaining_ratio() == pytest.approx(1 - 2.5)


def test_events_older_than_the_period_are_forgotten() -> None:
    clock = FakeClock()
    budget = tracker(clock)
    budget.record(False, count=50)
    clock.advance(86400 + 86400 / 60)
    assert budget.remaining_ratio() is None
    budget.record(True)
    assert budget.remaining_ratio() == 1.0


def test_window_edges_are_exact_to_one_sixtieth_of_the_window() -> None:
    clock = FakeClock()
    budget = tracker(clock)
    budget.record(False)
    clock.advance(300 - 300 / 60)  # still inside the 5m window's buckets
    budget.record(True)
    assert budget.burn_rate("5m") == pytest.approx(50.0)
    clock.advance(2 * 300 / 60)
    assert budget.burn_rate("5m") == 0.0


def test_snapshot_lists_every_window_and_the_period() -> None:
    budget = tracker(FakeClock())
    budget.record(False)
    budget.record(True, count=199)
    snap = budget.snapshot()
    assert (snap.good, snap.bad) == (199, 1)
    assert snap.error_ratio == pytest.approx(0.005)
    assert set(snap.burn_rates) == {"5m", "1h", "1d"}
    assert snap.remaining_ratio == pytest.approx(0.5)


def test_windows_longer_than_the_period_are_dropped() -> None:
    budget = BudgetTracker(objective=99.0, period="1h", clock=FakeClock())
    assert set(budget.snapshot().burn_rates) == {"5m", "1h"}


def test_unknown_window_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="5m"):
        tracker(FakeClock()).burn_rate("6h")


@pytest.mark.parametrize(("field", "value"), [("objective", 100.0), ("period", "soon"),
                                              ("name", "")])
def test_bad_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"BudgetTracker.*{field}"):
        tracker(FakeClock(), **{field: value})


def test_export_serves_the_remaining_budget_gauge() -> None:
    registry = CollectorRegistry()
    budget = tracker(FakeClock())
    unregister = budget.export(registry)
    assert b"fournines_slo_error_budget_remaining_ratio{" not in generate_latest(registry)
    budget.record(False)
    budget.record(True, count=399)
    text = generate_latest(registry).decode()
    assert 'fournines_slo_error_budget_remaining_ratio{slo="api"} 0.75' in text
    assert 'fournines_slo_burn_rate{slo="api",window="5m"} 0.25' in text
    unregister()
    assert "fournines_slo" not in generate_latest(registry).decode()


async def test_tracking_middleware_counts_5xx_and_crashes_as_bad() -> None:
    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        path = scope["path"]
        if path == "/crash":
            raise RuntimeError("boom")
        status = 503 if path == "/fail" else 200
        await send({"type": "http.response.start", "status": status,  # type: ignore[operator]
                    "headers": []})
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    budget = tracker(FakeClock())
    wrapped = TrackingMiddleware(app, budget)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=wrapped, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path in ("/ok", "/ok", "/fail", "/crash", "/livez"):
            await client.get(path)
    snap = budget.snapshot()
    assert (snap.good, snap.bad) == (2, 2)


def test_late_outcomes_land_in_their_own_time() -> None:
    clock = FakeClock(start=10_000.0)
    budget = tracker(clock)
    budget.record(True, count=99)
    budget.record(False, at=10_000.0 - 30 * 60)  # half an hour ago: in 1h, not in 5m
    budget.record(False, at=10_000.0 - 2 * 86400)  # older than the period: nowhere
    assert budget.burn_rate("5m") == 0.0
    assert budget.burn_rate("1h") == pytest.approx(1.0)
    assert budget.snapshot().bad == 1
    clock.advance(31 * 60)
    assert budget.burn_rate("1h") == 0.0  # the late error aged out; the rest did not
    assert budget.snapshot().good == 99
