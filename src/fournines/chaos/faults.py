"""Faults as policies: latency, errors and crashes injected on purpose, at a chosen rate.

A fault has the shape of every fournines policy (``call``, ``acall``, decorator),
so it composes in a :class:`~fournines.Pipeline` like a retry or a breaker:
``Pipeline(Retry(), LatencyFault(latency=0.2, rate=0.1), ...)`` slows one call in
ten *inside* the retry, to prove that the timeout around it works.

Every fault decides per call, in this order:

1. ``enabled`` (a plain switch), and not past its ``duration`` (faults with a
   duration switch themselves off for good, the seed's automatic recovery);
2. the target: this instance is in the ``instances`` share (a stable hash of
   the instance id, so the same instances are picked on every restart, and a
   share of 0.3 picks a subset of what 0.5 picks), the current request's path
   starts with ``route``, and it carries the ``header`` (route and header come
   from the ASGI request being served, see :class:`~fournines.chaos.ChaosMiddleware`;
   outside a request a fault with a route or header never fires);
3. the dice: a seeded ``random.Random`` fires with probability ``rate``. With
   ``correlation`` c > 0 the decisions form a two-state Markov chain that fires
   with probability ``rate + c * (1 - rate)`` after a firing and
   ``rate * (1 - c)`` after a miss: bursts, with the long-run rate still exactly
   ``rate`` and a lag-1 autocorrelation of c.

What firing does depends on the fault: :class:`LatencyFault` sleeps on the
injected clock (fixed, with jitter, or drawn from a distribution) and then runs
the call; :class:`ErrorFault` raises instead of running it (in ASGI it answers
an HTTP status); :class:`CrashFault` ends the process at once, without cleanup,
like the seed's injected panic. Each firing sends a
:class:`~fournines.FaultInjected` event.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import random
import signal
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, ParamSpec, TypeVar

from .._clock import Clock, system_clock
from .._errors import ConfigurationError, FourNinesError, check_number
from .._events import FaultInjected, Listener, dispatch, has_listeners
from ..policies._shell import Decorates

__all__ = [
    "CrashFault",
    "ErrorFault",
    "Fault",
    "FaultTarget",
    "InjectedFaultError",
    "LatencyFault",
    "current_request",
    "instance_share",
]

P = ParamSpec("P")
T = TypeVar("T")

Headers = Sequence[tuple[bytes, bytes]]


class InjectedFaultError(FourNinesError):
    """The error an :class:`ErrorFault` raises unless told to raise another."""


# (path, headers) of the ASGI request being served; a plain tuple, as the middleware
# sets it on every request.
_Request = tuple[str, Headers]

_request: contextvars.ContextVar[_Request | None] = contextvars.ContextVar(
    "fournines_chaos_request", default=None
)


def current_request() -> tuple[str, Headers] | None:
    """The ``(path, headers)`` of the ASGI request being served, if any."""
    return _request.get()


def set_current_request(path: str, headers: Headers) -> contextvars.Token[_Request | None]:
    """Make ``path``/``headers`` the current request (used by the middleware)."""
    return _request.set((path, headers))


def reset_current_request(token: contextvars.Token[_Request | None]) -> None:
    """Undo :func:`set_current_request`."""
    _request.reset(token)


def instance_share(instance: str) -> float:
    """Where ``instance`` falls in [0, 1): a stable hash, the same in every process."""
    digest = hashlib.sha256(instance.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultTarget:
    """Which calls a fault may hit.

    ``route``: request paths starting with it (``None``: any call);
    ``header``: only requests carrying this header, whatever its value;
    ``instances``: the share of instances hit, 0..1, picked by
    :func:`instance_share` of ``instance`` (default: this process's
    :func:`~fournines.asgi.instance_id`).
    """

    route: str | None = None
    header: str | None = None
    instances: float = 1.0
    instance: str | None = None

    def __post_init__(self) -> None:
        if self.route is not None and (not isinstance(self.route, str)
                                       or not self.route.startswith("/")):
            raise ConfigurationError(
                f"FaultTarget.route must be a path starting with '/', got {self.route!r}"
            )
        if self.header is not None and (not isinstance(self.header, str) or not self.header
                                        or not self.header.isascii()
                                        or any(c in self.header for c in " :\t\r\n")):
            raise ConfigurationError(
                f"FaultTarget.header must be an HTTP header name, got {self.header!r}"
            )
        check_number("FaultTarget", "instances", self.instances, minimum=0, maximum=1)
        if self.instance is not None and not isinstance(self.instance, str):
            raise ConfigurationError(
                f"FaultTarget.instance must be a str or None, got {self.instance!r}"
            )

    def selects_instance(self) -> bool:
        """Whether this process is in the targeted share of instances."""
        if self.instances >= 1:
            return True
        if self.instance is not None:
            return instance_share(self.instance) < self.instances
        from ..asgi._state import instance_id  # noqa: PLC0415 - only for shares below 1

        return instance_share(instance_id()) < self.instances


class Fault(Decorates, ABC):
    """Base of every fault: rate, switch, target, duration, seeded dice.

    Parameters (keyword-only): ``rate`` (0..1, default 1: every matching call),
    ``enabled``, ``route``/``header``/``instances``/``instance`` (the
    :class:`FaultTarget`), ``correlation`` (0..1, see the module docs),
    ``duration`` (seconds after creation when the fault turns itself off for
    good; ``None``: never), ``seed`` (for ``random.Random``; ``None``: from the
    OS), ``clock``, ``listeners``, ``name``.

    Counters: :attr:`calls` (calls that reached the dice), :attr:`injected`.
    """

    kind: ClassVar[str] = "fault"

    __slots__ = (
        "_clock",
        "_correlation",
        "_created_at",
        "_duration",
        "_enabled",
        "_expires_at",
        "_header",
        "_last",
        "_listeners",
        "_name",
        "_random",
        "_rate",
        "_rng",
        "_seed",
        "_selected",
        "_target",
        "_targeted",
        "calls",
        "injected",
    )

    def __init__(
        self,
        *,
        rate: float = 1.0,
        enabled: bool = True,
        route: str | None = None,
        header: str | None = None,
        instances: float = 1.0,
        instance: str | None = None,
        correlation: float = 0.0,
        duration: float | None = None,
        seed: int | None = None,
        clock: Clock = system_clock,
        listeners: Sequence[Listener] = (),
        name: str | None = None,
    ) -> None:
        owner = type(self).__name__
        check_number(owner, "rate", rate, minimum=0, maximum=1)
        check_number(owner, "correlation", correlation, minimum=0, maximum=1)
        check_number(owner, "duration", duration, minimum=0, exclusive_minimum=True,
                     optional=True)
        if not isinstance(enabled, bool):
            raise ConfigurationError(f"{owner}.enabled must be a bool, got {enabled!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigurationError(f"{owner}.seed must be an int or None, got {seed!r}")
        self._target = FaultTarget(route=route, header=header, instances=instances,
                                  instance=instance)
        self._rate = float(rate)
        self._correlation = float(correlation)
        self._enabled = enabled
        self._duration = None if duration is None else float(duration)
        self._seed = seed
        self._rng = random.Random(seed)
        self._random = self._rng.random
        self._clock = clock
        self._name = name or self.kind
        self._listeners = tuple(listeners)
        self._selected = self._target.selects_instance()
        self._header = None if header is None else header.lower().encode("latin-1")
        self._targeted = route is not None or header is not None
        self._created_at = clock.monotonic()
        self._expires_at = None if duration is None else self._created_at + float(duration)
        self._last = False
        self.calls = 0
        self.injected = 0

    # -- settings (read-only: build a new fault to change one) ---------------------------

    @property
    def rate(self) -> float:
        """The share of targeted calls that get the fault, 0 to 1."""
        return self._rate

    @property
    def correlation(self) -> float:
        """How much each roll follows the previous one (tc-netem's correlation)."""
        return self._correlation

    @property
    def enabled(self) -> bool:
        """The switch: :meth:`enable` and :meth:`disable` turn it."""
        return self._enabled

    @property
    def duration(self) -> float | None:
        """Seconds after creation at which the fault turns itself off."""
        return self._duration

    @property
    def seed(self) -> int | None:
        """The seed of :attr:`rng` (``None``: unseeded)."""
        return self._seed

    @property
    def rng(self) -> random.Random:
        """The fault's own random source (rolls, jitter, distributions)."""
        return self._rng

    @property
    def target(self) -> FaultTarget:
        """Which calls the fault applies to."""
        return self._target

    @property
    def clock(self) -> Clock:
        """Where the fault reads time and sleeps."""
        return self._clock

    @property
    def name(self) -> str:
        """Shown in events, metrics and the admin API."""
        return self._name

    @property
    def created_at(self) -> float:
        """When the fault was made, on its clock."""
        return self._created_at

    # -- state ---------------------------------------------------------------------------

    @property
    def remaining(self) -> float | None:
        """Seconds until the fault turns itself off (``None``: no duration)."""
        if self._expires_at is None:
            return None
        return max(0.0, self._expires_at - self._clock.monotonic())

    @property
    def expired(self) -> bool:
        """Whether the fault's duration has passed."""
        return self._expires_at is not None and self._clock.monotonic() >= self._expires_at

    @property
    def active(self) -> bool:
        """Enabled, not expired and this instance is targeted."""
        return self._enabled and self._selected and not self.expired

    def enable(self) -> None:
        """Turn the fault on (a fault past its duration stays off)."""
        self._enabled = True

    def disable(self) -> None:
        """Turn the fault off."""
        self._enabled = False

    # -- the decision --------------------------------------------------------------------

    def matches(self, path: str | None, headers: Headers | None) -> bool:
        """Whether a call with this request ``path`` and ``headers`` is targeted."""
        target = self._target
        if target.route is not None and (path is None or not path.startswith(target.route)):
            return False
        if self._header is not None:
            if headers is None:
                return False
            name = self._header
            return any(key == name for key, _ in headers)
        return True

    def roll(self, path: str | None = None, headers: Headers | None = None) -> bool:
        """Decide whether to fire on this call (counts it; see the module docs).

        Without ``path``/``headers`` the current ASGI request is used, if any.
        """
        if not self._enabled or not self._selected:
            return False
        expires = self._expires_at
        if expires is not None and self._clock.monotonic() >= expires:
            self._enabled = False
            return False
        if self._targeted:
            if path is None and headers is None:
                request = _request.get()
                if request is None:
                    return False
                path, headers = request
            if not self.matches(path, headers):
                return False
        self.calls += 1
        rate = self._rate
        if self._correlation:
            # Two-state Markov chain with stationary probability ``rate`` and lag-1
            # autocorrelation ``correlation`` (module docstring).
            c = self._correlation
            rate = rate + c * (1.0 - rate) if self._last else rate * (1.0 - c)
        fired = self._random() < rate
        self._last = fired
        if fired:
            self.injected += 1
        return fired

    def notify(self, *, delay: float | None = None) -> None:
        """Send the :class:`~fournines.FaultInjected` event for one firing (if anyone listens)."""
        if has_listeners(self._listeners):
            request = _request.get()
            dispatch(self._listeners, FaultInjected(
                policy="fault", name=self._name, kind=self.kind, delay=delay,
                route=None if request is None else request[0],
            ))

    # -- what firing does (subclasses) ----------------------------------------------------

    @abstractmethod
    def inject(self) -> None:
        """Do the fault's harm, synchronously (before the call, or instead of it)."""

    @abstractmethod
    async def ainject(self) -> None:
        """Do the fault's harm in a coroutine."""

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn``, injecting the fault first when the dice say so."""
        if self._enabled and self.roll():
            self.inject()
        return fn(*args, **kwargs)

    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn``, injecting the fault first when the dice say so."""
        if self._enabled and self.roll():
            await self.ainject()
        return await fn(*args, **kwargs)

    # -- description ----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The fault as JSON-ready data (what the admin API shows)."""
        target = self._target
        data: dict[str, Any] = {
            "kind": self.kind,
            "name": self._name,
            "rate": self._rate,
            "enabled": self._enabled,
            "correlation": self._correlation,
            "duration": self._duration,
            "remaining": self.remaining,
            "route": target.route,
            "header": target.header,
            "instances": target.instances,
            "calls": self.calls,
            "injected": self.injected,
        }
        data.update(self._describe_kind())
        return data

    def _describe_kind(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, rate={self._rate!r})"


class LatencyFault(Fault):
    """Delay calls: ``latency`` seconds, plus or minus ``jitter``, or from a distribution.

    The delay is ``latency + jitter * (2u - 1)`` with ``u`` uniform in [0, 1)
    and correlated with the previous ``u`` as tc-netem does
    (``u = (1 - c) * random + c * u_prev``), or ``latency +
    distribution(rng)`` when a ``distribution`` (a function of the fault's
    ``random.Random``, e.g. ``lambda rng: rng.expovariate(20)``) is given.
    Negative delays count as zero. Sleeps go to the fault's clock.
    """

    kind: ClassVar[str] = "latency"

    __slots__ = ("_distribution", "_jitter", "_latency", "_u")

    def __init__(
        self,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        distribution: Callable[[random.Random], float] | None = None,
        **options: Any,
    ) -> None:
        check_number("LatencyFault", "latency", latency, minimum=0)
        check_number("LatencyFault", "jitter", jitter, minimum=0)
        if distribution is not None and not callable(distribution):
            raise ConfigurationError(
                f"LatencyFault.distribution must be callable(rng) -> seconds, got {distribution!r}"
            )
        if distribution is not None and jitter:
            raise ConfigurationError(
                "LatencyFault.jitter must be 0 when a distribution is given"
            )
        super().__init__(**options)
        self._latency = float(latency)
        self._jitter = float(jitter)
        self._distribution = distribution
        self._u = 0.5

    @property
    def latency(self) -> float:
        """The base delay in seconds."""
        return self._latency

    @property
    def jitter(self) -> float:
        """Plus or minus this many seconds, uniformly."""
        return self._jitter

    @property
    def distribution(self) -> Callable[[random.Random], float] | None:
        """Extra delay drawn from the fault's rng, if given."""
        return self._distribution

    def delay(self) -> float:
        """The next delay in seconds (draws from the fault's RNG)."""
        if self._distribution is not None:
            return max(0.0, self._latency + float(self._distribution(self._rng)))
        if not self._jitter:
            return self._latency
        u = (1.0 - self._correlation) * self._rng.random() + self._correlation * self._u
        self._u = u
        return max(0.0, self._latency + self._jitter * (2.0 * u - 1.0))

    def _bounded_delay(self) -> float:
        # A fault with a duration harms nothing after it: the seed's automatic recovery
        # must also free the calls it is holding.
        seconds = self.delay()
        remaining = self.remaining
        return seconds if remaining is None else min(seconds, remaining)

    def inject(self) -> None:
        """Sleep for the next delay on the clock (never past the fault's duration)."""
        seconds = self._bounded_delay()
        self.notify(delay=seconds)
        self._clock.sleep(seconds)

    async def ainject(self) -> None:
        """Suspend for the next delay on the clock (never past the fault's duration)."""
        seconds = self._bounded_delay()
        self.notify(delay=seconds)
        await self._clock.asleep(seconds)

    def _describe_kind(self) -> dict[str, Any]:
        return {"latency": self._latency, "jitter": self._jitter,
                "distribution": None if self._distribution is None else repr(self._distribution)}


class ErrorFault(Fault):
    """Fail calls: raise ``error()`` instead of calling; in ASGI, answer ``status``.

    ``error`` is an exception class or any zero-argument callable returning an
    exception (default: :class:`InjectedFaultError` naming the fault); ``status``
    (400..599, default 500) is what :class:`~fournines.chaos.ChaosMiddleware`
    answers when the fault fires on a request.
    """

    kind: ClassVar[str] = "error"

    __slots__ = ("_error", "_status")

    def __init__(
        self,
        *,
        error: Callable[[], BaseException] | None = None,
        status: int = 500,
        **options: Any,
    ) -> None:
        if error is not None and not callable(error):
            raise ConfigurationError(
                f"ErrorFault.error must be an exception class or a factory, got {error!r}"
            )
        check_number("ErrorFault", "status", status, minimum=400, maximum=599, integer=True)
        super().__init__(**options)
        self._error = error
        self._status = int(status)

    @property
    def error(self) -> Callable[[], BaseException] | None:
        """What makes the exception to raise (``None``: InjectedFaultError)."""
        return self._error

    @property
    def status(self) -> int:
        """The HTTP status answered when the fault fires on a request."""
        return self._status

    def make_error(self) -> BaseException:
        """A fresh exception to raise (a new one each time: tracebacks don't pile up)."""
        if self._error is None:
            return InjectedFaultError(f"injected fault {self._name!r}")
        return self._error()

    def inject(self) -> NoReturn:
        """Raise the error."""
        self.notify()
        raise self.make_error()

    async def ainject(self) -> NoReturn:
        """Raise the error."""
        self.inject()

    def _describe_kind(self) -> dict[str, Any]:
        return {"status": self._status,
                "error": None if self._error is None else getattr(
                    self._error, "__qualname__", repr(self._error))}


class CrashFault(Fault):
    """End the process at once: ``SIGKILL`` to itself, or ``os._exit(exit_code)``.

    No ``finally`` blocks, ``atexit`` hooks or buffered output: the process just
    stops, the way a segfault or an OOM kill stops it, so supervisors, health
    checks and clients see a real crash. The :class:`~fournines.FaultInjected`
    event is sent first (a logging listener gets to write it).
    """

    kind: ClassVar[str] = "crash"

    __slots__ = ("_exit_code",)

    def __init__(self, *, exit_code: int | None = None, **options: Any) -> None:
        check_number("CrashFault", "exit_code", exit_code, minimum=0, maximum=255,
                     integer=True, optional=True)
        super().__init__(**options)
        self._exit_code = exit_code

    @property
    def exit_code(self) -> int | None:
        """``os._exit`` status (``None``: SIGKILL)."""
        return self._exit_code

    def inject(self) -> NoReturn:
        """Crash the process."""
        self.notify()
        if self._exit_code is None:
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(70 if self._exit_code is None else self._exit_code)

    async def ainject(self) -> NoReturn:
        """Crash the process."""
        self.inject()

    def _describe_kind(self) -> dict[str, Any]:
        return {"exit_code": self._exit_code}
