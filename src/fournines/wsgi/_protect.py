"""``protect_wsgi(app)``: a fournines service's protection for any PEP 3333 app.

Every decision is one the ASGI edge already makes, reused through its public
pieces: the shedder's admission and queueing-delay rule
(:class:`fournines.asgi.LoadShedder`, used sans-I/O under a lock, as threads
share it), the health registry (:class:`fournines.asgi.HealthMiddleware`'s
``report``), the metric names and labels (:mod:`fournines.asgi.metrics`), the
deadline headers (:mod:`fournines._propagation`) and the rate-limit rules
(:class:`fournines.asgi.RateLimitRule`). In request order:

1. lifecycle: the first request marks the process ready (the gunicorn hooks do
   it on worker start), ``state.in_flight`` counts every request;
2. health probes (``/livez``, ``/readyz``, ``/startupz``, ``/healthz``) and
   ``/metrics`` are answered here, never shed, never counted;
3. shedding: 503 + ``Retry-After`` before the view runs, when the requests in
   the view reach the concurrency limit, or when the request waited too long for
   a thread (CoDel on the queueing delay: the time from its arrival at the worker
   to its view's start; see :meth:`~fournines.asgi.LoadShedder.late`);
4. golden metrics around everything below, 429 and 504 included;
5. the deadline: the caller's budget (``x-request-timeout-ms`` or
   ``grpc-timeout``), counted from the request's arrival, becomes the contextvar
   deadline of the view (:func:`fournines.current_deadline`); a request whose
   budget is spent when its view would start is answered 504, not run;
6. rate limits: 429 with the IETF RateLimit headers;
7. the app.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeAlias

from .._clock import Clock, system_clock
from .._deadline import push_deadline, reset_deadline
from .._errors import ConfigurationError, LoadShedError, RateLimitedError, check_number
from .._events import DeadlineExceeded, MalformedHeader, dispatch, global_listeners
from .._http import (
    EXPIRED_PROBLEM,
    OTHER_METHOD,
    PROBLEM_CONTENT_TYPE,
    SHED_PROBLEM,
    method_label,
)
from .._http_limits import KEYED, SHARED, CompiledRule, RateLimitRule, refusal_headers
from .._propagation import (
    NO_RETRY_HEADER,
    begin_pushback,
    end_pushback,
    parse_grpc_timeout,
    parse_timeout_ms,
)
from ..asgi import Check, GracefulShutdown, HealthMiddleware, LoadShedder, Phase, ServiceState
from ..asgi.metrics import DEFAULT_BUCKETS
from ..asgi.routes import UNMATCHED
from ..asgi.shedding import DEFAULT_NEVER_SHED_PATHS
from ..policies.adaptive import ConcurrencyLimit
from ..policies.rate_limit import RateLimiter
from . import _loop
from ._arrival import ARRIVAL_KEY, take_arrival

__all__ = ["ROUTE_KEY", "ProtectedWSGI", "StartResponse", "WSGIApp", "protect_wsgi",
           "protected_apps"]

StartResponse: TypeAlias = Callable[..., Callable[[bytes], object]]
"""PEP 3333's ``start_response(status, headers, exc_info=None)``."""

WSGIApp: TypeAlias = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
"""A PEP 3333 application."""

ROUTE_KEY = "fournines.route"
"""The environ key where a framework adapter puts the route template of the request
(the Django middleware and the Flask extension do); the ``route`` label reads it."""


class RouteOf(Protocol):
    """``route_of(environ) -> str``: the ``route`` label of a request, after it ran."""

    def __call__(self, environ: dict[str, Any], /) -> str: ...


_HEALTH_CONTENT_TYPE = "application/health+json"
_PROBLEM = PROBLEM_CONTENT_TYPE.decode("latin-1")
_NO_RETRY = (NO_RETRY_HEADER, "1")
_READY = Phase.READY
_STARTING = Phase.STARTING

# Every ProtectedWSGI of this process, for the gunicorn hooks (which see the worker,
# not the app inside Django or Flask).
_apps: weakref.WeakSet[ProtectedWSGI] = weakref.WeakSet()


def protected_apps() -> tuple[ProtectedWSGI, ...]:
    """Every :class:`ProtectedWSGI` alive in this process (the gunicorn hooks drive them)."""
    return tuple(_apps)


def route_of_environ(environ: dict[str, Any]) -> str:
    """The default ``route`` label of a request.

    What an adapter put at :data:`ROUTE_KEY`, else Flask's (Werkzeug's) url rule,
    else ``"<unmatched>"``.
    """
    route = environ.get(ROUTE_KEY)
    if route is not None:
        return str(route)
    request = environ.get("werkzeug.request")
    rule = getattr(request, "url_rule", None)
    if rule is not None:
        return str(rule.rule)
    return UNMATCHED


class _ScopeView(dict[str, Any]):
    """The few ASGI scope keys the shared decisions read, built from an environ on demand.

    The shedder looks at ``path`` and ``headers`` only for a request at its limit, and
    rate-limit key functions get this view as their scope: the headers list is built
    only when something asks for it.
    """

    __slots__ = ("environ",)

    def __init__(self, environ: dict[str, Any]) -> None:
        super().__init__(path=environ.get("PATH_INFO") or "/",
                         method=environ.get("REQUEST_METHOD", "GET"))
        self.environ = environ

    def __missing__(self, key: str) -> Any:
        environ = self.environ
        value: Any
        if key == "headers":
            value = [(name[5:].replace("_", "-").lower().encode("latin-1"),
                      str(raw).encode("latin-1"))
                     for name, raw in environ.items() if name.startswith("HTTP_")]
            for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                if environ.get(name):
                    value.append((name.replace("_", "-").lower().encode("latin-1"),
                                  str(environ[name]).encode("latin-1")))
        elif key == "client":
            address = environ.get("REMOTE_ADDR")
            value = (address, int(environ.get("REMOTE_PORT") or 0)) if address else None
        elif key == "query_string":
            value = str(environ.get("QUERY_STRING", "")).encode("latin-1")
        elif key == "type":
            value = "http"
        else:
            raise KeyError(key)
        self[key] = value
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """As for a dict, but computing the lazy keys (``dict.get`` skips ``__missing__``)."""
        try:
            return self[key]
        except KeyError:
            return default


class _Finish:
    """The body of an admitted request: ends its metrics, permit and deadline on close."""

    __slots__ = ("_body", "_done", "_downstream", "_owner", "_permit", "_start", "_tokens",
                 "environ", "status")

    def __init__(self, owner: ProtectedWSGI, environ: dict[str, Any], start: float,
                 permit: int | None, tokens: tuple[Any, Any],
                 start_response: StartResponse) -> None:
        self._owner = owner
        self._downstream = start_response
        self._done = False
        self.environ = environ
        self._start = start
        self._permit = permit
        self._tokens = tokens
        self._body: Iterable[bytes] = ()
        self.status = 500  # what the server answers when the app raises before responding

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: tuple[type[BaseException], BaseException, TracebackType]
                       | None = None) -> Callable[[bytes], object]:
        owner = self._owner
        self.status = code = int(status[:3])
        if code >= 500 and self._tokens[1] is not None and self._tokens[1][0].exhausted:
            # Our outgoing call already retried and gave up: the caller must not retry
            # this answer too (retry at one layer only).
            headers = [*headers, _NO_RETRY]
        extra = owner._extra_headers
        if extra:
            headers = [*headers, *extra]
        return self._downstream(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        # One chunk of look-ahead: the request is finished (counted, its permit
        # released) before its last chunk goes out, so a client that has its whole
        # answer never sees it missing from the metrics, and a server (a test
        # client, say) that closes the body late does not delay it.
        chunks = iter(self._body)
        try:
            last = next(chunks)
        except StopIteration:
            self.finish(dropped=False)
            return
        for chunk in chunks:
            yield last
            last = chunk
        self.finish(dropped=False)
        yield last

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self.finish(dropped=False)

    def finish(self, *, dropped: bool | None) -> None:
        """End the request's bookkeeping (once)."""
        if self._done:
            return
        self._done = True
        owner = self._owner
        duration = owner._now() - self._start
        tokens, self._tokens = self._tokens, (None, None)
        deadline_token, pushback = tokens
        if deadline_token is not None:
            # ValueError: closed in another context than the one it was set in.
            with contextlib.suppress(ValueError):
                reset_deadline(deadline_token)
        if pushback is not None:
            with contextlib.suppress(ValueError):
                end_pushback(pushback[1])
        permit, self._permit = self._permit, None
        with owner._lock:
            owner.state.in_flight -= 1
            if permit is not None:
                shedder = owner.shedder
                assert shedder is not None
                shedder.release(permit, duration, dropped=dropped)
        metrics = owner.metrics
        if metrics is not None:
            metrics.ended()
            try:
                route = owner._route_of(self.environ)
            except Exception:
                route = UNMATCHED
            method = self.environ.get("REQUEST_METHOD", "GET")
            metrics.observe((method_label(method, OTHER_METHOD), route, self.status), duration)


class ProtectedWSGI:
    """The WSGI app :func:`protect_wsgi` returns; its parts are attributes.

    ``app`` is the wrapped app, ``state`` the process's
    :class:`~fournines.asgi.ServiceState`, ``health`` the probe registry (a
    :class:`~fournines.asgi.HealthMiddleware` used for its ``report``),
    ``shedder`` the :class:`~fournines.asgi.LoadShedder` whose decisions it uses
    (``None`` without shedding), ``metrics`` the recorder (``None`` without
    metrics), ``shutdown`` the drain timing the gunicorn hooks apply. Counters:
    :attr:`expired` (504s), :attr:`malformed` (deadline headers ignored),
    :attr:`limited` (429s).
    """

    def __init__(self, app: WSGIApp, *, state: ServiceState, health: HealthMiddleware,
                 shedder: LoadShedder | None, metrics: Any, rules: Sequence[CompiledRule],
                 max_timeout: float | None, default_timeout: float | None,
                 request_start_header: str | None, route_of: RouteOf,
                 instance_header: bool, shutdown: GracefulShutdown, clock: Clock,
                 metrics_path: str = "/metrics") -> None:
        self.app = app
        self.state = state
        self.health = health
        self.shedder = shedder
        self.metrics = metrics
        self.shutdown = shutdown
        self.rules = tuple(rules)
        self._clock = clock
        self._now = clock.monotonic
        self._lock = threading.Lock()
        self._route_of = route_of
        self._probes = dict(health.paths)
        self._metrics_path = metrics_path if metrics is not None else None
        self._max = math.inf if max_timeout is None else float(max_timeout)
        self._default = default_timeout
        self._request_start = (None if request_start_header is None else
                               "HTTP_" + request_start_header.upper().replace("-", "_"))
        self._extra_headers: tuple[tuple[str, str], ...] = (
            (("x-instance-id", state.instance),) if instance_header else ())
        self._shed_headers = [("content-type", _PROBLEM),
                              ("content-length", str(len(SHED_PROBLEM))),
                              *(() if shedder is None else
                                (("retry-after", str(math.ceil(shedder.retry_after))),))]
        self._exempt = frozenset(DEFAULT_NEVER_SHED_PATHS)
        self.expired = 0
        """Requests answered 504 because their budget was spent before their view started."""
        self.malformed = 0
        """Deadline headers ignored because their value was malformed."""
        self.limited = 0
        """Requests refused with 429."""
        _apps.add(self)

    # -- the request path ------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request (see the module docstring for the order)."""
        now = self._now()
        arrival = environ.get(ARRIVAL_KEY)
        if arrival is None:
            arrival = take_arrival()
            if arrival is None and self._request_start is not None:
                arrival = self._proxy_arrival(environ, now)
        state = self.state
        if state.phase is not _READY and state.phase is _STARTING:
            state.mark_ready()  # no lifespan in WSGI: serving a request means started
        return self._serve(environ, start_response, now, arrival)

    def _serve(self, environ: dict[str, Any], start_response: StartResponse, now: float,
               arrival: float | None) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        endpoint = self._probes.get(path)
        if endpoint is not None:
            return self._probe(endpoint, environ, start_response)
        if path == self._metrics_path:
            return self._scrape(environ, start_response)
        permit = None
        scope = _ScopeView(environ)
        shedder = self.shedder
        if shedder is not None:
            with self._lock:
                try:
                    permit = shedder.try_acquire(scope)
                except LoadShedError:
                    return self._shed(start_response)
                if arrival is not None and shedder.late(now - arrival, scope):
                    shedder.release(permit, 0.0, dropped=None)
                    return self._shed(start_response)
                # The shed events batched since the last admission (a no-op when none).
                shedder.report()
        metrics = self.metrics
        if metrics is not None:
            metrics.started()
        with self._lock:
            # Until its body is done (``_Finish.finish``): the drain waits on this count.
            self.state.in_flight += 1
        marker = begin_pushback()
        finish = _Finish(self, environ, now, permit, (None, marker), start_response)
        try:
            seconds = self._budget(environ)
            if seconds is not None:
                if arrival is not None and arrival < now:
                    seconds -= now - arrival  # the budget runs from the arrival
                deadline, token = push_deadline(seconds, self._clock)
                finish._tokens = (token, marker)
                if deadline.at <= self._now():
                    body = self._expired(finish, seconds)
                    finish.finish(dropped=None)
                    return body
            if self.rules:
                refused = self._limit(scope, finish)
                if refused is not None:
                    finish.finish(dropped=None)
                    return refused
            finish._body = self.app(environ, finish.start_response)
        except TimeoutError:
            finish.finish(dropped=True)
            raise
        except BaseException:
            finish.finish(dropped=None)
            raise
        return finish

    # -- early answers -----------------------------------------------------------------

    def _respond(self, start_response: StartResponse, status: str, body: bytes,
                 headers: list[tuple[str, str]]) -> list[bytes]:
        extra = self._extra_headers
        start_response(status, [*headers, *extra] if extra else headers)
        return [body]

    def _shed(self, start_response: StartResponse) -> list[bytes]:
        return self._respond(start_response, "503 Service Unavailable", SHED_PROBLEM,
                             self._shed_headers)

    def _expired(self, finish: _Finish, seconds: float) -> list[bytes]:
        with self._lock:
            self.expired += 1
        if global_listeners():
            dispatch((), DeadlineExceeded(policy="deadline", name="deadline", timeout=seconds))
        finish.start_response("504 Gateway Timeout",
                              [("content-type", _PROBLEM),
                               ("content-length", str(len(EXPIRED_PROBLEM)))])
        return [EXPIRED_PROBLEM]

    def _budget(self, environ: dict[str, Any]) -> float | None:
        """The caller's budget in seconds (capped), the default, or ``None``."""
        seconds = None
        raw = environ.get("HTTP_X_REQUEST_TIMEOUT_MS")
        if raw is not None:
            seconds = parse_timeout_ms(raw)
            if seconds is None:
                self._malformed("x-request-timeout-ms")
        if seconds is None:
            raw = environ.get("HTTP_GRPC_TIMEOUT")
            if raw is not None:
                seconds = parse_grpc_timeout(raw)
                if seconds is None:
                    self._malformed("grpc-timeout")
        if seconds is None:
            return self._default
        return seconds if seconds <= self._max else self._max

    def _malformed(self, header: str) -> None:
        with self._lock:
            self.malformed += 1
        if global_listeners():
            dispatch((), MalformedHeader(policy="deadline", name="deadline", header=header))

    def _proxy_arrival(self, environ: dict[str, Any], now: float) -> float | None:
        """The arrival a proxy stamped (``t=<epoch seconds, ms or µs>``), on our clock."""
        assert self._request_start is not None
        raw = environ.get(self._request_start)
        if not raw:
            return None
        text = str(raw).strip().removeprefix("t=")
        try:
            stamp = float(text)
        except ValueError:
            return None
        if not math.isfinite(stamp) or stamp <= 0:
            return None
        # nginx sends seconds with a fraction, Heroku milliseconds, others microseconds.
        if stamp > 1e14:
            stamp /= 1e6
        elif stamp > 1e11:
            stamp /= 1e3
        waited = self._clock.time() - stamp
        return now - waited if waited > 0 else now

    def _limit(self, scope: _ScopeView, finish: _Finish) -> list[bytes] | None:
        path: str = scope["path"]
        for rule in self.rules:
            if not path.startswith(rule.prefix) or path in self._exempt:
                continue
            if rule.regex is not None and rule.regex.match(path) is None:
                continue
            if rule.methods is not None and scope["method"] not in rule.methods:
                continue
            key = rule.key_of(scope)
            if key is None:
                continue
            try:
                if rule.kind == KEYED:
                    rule.target.limiter(key).try_acquire(rule.cost)
                elif rule.kind == SHARED:
                    rule.target.try_acquire(rule.cost)
                else:
                    if isinstance(key, bytes):
                        key = key.decode("latin-1")
                    rule.target.try_acquire(rule.cost, key=f"{rule.name}:{key}")
            except RateLimitedError as exc:
                with self._lock:
                    self.limited += 1
                headers = [("content-type", _PROBLEM),
                           ("content-length", str(len(rule.problem))),
                           *((n.decode("latin-1"), v.decode("latin-1"))
                             for n, v in refusal_headers(rule, exc.retry_after))]
                finish.start_response("429 Too Many Requests", headers)
                return [rule.problem]
        return None

    def _probe(self, endpoint: Any, environ: dict[str, Any],
               start_response: StartResponse) -> list[bytes]:
        import json  # noqa: PLC0415 - probes only

        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return self._respond(start_response, "405 Method Not Allowed", b"",
                                 [("allow", "GET, HEAD"), ("content-length", "0")])
        timeout = max((c.timeout for c in self.health.checks), default=0.0) + 1.0
        status, payload = _loop.run(self.health.report(endpoint), timeout)
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = [("content-type", _HEALTH_CONTENT_TYPE), ("content-length", str(len(body))),
                   ("cache-control", "no-store")]
        reason = "200 OK" if status == 200 else "503 Service Unavailable"
        return self._respond(start_response, reason, b"" if method == "HEAD" else body, headers)

    def _scrape(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return self._respond(start_response, "405 Method Not Allowed",
                                 b"Method Not Allowed",
                                 [("allow", "GET, HEAD"), ("content-length", "18")])
        body, content_type = self.metrics.exposition(environ.get("HTTP_ACCEPT", ""))
        return self._respond(start_response, "200 OK", body,
                             [("content-type", content_type), ("content-length", str(len(body)))])

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop counting policy events into the registry (tests; a worker's exit)."""
        if self.metrics is not None:
            self.metrics.close()
        _apps.discard(self)

    def __repr__(self) -> str:
        return (f"ProtectedWSGI(app={self.app!r}, state={self.state!r}, "
                f"shedder={self.shedder!r})")


def protect_wsgi(
    app: WSGIApp,
    *,
    service: str = "service",
    version: str | None = None,
    state: ServiceState | None = None,
    checks: Sequence[Check] = (),
    health_cache_ttl: float = 1.0,
    health_paths: Mapping[str, str | None] | None = None,
    metrics: bool = True,
    registry: Any = None,
    multiprocess: bool | None = None,
    resilience_events: bool = True,
    route_of: RouteOf | None = None,
    max_timeout: float | None = 30.0,
    default_timeout: float | None = None,
    shedding: bool = True,
    concurrency_limit: ConcurrencyLimit | None = None,
    queue_target: float | None = 0.005,
    queue_interval: float = 0.1,
    critical_paths: Sequence[str] = (),
    retry_after: float = 1.0,
    request_start_header: str | None = None,
    rate_limit: Callable[[], RateLimiter] | Sequence[RateLimitRule] | None = None,
    rate_limit_key: str = "ip",
    instance_header: bool = True,
    shutdown: GracefulShutdown | None = None,
    clock: Clock = system_clock,
) -> ProtectedWSGI:
    """Wrap a PEP 3333 ``app`` in fournines' service protection (see the module docstring).

    The options mean what they mean for :func:`fournines.asgi.protect`; those
    that differ:

    :param registry: the ``prometheus_client`` registry (default: the global one;
        in multi-process mode a new one that merges every worker's files).
    :param multiprocess: prometheus_client's multi-process mode (``None``: when
        ``PROMETHEUS_MULTIPROC_DIR`` is set, as it must be for gunicorn with
        several workers).
    :param route_of: ``route_of(environ) -> str``, the ``route`` label; by default
        the template an adapter put at :data:`ROUTE_KEY` (Django's
        ``resolver_match.route``, Flask's url rule), Werkzeug's url rule, else
        ``"<unmatched>"``.
    :param concurrency_limit: the limit on requests in views per process
        (:mod:`fournines.policies.adaptive`; ``FixedLimit(n)`` for a fixed one;
        Gradient2 by default).
    :param queue_target, queue_interval: CoDel on the queueing delay (the time from
        the request's arrival at the worker to its view's start; known under
        :class:`fournines.wsgi.gunicorn.ThreadWorker`, or from
        ``request_start_header``); ``queue_target=None`` turns it off.
    :param request_start_header: a header a trusted proxy stamps with the request's
        arrival (``X-Request-Start: t=<epoch seconds, ms or µs>``, as nginx or
        Heroku send it): the queueing delay of workers whose queue is the kernel's
        (gunicorn's sync worker). Clients must not be able to set it.
    :param shutdown: the drain timing the gunicorn hooks apply on SIGTERM
        (default ``GracefulShutdown()``).
    :param clock: measures durations, queueing delays and deadlines.
    :returns: a :class:`ProtectedWSGI`.
    """
    state = state if state is not None else ServiceState(service=service)
    if not isinstance(state, ServiceState):
        raise ConfigurationError(f"protect_wsgi.state must be a ServiceState, got {state!r}")
    if not callable(app):
        raise ConfigurationError(f"protect_wsgi.app must be a WSGI callable, got {app!r}")
    check_number("protect_wsgi", "max_timeout", max_timeout, minimum=0, exclusive_minimum=True,
                 optional=True)
    check_number("protect_wsgi", "default_timeout", default_timeout, minimum=0,
                 exclusive_minimum=True, optional=True)
    if default_timeout is not None and max_timeout is not None:
        default_timeout = min(default_timeout, max_timeout)
    if request_start_header is not None and (
            not isinstance(request_start_header, str) or not request_start_header.strip()):
        raise ConfigurationError("protect_wsgi.request_start_header must be a header name or "
                                 f"None, got {request_start_header!r}")
    if shutdown is None:
        shutdown = GracefulShutdown()
    elif not isinstance(shutdown, GracefulShutdown):
        raise ConfigurationError(
            f"protect_wsgi.shutdown must be a GracefulShutdown, got {shutdown!r}")
    if not shedding:
        for name, value, given in (
            ("concurrency_limit", concurrency_limit, concurrency_limit is not None),
            ("critical_paths", critical_paths, bool(critical_paths)),
        ):
            if given:
                raise ConfigurationError(
                    f"protect_wsgi.{name} {value!r} has no effect with shedding=False")
    if not metrics and registry is not None:
        raise ConfigurationError(f"protect_wsgi.registry {registry!r} has no effect with "
                                 "metrics=False")
    rules = _rules(rate_limit, rate_limit_key)
    health = HealthMiddleware(None, checks=checks, state=state, paths=health_paths,
                              cache_ttl=health_cache_ttl, clock=clock, version=version,
                              service_id=service)
    shedder = None
    if shedding:
        # Used for its decisions only (try_acquire, late, release): no event loop, so
        # no loop-lag signal and no body timing; the queueing delay is the signal.
        shedder = LoadShedder(_never_called, limit=concurrency_limit, max_loop_lag=None,
                              queue_target=queue_target, queue_interval=queue_interval,
                              body_timeout=None, critical_paths=critical_paths,
                              retry_after=retry_after, clock=clock)
    recorder = None
    if metrics:
        from ._metrics import WsgiMetrics  # noqa: PLC0415 - needs prometheus_client

        recorder = WsgiMetrics(registry=registry, buckets=DEFAULT_BUCKETS,
                               multiprocess=multiprocess, resilience_events=resilience_events)
    return ProtectedWSGI(app, state=state, health=health, shedder=shedder, metrics=recorder,
                         rules=rules, max_timeout=max_timeout, default_timeout=default_timeout,
                         request_start_header=request_start_header,
                         route_of=route_of if route_of is not None else route_of_environ,
                         instance_header=instance_header, shutdown=shutdown, clock=clock)


async def _never_called(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    raise RuntimeError("the WSGI edge uses the LoadShedder's decisions only")


def _rules(rate_limit: object, rate_limit_key: str) -> list[CompiledRule]:
    if rate_limit is None:
        if rate_limit_key != "ip":
            raise ConfigurationError(
                f"protect_wsgi.rate_limit_key {rate_limit_key!r} needs a rate limit: pass "
                "rate_limit=lambda: TokenBucket(...) too, or leave rate_limit_key out")
        return []
    if callable(rate_limit):
        if not (isinstance(rate_limit_key, str) and (
                rate_limit_key in ("ip", "global")
                or (rate_limit_key.startswith("header:") and len(rate_limit_key) > 7))):
            raise ConfigurationError(
                "protect_wsgi.rate_limit_key must be 'ip', 'header:<name>' or 'global', "
                f"got {rate_limit_key!r}")
        specs = [RateLimitRule(name="default", limiter=rate_limit, key=rate_limit_key)]
    elif isinstance(rate_limit, Sequence) and all(isinstance(r, RateLimitRule)
                                                  for r in rate_limit):
        if rate_limit_key != "ip":
            raise ConfigurationError(
                f"protect_wsgi.rate_limit_key {rate_limit_key!r} applies only to a limiter "
                "factory: with a list of RateLimitRule, each rule's key= says how to key it")
        specs = list(rate_limit)
    else:
        raise ConfigurationError(
            "protect_wsgi.rate_limit must be a limiter factory or a list of RateLimitRule, "
            f"got {rate_limit!r}")
    names = [rule.name for rule in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigurationError(f"protect_wsgi.rate_limit has duplicate names: {duplicates}")
    return [CompiledRule(rule, asynchronous=False) for rule in specs]

