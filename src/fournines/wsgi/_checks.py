"""Health checks from blocking functions, for WSGI apps whose clients block."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..asgi.checks import DEFAULT_TIMEOUT, Check

__all__ = ["blocking_check"]


def blocking_check(name: str, probe: Callable[[], object], *,
                   timeout: float = DEFAULT_TIMEOUT, critical: bool = True,
                   component_type: str = "component") -> Check:
    """A :class:`~fournines.asgi.Check` whose probe is a blocking function (run on a thread).

    For the clients a WSGI app already has (psycopg 2, redis-py's blocking client,
    requests): ``blocking_check("db", lambda: conn.execute("SELECT 1"))``. A probe
    that outlives ``timeout`` fails the check with ``"timeout"``; its thread finishes
    on its own (a thread cannot be cancelled), so give the client a timeout too.
    """
    if not callable(probe):
        # Check validates the rest; its message would name the wrapper, not this probe.
        from .._errors import ConfigurationError  # noqa: PLC0415

        raise ConfigurationError(f"blocking_check.probe must be callable, got {probe!r}")

    async def run() -> object:
        return await asyncio.to_thread(probe)

    return Check(name, run, timeout=timeout, critical=critical, component_type=component_type)
