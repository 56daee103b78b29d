"""The one exception hierarchy of fournines.

Every error fournines raises on purpose is in this tree; the classes of the
subpackages are defined next to the code that raises them and exported by
that subpackage (shown in brackets)::

    FourNinesError
    ├── RejectedError                   a policy refused to run the call at all
    │   ├── CircuitOpenError            the breaker is open (or throttling)
    │   │   ├── TransportCircuitOpenError       [client]
    │   │   ├── RequestsCircuitOpenError        [client]
    │   │   ├── AiohttpCircuitOpenError         [client]
    │   │   └── GrpcCircuitOpenError            also a GrpcRejectedError [grpc]
    │   ├── RateLimitedError            a rate limiter has no room; carries retry_after
    │   │   ├── TransportRateLimitedError       [client]
    │   │   ├── RequestsRateLimitedError        [client]
    │   │   └── AiohttpRateLimitedError         [client]
    │   ├── BulkheadFullError           no free slot and no room (or time) to queue
    │   │   ├── TransportBulkheadFullError      [client]
    │   │   ├── RequestsBulkheadFullError       [client]
    │   │   └── AiohttpBulkheadFullError        [client]
    │   ├── LoadShedError               the server sheds load to protect itself
    │   │   ├── TransportLoadShedError          [client]
    │   │   ├── RequestsLoadShedError           [client]
    │   │   └── AiohttpLoadShedError            [client]
    │   ├── NoEndpointsError            a client balancer has no endpoint to send to
    │   │   ├── TransportNoEndpointsError       [client]
    │   │   ├── RequestsNoEndpointsError        [client]
    │   │   └── AiohttpNoEndpointsError         [client]
    │   ├── TransportRejectedError      a transport's rejection, also an httpx.TransportError;
    │   │                               each Transport* rejection above is one too [client]
    │   ├── RequestsRejectedError       a ResilientAdapter's rejection, also a
    │   │                               requests.ConnectionError; each Requests* above [client]
    │   ├── AiohttpRejectedError        a ResilientMiddleware's rejection, also an
    │   │                               aiohttp.ClientConnectionError; each Aiohttp* [client]
    │   └── GrpcRejectedError           a gRPC client interceptor's rejection, also a
    │                                   grpc.RpcError with code() UNAVAILABLE [grpc]
    ├── DeadlineExceededError           the deadline passed (also a TimeoutError)
    │   ├── TransportDeadlineExceededError  also an httpx.TimeoutException [client]
    │   ├── RequestsDeadlineExceededError   also a requests.Timeout [client]
    │   ├── AiohttpDeadlineExceededError    also an aiohttp.ServerTimeoutError [client]
    │   └── GrpcDeadlineExceededError   also a grpc.RpcError, DEADLINE_EXCEEDED [grpc]
    ├── ConfigurationError              a bad setting, named (also a ValueError)
    │   ├── SpecError                   an invalid SLO spec, with file and path [slo]
    │   ├── ConfigValidationError       a config value refused, with key and field [discovery]
    │   └── ManifestError               a Kubernetes manifest spec refused, with field [serve.k8s]
    ├── ConfigUnavailableError          no config to start with: etcd down or empty, no
    │                                   snapshot, no default (also a RuntimeError) [discovery]
    ├── PrometheusError                 Prometheus gave no answer to use [slo]
    │   ├── PrometheusUnreachableError  network error, timeout, 5xx, not Prometheus
    │   └── PrometheusQueryError        Prometheus refused the query (error_type)
    ├── CommitOutcomeUnknownError       the connection was lost during COMMIT: applied
    │                                   or not, nobody knows; not retried [data]
    ├── PoisonMessageError              a message that can never be handled: dead-letter
    │                                   it now, no retry ladder [data]
    ├── DeadLetterNotFoundError         no dead letter with that id (also a LookupError) [data]
    ├── InjectedFaultError              what an ErrorFault raises by default [chaos]
    ├── NetworkFaultError               a network command failed (also a RuntimeError) [chaos]
    ├── CheckFailed                     a health probe failed with a public output [asgi]
    ├── LabError                        the lab could not run (also a RuntimeError) [lab]
    ├── ServeError                      the supervisor could not serve (RuntimeError) [serve]
    └── ControlError                    no answer on its control socket (RuntimeError) [serve]

The transports' errors are both kinds at once, so ``except CircuitOpenError`` and
``except httpx.HTTPError`` both catch a breaker's refusal of an outgoing request
(``except requests.RequestException`` and ``except aiohttp.ClientError`` for the
requests adapter and the aiohttp middleware, ``except grpc.RpcError`` for the gRPC
client interceptors).

Exhausted retries re-raise the last error of the call as it was, never a
wrapper: callers keep catching what the wrapped function raises.

Rejections are raised on hot paths (an open breaker rejecting thousands of calls
a second), so they are cheap to build: the message is made only when printed.
"""

from __future__ import annotations

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "ConfigurationError",
    "DeadlineExceededError",
    "FourNinesError",
    "LoadShedError",
    "NoEndpointsError",
    "RateLimitedError",
    "RejectedError",
]


class FourNinesError(Exception):
    """Base class of every error fournines raises itself."""


class RejectedError(FourNinesError):
    """A policy refused the call without running it.

    ``retry_after`` is the policy's hint, in seconds, of when trying again may
    succeed (``None`` when it cannot tell). ``Retry`` honours it.
    """

    reason = "rejected"

    def __init__(self, name: str = "", retry_after: float | None = None) -> None:
        super().__init__(name, retry_after)

    # The fields live in ``args`` only, so that hot paths can build a rejection with
    # ``BaseException.__new__(cls, name, retry_after)`` alone: that skips this Python
    # __init__ and costs 160 ns instead of 350 ns (bench/breaker_open.py).
    @property
    def name(self) -> str:
        """The name of the policy that refused the call."""
        return str(self.args[0]) if self.args else ""

    @property
    def retry_after(self) -> float | None:
        """Seconds after which trying again may succeed, if the policy can tell."""
        value = self.args[1] if len(self.args) > 1 else None
        return value if isinstance(value, int | float) else None

    def __str__(self) -> str:
        name, retry_after = self.name, self.retry_after
        text = f"{self.reason}: {name!r}" if name else self.reason
        if retry_after is not None:
            text += f" (retry after {retry_after:.3f}s)"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, retry_after={self.retry_after!r})"


new_rejection = BaseException.__new__
"""Build a rejection without running ``__init__``: ``new_rejection(cls, name, retry_after)``."""


class CircuitOpenError(RejectedError):
    """The circuit breaker is open, or adaptive throttling dropped the call."""

    reason = "circuit open"


class RateLimitedError(RejectedError):
    """A rate limiter has no capacity now; ``retry_after`` says when it will."""

    reason = "rate limited"


class BulkheadFullError(RejectedError):
    """The bulkhead has no free slot and no room or time to wait for one."""

    reason = "bulkhead full"


class LoadShedError(RejectedError):
    """The service is shedding load to protect itself."""

    reason = "load shed"


class NoEndpointsError(RejectedError):
    """A client-side balancer has no endpoint at all (its source returned none)."""

    reason = "no endpoints"


class DeadlineExceededError(FourNinesError, TimeoutError):
    """The deadline of the current operation passed before it could finish.

    It is also a :class:`TimeoutError`, so code that already handles timeouts
    handles it too.
    """


class ConfigurationError(FourNinesError, ValueError):
    """A setting is invalid; the message names the field and what is allowed."""


class CommitOutcomeUnknownError(FourNinesError):
    """The connection to the database was lost while COMMIT was in flight.

    The transaction may have been applied or not, and nothing on this side can
    tell: retrying could apply it twice (a payment charged twice), so transaction
    retry stops here. The driver's error is the ``__cause__``. Work that is safe
    to apply twice is retried instead when passed ``idempotent=True``.
    ``attempts`` is how many attempts were made, this one included.
    """

    def __init__(self, message: str, *, name: str = "", attempts: int = 1) -> None:
        super().__init__(message)
        self.name = name
        self.attempts = attempts


class PoisonMessageError(FourNinesError):
    """A message that no retry can handle (malformed, invalid): dead-letter it now.

    Raised by a consumer's decoder or handler to skip the retry ladder; the dead
    letter's reason is ``reason`` (``"not_retryable"`` unless given).
    """

    def __init__(self, message: str, *, reason: str = "not_retryable") -> None:
        super().__init__(message)
        self.reason = reason


class DeadLetterNotFoundError(FourNinesError, LookupError):
    """``fournines dlq show/replay/purge ID``: no dead letter with that message id."""


def check_number(
    owner: str,
    field: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """Raise ConfigurationError naming ``owner.field`` unless ``value`` is in range."""
    if value is None and optional:
        return
    kind = "an int" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise ConfigurationError(
            f"{owner}.{field} must be {kind}{' or None' if optional else ''}, got {value!r}"
        )
    assert isinstance(value, int | float)
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigurationError(f"{owner}.{field} must be finite, got {value!r}")
    low_bad = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
    high_bad = maximum is not None and value > maximum
    if low_bad or high_bad:
        lo = "" if minimum is None else f"{'>' if exclusive_minimum else '>='} {minimum:g}"
        hi = "" if maximum is None else f"<= {maximum:g}"
        rng = " and ".join(x for x in (lo, hi) if x)
        raise ConfigurationError(f"{owner}.{field} must be {rng}, got {value!r}")
