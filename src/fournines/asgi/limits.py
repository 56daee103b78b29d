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

from collections.abc import Collection, Sequence

from .._errors import ConfigurationError, RateLimitedError
from .._http_limits import (
    DRAFT,
    KEYED,
    SHARED,
    CompiledRule,
    KeyFunc,
    RateLimitRule,
    refusal_headers,
    remaining,
)
from ..policies.rate_limit import _Limiter
from ._types import PROBLEM_CONTENT_TYPE, ASGIApp, Message, Receive, Scope, Send, respond
from .shedding import DEFAULT_NEVER_SHED_PATHS

__all__ = ["DRAFT", "KeyFunc", "RateLimitMiddleware", "RateLimitRule"]

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
        self._rules = tuple(CompiledRule(rule) for rule in rules)
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
        admitted: list[tuple[CompiledRule, _Limiter | None]] | None = (
            [] if self._on_success else None)
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
                if kind == KEYED:
                    limiter = rule.target.limiter(key)
                    limiter.try_acquire(rule.cost)
                elif kind == SHARED:
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

    async def _refuse(self, send: Send, rule: CompiledRule, retry_after: float | None) -> None:
        self.limited += 1
        self.rejections[rule.name] += 1
        await respond(send, 429, rule.problem, content_type=PROBLEM_CONTENT_TYPE,
                      headers=refusal_headers(rule, retry_after))

    @staticmethod
    def _with_headers(send: Send, admitted: list[tuple[CompiledRule, _Limiter | None]]) -> Send:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                policies: list[bytes] = []
                limits: list[bytes] = []
                for rule, limiter in admitted:
                    if rule.policy is not None:
                        policies.append(rule.policy)
                    if limiter is not None:
                        state = remaining(limiter)
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

