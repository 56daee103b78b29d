"""The state of one service process that its middleware shares.

Health probes read it (started? draining?), graceful shutdown writes it, and
the shedder and metrics count in-flight requests in it.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from enum import StrEnum
from urllib.parse import quote

__all__ = ["InstanceLogFilter", "Phase", "ServiceState", "instance_id"]


class Phase(StrEnum):
    """Where the process is in its life."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


def instance_id() -> str:
    """The instance id: ``FOURNINES_INSTANCE_ID``, ``POD_NAME``, else host name + pid."""
    for name in ("FOURNINES_INSTANCE_ID", "POD_NAME", "HOSTNAME"):
        value = os.environ.get(name, "").strip()
        if value:
            return value if name != "HOSTNAME" else f"{value}-{os.getpid()}"
    try:
        return f"{socket.gethostname()}-{os.getpid()}"
    except OSError:  # pragma: no cover - no host name at all
        return uuid.uuid4().hex[:12]


def _header_safe(value: str) -> str:
    # The id goes into a response header: percent-encode anything but visible ASCII
    # (a non-Latin-1 pod name would otherwise fail every response).
    if value.isascii() and value.isprintable() and " " not in value:
        return value
    return quote(value, safe="-._~:@!$&'()*+,;=")


class ServiceState:
    """Lifecycle phase, in-flight count and identity of this process."""

    __slots__ = ("in_flight", "instance", "phase", "service")

    def __init__(self, *, service: str = "service", instance: str | None = None) -> None:
        self.service = service
        self.instance = _header_safe(instance or instance_id())
        self.phase = Phase.STARTING
        self.in_flight = 0

    @property
    def started(self) -> bool:
        """Whether startup has finished (ready or later)."""
        return self.phase is not Phase.STARTING

    @property
    def ready(self) -> bool:
        """Whether the process should receive new traffic."""
        return self.phase is Phase.READY

    def mark_ready(self) -> None:
        """Startup finished: accept traffic (a no-op once draining)."""
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY

    def mark_draining(self) -> None:
        """Shutdown began: readiness fails from now on."""
        if self.phase in (Phase.STARTING, Phase.READY):
            self.phase = Phase.DRAINING

    def mark_stopped(self) -> None:
        """The process is about to exit."""
        self.phase = Phase.STOPPED

    def __repr__(self) -> str:
        return (f"ServiceState(service={self.service!r}, instance={self.instance!r}, "
                f"phase={self.phase.value!r}, in_flight={self.in_flight})")


class InstanceLogFilter(logging.Filter):
    """Adds ``service`` and ``instance_id`` to every log record it sees.

    Attach it to a handler (``handler.addFilter(InstanceLogFilter(state))``) and use
    ``%(instance_id)s`` in the format: logs of many replicas stay attributable.
    """

    def __init__(self, state: ServiceState) -> None:
        super().__init__()
        self.state = state

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; never drops it."""
        record.service = self.state.service
        record.instance_id = self.state.instance
        return True
