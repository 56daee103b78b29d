"""Specification of events, listeners and the global listener registry."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from fournines import (
    CircuitBreaker,
    ConsecutiveFailures,
    StateChanged,
    add_listener,
    remove_listener,
)
from fournines.testing import FakeClock, RecordingListener


def open_breaker(clock: FakeClock, **kwargs: object) -> CircuitBreaker:
    breaker = CircuitBreaker(clock=clock, trip=ConsecutiveFailures(threshold=1),
                             **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    return breaker


def test_events_are_frozen() -> None:
    event = StateChanged(policy="circuit_breaker", name="x", old="closed", new="open")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.new = "closed"  # type: ignore[misc]


def test_a_failing_listener_is_logged_and_never_breaks_the_call(
    clock: FakeClock, recorder: RecordingListener, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    with caplog.at_level(logging.ERROR, logger="fournines"):
        breaker = open_breaker(clock, listeners=[broken, recorder])
    assert len(recorder.of(StateChanged)) == 1
    assert breaker.state.value == "open"
    assert "listener bug" in caplog.text


def test_global_listeners_see_every_policy(clock: FakeClock, recorder: RecordingListener) -> None:
    add_listener(recorder)
    try:
        open_breaker(clock)
        open_breaker(clock)
    finally:
        remove_listener(recorder)
    assert len(recorder.of(StateChanged)) == 2
    open_breaker(clock)
    assert len(recorder.of(StateChanged)) == 2


def test_adding_a_listener_twice_delivers_once(clock: FakeClock,
                                               recorder: RecordingListener) -> None:
    add_listener(recorder)
    add_listener(recorder)
    try:
        open_breaker(clock)
    finally:
        remove_listener(recorder)
    assert len(recorder.events) == 1
