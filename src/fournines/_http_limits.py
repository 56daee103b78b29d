"""Rate-limit rules of the HTTP edges: the rule config, its compiled form, the 429 headers.

Shared by :mod:`fournines.asgi.limits` and :mod:`fournines.wsgi`: one rule
language and one refusal answer for every server edge (see the ASGI module's
docstring for the semantics and the header syntax).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from ._errors import ConfigurationError, check_number
from ._http import problem
from .policies.rate_limit import Gcra, KeyedLimiter, TokenBucket, _KeySlot, _Limiter

__all__ = [
    "DRAFT",
    "KEYED",
    "REMOTE",
    "SHARED",
    "CompiledRule",
    "KeyFunc",
    "RateLimitRule",
    "refusal_headers",
    "remaining",
]

Scope: TypeAlias = Mapping[str, Any]
"""An ASGI scope, or the scope view the WSGI edge builds from an environ."""

DRAFT = "draft-ietf-httpapi-ratelimit-headers-11"
"""The version of the RateLimit header fields draft that the headers follow."""

KeyFunc = Callable[[Scope], str | None]
"""Names the client of a request; ``None`` exempts the request from the rule."""

_PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"

# Rule names become Structured Field Strings: printable ASCII only. Restricting them
# to a token-like alphabet also spares us escaping quotes and backslashes.
_NAME = re.compile(r"[A-Za-z0-9_.:/*+-]{1,64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitRule:
    """One rate limit: which requests, who the client is, and the limiter.

    - ``name``: the policy name in the headers (letters, digits, ``_.:/*+-``).
    - ``limiter``: a factory returning a new local limiter (one per client key,
      kept in a ``KeyedLimiter`` of at most ``max_keys``), a ready
      ``KeyedLimiter``, an async Redis limiter (``RedisGcra``,
      ``RedisSlidingWindow``; keyed in Redis as ``"<name>:<client key>"``), or,
      with ``key="global"``, one local limiter shared by every client.
    - ``path``: the path prefix the rule applies to; ``pattern``: a regular
      expression the path must also match (``re.match``); ``methods``: the
      HTTP methods it applies to (``None``: all).
    - ``key``: ``"ip"`` (the client address the server reports,
      ``scope["client"][0]``: the TCP peer's, so behind a proxy the proxy's,
      one budget for all its clients, unless the server is told which proxies
      to believe: ``serve(forwarded_allow_ips=...)``; fournines never reads
      ``X-Forwarded-For``, ``Forwarded`` or ``X-Real-IP`` itself),
      ``"header:<name>"`` (e.g. ``"header:x-api-key"``; a request without it
      is keyed by its IP address), ``"global"`` (one budget for everyone), or
      a function of the ASGI scope returning the key, or ``None`` to exempt
      the request.
    - ``cost``: units each request takes.
    - ``quota``, ``window``: what ``RateLimit-Policy`` advertises, when what is
      derived from the limiter is not what you want to say.
    """

    name: str
    limiter: Any
    path: str = "/"
    pattern: str | re.Pattern[str] | None = None
    methods: Collection[str] | None = None
    key: str | KeyFunc = "ip"
    cost: int = 1
    max_keys: int = 10_000
    quota: int | None = None
    window: int | None = None

    def __post_init__(self) -> None:
        owner = "RateLimitRule"
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigurationError(
                f"{owner}.name must be 1-64 letters, digits or _.:/*+-, got {self.name!r}"
            )
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ConfigurationError(f"{owner}.path must be a str starting with '/', "
                                     f"got {self.path!r}")
        if self.pattern is not None and not isinstance(self.pattern, str | re.Pattern):
            raise ConfigurationError(
                f"{owner}.pattern must be a str, a compiled regex or None, got {self.pattern!r}"
            )
        if self.methods is not None and (
            isinstance(self.methods, str) or not all(isinstance(m, str) for m in self.methods)
        ):
            raise ConfigurationError(
                f"{owner}.methods must be a collection of str or None, got {self.methods!r}"
            )
        key = self.key
        if isinstance(key, str):
            if key not in ("ip", "global") and not (
                key.startswith("header:") and len(key) > len("header:")
            ):
                raise ConfigurationError(
                    f"{owner}.key must be 'ip', 'global', 'header:<name>' or a function, "
                    f"got {key!r}"
                )
        elif not callable(key):
            raise ConfigurationError(f"{owner}.key must be a str or a function, got {key!r}")
        check_number(owner, "cost", self.cost, minimum=1, integer=True)
        check_number(owner, "max_keys", self.max_keys, minimum=1, integer=True)
        check_number(owner, "quota", self.quota, minimum=0, integer=True, optional=True)
        check_number(owner, "window", self.window, minimum=1, integer=True, optional=True)


# How a compiled rule finds the client's key, and where its limiter lives.
_KEY_IP, _KEY_HEADER, _KEY_GLOBAL, _KEY_FUNC = range(4)
KEYED, SHARED, REMOTE = range(3)
"""``CompiledRule.kind``: one limiter per key, one for all, or a remote (Redis) limiter."""


def _advertised(limiter: object) -> tuple[int, int] | None:
    """(quota, window seconds) that a limiter's settings amount to, if it can tell."""
    limit, window = getattr(limiter, "limit", None), getattr(limiter, "window", None)
    if isinstance(limit, int) and isinstance(window, int | float):
        return limit, max(1, math.ceil(window))
    rate = getattr(limiter, "rate", None)
    capacity = getattr(limiter, "capacity", None)
    if capacity is None:
        capacity = getattr(limiter, "burst", None)
    if isinstance(rate, int | float) and isinstance(capacity, int | float) and rate > 0:
        refill = capacity / rate
        if refill >= 1:
            return math.floor(capacity), math.ceil(refill)
        # Refilled within a second: the sustained rate per second says more.
        return math.floor(rate), 1
    return None


def _capacity(limiter: object) -> float | None:
    for attribute in ("capacity", "burst", "limit"):
        value = getattr(limiter, attribute, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def remaining(limiter: object) -> tuple[int, int] | None:
    """(available units, seconds until full) of a local bucket or GCRA, else None."""
    if isinstance(limiter, TokenBucket | _KeySlot):  # _KeySlot: a KeyedLimiter's key
        tokens = limiter.tokens
        return math.floor(tokens), math.ceil((limiter.capacity - tokens) / limiter.rate)
    if isinstance(limiter, Gcra):
        # Read without the lock: an estimate for a header, not a decision.
        backlog = max(0.0, limiter._tat - limiter._clock.monotonic())
        available = math.floor((limiter._tolerance - backlog) / limiter._interval + 1e-9)
        return max(0, available), math.ceil(backlog)
    return None


class CompiledRule:
    """A :class:`RateLimitRule` compiled for the hot path (shared by the ASGI and WSGI edges).

    ``asynchronous``: the edge awaits remote limiters (ASGI); otherwise (WSGI) a
    remote limiter must be a blocking one.
    """

    __slots__ = (
        "advertised",
        "cost",
        "header",
        "key_func",
        "key_kind",
        "kind",
        "methods",
        "name",
        "policy",
        "prefix",
        "problem",
        "regex",
        "target",
    )

    def __init__(self, rule: RateLimitRule, *, asynchronous: bool = True) -> None:
        owner = f"RateLimitRule({rule.name!r})"
        self.name = rule.name
        self.prefix = rule.path
        self.regex = re.compile(rule.pattern) if isinstance(rule.pattern, str) else rule.pattern
        self.methods = (None if rule.methods is None
                        else frozenset(m.upper() for m in rule.methods))
        self.cost = rule.cost
        self.header = b""
        self.key_func: KeyFunc | None = None
        key = rule.key
        if callable(key):
            self.key_kind, self.key_func = _KEY_FUNC, key
        elif key == "ip":
            self.key_kind = _KEY_IP
        elif key == "global":
            self.key_kind = _KEY_GLOBAL
        else:
            self.key_kind = _KEY_HEADER
            self.header = key.removeprefix("header:").strip().lower().encode("latin-1")

        # A KeyedLimiter, a local limiter or an async Redis limiter, as ``kind`` says.
        self.target: Any = None
        spec = rule.limiter
        if isinstance(spec, KeyedLimiter):
            self.kind, self.target = KEYED, spec
            sample: object = spec._factory()
        elif isinstance(spec, _Limiter):
            if self.key_kind != _KEY_GLOBAL:
                raise ConfigurationError(
                    f"{owner}.limiter is one limiter, which every client would share: "
                    "use key='global' for that, or pass a factory such as "
                    "lambda: TokenBucket(...) for one limiter per client"
                )
            self.kind, self.target = SHARED, spec
            sample = spec
        elif hasattr(spec, "try_acquire"):
            if inspect.iscoroutinefunction(spec.try_acquire) != asynchronous:
                raise ConfigurationError(
                    f"{owner}.limiter {spec!r} blocks the event loop: use an async limiter "
                    "(RedisGcra, RedisSlidingWindow) or a local one" if asynchronous else
                    f"{owner}.limiter {spec!r} is async, and a WSGI app cannot await it: "
                    "use a blocking limiter or a local one")
            self.kind, self.target = REMOTE, spec
            sample = spec
        elif callable(spec):
            made = spec()
            if not isinstance(made, _Limiter):
                raise ConfigurationError(
                    f"{owner}.limiter must return a local rate limiter, returned {made!r}"
                )
            sample = made
            if self.key_kind == _KEY_GLOBAL:
                self.kind, self.target = SHARED, made
            else:
                self.kind = KEYED
                self.target = KeyedLimiter(spec, max_keys=rule.max_keys, name=rule.name)
        else:
            raise ConfigurationError(
                f"{owner}.limiter must be a limiter factory, a KeyedLimiter, an async "
                f"Redis limiter or (with key='global') a local limiter, got {spec!r}"
            )
        capacity = _capacity(sample)
        if capacity is not None and rule.cost > capacity:
            raise ConfigurationError(
                f"{owner}.cost {rule.cost} exceeds the limiter's capacity {capacity:g}; "
                "no request could ever pass"
            )
        derived = _advertised(sample)
        quota = rule.quota if rule.quota is not None else (derived and derived[0])
        window = rule.window if rule.window is not None else (derived and derived[1])
        self.advertised: tuple[int, int | None] | None = (
            None if quota is None else (quota, window or None)
        )
        self.policy: bytes | None = None
        if self.advertised is not None:
            q, w = self.advertised
            self.policy = f'"{self.name}";q={q}'.encode() + (b"" if w is None else
                                                            f";w={w}".encode())
        self.problem = problem(
            429, "Request cannot be satisfied as assigned quota has been exceeded",
            f"rate limit {self.name!r} exceeded: retry after the Retry-After seconds",
            type=_PROBLEM_TYPE, **{"violated-policies": [self.name]})

    def key_of(self, scope: Scope) -> Any:
        """The client key of a request (None: the rule does not apply)."""
        kind = self.key_kind
        if kind == _KEY_IP:
            client = scope.get("client")
            return client[0] if client else "unknown"
        if kind == _KEY_HEADER:
            name = self.header
            for key, value in scope["headers"]:
                if key == name:
                    return value  # bytes: never equal to an IP key, which is a str
            client = scope.get("client")
            return client[0] if client else "unknown"
        if kind == _KEY_GLOBAL:
            return ""
        assert self.key_func is not None
        return self.key_func(scope)




def refusal_headers(rule: CompiledRule, retry_after: float | None) -> list[tuple[bytes, bytes]]:
    """The ``Retry-After``, ``RateLimit`` and ``RateLimit-Policy`` headers of a 429."""
    if retry_after is None:  # Redis down and fail_closed: the window is our best guess
        advertised = rule.advertised
        wait = advertised[1] if advertised is not None and advertised[1] else 1
    else:
        # Limiters add 1e-7 s against float rounding; it must not cost a whole second.
        wait = max(1, math.ceil(retry_after - 1e-6))
    seconds = str(wait).encode()
    headers = [(b"retry-after", seconds),
               (b"ratelimit", b'"' + rule.name.encode() + b'";r=0;t=' + seconds)]
    if rule.policy is not None:
        headers.append((b"ratelimit-policy", rule.policy))
    return headers
