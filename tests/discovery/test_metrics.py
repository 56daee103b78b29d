"""Registry and discovery events in the Prometheus and logging listeners."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, generate_latest

from fournines.discovery import (
    DiscoveryInterrupted,
    DiscoveryResumed,
    EndpointsChanged,
    RegistrationChanged,
)
from fournines.instrumentation import LoggingListener, PrometheusListener


def changed(kind: str, reason: str | None = None) -> RegistrationChanged:
    return RegistrationChanged(policy="registry", name="payment", kind=kind, instance="p1",
                               reason=reason)


def test_the_registered_gauge_follows_the_registration_and_counts_re_registrations() -> None:
    registry = CollectorRegistry()
    listener = PrometheusListener(registry)
    gauge = 'fournines_registry_registered{instance="p1",service="payment"}'

    listener(changed("registered"))
    assert f"{gauge} 1.0" in generate_latest(registry).decode()
    listener(changed("lost", "key deleted"))
    assert f"{gauge} 0.0" in generate_latest(registry).decode()
    listener(changed("re-registered", "key deleted"))

    text = generate_latest(registry).decode()
    assert f"{gauge} 1.0" in text
    again = 'fournines_registry_reregistrations_total{reason="key deleted",service="payment"}'
    assert f"{again} 1.0" in text


def test_discovery_metrics_count_endpoints_and_interruptions() -> None:
    registry = CollectorRegistry()
    listener = PrometheusListener(registry)

    listener(EndpointsChanged(policy="discovery", name="payment", added=("http://a:1",),
                              removed=(), count=1))
    listener(DiscoveryInterrupted(policy="discovery", name="payment", reason="disconnected"))

    text = generate_latest(registry).decode()
    assert 'fournines_discovery_endpoints{service="payment"} 1.0' in text
    interrupted = 'fournines_discovery_interruptions_total{reason="disconnected",service="payment"}'
    assert f"{interrupted} 1.0" in text


def test_a_lost_registration_is_logged_as_a_warning_with_its_reason() -> None:
    level, text = LoggingListener.describe(changed("lost", "lease expired"))

    assert level == logging.WARNING
    assert text == "registry 'payment': instance 'p1' lost (lease expired)"


def test_discovery_resuming_is_logged_with_its_stale_time() -> None:
    level, text = LoggingListener.describe(
        DiscoveryResumed(policy="discovery", name="payment", stale=2.5))

    assert level == logging.INFO
    assert text == "discovery 'payment': in sync again after 2.5s"


def test_the_stale_gauge_grows_while_discovery_is_interrupted_and_returns_to_zero() -> None:
    registry = CollectorRegistry()
    listener = PrometheusListener(registry)

    listener(DiscoveryInterrupted(policy="discovery", name="payment", reason="disconnected"))
    interrupted = registry.get_sample_value("fournines_discovery_stale_seconds",
                                            {"service": "payment"})
    listener(DiscoveryResumed(policy="discovery", name="payment", stale=1.0))
    resumed = registry.get_sample_value("fournines_discovery_stale_seconds",
                                        {"service": "payment"})

    assert interrupted is not None and interrupted >= 0
    assert resumed == 0.0
