"""A listener that logs fournines events with the standard ``logging`` module."""

from __future__ import annotations

import logging

from .._events import (
    BudgetExhausted,
    CallRejected,
    DeadlineExceeded,
    DiscoveryInterrupted,
    DiscoveryResumed,
    EndpointsChanged,
    Event,
    FallbackUsed,
    FaultInjected,
    RegistrationChanged,
    RetriesExhausted,
    RetryScheduled,
    StateChanged,
)

__all__ = ["LoggingListener"]


class LoggingListener:
    """Log every event: transitions and give-ups at WARNING, the rest at INFO/DEBUG.

    Each record carries the event as ``extra={"fournines_event": event}`` so
    structured handlers can render its fields.
    """

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("fournines.events")

    def __call__(self, event: Event) -> None:
        """Log ``event``."""
        level, text = self.describe(event)
        if self.logger.isEnabledFor(level):
            self.logger.log(level, text, extra={"fournines_event": event})

    @staticmethod
    def describe(event: Event) -> tuple[int, str]:
        """The log level and one-line text for ``event``."""
        who = f"{event.policy} {event.name!r}"
        if isinstance(event, StateChanged):
            return logging.WARNING, f"{who}: {event.old} -> {event.new}"
        if isinstance(event, CallRejected):
            after = "" if event.retry_after is None else f", retry after {event.retry_after:.3f}s"
            times = "" if event.count == 1 else f" {event.count} calls"
            return logging.DEBUG, f"{who}: rejected{times} ({event.reason}{after})"
        if isinstance(event, RetryScheduled):
            return (logging.INFO, f"{who}: attempt {event.attempt} failed "
                    f"({event.error!r}); retrying in {event.delay:.3f}s")
        if isinstance(event, RetriesExhausted):
            return (logging.WARNING, f"{who}: giving up after {event.attempts} attempt(s) "
                    f"({event.reason}): {event.error!r}")
        if isinstance(event, BudgetExhausted):
            return logging.WARNING, f"{who}: retry budget exhausted"
        if isinstance(event, FallbackUsed):
            stale = "" if event.stale_age is None else f" (stale, {event.stale_age:.1f}s old)"
            return logging.INFO, f"{who}: fallback answered{stale} after {event.error!r}"
        if isinstance(event, DeadlineExceeded):
            return logging.INFO, f"{who}: deadline of {event.timeout:.3f}s exceeded"
        if isinstance(event, FaultInjected):
            delay = "" if event.delay is None else f" of {event.delay:.3f}s"
            where = "" if event.route is None else f" on {event.route}"
            return logging.INFO, f"{who}: injected {event.kind} fault{delay}{where}"
        if isinstance(event, RegistrationChanged):
            level = logging.WARNING if event.kind == "lost" else logging.INFO
            why = "" if event.reason is None else f" ({event.reason})"
            return level, f"{who}: instance {event.instance!r} {event.kind}{why}"
        if isinstance(event, EndpointsChanged):
            return (logging.INFO, f"{who}: {event.count} endpoint(s); added "
                    f"{list(event.added)}, removed {list(event.removed)}")
        if isinstance(event, DiscoveryInterrupted):
            return (logging.WARNING, f"{who}: watch lost ({event.reason}: {event.error!r}); "
                    "serving the last known endpoints")
        if isinstance(event, DiscoveryResumed):
            return logging.INFO, f"{who}: in sync again after {event.stale:.1f}s"
        return logging.DEBUG, f"{who}: {event!r}"
