"""fournines: stability engineering for Python services.

Policies protect calls (:class:`CircuitBreaker`, :class:`Retry`, rate limiters,
:class:`Bulkhead`, :class:`Timeout`, :class:`Fallback`, :class:`StaleCache`,
:class:`Hedge`), compose in a :class:`Pipeline`, read time from a :class:`Clock`,
respect the current deadline, and report every decision as an event to listeners.
"""

from typing import TYPE_CHECKING

from ._clock import Clock, SystemClock
from ._deadline import Deadline, current_deadline, deadline_after
from ._errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceededError,
    FourNinesError,
    LoadShedError,
    NoEndpointsError,
    RateLimitedError,
    RejectedError,
)
from ._events import (
    BudgetExhausted,
    CallRejected,
    ClientRequestFinished,
    ClientRequestStarted,
    DeadlineExceeded,
    EndpointEjected,
    Event,
    FallbackUsed,
    FaultInjected,
    KeysEvicted,
    Listener,
    LoopLagUnrelieved,
    MalformedHeader,
    RetriesExhausted,
    RetryScheduled,
    StateChanged,
    add_listener,
    remove_listener,
)
from ._lazy import lazy_attributes
from .policies.backoff import Backoff
from .policies.budget import RetryBudget
from .policies.bulkhead import Bulkhead, BulkheadPermit
from .policies.circuit_breaker import (
    AdaptiveThrottling,
    BreakerPermit,
    CircuitBreaker,
    ConsecutiveFailures,
    FailureRate,
    State,
)
from .policies.fallback import Degradation, Fallback, StaleCache, track_degradation
from .policies.hedge import Hedge
from .policies.pipeline import Pipeline, Policy
from .policies.rate_limit import Gcra, KeyedLimiter, RateLimiter, SlidingWindow, TokenBucket
from .policies.retry import Retry
from .policies.timeout import Timeout

__version__ = "0.1.0"

# Redis-backed limiters need the optional ``redis`` package: imported on first use.
_REDIS = ("fournines.policies.redis_rate_limit",
          "the redis package: pip install 'fournines[redis]'")
__getattr__, __dir__ = lazy_attributes("fournines", {
    "RedisGcra": _REDIS,
    "RedisSlidingWindow": _REDIS,
    "SyncRedisGcra": _REDIS,
    "SyncRedisSlidingWindow": _REDIS,
}, globals())

if TYPE_CHECKING:  # the real types for a user's type checker; never imported at run time
    from .policies.redis_rate_limit import (
        RedisGcra,
        RedisSlidingWindow,
        SyncRedisGcra,
        SyncRedisSlidingWindow,
    )

__all__ = [
    "AdaptiveThrottling",
    "Backoff",
    "BreakerPermit",
    "BudgetExhausted",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadPermit",
    "CallRejected",
    "CircuitBreaker",
    "CircuitOpenError",
    "ClientRequestFinished",
    "ClientRequestStarted",
    "Clock",
    "ConfigurationError",
    "ConsecutiveFailures",
    "Deadline",
    "DeadlineExceeded",
    "DeadlineExceededError",
    "Degradation",
    "EndpointEjected",
    "Event",
    "FailureRate",
    "Fallback",
    "FallbackUsed",
    "FaultInjected",
    "FourNinesError",
    "Gcra",
    "Hedge",
    "KeyedLimiter",
    "KeysEvicted",
    "Listener",
    "LoadShedError",
    "LoopLagUnrelieved",
    "MalformedHeader",
    "NoEndpointsError",
    "Pipeline",
    "Policy",
    "RateLimitedError",
    "RateLimiter",
    "RedisGcra",
    "RedisSlidingWindow",
    "RejectedError",
    "RetriesExhausted",
    "Retry",
    "RetryBudget",
    "RetryScheduled",
    "SlidingWindow",
    "StaleCache",
    "State",
    "StateChanged",
    "SyncRedisGcra",
    "SyncRedisSlidingWindow",
    "SystemClock",
    "Timeout",
    "TokenBucket",
    "__version__",
    "add_listener",
    "current_deadline",
    "deadline_after",
    "remove_listener",
    "track_degradation",
]
