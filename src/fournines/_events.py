"""Events: one frozen record per decision that matters, sent to listeners.

A listener is any callable taking one :class:`Event`. Policies send events to
their own ``listeners=`` and to the process-wide ones added with
:func:`add_listener` (how the Prometheus and logging listeners see every
policy without being passed around). A listener that raises is logged and
never breaks the call it observes.

Events are only built when someone listens, so an unobserved policy pays
nothing for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "BudgetExhausted",
    "CallRejected",
    "ClientRequestFinished",
    "ClientRequestStarted",
    "ConfigApplied",
    "ConfigChanged",
    "ConfigRejected",
    "DeadlineExceeded",
    "DiscoveryInterrupted",
    "DiscoveryResumed",
    "EndpointEjected",
    "EndpointsChanged",
    "Event",
    "FallbackUsed",
    "FaultInjected",
    "HostEvicted",
    "KeysEvicted",
    "Listener",
    "LoopLagUnrelieved",
    "MalformedHeader",
    "RegistrationChanged",
    "RetriesExhausted",
    "RetryScheduled",
    "StateChanged",
    "SupervisorUpgraded",
    "WorkerExited",
    "WorkersReloaded",
    "add_listener",
    "remove_listener",
]

_log = logging.getLogger("fournines")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: which kind of policy (``policy``) and which one (``name``)."""

    policy: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChanged(Event):
    """A circuit breaker moved from ``old`` to ``new`` (state names as strings)."""

    old: str
    new: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRejected(Event):
    """A policy refused a call; ``reason`` is e.g. ``"open"``, ``"rate_limited"``.

    ``count`` is how many refusals the event stands for: 1, except where a policy
    refuses so often that it reports in batches (the load shedder sends at most one
    event per reason every 0.1 s, with the refusals since the last one).
    """

    reason: str
    retry_after: float | None = None
    count: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    """Attempt ``attempt`` failed; the next one starts after ``delay`` seconds."""

    attempt: int
    delay: float
    error: BaseException | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetriesExhausted(Event):
    """Retrying stopped after ``attempts``; ``reason`` says why.

    Reasons: ``"attempts"`` (the limit), ``"timeout"`` (the retry's own time
    limit), ``"deadline"`` (the next wait would pass the current deadline),
    ``"budget"`` (the retry budget is empty), ``"retry_after"`` (the failure's
    ``retry_after`` hint is longer than the retry may wait), and for transaction
    retry (``policy="transaction"``) ``"outcome_unknown"`` (the connection was lost
    during COMMIT of work not marked idempotent).
    """

    attempts: int
    reason: str
    error: BaseException | None


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetExhausted(Event):
    """A retry budget refused a retry (``name`` is the budget's name)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsed(Event):
    """A fallback answered instead of the call; ``stale_age`` is set for cached answers."""

    error: BaseException
    stale_age: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadlineExceeded(Event):
    """A call hit its deadline (``timeout`` is the budget it had, in seconds)."""

    timeout: float


@dataclass(frozen=True, slots=True, kw_only=True)
class MalformedHeader(Event):
    """A request header ``header`` (its name) had a malformed value and was ignored.

    The ASGI deadline middleware sends it for ``x-request-timeout-ms`` and
    ``grpc-timeout``; the raw value is not in the event (it is the caller's text:
    unbounded, and not for labels).
    """

    header: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopLagUnrelieved(Event):
    """The event loop lagged ``lag`` seconds while only ``in_flight`` requests ran.

    The ASGI load shedder sends it for each lag measurement above its
    ``max_loop_lag`` taken below its ``lag_floor``: lag it does not shed for,
    since the service is not what causes it (a busy host, other processes).
    """

    lag: float
    in_flight: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultInjected(Event):
    """A chaos fault fired: ``kind`` is ``"latency"``, ``"error"`` or ``"crash"``.

    ``delay`` is the injected latency in seconds (latency faults only); ``route``
    is the request path when the fault fired inside an ASGI request.
    """

    kind: str
    delay: float | None = None
    route: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointEjected(Event):
    """``endpoint`` was ejected for ``duration`` seconds, its ``times``-th time in a row."""

    endpoint: str
    duration: float
    times: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRequestStarted(Event):
    """An outgoing HTTP request to host ``name`` (an origin) started."""

    method: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRequestFinished(Event):
    """An outgoing HTTP request to host ``name`` ended after ``duration`` seconds.

    ``status_code`` is ``None`` when it ended with an error (``error_type``, the
    exception's class name). Retries and hedges are inside one request.
    """

    method: str
    status_code: int | None
    duration: float
    error_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HostEvicted(Event):
    """A client transport had no room to keep the policies of one more host.

    ``kind`` ``"evicted"``: the policies of host ``name`` (idle, breaker closed) were
    dropped for a new host's. ``"overflow"``: every kept host looked at was busy or
    open, so a request to host ``name`` used the shared ``_other`` policies. Either,
    often, means ``max_hosts`` is too small for the hosts in use (or ``host_key``
    should group them).
    """

    kind: str


@dataclass(frozen=True, slots=True, kw_only=True)
class KeysEvicted(Event):
    """A ``KeyedLimiter`` (``name``) forgot ``count`` keys, or refused a new one.

    ``kind`` ``"idle"``: keys untouched for ``capacity / rate`` seconds (full
    buckets, so forgetting them changes no decision). ``"pressure"``: at
    ``max_keys``, a full bucket was dropped early to make room. ``"refused"``: at
    ``max_keys`` with no full bucket found, a call for a new key was refused as
    rate limited (active keys are never dropped). Many ``"refused"`` mean a
    flood of new keys, or a ``max_keys`` too small for the keys in use.
    """

    kind: str
    count: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrationChanged(Event):
    """A service registry's hold on instance ``instance`` of service ``name`` changed.

    ``kind``: ``"registered"`` (the first time), ``"lost"`` (the record is gone or
    can no longer be kept alive: ``reason`` says why), ``"re-registered"`` (it is
    back after a loss; ``reason`` is the loss's) and ``"deregistered"`` (on purpose).
    Reasons: ``"lease expired"``, ``"key deleted"``, ``"key changed"``,
    ``"unreachable"`` (no keepalive succeeded for a whole TTL).
    """

    kind: str
    instance: str
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointsChanged(Event):
    """Discovery's view of service ``name`` changed: endpoints ``added`` and ``removed``.

    ``count`` is the number of endpoints after the change. Only real changes are
    sent: a re-listing that finds what was already known sends nothing.
    """

    added: tuple[str, ...]
    removed: tuple[str, ...]
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryInterrupted(Event):
    """Discovery of service ``name`` lost its watch; the last known endpoints stay in use.

    ``reason``: ``"compacted"`` (the watch fell behind a compaction; re-listed at
    once) or ``"disconnected"`` (the store is unreachable or the stream broke;
    re-listed after a jittered backoff). ``error`` is what was raised.
    """

    reason: str
    error: BaseException | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryResumed(Event):
    """Discovery of service ``name`` is in sync again, ``stale`` seconds after it lost its watch."""

    stale: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigChanged(Event):
    """The config centre applied a new value of key ``key`` (``name`` is the key too).

    ``revision`` is the etcd revision of the value, ``old`` and ``new`` the typed
    configurations before and after (``old`` is ``None`` for the first value).
    ``source`` is where the new value came from: ``"etcd"``, ``"snapshot"``
    (the last good value on disk, etcd unreachable at start) or ``"default"``.
    """

    key: str
    revision: int
    old: object
    new: object
    source: str = "etcd"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigApplied(Event):
    """The config centre's value of ``key`` is now that of ``revision``, from ``source``.

    Sent every time a value is put in force, whether or not it differs from the
    one before (a ``ConfigChanged`` comes first when it does): a value equal to the
    default that appears in etcd, or the snapshot's revision found again in etcd
    once it is back, move ``source`` to ``"etcd"`` without changing anything else.
    ``source``: ``"etcd"``, ``"snapshot"`` or ``"default"`` (``revision`` 0).
    """

    key: str
    revision: int
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigRejected(Event):
    """The config centre refused the value of ``key`` at ``revision``; the last good one stays.

    ``field`` is the path of the offending field (``""``: the whole value, e.g.
    invalid JSON), ``problem`` what was wrong, ``error`` the
    ``ConfigValidationError`` raised.
    """

    key: str
    revision: int
    field: str
    problem: str
    error: BaseException | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerExited(Event):
    """A ``fournines serve`` worker of app ``name`` exited (``policy`` is ``"serve"``).

    ``cause``: ``"stopped"`` (told to, on a reload, a recycle or the shutdown),
    ``"crashed"`` (exited on its own; it is restarted), ``"killed"`` (no heartbeat,
    not ready in time, or too slow to drain), ``"failed to start"`` (its app could
    not be loaded or started). ``reason`` says what happened, in words.
    """

    pid: int
    generation: int
    cause: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkersReloaded(Event):
    """A rolling reload of app ``name`` ended, done or aborted.

    ``ok``: every worker now runs ``generation``; else the reload was aborted and the
    old workers keep serving. ``message`` says which and why.
    """

    ok: bool
    generation: int
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorUpgraded(Event):
    """The supervisor of app ``name`` handed its sockets to supervisor ``new_pid`` (SIGUSR2)."""

    old_pid: int
    new_pid: int


Listener = Callable[[Event], object]

_global: list[Listener] = []


def add_listener(listener: Listener) -> None:
    """Send every policy's events to ``listener`` too (idempotent)."""
    if listener not in _global:
        _global.append(listener)


def remove_listener(listener: Listener) -> None:
    """Stop sending events to a listener added with :func:`add_listener`."""
    if listener in _global:
        _global.remove(listener)


def global_listeners() -> list[Listener]:
    """The live list of process-wide listeners (read-only by convention)."""
    return _global


def dispatch(listeners: Sequence[Listener], event: Event) -> None:
    """Send ``event`` to ``listeners`` and the global ones; never raises."""
    for listener in (*listeners, *_global):
        try:
            listener(event)
        except Exception:
            _log.exception("fournines listener %r failed on %r", listener, event)


def has_listeners(listeners: Sequence[Listener]) -> bool:
    """Whether an event sent now would reach anyone (so it is worth building)."""
    return bool(listeners) or bool(_global)
