"""Specification of the logging and Prometheus listeners."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fournines import (
    CircuitBreaker,
    ConsecutiveFailures,
    Fallback,
    Listener,
    Retry,
    RetryBudget,
    TokenBucket,
)
from fournines.instrumentation import LoggingListener, PrometheusListener
from fournines.testing import FakeClock


def exercise(clock: FakeClock, listener: Listener) -> None:
    """One breaker opening, one retry, a budget give-up, a rate limit and a fallback."""
    listeners = [listener]
    breaker = CircuitBreaker("pay", clock=clock, trip=ConsecutiveFailures(threshold=2),
                             listeners=listeners)
    budget = RetryBudget(ratio=0, min_per_second=0.1, ttl=10, clock=clock, name="pay",
                         listeners=listeners)  # one retry in all
    retry = Retry(attempts=3, clock=clock, name="pay", listeners=listeners, budget=budget)
    with pytest.raises(ZeroDivisionError):
        retry.call(breaker.call, lambda: 1 / 0)
    bucket = TokenBucket(rate=1, capacity=1, clock=clock, name="api", listeners=listeners)
    Fallback(value=None, name="api", listeners=listeners).call(
        lambda: [bucket.try_acquire() for _ in range(2)])


def test_prometheus_listener_counts_decisions(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    exercise(clock, PrometheusListener(registry))
    text = generate_latest(registry).decode()
    transitions = 'from_state="closed",name="pay",to_state="open"'
    assert f"fournines_circuit_breaker_transitions_total{{{transitions}}} 1.0" in text
    assert 'fournines_circuit_breaker_state{name="pay",state="open"} 1.0' in text
    assert 'fournines_retries_total{name="pay"} 1.0' in text
    assert 'fournines_retry_budget_exhausted_total{name="pay"} 1.0' in text
    assert 'fournines_retries_exhausted_total{name="pay",reason="budget"} 1.0' in text
    rejected = 'name="api",policy="rate_limit",reason="rate_limited"'
    assert f"fournines_rejections_total{{{rejected}}} 1.0" in text
    assert 'fournines_fallbacks_total{kind="value",name="api"} 1.0' in text


def test_prometheus_metric_prefix_is_configurable() -> None:
    registry = CollectorRegistry()
    PrometheusListener(registry, prefix="svc")
    names = {m.name for m in registry.collect()}
    assert "svc_rejections" in names
    assert not any(name.startswith("fournines_") for name in names)


def test_logging_listener_logs_transitions_as_warnings(clock: FakeClock,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="fournines.events"):
        exercise(clock, LoggingListener())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "circuit_breaker 'pay': closed -> open" in warnings
    assert any("retry budget exhausted" in m for m in warnings)
    assert all(hasattr(r, "fournines_event") for r in caplog.records)
