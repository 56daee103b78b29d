"""Rate limits per route and per client for ASGI apps, with the IETF RateLimit headers.

:class:`RateLimitMiddleware` applies a list of :class:`RateLimitRule`. A rule
selects requests (a path prefix, optionally a regular expression and methods),
names the client (its IP address, a header such as an API key, or any function
of the ASGI scope) and limits each client with its own limiter: a local
:class:`~fournines.TokenBucket`, :class:`~fournines.Gcra` or
:class:`~fournines.SlidingWindow` per key (kept in a
:class:`~fournines.KeyedLimiter` with bounded memory), or one Redis-backed
limiter (:class:`~fournines.RedisGcra`, :class:`~fournines.RedisSlidingWindow`)
shared by every process, which is awaited. Every rule that matches a request
applies (a global per-client limit and a stricter one on ``/login`` both count);
the first rule that refuses answers.

A refused request gets ``429 Too Many Requests`` at once, without calling the
app, with these headers (policy name = the rule's name)::

    Retry-After: 12
    RateLimit-Policy: "login";q=5;w=60
    RateLimit: "login";r=0;t=12

and an ``application/problem+json`` body (RFC 9457: ``type``, ``title``,
``status``, ``detail``, as every early rejection of fournines' middleware) of the
draft's "quota-exceeded" problem type, naming the violated policy. ``Retry-After`` and ``t`` are the
limiter's ``retry_after`` rounded up to whole seconds (so a client that waits
that long finds room).

The header syntax is that of draft-ietf-httpapi-ratelimit-headers-11 (May
2026; unchanged in this respect since -08): both fields are Structured Field
Lists of Items whose value is the policy name as a String; ``RateLimit-Policy``
items carry ``q`` (quota, Integer) and ``w`` (window, Integer seconds),
``RateLimit`` items carry ``r`` (available quota) and ``t`` (seconds of the
effective window). The partition key (``pk``) is not sent: it would echo the
client's key (an API key, say) back in every response.

What ``q`` and ``w`` advertise is derived from the limiter: a sliding window
advertises its ``limit`` per ``window``; a token bucket or GCRA advertises its
capacity (``burst``) per the time it takes to refill it, or its rate per
second when that is under a second. ``quota=`` and ``window=`` on the rule
override them.

With ``headers_on_success=True`` admitted responses carry ``RateLimit-Policy``
and ``RateLimit`` too, with the remaining quota of local token buckets and
GCRAs (other limiters cannot tell it cheaply and are left out). It costs a
wrapper around ``send``, so it is off by default; a rate limit that is never
reached then costs one limiter decision per matching rule and nothing else.

Health and metrics paths (``exempt_paths``) are never limited.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import ConfigurationError, RateLimitedError, check_number
from ..policies.rate_limit import Gcra, KeyedLimiter, TokenBucket, _KeySlot, _Limiter
from ._types import (
    PROBLEM_CONTENT_TYPE,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    problem,
    respond,
)
from .shedding import DEFAULT_NEVER_SHED_PATHS

__all__ = ["DRAFT", "KeyFunc", "RateLimitMiddleware", "RateLimitRule"]

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
_KEYED, _SHARED, _REMOTE = range(3)


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


def _remaining(limiter: object) -> tuple[int, int] | None:
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


class _Rule:
    """A rule compiled for the hot path."""

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

    def __init__(self, rule: RateLimitRule) -> None:
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
            self.kind, self.target = _KEYED, spec
            sample: object = spec._factory()
        elif isinstance(spec, _Limiter):
            if self.key_kind != _KEY_GLOBAL:
                raise ConfigurationError(
                    f"{owner}.limiter is one limiter, which every client would share: "
                    "use key='global' for that, or pass a factory such as "
                    "lambda: TokenBucket(...) for one limiter per client"
                )
            self.kind, self.target = _SHARED, spec
            sample = spec
        elif inspect.iscoroutinefunction(getattr(spec, "try_acquire", None)):
            self.kind, self.target = _REMOTE, spec
            sample = spec
        elif hasattr(spec, "try_acquire"):
            raise ConfigurationError(
                f"{owner}.limiter {spec!r} blocks the event loop: use an async limiter "
                "(RedisGcra, RedisSlidingWindow) or a local one"
            )
        elif callable(spec):
            made = spec()
            if not isinstance(made, _Limiter):
                raise ConfigurationError(
                    f"{owner}.limiter must return a local rate limiter, returned {made!r}"
                )
            sample = made
            if self.key_kind == _KEY_GLOBAL:
                self.kind, self.target = _SHARED, made
            else:
                self.kind = _KEYED
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


class RateLimitMiddleware:
    """ASGI middleware applying :class:`RateLimitRule` s; refused requests get 429.

    See the module documentation for headers and semantics. ``exempt_paths``
    (exact paths) are never limited; ``headers_on_success`` adds the RateLimit
    headers to admitted responses as well.

    Counters: :attr:`limited` (requests refused), :attr:`rejections` (per rule
    name). The limiters themselves send :class:`~fournines.CallRejected`
    events (``policy="rate_limit"``) to their listeners and the global ones.
    """

    __slots__ = ("_exempt", "_on_success", "_rules", "app", "limited", "rejections", "rules")

    def __init__(
        self,
        app: ASGIApp,
        *,
        rules: Sequence[RateLimitRule],
        exempt_paths: Collection[str] = DEFAULT_NEVER_SHED_PATHS,
        headers_on_success: bool = False,
    ) -> None:
        owner = "RateLimitMiddleware"
        if isinstance(rules, RateLimitRule) or not all(
            isinstance(rule, RateLimitRule) for rule in rules
        ):
            raise ConfigurationError(
                f"{owner}.rules must be a sequence of RateLimitRule, got {rules!r}"
            )
        names = [rule.name for rule in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigurationError(f"{owner}.rules has duplicate names: {duplicates}")
        if isinstance(exempt_paths, str) or not all(isinstance(p, str) for p in exempt_paths):
            raise ConfigurationError(
                f"{owner}.exempt_paths must be a collection of str, got {exempt_paths!r}"
            )
        self.app = app
        self.rules = tuple(rules)
        self._rules = tuple(_Rule(rule) for rule in rules)
        self._exempt = frozenset(exempt_paths)
        self._on_success = bool(headers_on_success)
        self.limited = 0
        """Requests refused with 429."""
        self.rejections: dict[str, int] = dict.fromkeys(names, 0)
        """Requests refused, per rule name."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Take each matching rule's cost, then run the app; or answer 429."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in self._exempt:
            await self.app(scope, receive, send)
            return
        admitted: list[tuple[_Rule, _Limiter | None]] | None = [] if self._on_success else None
        for rule in self._rules:
            if not path.startswith(rule.prefix):
                continue
            if rule.regex is not None and rule.regex.match(path) is None:
                continue
            if rule.methods is not None and scope["method"] not in rule.methods:
                continue
            key = rule.key_of(scope)
            if key is None:
                continue
            kind = rule.kind
            limiter: _Limiter | None
            try:
                if kind == _KEYED:
                    limiter = rule.target.limiter(key)
                    limiter.try_acquire(rule.cost)
                elif kind == _SHARED:
                    limiter = rule.target
                    limiter.try_acquire(rule.cost)
                else:
                    limiter = None
                    if isinstance(key, bytes):
                        key = key.decode("latin-1")
                    await rule.target.try_acquire(rule.cost, key=f"{rule.name}:{key}")
            except RateLimitedError as exc:
                await self._refuse(send, rule, exc.retry_after)
                return
            if admitted is not None:
                admitted.append((rule, limiter))
        if admitted:
            send = self._with_headers(send, admitted)
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send, rule: _Rule, retry_after: float | None) -> None:
        self.limited += 1
        self.rejections[rule.name] += 1
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
        await respond(send, 429, rule.problem, content_type=PROBLEM_CONTENT_TYPE,
                      headers=headers)

    @staticmethod
    def _with_headers(send: Send, admitted: list[tuple[_Rule, _Limiter | None]]) -> Send:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                policies: list[bytes] = []
                limits: list[bytes] = []
                for rule, limiter in admitted:
                    if rule.policy is not None:
                        policies.append(rule.policy)
                    if limiter is not None:
                        state = _remaining(limiter)
                        if state is not None:
                            limits.append(f'"{rule.name}";r={state[0]};t={state[1]}'.encode())
                extra = []
                if policies:
                    extra.append((b"ratelimit-policy", b", ".join(policies)))
                if limits:
                    extra.append((b"ratelimit", b", ".join(limits)))
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        return send_with_headers

    def __repr__(self) -> str:
        return (f"RateLimitMiddleware(rules={[r.name for r in self.rules]}, "
                f"limited={self.limited})")

