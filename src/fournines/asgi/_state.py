"""The state of one service process that its middleware shares.

Health probes read it (started? draining?), graceful shutdown writes it, and
the shedder and metrics count in-flight requests in it.

Lifecycle hooks (:class:`LifecycleHook`, ``state.add_hook()``, ``protect(hooks=)``)
act on its two turns that the world outside the process cares about:

- ``on_ready`` runs (as a task) once the state turns ready, never before: a
  service registry learns of the instance only when it can serve;
- ``on_drain`` runs first thing on drain, *before* readiness fails: under
  :func:`fournines.asgi.serve` (and ``fournines serve``) a SIGTERM runs the
  hooks, waits for them up to ``GracefulShutdown.hook_timeout``, and only then
  marks the state draining. A registry's watchers therefore stop sending before
  the load balancer's probe notices, and long before the server stops accepting.

Hooks need a running event loop (ASGI servers, aiohttp, grpc.aio); a hook that
raises or hangs is logged and never holds the drain up beyond its timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Protocol, runtime_checkable
from urllib.parse import quote

from .._errors import ConfigurationError

__all__ = ["InstanceLogFilter", "LifecycleHook", "Phase", "ServiceState", "instance_id"]

_log = logging.getLogger("fournines.asgi")


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


@runtime_checkable
class LifecycleHook(Protocol):
    """What to do when the service turns ready, and first thing when it starts draining.

    :class:`fournines.discovery.RegistrationHook` is one: it registers the
    instance in a service registry on ready and deregisters it on drain.
    """

    async def on_ready(self, state: ServiceState) -> None:
        """The service turned ready (it accepts traffic from now on)."""

    async def on_drain(self, state: ServiceState) -> None:
        """The service is about to drain: readiness fails once this returns (or times out)."""


class ServiceState:
    """Lifecycle phase, in-flight count and identity of this process."""

    __slots__ = ("_drain_task", "_hooks", "_ready_task", "in_flight", "instance", "phase",
                 "service")

    def __init__(self, *, service: str = "service", instance: str | None = None) -> None:
        self.service = service
        self.instance = _header_safe(instance or instance_id())
        self.phase = Phase.STARTING
        self.in_flight = 0
        self._hooks: tuple[LifecycleHook, ...] = ()
        self._ready_task: asyncio.Future[None] | None = None
        self._drain_task: asyncio.Future[None] | None = None

    @property
    def hooks(self) -> tuple[LifecycleHook, ...]:
        """The lifecycle hooks added, in order."""
        return self._hooks

    def add_hook(self, hook: LifecycleHook) -> None:
        """Run ``hook.on_ready`` when the state turns ready, ``hook.on_drain`` on drain.

        Add hooks before the service starts: a hook added after the state
        turned ready misses its ``on_ready``.
        """
        if not (callable(getattr(hook, "on_ready", None))
                and callable(getattr(hook, "on_drain", None))):
            raise ConfigurationError(
                f"a lifecycle hook needs async on_ready(state) and on_drain(state), got {hook!r}")
        self._hooks = (*self._hooks, hook)

    async def drain(self, *, timeout: float = 1.0) -> None:
        """Start draining the hooks' way: ``on_drain`` hooks first, then readiness fails.

        Waits for the hooks at most ``timeout`` seconds (they go on in the
        background after that); then marks the state draining. Calling it again,
        or after :meth:`mark_draining`, waits for the same hooks, never runs them twice.
        """
        task = self._start_drain_hooks() if self._hooks else None
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=timeout)
        self.mark_draining()

    @property
    def started(self) -> bool:
        """Whether startup has finished (ready or later)."""
        return self.phase is not Phase.STARTING

    @property
    def ready(self) -> bool:
        """Whether the process should receive new traffic."""
        return self.phase is Phase.READY

    def mark_ready(self) -> None:
        """Startup finished: accept traffic (a no-op once draining); starts ``on_ready`` hooks."""
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY
            if self._hooks:
                self._soon(self._start_ready_hooks)

    def mark_draining(self) -> None:
        """Shutdown began: readiness fails from now on.

        ``on_drain`` hooks that :meth:`drain` has not run yet start now, after
        the fact: prefer :meth:`drain` where the caller can await.
        """
        if self.phase in (Phase.STARTING, Phase.READY):
            self.phase = Phase.DRAINING
        if self._hooks and self._drain_task is None:
            self._soon(self._start_drain_hooks)

    def _soon(self, start: Callable[[], object]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _log.warning("fournines: %s has lifecycle hooks but no running event loop: "
                         "they do not run", self.service)
            return
        # Thread-safe scheduling: mark_draining() runs in signal handlers too, where
        # creating a task in the middle of the loop's own work is not safe.
        loop.call_soon_threadsafe(start)

    def _start_ready_hooks(self) -> None:
        if self._ready_task is None and self._drain_task is None:
            self._ready_task = asyncio.ensure_future(
                self._run_hooks("on_ready", [h.on_ready for h in self._hooks]))

    def _start_drain_hooks(self) -> asyncio.Future[None]:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain_hooks())
        return self._drain_task

    async def _drain_hooks(self) -> None:
        ready = self._ready_task
        if ready is None:
            return  # never announced: nothing to withdraw
        if not ready.done():
            # Still announcing (a registry that cannot be reached): stop, then withdraw
            # whatever part of it got through.
            ready.cancel()
            await asyncio.wait({ready})
        await self._run_hooks("on_drain", [h.on_drain for h in self._hooks])

    async def _run_hooks(self, name: str,
                         calls: list[Callable[[ServiceState], Awaitable[None]]]) -> None:
        async def one(call: Callable[[ServiceState], Awaitable[None]]) -> None:
            try:
                await call(self)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("fournines: %s: lifecycle hook %s %r failed", self.service,
                               name, call)

        await asyncio.gather(*(one(call) for call in calls))

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
