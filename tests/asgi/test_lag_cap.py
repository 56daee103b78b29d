"""LoadShedder's lag cap: event-loop lag lowers the in-flight cap, calm raises it back.

Lag measurements are fed with ``observe_loop_lag`` (what the sampler calls), and
admission is the sans-I/O ``try_acquire``, so no loop needs to lag for real.
"""

from __future__ import annotations

import pytest

from fournines import LoadShedError
from fournines.asgi._types import Receive, Scope, Send, respond
from fournines.asgi.shedding import LoadShedder
from fournines.policies.adaptive import FixedLimit
from fournines.testing import FakeClock

CRITICAL = [(b"x-priority", b"critical")]


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await respond(send, 200, b"ok")


def scope(headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {"type": "http", "method": "GET", "path": "/work", "headers": headers or [],
            "query_string": b""}


def loaded(in_flight: int, *, limit: int = 100, lag_floor: int = 4) -> LoadShedder:
    shedder = LoadShedder(ok, limit=FixedLimit(limit), lag_floor=lag_floor,
                          max_loop_lag=0.025, clock=FakeClock())
    for _ in range(in_flight):
        shedder.try_acquire(scope())
    return shedder


def test_a_lagging_measurement_caps_admission_at_three_quarters_of_the_flight() -> None:
    shedder = loaded(40)
    shedder.observe_loop_lag(0.05)
    assert shedder.lag_cap == 30


def test_a_calm_shedder_has_no_cap() -> None:
    shedder = loaded(40)
    shedder.observe_loop_lag(0.01)
    assert shedder.lag_cap is None


def test_requests_at_the_cap_are_shed_for_loop_lag() -> None:
    shedder = loaded(40)
    shedder.observe_loop_lag(0.05)
    for permit in range(40, 29, -1):
        shedder.release(permit, 0.01, dropped=None)
    shedder.try_acquire(scope())  # 30 in flight now: the cap
    with pytest.raises(LoadShedError):
        shedder.try_acquire(scope())
    assert (shedder.shed_loop_lag, shedder.shed_overload) == (1, 0)


def test_critical_requests_pass_the_cap_up_to_the_limit() -> None:
    shedder = loaded(40)
    shedder.observe_loop_lag(0.05)
    shedder.try_acquire(scope(CRITICAL))
    assert shedder.in_flight == 41


def test_sustained_lag_lowers_the_cap_again_from_what_is_in_flight() -> None:
    shedder = loaded(40)
    shedder.observe_loop_lag(0.05)
    shedder.observe_loop_lag(0.05)
    assert shedder.lag_cap == 22


def test_the_cap_never_goes_below_the_floor() -> None:
    shedder = loaded(5, lag_floor=4)
    for _ in range(5):
        shedder.observe_loop_lag(0.5)
    assert shedder.lag_cap == 4


def test_calm_measurements_raise_the_cap_by_an_eighth_until_the_limit_rules() -> None:
    shedder = loaded(40, limit=40)
    shedder.observe_loop_lag(0.05)
    caps = []
    while shedder.lag_cap is not None:
        shedder.observe_loop_lag(0.0)
        caps.append(shedder.lag_cap)
    assert caps == [33, 37, None]


def test_no_lag_measurement_means_no_cap() -> None:
    shedder = LoadShedder(ok, limit=FixedLimit(10), max_loop_lag=None, clock=FakeClock())
    shedder.observe_loop_lag(5.0)
    assert shedder.lag_cap is None
