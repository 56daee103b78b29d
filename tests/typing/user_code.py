"""Typical user code, checked by ``mypy --strict`` (``make lint``) and run by pytest.

Every ``assert_type`` line is a claim about what a user's type checker sees: a
decorated function keeps its parameters and its return type, and a decorated
``async def`` stays a coroutine function (so ``asyncio.run(f())`` and
``asyncio.create_task(f())`` type-check). Lazily loaded names (``serve``,
``MetricsMiddleware``, ``RedisGcra``, ...) have their real types, not ``object``.
Nothing here touches the network when it is imported or when :func:`main` runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, assert_type

import httpx

import fournines
import fournines.asgi
import fournines.lab
from fournines import (
    Backoff,
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Gcra,
    Hedge,
    KeyedLimiter,
    Pipeline,
    Retry,
    RetryBudget,
    SlidingWindow,
    StaleCache,
    Timeout,
    TokenBucket,
    deadline_after,
)
from fournines.asgi import (
    MetricsMiddleware,
    TraceContextFilter,
    TracingMiddleware,
    health_app,
    protect,
    serve,
)
from fournines.client import (
    AsyncBalancingTransport,
    AsyncResilientTransport,
    BalancingTransport,
    ClientPolicy,
    ResilientTransport,
)
from fournines.testing import FakeClock

clock = FakeClock()
budget = RetryBudget(ratio=0.2)
breaker = CircuitBreaker("payments", clock=clock)
retry = Retry(attempts=3, backoff=Backoff(initial=0.05, cap=1.0), budget=budget, clock=clock)
pipeline = Pipeline(
    StaleCache(max_age=300),
    Timeout(2.0),
    retry,
    TokenBucket(rate=100, capacity=20),
    breaker,
    Bulkhead(max_concurrent=20),
)

# -- decorators: every policy and the pipeline keep the signature -------------------


@Retry(attempts=2, clock=clock)
async def fetch_status(order_id: str, *, verbose: bool = False) -> str:
    """The status of an order."""
    return f"paid:{order_id}" if verbose else "paid"


@Retry(attempts=2, clock=clock)
def price(order_id: str, quantity: int = 1) -> float:
    """The price of an order."""
    return 9.5 * quantity


@pipeline
async def piped(order_id: str) -> int:
    return len(order_id)


@pipeline
def piped_sync(order_id: str) -> int:
    return len(order_id)


@breaker
async def through_breaker(x: int) -> list[int]:
    return [x]


@TokenBucket(rate=100)
async def limited(x: int) -> int:
    return x


@Gcra(rate=100, burst=10)
def gcra_limited(x: int) -> int:
    return x


@SlidingWindow(limit=100, window=1)
def window_limited(x: int) -> int:
    return x


@Bulkhead(max_concurrent=2)
async def in_bulkhead(x: int) -> int:
    return x


@Timeout(1.0)
async def timed(x: int) -> int:
    return x


@Fallback(value="Guest")
async def nickname(user_id: int) -> str:
    raise ConnectionError("profile service down")


@StaleCache(max_age=60)
def cached(user_id: int) -> str:
    return f"user-{user_id}"


@Hedge(delay=0.05)
async def hedged(key: str) -> bytes:
    return key.encode()


per_user = KeyedLimiter(lambda: TokenBucket(rate=10), key=lambda user_id: user_id)


@per_user
async def keyed(user_id: int) -> float:
    return user_id / 2


@per_user
def keyed_sync(user_id: int) -> float:
    return user_id / 2




async def plain(order_id: str) -> str:
    return order_id


def plain_sync(order_id: str) -> str:
    return order_id


async def decorated_signatures() -> None:
    """What each decorated function returns, awaited; and its coroutine, as a task."""
    assert_type(await fetch_status("42"), str)
    assert_type(await fetch_status("42", verbose=True), str)
    assert_type(price("42", 2), float)
    assert_type(await piped("42"), int)
    assert_type(piped_sync("42"), int)
    assert_type(await through_breaker(1), list[int])
    assert_type(await limited(1), int)
    assert_type(gcra_limited(1), int)
    assert_type(window_limited(1), int)
    assert_type(await in_bulkhead(1), int)
    assert_type(await timed(1), int)
    assert_type(await nickname(1), str)
    assert_type(cached(1), str)
    assert_type(await hedged("k"), bytes)
    assert_type(await Hedge(delay=0.05).acall(hedged, "k"), bytes)
    assert_type(await keyed(1), float)
    assert_type(keyed_sync(1), float)
    assert_type(await per_user.acall(keyed, 1), float)
    # A decorated async def is a coroutine function, so it makes tasks.
    assert_type(await asyncio.create_task(fetch_status("42")), str)
    assert_type(await asyncio.gather(piped("a"), limited(1)), tuple[int, int])
    # The closures of wrap/awrap (and so of decorators) keep the parameters.
    assert_type(pipeline.wrap(plain_sync)("42"), str)
    assert_type(await pipeline.awrap(plain)("42"), str)
    assert_type(retry.wrap(plain_sync)("42"), str)
    assert_type(await retry.awrap(plain)("42"), str)
    assert_type(await breaker.awrap(plain)("42"), str)
    assert_type(breaker.wrap(plain_sync)("42"), str)
    assert_type(Bulkhead(max_concurrent=1).wrap(plain_sync)("42"), str)
    assert_type(await Bulkhead(max_concurrent=1).awrap(plain)("42"), str)
    assert_type(TokenBucket(rate=1).wrap(plain_sync)("42"), str)
    assert_type(await TokenBucket(rate=1).awrap(plain)("42"), str)
    assert_type(await Timeout(1.0).awrap(plain)("42"), str)
    assert_type(pipeline.call(plain_sync, "42"), str)
    assert_type(await pipeline.acall(plain, "42"), str)
    assert_type(retry.call(price, "42", quantity=3), float)
    assert_type(await breaker.acall(plain, "42"), str)
    if TYPE_CHECKING:  # wrong arguments are caught (an unused ignore fails mypy --strict)
        price(42)  # type: ignore[arg-type]
        price("42", quantity="3")  # type: ignore[arg-type]
        await fetch_status("42", loud=True)  # type: ignore[call-arg]
        await piped(7)  # type: ignore[arg-type]
        pipeline.wrap(plain_sync)(42)  # type: ignore[arg-type]
        await retry.awrap(plain)(42)  # type: ignore[arg-type]
        pipeline.call(plain_sync, 42)  # type: ignore[arg-type]


per_client = KeyedLimiter(lambda: TokenBucket(rate=10, capacity=10), max_keys=10_000)

# -- lazily loaded names have their real types ---------------------------------------

serve_fn: Callable[..., None] = serve
metrics_type: type[MetricsMiddleware] = fournines.asgi.MetricsMiddleware
tracing_type: type[TracingMiddleware] = fournines.asgi.TracingMiddleware
log_filter: type[logging.Filter] = TraceContextFilter
redis_limiter: type[fournines.RedisGcra] = fournines.RedisGcra
sync_redis_limiter: type[fournines.SyncRedisSlidingWindow] = fournines.SyncRedisSlidingWindow
lab_runner = fournines.lab.run_lab
assert_type(fournines.lab.LabResult, type[fournines.lab.LabResult])


def serve_protected() -> None:
    """What a service's ``main`` does (not called here: it serves until SIGTERM)."""
    service = protect(health_app(), service="orders",
                      rate_limit=lambda: TokenBucket(rate=100, capacity=200))
    serve(service, port=8000)


# -- transports: plain httpx clients, typed as such ----------------------------------

policy = ClientPolicy(attempts=3, attempt_timeout=1.0, max_concurrent=50)
async_transport = AsyncResilientTransport(
    AsyncBalancingTransport(["http://127.0.0.1:8001", "http://127.0.0.1:8002"]), config=policy)
sync_transport = ResilientTransport(BalancingTransport(["http://127.0.0.1:8001"]), config=policy)
assert_type(async_transport, AsyncResilientTransport)
async_client = httpx.AsyncClient(transport=async_transport)
sync_client = httpx.Client(transport=sync_transport)


async def get_status(client: httpx.AsyncClient, order_id: str) -> int:
    response = await client.get(f"http://payments/status/{order_id}")
    return response.status_code


# -- running it ----------------------------------------------------------------------


async def run_async() -> list[object]:
    await decorated_signatures()
    task = asyncio.create_task(fetch_status("42", verbose=True))
    assert_type(task, asyncio.Task[str])
    with deadline_after(5.0):
        results: list[object] = [
            await task,
            await piped("42"),
            await through_breaker(1),
            await limited(2),
            await in_bulkhead(3),
            await timed(4),
            await nickname(5),
            await pipeline.acall(plain, "7"),
        ]
    return results


def main() -> list[object]:
    """Run every decorated function once; returns what they answered."""
    results = asyncio.run(run_async())
    assert_type(asyncio.run(fetch_status("1")), str)
    results += [price("42", 2), piped_sync("abc"), gcra_limited(1), window_limited(2),
                cached(3), pipeline.call(plain_sync, "8"), retry.wrap(plain_sync)("9")]
    per_client.try_acquire("client-42")
    return results


if __name__ == "__main__":
    print(main())
