"""User code as users see it: typed signatures (mypy, see user_code.py) and named closures."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fournines import (
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Gcra,
    Pipeline,
    Retry,
    SlidingWindow,
    StaleCache,
    Timeout,
    TokenBucket,
)
from fournines.policies.pipeline import Policy
from fournines.testing import FakeClock

from . import user_code


def test_the_typed_user_code_runs() -> None:
    assert user_code.main() == [
        "paid:42", 2, [1], 2, 3, 4, "Guest", "7", 19.0, 3, 1, 2, "user-3", "8", "9",
    ]


class SeesTheFunction:
    """A user-written policy that records the name of the function it is given."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.seen.append(fn.__qualname__)
        return fn(*args, **kwargs)

    async def acall(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        self.seen.append(fn.__qualname__)
        return await fn(*args, **kwargs)


def user_name(user_id: int) -> str:
    """The name of a user."""
    return f"name-{user_id}"


async def auser_name(user_id: int) -> str:
    """The name of a user, asynchronously."""
    return f"name-{user_id}"


def policies() -> list[Policy]:
    clock = FakeClock()
    return [
        Retry(attempts=2, clock=clock), CircuitBreaker("b", clock=clock),
        TokenBucket(rate=10, clock=clock), Gcra(rate=10, clock=clock),
        SlidingWindow(limit=10, window=1, clock=clock), Bulkhead(max_concurrent=2),
        Timeout(1.0, clock=clock), Fallback(value="x"), StaleCache(max_age=1, clock=clock),
        SeesTheFunction(),
    ]


def _named_like(wrapped: Callable[..., Any], fn: Callable[..., Any]) -> None:
    assert (wrapped.__qualname__, wrapped.__name__, wrapped.__module__, wrapped.__doc__) == (
        fn.__qualname__, fn.__name__, fn.__module__, fn.__doc__)
    assert inspect.unwrap(wrapped) is fn


@pytest.mark.parametrize("policy", policies(), ids=lambda p: type(p).__name__)
def test_a_decorated_function_keeps_its_name_and_is_unwrappable(policy: Policy) -> None:
    sync = Pipeline(policy)(user_name)
    _named_like(sync, user_name)
    assert sync(1) == "name-1"


@pytest.mark.parametrize("policy", policies(), ids=lambda p: type(p).__name__)
def test_a_decorated_coroutine_function_stays_one_and_keeps_its_name(policy: Policy) -> None:
    wrapped = Pipeline(policy)(auser_name)
    _named_like(wrapped, auser_name)
    assert inspect.iscoroutinefunction(wrapped)
    assert asyncio.run(wrapped(1)) == "name-1"


def test_each_policy_decorator_keeps_the_name() -> None:
    for policy in policies():
        if callable(policy):
            _named_like(policy(user_name), user_name)
            _named_like(policy(auser_name), auser_name)


def test_an_outer_policy_in_a_pipeline_sees_the_users_function_not_a_closure() -> None:
    outer = SeesTheFunction()
    pipeline = Pipeline(outer, Retry(attempts=2), CircuitBreaker("b"), SeesTheFunction())
    assert pipeline.call(user_name, 1) == "name-1"
    assert asyncio.run(pipeline.acall(auser_name, 2)) == "name-2"
    pipeline(user_name)(3)
    assert outer.seen == ["user_name", "auser_name", "user_name"]


def test_every_layer_of_a_pipeline_chain_is_named_after_the_function() -> None:
    chain = Pipeline(Retry(attempts=2), SeesTheFunction(), TokenBucket(rate=10)).awrap(auser_name)
    layers = []
    while hasattr(chain, "__wrapped__"):
        layers.append(chain.__qualname__)
        chain = chain.__wrapped__
    assert layers == ["auser_name"] * 3
    assert chain is auser_name


def test_an_empty_pipeline_still_makes_a_coroutine_function() -> None:
    def later(x: int) -> Awaitable[int]:
        return asyncio.sleep(0, x)

    wrapped = Pipeline().awrap(later)
    assert inspect.iscoroutinefunction(wrapped)
    assert wrapped.__qualname__ == later.__qualname__
    assert asyncio.run(wrapped(5)) == 5


LAZY = {
    "fournines": ["RedisGcra", "RedisSlidingWindow", "SyncRedisGcra", "SyncRedisSlidingWindow"],
    "fournines.asgi": ["MetricsMiddleware", "TraceContextFilter", "TracingMiddleware", "serve"],
    "fournines.lab": ["LabResult", "run_and_report", "run_lab"],
}
OPTIONAL = ["redis", "prometheus_client", "opentelemetry", "uvicorn", "httpx"]


@pytest.mark.parametrize("package", sorted(LAZY))
def test_lazy_names_are_listed_by_dir_without_importing_their_dependency(package: str) -> None:
    script = (
        f"import sys, importlib; m = importlib.import_module({package!r}); "
        f"missing = [n for n in {LAZY[package]!r} if n not in dir(m)]; "
        f"print(missing, [n for n in {OPTIONAL!r} if n in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[] []"


@pytest.mark.parametrize("package", sorted(LAZY))
def test_dir_still_lists_the_modules_own_names(package: str) -> None:
    module = __import__(package, fromlist=["__all__"])
    assert set(module.__all__) <= set(dir(module))


class PassesThrough:
    """A policy whose own wrap lets calls through untouched (returns the function itself)."""

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    async def acall(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn

    def awrap(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        return fn


def test_a_policy_that_returns_the_function_itself_does_not_make_it_wrap_itself() -> None:
    assert Pipeline(PassesThrough()).wrap(user_name) is user_name
    assert Pipeline(PassesThrough()).awrap(auser_name) is auser_name
    assert not hasattr(user_name, "__wrapped__")
    assert not hasattr(auser_name, "__wrapped__")
