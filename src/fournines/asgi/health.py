"""Health probes for Kubernetes and load balancers, as a plain ASGI middleware.

:class:`HealthMiddleware` answers four paths itself and passes every other
request (and every lifespan or websocket scope) to the app untouched:

========== ============================================================ ===========
path        meaning                                                      fails with
========== ============================================================ ===========
/livez      the process answers (its event loop runs); never looks at   never
            dependencies, so a database outage cannot restart the pods
/readyz     startup finished, not draining, and every critical check    503
            passes: should this process get new traffic?
/startupz   startup finished (``ServiceState.started``)                  503
/healthz    the whole picture: live, ready, phase and every check        503
========== ============================================================ ===========

Bodies are ``application/health+json`` as in the IETF draft "Health Check
Response Format for HTTP APIs" (draft-inadarei-api-health-check): a top-level
``status`` (``pass``, ``warn`` or ``fail``; ``fail`` is HTTP 503, the others
200) and a ``checks`` map from ``"name:measurement"`` to a list of results.

Checks run concurrently, each under its own timeout (a probe that never
returns is cancelled, and fails with ``"timeout"``), and their results are
cached for ``cache_ttl`` seconds so that probes from every kubelet and load
balancer cannot hammer a database; concurrent probes during a refresh share
that one refresh. Public output never contains exception text: the output is
a fixed word (``"timeout"``, ``"unreachable"``, ``"error"``) and the
exception is logged on the ``"fournines"`` logger when a check starts failing.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal

from .._clock import Clock, system_clock
from .._errors import ConfigurationError, check_number
from ._state import ServiceState
from ._types import ASGIApp, Receive, Scope, Send
from .checks import Check, CheckFailed

__all__ = [
    "DEFAULT_PATHS",
    "CheckResult",
    "Endpoint",
    "HealthMiddleware",
    "HealthStatus",
    "health_app",
]

_log = logging.getLogger("fournines")

Endpoint = Literal["live", "ready", "startup", "health"]

DEFAULT_PATHS: Mapping[str, str] = MappingProxyType({
    "live": "/livez",
    "ready": "/readyz",
    "startup": "/startupz",
    "health": "/healthz",
})
"""The probe paths by endpoint; override any of them with ``paths={"health": "/health"}``."""

_CONTENT_TYPE = b"application/health+json"


class HealthStatus(StrEnum):
    """A health status of the IETF draft; ``fail`` is served as HTTP 503."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


_SEVERITY = {HealthStatus.PASS: 0, HealthStatus.WARN: 1, HealthStatus.FAIL: 2}


def _worst(statuses: Sequence[HealthStatus]) -> HealthStatus:
    return max(statuses, key=_SEVERITY.__getitem__, default=HealthStatus.PASS)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one run of one check.

    ``status`` is ``pass``, or ``fail`` for a failing critical check and
    ``warn`` for a failing non-critical one. ``output`` is the public reason
    (``None`` when passing), ``time`` the wall-clock time of the outcome and
    ``duration`` the seconds the probe took.
    """

    check: Check
    status: HealthStatus
    output: str | None
    observed_value: object
    time: float
    duration: float

    def to_json(self) -> dict[str, object]:
        """The check's entry in the ``checks`` map of the response."""
        entry: dict[str, object] = {
            "componentType": self.check.component_type,
            "status": self.status.value,
            "time": _iso(self.time),
        }
        if isinstance(self.observed_value, int | float | str | bool):
            entry["observedValue"] = self.observed_value
            entry["observedUnit"] = self.check.observed_unit
        if self.output is not None:
            entry["output"] = self.output
        return entry


def _retrieve(task: asyncio.Future[object]) -> None:
    # A probe abandoned after its timeout may still finish with an error; fetch it
    # so asyncio does not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The app behind a standalone :func:`health_app`: 404, and a complete lifespan."""
    kind = scope["type"]
    if kind == "http":
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", b"9")]})
        await send({"type": "http.response.body", "body": b"not found"})
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif kind == "websocket":
        await send({"type": "websocket.close", "code": 1000})


class HealthMiddleware:
    """Answer the health probe paths; pass everything else to ``app``.

    :param app: the ASGI app to protect; ``None`` answers 404 for other paths
        (see :func:`health_app`).
    :param checks: the dependency checks, run by ``/readyz`` and ``/healthz``.
    :param state: the process's :class:`ServiceState`; readiness fails while it is
        starting, draining or stopped. ``None``: always started and ready.
    :param paths: overrides of :data:`DEFAULT_PATHS` by endpoint (``"live"``,
        ``"ready"``, ``"startup"``, ``"health"``); ``None`` as a value turns one off.
    :param cache_ttl: seconds the check results are reused for (0: refresh on
        every probe, still one refresh at a time).
    :param clock: the clock for the cache and the reported times.
    :param version: ``version`` in every response (e.g. the release).
    :param service_id: ``serviceId`` in every response (default: ``state.service``).
    :param description: ``description`` in every response.
    """

    __slots__ = ("_base", "_cached", "_checks", "_clock", "_expires", "_last",
                 "_refresh", "_routes", "_ttl", "app", "state")

    def __init__(
        self,
        app: ASGIApp | None = None,
        *,
        checks: Sequence[Check] = (),
        state: ServiceState | None = None,
        paths: Mapping[str, str | None] | None = None,
        cache_ttl: float = 1.0,
        clock: Clock = system_clock,
        version: str | None = None,
        service_id: str | None = None,
        description: str | None = None,
    ) -> None:
        check_number("HealthMiddleware", "cache_ttl", cache_ttl, minimum=0)
        checks = tuple(checks)
        keys: set[str] = set()
        for check in checks:
            if not isinstance(check, Check):
                raise ConfigurationError(
                    f"HealthMiddleware.checks must hold Check objects, got {check!r}")
            if check.key in keys:
                raise ConfigurationError(
                    f"HealthMiddleware.checks has two checks keyed {check.key!r}: rename one")
            keys.add(check.key)
        # Public, like ``state``: serve() and other tools find the state by
        # following ``.app`` through the middleware stack.
        self.app: ASGIApp = app if app is not None else _no_app
        self._checks = checks
        self.state = state
        self._ttl = float(cache_ttl)
        self._clock = clock
        self._routes = self._build_routes(paths)
        self._cached: tuple[CheckResult, ...] | None = None
        self._expires = 0.0
        self._refresh: asyncio.Task[tuple[CheckResult, ...]] | None = None
        self._last: dict[str, HealthStatus] = {}
        base: dict[str, str] = {}
        if service_id is None and state is not None:
            service_id = state.service
        for field, value in (("version", version), ("serviceId", service_id),
                             ("description", description)):
            if value is not None:
                if not isinstance(value, str):
                    raise ConfigurationError(
                        f"HealthMiddleware.{field} must be a string or None, got {value!r}")
                base[field] = value
        self._base = base

    @staticmethod
    def _build_routes(paths: Mapping[str, str | None] | None) -> dict[str, Endpoint]:
        merged: dict[str, str | None] = dict(DEFAULT_PATHS)
        for endpoint, path in (paths or {}).items():
            if endpoint not in DEFAULT_PATHS:
                raise ConfigurationError(
                    f"HealthMiddleware.paths has unknown endpoint {endpoint!r}; "
                    f"expected one of {sorted(DEFAULT_PATHS)}")
            if path is not None and (not isinstance(path, str) or not path.startswith("/")):
                raise ConfigurationError(
                    f"HealthMiddleware.paths[{endpoint!r}] must start with '/', got {path!r}")
            merged[endpoint] = path
        routes: dict[str, Endpoint] = {}
        for endpoint, path in merged.items():
            if path is None:
                continue
            if path in routes:
                raise ConfigurationError(
                    f"HealthMiddleware.paths: {path!r} is used by {routes[path]!r} "
                    f"and {endpoint!r}")
            routes[path] = endpoint  # type: ignore[assignment]  # keys checked above
        return routes

    @property
    def checks(self) -> tuple[Check, ...]:
        """The dependency checks, in the order given."""
        return self._checks

    @property
    def paths(self) -> Mapping[str, Endpoint]:
        """The probe paths answered here, mapped to their endpoint."""
        return MappingProxyType(self._routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a probe path, or pass the scope to the app."""
        # The one cost on every other request: a dict lookup (lifespan has no path).
        endpoint = self._routes.get(scope.get("path"))  # type: ignore[arg-type]
        if endpoint is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self._answer(endpoint, scope, send)

    async def _answer(self, endpoint: Endpoint, scope: Scope, send: Send) -> None:
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 405,
                        "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        status, payload = await self.report(endpoint)
        body = json.dumps(payload, separators=(",", ":")).encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", _CONTENT_TYPE),
                (b"content-length", str(len(body)).encode()),
                # Every probe must see the current state, never a proxy's copy.
                (b"cache-control", b"no-store"),
            ],
        })
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def report(self, endpoint: Endpoint) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON body of one endpoint, as the probe path answers."""
        state = self.state
        if endpoint == "live":
            return self._respond(HealthStatus.PASS)
        if endpoint == "startup":
            if state is None or state.started:
                return self._respond(HealthStatus.PASS)
            return self._respond(HealthStatus.FAIL, output=state.phase.value)
        accepting = state is None or state.ready
        if endpoint == "ready" and not accepting:
            # Starting or draining: say so without touching any dependency.
            assert state is not None
            return self._respond(HealthStatus.FAIL, output=state.phase.value)
        results = await self.results()
        status = _worst([r.status for r in results])
        output = None
        if not accepting:
            assert state is not None
            status, output = HealthStatus.FAIL, state.phase.value
        elif status is not HealthStatus.PASS:
            output = next(r.output for r in results if r.status is status)
        extra: dict[str, Any] = {}
        if endpoint == "health":
            extra = {"live": True, "ready": status is not HealthStatus.FAIL}
            if state is not None:
                extra["phase"] = state.phase.value
        return self._respond(status, output=output, results=results, extra=extra)

    def _respond(
        self,
        status: HealthStatus,
        *,
        output: str | None = None,
        results: Sequence[CheckResult] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        payload: dict[str, Any] = {"status": status.value}
        if "version" in self._base:
            payload["version"] = self._base["version"]
        if output is not None:
            payload["output"] = output
        for field in ("serviceId", "description"):
            if field in self._base:
                payload[field] = self._base[field]
        if extra:
            payload.update(extra)
        if results:
            payload["checks"] = {r.check.key: [r.to_json()] for r in results}
        return (503 if status is HealthStatus.FAIL else 200), payload

    async def results(self) -> tuple[CheckResult, ...]:
        """The check results: cached for ``cache_ttl`` seconds, refreshed by one task at a time."""
        if not self._checks:
            return ()
        cached = self._cached
        if cached is not None and self._clock.monotonic() < self._expires:
            return cached
        loop = asyncio.get_running_loop()
        task = self._refresh
        if task is None or task.get_loop() is not loop:
            # A fresh context: the refresh is shared, so it must not inherit one
            # request's deadline or other context variables.
            task = loop.create_task(self._refresh_all(), context=contextvars.Context())
            self._refresh = task
        # Shielded: a probe whose client hangs up must not cancel everyone's refresh.
        return await asyncio.shield(task)

    async def _refresh_all(self) -> tuple[CheckResult, ...]:
        try:
            results = tuple(await asyncio.gather(*(self._run(c) for c in self._checks)))
            self._cached = results
            self._expires = self._clock.monotonic() + self._ttl
            return results
        finally:
            if self._refresh is asyncio.current_task():
                self._refresh = None

    async def _run(self, check: Check) -> CheckResult:
        clock = self._clock
        started = clock.monotonic()
        value: object = None
        error: BaseException | None = None
        try:
            task: asyncio.Future[object] = asyncio.ensure_future(check.probe())
        except Exception as exc:  # the probe is not a coroutine function after all
            output: str | None = "error"
            error = exc
        else:
            try:
                done, _ = await asyncio.wait((task,), timeout=check.timeout)
            except asyncio.CancelledError:
                task.cancel()
                raise
            if not done:
                # Cancel and walk away: a probe that ignores cancellation must not
                # hold up the response.
                task.cancel()
                task.add_done_callback(_retrieve)
                output = "timeout"
            elif task.cancelled():
                output = "error"
            else:
                error = task.exception()
                output = _output_of(error)
                if error is None:
                    value = task.result()
                elif isinstance(error, CheckFailed):
                    value = error.observed_value
        duration = max(0.0, clock.monotonic() - started)
        if check.measurement == "responseTime":
            value = round(duration * 1000, 3)
        if output is None:
            status = HealthStatus.PASS
        else:
            status = HealthStatus.FAIL if check.critical else HealthStatus.WARN
        self._log_change(check, status, output, error)
        return CheckResult(check, status, output, value, clock.time(), duration)

    def _log_change(self, check: Check, status: HealthStatus, output: str | None,
                    error: BaseException | None) -> None:
        # Log transitions, not every refresh: a dependency that stays down for an
        # hour must not write one traceback per second.
        previous = self._last.get(check.key)
        self._last[check.key] = status
        if status is HealthStatus.PASS:
            if previous not in (None, HealthStatus.PASS):
                _log.info("health check %s recovered", check.key)
        elif previous in (None, HealthStatus.PASS):
            _log.warning("health check %s failed (%s)", check.key, output,
                         exc_info=error if isinstance(error, Exception) else None)
        else:
            _log.debug("health check %s still failing (%s)", check.key, output)

    def __repr__(self) -> str:
        return (f"HealthMiddleware(checks={[c.key for c in self._checks]!r}, "
                f"paths={sorted(self._routes)!r}, cache_ttl={self._ttl!r})")


def _output_of(error: BaseException | None) -> str | None:
    """The public word for an error: never its text, which may hold secrets."""
    if error is None:
        return None
    if isinstance(error, CheckFailed):
        return error.output
    if isinstance(error, TimeoutError):  # before OSError: TimeoutError is one
        return "timeout"
    if isinstance(error, OSError):
        return "unreachable"
    return "error"


def health_app(
    *,
    checks: Sequence[Check] = (),
    state: ServiceState | None = None,
    paths: Mapping[str, str | None] | None = None,
    cache_ttl: float = 1.0,
    clock: Clock = system_clock,
    version: str | None = None,
    service_id: str | None = None,
    description: str | None = None,
) -> HealthMiddleware:
    """A standalone health app (e.g. on a separate port): the probes, 404 for the rest."""
    return HealthMiddleware(None, checks=checks, state=state, paths=paths,
                            cache_ttl=cache_ttl, clock=clock, version=version,
                            service_id=service_id, description=description)
