"""The standard ``grpc.health.v1.Health`` service, fed by fournines' health checks, and drain.

:class:`HealthService` answers ``Check`` and ``Watch`` of the gRPC health
checking protocol (https://github.com/grpc/grpc/blob/master/doc/health-checking.md)
with the very readiness an ASGI service's ``/readyz`` has: the same
:class:`~fournines.asgi.Check` objects, run by the same
:class:`~fournines.asgi.HealthMiddleware` (concurrently, each under its
timeout, results cached for ``cache_ttl``), and the same
:class:`~fournines.asgi.ServiceState`:

=============================================  ==================
readiness                                      ServingStatus
=============================================  ==================
ready and every critical check passes          ``SERVING``
starting, draining, stopped, or a check fails  ``NOT_SERVING``
a service name the server does not know        ``SERVICE_UNKNOWN``
                                               (``Check``: NOT_FOUND)
=============================================  ==================

The empty service name ``""`` is the whole server; ``services`` lists the
other names it answers for (usually the full names of its gRPC services).
``Watch`` sends the status at once and then each change: it re-reads the
status every ``watch_interval`` seconds, and at once when :meth:`HealthService.drain`
is called.

:func:`aio_stop_gracefully` and :func:`stop_gracefully` stop a server the way
:class:`~fournines.asgi.GracefulShutdown` describes for HTTP: health
NOT_SERVING first (watchers are told at once), then ``drain_delay`` seconds of
serving while clients and balancers move away, then ``server.stop(drain_timeout)``
(new calls refused, calls in flight given the grace to finish).

The messages are those of the ``grpcio-health-checking`` package
(``grpc_health.v1.health_pb2``), so clients use its ``HealthStub`` as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from typing import Any

import grpc
import grpc.aio

from .._clock import Clock, system_clock
from .._errors import ConfigurationError, check_number
from ..asgi import Check, GracefulShutdown, HealthMiddleware, ServiceState

__all__ = ["HEALTH_SERVICE", "HealthService", "aio_stop_gracefully", "stop_gracefully"]

HEALTH_SERVICE = "grpc.health.v1.Health"
"""The full name of the standard health service."""


def _messages() -> Any:
    try:
        from grpc_health.v1 import (  # type: ignore[import-untyped]  # noqa: PLC0415
            health_pb2,
        )
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "HealthService needs grpcio-health-checking: pip install 'fournines[grpc]'"
        ) from exc
    return health_pb2


class HealthService:
    """``grpc.health.v1.Health`` answered from fournines' checks and service state.

    :param checks: the dependency checks (as for :class:`~fournines.asgi.HealthMiddleware`).
    :param state: the process's :class:`~fournines.asgi.ServiceState`; NOT_SERVING
        while it is starting, draining or stopped. ``None``: a new state, marked
        ready at once.
    :param services: the service names answered besides ``""`` (the server).
    :param cache_ttl: seconds check results are reused for.
    :param watch_interval: seconds between the status reads of each ``Watch``.
    :param clock: the clock of the cache and of the watch interval.

    Register it with :meth:`add_to_aio_server` (``grpc.aio``) or
    :meth:`add_to_server` (sync; the checks then run on a private event loop
    thread, started on first use and stopped by :meth:`close`).
    """

    def __init__(
        self,
        *,
        checks: Sequence[Check] = (),
        state: ServiceState | None = None,
        services: Collection[str] = (),
        cache_ttl: float = 1.0,
        watch_interval: float = 1.0,
        clock: Clock = system_clock,
    ) -> None:
        check_number("HealthService", "watch_interval", watch_interval, minimum=0,
                     exclusive_minimum=True)
        if isinstance(services, str) or not all(isinstance(s, str) for s in services):
            raise ConfigurationError(
                f"HealthService.services must be a collection of str, got {services!r}")
        if state is None:
            state = ServiceState()
            state.mark_ready()
        self.state = state
        self._pb = _messages()
        self._health = HealthMiddleware(None, checks=checks, state=state, cache_ttl=cache_ttl,
                                        clock=clock)
        self._services = frozenset({"", *services})
        self._interval = float(watch_interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._aio_watchers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._sync_watchers: set[threading.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- status -------------------------------------------------------------------

    async def serving(self) -> bool:
        """Whether the server is ready: the ``/readyz`` answer of the same checks."""
        status, _ = await self._health.report("ready")
        return status == 200

    async def status(self, service: str) -> int:
        """The ``ServingStatus`` of ``service`` (a ``HealthCheckResponse`` enum value)."""
        response = self._pb.HealthCheckResponse
        if service not in self._services:
            return int(response.SERVICE_UNKNOWN)
        return int(response.SERVING if await self.serving() else response.NOT_SERVING)

    def drain(self) -> None:
        """Mark the state draining: NOT_SERVING from now on, and every watcher told at once."""
        self.state.mark_draining()
        self._notify()

    def _notify(self) -> None:
        self._lock.acquire()
        try:
            aio, sync = list(self._aio_watchers), list(self._sync_watchers)
        finally:
            self._lock.release()
        for loop, event in aio:
            # A closed loop's watcher is gone with it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        for flag in sync:
            flag.set()

    # -- grpc.aio -----------------------------------------------------------------

    def add_to_aio_server(self, server: grpc.aio.Server) -> None:
        """Serve ``grpc.health.v1.Health`` on a ``grpc.aio`` server."""
        pb = self._pb
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(HEALTH_SERVICE, {
            "Check": grpc.unary_unary_rpc_method_handler(
                self._aio_check, request_deserializer=pb.HealthCheckRequest.FromString,
                response_serializer=pb.HealthCheckResponse.SerializeToString),
            "Watch": grpc.unary_stream_rpc_method_handler(
                self._aio_watch, request_deserializer=pb.HealthCheckRequest.FromString,
                response_serializer=pb.HealthCheckResponse.SerializeToString),
        }),))

    async def _aio_check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
                         ) -> Any:
        status = await self.status(request.service)
        if status == self._pb.HealthCheckResponse.SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return self._pb.HealthCheckResponse(status=status)

    async def _aio_watch(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
                         ) -> AsyncIterator[Any]:
        event = asyncio.Event()
        watcher = (asyncio.get_running_loop(), event)
        self._lock.acquire()
        self._aio_watchers.add(watcher)
        self._lock.release()
        try:
            last = None
            while True:
                event.clear()
                status = await self.status(request.service)
                if status != last:
                    last = status
                    yield self._pb.HealthCheckResponse(status=status)
                # Woken by drain() at once, else re-read after the interval.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), self._interval)
        finally:
            self._lock.acquire()
            self._aio_watchers.discard(watcher)
            self._lock.release()

    # -- sync grpcio ----------------------------------------------------------------

    def add_to_server(self, server: grpc.Server) -> None:
        """Serve ``grpc.health.v1.Health`` on a sync ``grpc`` server.

        Each ``Watch`` holds one of the server's worker threads while it lasts
        (as every streaming call of a sync server does): size the executor for it.
        """
        pb = self._pb
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(HEALTH_SERVICE, {
            "Check": grpc.unary_unary_rpc_method_handler(
                self._check, request_deserializer=pb.HealthCheckRequest.FromString,
                response_serializer=pb.HealthCheckResponse.SerializeToString),
            "Watch": grpc.unary_stream_rpc_method_handler(
                self._watch, request_deserializer=pb.HealthCheckRequest.FromString,
                response_serializer=pb.HealthCheckResponse.SerializeToString),
        }),))

    def _run(self, service: str) -> int:
        """The status, computed on the private loop (the checks are coroutines)."""
        self._lock.acquire()
        try:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, daemon=True,
                                                name="fournines-grpc-health")
                self._thread.start()
        finally:
            self._lock.release()
        return asyncio.run_coroutine_threadsafe(self.status(service), loop).result()

    def _check(self, request: Any, context: grpc.ServicerContext) -> Any:
        status = self._run(request.service)
        if status == self._pb.HealthCheckResponse.SERVICE_UNKNOWN:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return self._pb.HealthCheckResponse(status=status)

    def _watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        flag = threading.Event()
        self._lock.acquire()
        self._sync_watchers.add(flag)
        self._lock.release()
        # A client that goes away ends the wait at once, not an interval later.
        context.add_callback(flag.set)
        try:
            last = None
            while context.is_active():
                flag.clear()
                status = self._run(request.service)
                if status != last:
                    last = status
                    yield self._pb.HealthCheckResponse(status=status)
                flag.wait(self._interval)
        finally:
            self._lock.acquire()
            self._sync_watchers.discard(flag)
            self._lock.release()

    def close(self) -> None:
        """Stop the private event loop thread of a sync server's checks, if started."""
        self._lock.acquire()
        try:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        finally:
            self._lock.release()
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def __repr__(self) -> str:
        return (f"HealthService(services={sorted(self._services)!r}, "
                f"phase={self.state.phase.value!r})")


def _shutdown(shutdown: GracefulShutdown | None) -> GracefulShutdown:
    if shutdown is None:
        return GracefulShutdown()
    if not isinstance(shutdown, GracefulShutdown):
        raise ConfigurationError(
            f"stop_gracefully.shutdown must be a GracefulShutdown, got {shutdown!r}")
    return shutdown


async def aio_stop_gracefully(
    server: grpc.aio.Server,
    health: HealthService,
    *,
    shutdown: GracefulShutdown | None = None,
    clock: Clock = system_clock,
) -> None:
    """Drain and stop a ``grpc.aio`` server: NOT_SERVING, ``drain_delay``, ``stop(grace)``.

    ``shutdown`` gives the timings (:class:`~fournines.asgi.GracefulShutdown`;
    its ``drain_timeout`` is the grace of ``server.stop``). Health's state is
    marked stopped at the end.
    """
    timing = _shutdown(shutdown)
    health.drain()
    if timing.drain_delay > 0:
        await clock.asleep(timing.drain_delay)
    await server.stop(timing.drain_timeout)
    health.state.mark_stopped()


def stop_gracefully(
    server: grpc.Server,
    health: HealthService,
    *,
    shutdown: GracefulShutdown | None = None,
    clock: Clock = system_clock,
) -> None:
    """The sync twin of :func:`aio_stop_gracefully` (blocks until the server has stopped)."""
    timing = _shutdown(shutdown)
    health.drain()
    if timing.drain_delay > 0:
        clock.sleep(timing.drain_delay)
    server.stop(timing.drain_timeout).wait()
    health.state.mark_stopped()
    health.close()
