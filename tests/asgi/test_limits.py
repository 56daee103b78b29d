"""RateLimitMiddleware: per route and per client, 429 with Retry-After and RateLimit headers."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from fournines import ConfigurationError, Gcra, KeyedLimiter, SlidingWindow, TokenBucket
from fournines.asgi._types import Receive, Scope, Send, respond
from fournines.asgi.limits import DRAFT, RateLimitMiddleware, RateLimitRule
from fournines.policies.redis_rate_limit import RedisGcra, SyncRedisGcra
from fournines.testing import FakeClock

from .._servers import RedisServer


class Counter:
    """An app that counts its calls and answers 200."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await respond(send, 200, b"ok")


@pytest.fixture
def inner() -> Counter:
    return Counter()


def client_of(app: Any, ip: str = "10.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 4321))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def statuses(client: httpx.AsyncClient, path: str, count: int,
                   headers: dict[str, str] | None = None) -> list[int]:
    return [(await client.get(path, headers=headers)).status_code for _ in range(count)]


def window(clock: FakeClock, limit: int = 3, seconds: float = 60) -> Any:
    return lambda: SlidingWindow(limit=limit, window=seconds, clock=clock)


async def test_requests_over_the_limit_get_429_without_calling_the_app(
    inner: Counter, clock: FakeClock
) -> None:
    app = RateLimitMiddleware(inner, rules=[RateLimitRule(name="api", limiter=window(clock))])
    async with client_of(app) as client:
        assert await statuses(client, "/orders", 4) == [200, 200, 200, 429]
    assert (inner.calls, app.limited, app.rejections) == (3, 1, {"api": 1})


async def test_a_429_carries_retry_after_and_the_ratelimit_headers(
    inner: Counter, clock: FakeClock
) -> None:
    rule = RateLimitRule(name="api", limiter=window(clock, limit=3, seconds=60))
    async with client_of(RateLimitMiddleware(inner, rules=[rule])) as client:
        await statuses(client, "/", 3)
        response = await client.get("/")
    # The sliding window counter frees a unit once 1/3 of the next window has passed.
    assert response.headers["retry-after"] == "80"
    assert response.headers["ratelimit-policy"] == '"api";q=3;w=60'
    assert response.headers["ratelimit"] == '"api";r=0;t=80'


async def test_retry_after_is_rounded_up_to_whole_seconds(
    inner: Counter, clock: FakeClock
) -> None:
    rule = RateLimitRule(name="api",
                         limiter=lambda: TokenBucket(rate=0.4, capacity=1, clock=clock))
    async with client_of(RateLimitMiddleware(inner, rules=[rule])) as client:
        await client.get("/")
        response = await client.get("/")
    assert response.headers["retry-after"] == "3"  # 2.5 s


async def test_a_429_body_is_a_quota_exceeded_problem(inner: Counter, clock: FakeClock) -> None:
    rule = RateLimitRule(name="api", limiter=window(clock, limit=1))
    async with client_of(RateLimitMiddleware(inner, rules=[rule])) as client:
        await client.get("/")
        response = await client.get("/")
    assert response.headers["content-type"] == "application/problem+json"
    assert json.loads(response.content) == {
        "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
        "title": "Request cannot be satisfied as assigned quota has been exceeded",
        "status": 429,
        "detail": "rate limit 'api' exceeded: retry after the Retry-After seconds",
        "violated-policies": ["api"],
    }


async def test_each_api_key_has_its_own_budget(inner: Counter, clock: FakeClock) -> None:
    rule = RateLimitRule(name="api", limiter=window(clock, limit=2), key="header:x-api-key")
    async with client_of(RateLimitMiddleware(inner, rules=[rule])) as client:
        first = await statuses(client, "/", 3, {"x-api-key": "alice"})
        second = await statuses(client, "/", 2, {"x-api-key": "bob"})
    assert (first, second) == ([200, 200, 429], [200, 200])


async def test_a_request_without_the_key_header_is_keyed_by_its_ip(
    inner: Counter, clock: FakeClock
) -> None:
    rule = RateLimitRule(name="api", limiter=window(clock, limit=1), key="header:x-api-key")
    app = RateLimitMiddleware(inner, rules=[rule])
    async with client_of(app, ip="10.0.0.1") as one, client_of(app, ip="10.0.0.2") as two:
        assert await statuses(one, "/", 2) == [200, 429]
        assert await statuses(two, "/", 1) == [200]
        assert await statuses(one, "/", 1, {"x-api-key": "alice"}) == [200]


async def test_each_client_ip_has_its_own_budget(inner: Counter, clock: FakeClock) -> None:
    app = RateLimitMiddleware(inner, rules=[RateLimitRule(name="api",
                                                          limiter=window(clock, limit=1))])
    async with client_of(app, ip="10.0.0.1") as one, client_of(app, ip="10.0.0.2") as two:
        assert await statuses(one, "/", 2) == [200, 429]
        assert await statuses(two, "/", 1) == [200]


async def test_rules_apply_per_route(inner: Counter, clock: FakeClock) -> None:
    rules = [
        RateLimitRule(name="login", path="/login", limiter=window(clock, limit=1)),
        RateLimitRule(name="api", path="/api/", limiter=window(clock, limit=5)),
    ]
    async with client_of(RateLimitMiddleware(inner, rules=rules)) as client:
        login = await statuses(client, "/login", 2)
        api = await statuses(client, "/api/orders", 2)
        other = await statuses(client, "/about", 10)
        refused = await client.get("/login")
    assert (login, api, set(other)) == ([200, 429], [200, 200], {200})
    assert refused.headers["ratelimit-policy"] == '"login";q=1;w=60'


async def test_every_matching_rule_applies(inner: Counter, clock: FakeClock) -> None:
    rules = [
        RateLimitRule(name="all", limiter=window(clock, limit=3)),
        RateLimitRule(name="login", path="/login", limiter=window(clock, limit=10)),
    ]
    app = RateLimitMiddleware(inner, rules=rules)
    async with client_of(app) as client:
        result = await statuses(client, "/login", 4)
    assert (result, app.rejections) == ([200, 200, 200, 429], {"all": 1, "login": 0})


async def test_a_rule_can_select_methods(inner: Counter, clock: FakeClock) -> None:
    rule = RateLimitRule(name="writes", methods=["post"], limiter=window(clock, limit=1))
    async with client_of(RateLimitMiddleware(inner, rules=[rule])) as client:
        posts = [(await client.post("/orders")).status_code for _ in range(2)]
        gets = await statuses(client, "/orders", 3)
    assert (posts, gets) == ([200, 429], [200, 200, 200])


async def test_a_rule_can_select_paths_by_pattern(inner: Counter, clock: FakeClock) -> None:
    rule = RateLimitRule(name="exports", pattern=r"/orders/\d+/export$",
                         limiter=window(clock, limit=1))
    async with client_of(RateLimitMiddleware(inner, rules=[rule])) as client:
        exports = await statuses(client, "/orders/7/export", 2)
        orders = await statuses(client, "/orders/7", 2)
    assert (exports, orders) == ([200, 429], [200, 200])


async def test_a_global_rule_shares_one_budget_between_clients(
    inner: Counter, clock: FakeClock
) -> None:
    rule = RateLimitRule(name="all", key="global",
                         limiter=SlidingWindow(limit=2, window=10, clock=clock))
    app = RateLimitMiddleware(inner, rules=[rule])
    async with client_of(app, ip="10.0.0.1") as one, client_of(app, ip="10.0.0.2") as two:
        assert await statuses(one, "/", 1) + await statuses(two, "/", 2) == [200, 200, 429]


async def test_a_key_function_names_the_client_or_exempts_it(
    inner: Counter, clock: FakeClock
) -> None:
    def tenant(scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"x-tenant":
                return None if value == b"internal" else value.decode()
        return "anonymous"

    rule = RateLimitRule(name="tenant", key=tenant, limiter=window(clock, limit=1))
    async with client_of(RateLimitMiddleware(inner, rules=[rule])) as client:
        acme = await statuses(client, "/", 2, {"x-tenant": "acme"})
        internal = await statuses(client, "/", 3, {"x-tenant": "internal"})
    assert (acme, internal) == ([200, 429], [200, 200, 200])


async def test_a_shared_keyed_limiter_can_be_given(inner: Counter, clock: FakeClock) -> None:
    keyed = KeyedLimiter(window(clock, limit=1), max_keys=2)
    app = RateLimitMiddleware(inner, rules=[RateLimitRule(name="api", limiter=keyed)])
    async with client_of(app) as client:
        assert await statuses(client, "/", 2) == [200, 429]
    assert len(keyed) == 1


async def test_client_keys_are_kept_in_bounded_memory(inner: Counter, clock: FakeClock) -> None:
    rule = RateLimitRule(name="api", limiter=window(clock, limit=1), key="header:x-api-key",
                         max_keys=3)
    app = RateLimitMiddleware(inner, rules=[rule])
    async with client_of(app) as client:
        for i in range(10):
            await client.get("/", headers={"x-api-key": f"key-{i}"})
    target = app._rules[0].target
    assert isinstance(target, KeyedLimiter)
    assert len(target) == 3


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz", "/startupz", "/metrics"])
async def test_health_and_metrics_paths_are_never_limited(
    inner: Counter, clock: FakeClock, path: str
) -> None:
    app = RateLimitMiddleware(inner, rules=[RateLimitRule(name="all",
                                                          limiter=window(clock, limit=1))])
    async with client_of(app) as client:
        assert set(await statuses(client, path, 5)) == {200}


async def test_an_admitted_response_has_no_ratelimit_headers_by_default(
    inner: Counter, clock: FakeClock
) -> None:
    app = RateLimitMiddleware(inner, rules=[RateLimitRule(name="api", limiter=window(clock))])
    async with client_of(app) as client:
        response = await client.get("/")
    assert "ratelimit" not in response.headers
    assert "ratelimit-policy" not in response.headers


async def test_admitted_responses_can_carry_the_remaining_quota(
    inner: Counter, clock: FakeClock
) -> None:
    rules = [
        RateLimitRule(name="bucket", limiter=lambda: TokenBucket(rate=1, capacity=5,
                                                                 clock=clock)),
        RateLimitRule(name="gcra", limiter=lambda: Gcra(rate=2, burst=10, clock=clock)),
        RateLimitRule(name="window", limiter=window(clock, limit=9)),
    ]
    app = RateLimitMiddleware(inner, rules=rules, headers_on_success=True)
    async with client_of(app) as client:
        await client.get("/")
        response = await client.get("/")
    assert response.headers["ratelimit-policy"] == (
        '"bucket";q=5;w=5, "gcra";q=10;w=5, "window";q=9;w=60'
    )
    # The sliding window cannot tell its remaining quota cheaply: it is left out.
    assert response.headers["ratelimit"] == '"bucket";r=3;t=2, "gcra";r=8;t=1'


async def test_the_advertised_policy_can_be_overridden(inner: Counter, clock: FakeClock) -> None:
    rule = RateLimitRule(name="api", quota=100, window=3600,
                         limiter=lambda: TokenBucket(rate=1, capacity=1, clock=clock))
    async with client_of(RateLimitMiddleware(inner, rules=[rule])) as client:
        await client.get("/")
        response = await client.get("/")
    assert response.headers["ratelimit-policy"] == '"api";q=100;w=3600'


async def test_a_fast_bucket_advertises_its_rate_per_second(
    inner: Counter, clock: FakeClock
) -> None:
    rule = RateLimitRule(name="api", limiter=lambda: Gcra(rate=50, burst=1, clock=clock))
    async with client_of(RateLimitMiddleware(inner, rules=[rule])) as client:
        await client.get("/")
        response = await client.get("/")
    assert response.headers["ratelimit-policy"] == '"api";q=50;w=1'


async def test_non_http_scopes_pass_through(inner: Counter, clock: FakeClock) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    limited = RateLimitMiddleware(app, rules=[RateLimitRule(name="a", limiter=window(clock))])

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        pass

    await limited({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]


def test_the_docstring_names_the_draft_implemented() -> None:
    import fournines.asgi.limits as module

    assert re.fullmatch(r"draft-ietf-httpapi-ratelimit-headers-\d\d", DRAFT)
    assert module.__doc__ is not None and DRAFT in module.__doc__


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bad name"}, r"RateLimitRule\.name "),
        ({"name": 'q"uote'}, r"RateLimitRule\.name "),
        ({"path": "orders"}, r"RateLimitRule\.path "),
        ({"key": "cookie"}, r"RateLimitRule\.key "),
        ({"key": "header:"}, r"RateLimitRule\.key "),
        ({"cost": 0}, r"RateLimitRule\.cost "),
        ({"max_keys": 0}, r"RateLimitRule\.max_keys "),
        ({"window": 0}, r"RateLimitRule\.window "),
        ({"methods": "GET"}, r"RateLimitRule\.methods "),
    ],
)
def test_bad_rules_raise_configuration_error_naming_the_field(
    kwargs: dict[str, Any], message: str
) -> None:
    settings: dict[str, Any] = {"name": "api", "limiter": lambda: TokenBucket(rate=1)}
    with pytest.raises(ConfigurationError, match=message):
        RateLimitRule(**{**settings, **kwargs})


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (RateLimitRule(name="a", limiter=TokenBucket(rate=1)), "key='global'"),
        (RateLimitRule(name="a", limiter=lambda: TokenBucket(rate=1, capacity=2), cost=3),
         "exceeds the limiter's capacity"),
        (RateLimitRule(name="a", limiter=lambda: "nope"), "must return a local rate limiter"),
        (RateLimitRule(name="a", limiter=42), "must be a limiter factory"),
    ],
)
def test_unusable_limiters_are_refused_when_the_middleware_is_built(
    inner: Counter, rule: RateLimitRule, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        RateLimitMiddleware(inner, rules=[rule])


def test_duplicate_rule_names_are_refused(inner: Counter) -> None:
    rule = RateLimitRule(name="a", limiter=lambda: TokenBucket(rate=1))
    with pytest.raises(ConfigurationError, match="duplicate names"):
        RateLimitMiddleware(inner, rules=[rule, rule])


# --- Redis ---------------------------------------------------------------------------------------


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(redis_server.url, retry=AsyncRetry(NoBackoff(), 0),
                                   socket_timeout=2, socket_connect_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()


async def test_a_redis_limiter_is_awaited_per_client_key(
    inner: Counter, redis_client: aredis.Redis
) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    limiter = RedisGcra(redis_client, rate=0.001, burst=2, prefix=prefix)
    rule = RateLimitRule(name="api", limiter=limiter, key="header:x-api-key")
    async with client_of(RateLimitMiddleware(inner, rules=[rule])) as client:
        alice = await statuses(client, "/", 3, {"x-api-key": "alice"})
        bob = await statuses(client, "/", 1, {"x-api-key": "bob"})
        refused = await client.get("/", headers={"x-api-key": "alice"})
    assert (alice, bob) == ([200, 200, 429], [200])
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["ratelimit-policy"] == '"api";q=2;w=2000'
    assert await redis_client.exists(f"{prefix}api:alice", f"{prefix}api:bob") == 2


def test_a_blocking_redis_limiter_is_refused(inner: Counter) -> None:
    import redis

    limiter = SyncRedisGcra(redis.Redis(), rate=1)
    with pytest.raises(ConfigurationError, match="blocks the event loop"):
        RateLimitMiddleware(inner, rules=[RateLimitRule(name="api", limiter=limiter)])
