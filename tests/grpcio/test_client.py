"""The client interceptor against real grpc.aio servers on loopback."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest

from fournines import (
    CircuitOpenError,
    ConfigurationError,
    ConsecutiveFailures,
    DeadlineExceededError,
    RetryBudget,
    State,
    TokenBucket,
    deadline_after,
)
from fournines.grpc import (
    AioClientInterceptor,
    AioServerInterceptor,
    GrpcCircuitOpenError,
    GrpcDeadlineExceededError,
    RpcClientPolicy,
    RpcRateLimit,
    pushback,
)
from fournines.policies.backoff import Backoff
from fournines.testing import FakeClock

from ._service import Echo, aio_server, method

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
NO_JITTER = Backoff(initial=0.1, cap=1.0, jitter="none")


def interceptor(target: str, **settings: object) -> AioClientInterceptor:
    clock = settings.pop("clock", FakeClock())
    budget = settings.pop("budget", None)
    policy = RpcClientPolicy(**{"backoff": NO_JITTER, **settings})  # type: ignore[arg-type]
    return AioClientInterceptor(target, policy=policy, clock=clock,  # type: ignore[arg-type]
                                budget=budget)  # type: ignore[arg-type]


async def call(target: str, through: AioClientInterceptor, name: str = "Flaky",
               *, timeout: float | None = 5.0) -> bytes:
    async with grpc.aio.insecure_channel(target, interceptors=[through]) as channel:
        answer: bytes = await channel.unary_unary(method(name))(b"x", timeout=timeout)
        return answer


async def test_unavailable_is_retried_until_it_succeeds() -> None:
    echo = Echo()
    echo.failures = [UNAVAILABLE, UNAVAILABLE]
    async with aio_server(echo) as (_, target):
        assert await call(target, interceptor(target, attempts=3)) == b"ok"
    assert echo.calls["Flaky"] == 3


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNKNOWN])
async def test_codes_gRPC_does_not_call_retryable_are_not_retried(
        code: grpc.StatusCode) -> None:
    echo = Echo()
    echo.failures = [code]
    async with aio_server(echo) as (_, target):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(target, interceptor(target, attempts=3))
    assert failed.value.code() is code
    assert echo.calls["Flaky"] == 1


async def test_resource_exhausted_without_pushback_is_not_retried() -> None:
    echo = Echo()
    echo.failures = [grpc.StatusCode.RESOURCE_EXHAUSTED]
    async with aio_server(echo) as (_, target):
        with pytest.raises(grpc.aio.AioRpcError):
            await call(target, interceptor(target, attempts=3))
    assert echo.calls["Flaky"] == 1


async def test_resource_exhausted_with_pushback_is_retried_after_it() -> None:
    echo = Echo()
    echo.failures = [grpc.StatusCode.RESOURCE_EXHAUSTED]
    echo.pushback = "250"
    clock = FakeClock()
    async with aio_server(echo) as (_, target):
        assert await call(target, interceptor(target, attempts=3, clock=clock)) == b"ok"
    assert echo.calls["Flaky"] == 2
    assert clock.sleeps == [0.25]


async def test_a_negative_pushback_forbids_the_retry() -> None:
    echo = Echo()
    echo.failures = [UNAVAILABLE]
    echo.pushback = "-1"
    async with aio_server(echo) as (_, target):
        with pytest.raises(grpc.aio.AioRpcError):
            await call(target, interceptor(target, attempts=3))
    assert echo.calls["Flaky"] == 1


async def test_a_fournines_servers_pushback_beyond_max_retry_after_ends_the_retrying(
) -> None:
    echo = Echo()
    limit = RpcRateLimit(limiter=TokenBucket(rate=2, capacity=1))
    clock = FakeClock()
    async with aio_server(echo, interceptors=[AioServerInterceptor(rate_limits=[limit])]) as (
            _, target):
        through = interceptor(target, attempts=2, clock=clock, max_retry_after=0.001)
        await call(target, through, "Echo")
        # The bucket refills in 0.5 s: more than this client waits, so it gives up at once.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(target, through, "Echo")
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert clock.sleeps == []


async def test_retries_never_wait_past_the_deadline() -> None:
    echo = Echo()
    echo.failures = [UNAVAILABLE] * 10
    clock = FakeClock()
    async with aio_server(echo) as (_, target):
        through = interceptor(target, attempts=10, clock=clock,
                              backoff=Backoff(initial=0.2, multiplier=1, cap=0.2,
                                              jitter="none"))
        with deadline_after(0.5, clock=clock), pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(target, through, timeout=None)
    assert failed.value.code() is UNAVAILABLE
    # 0.2 + 0.2 fit in 0.5; a third wait would end past the deadline.
    assert clock.sleeps == [0.2, 0.2]
    assert echo.calls["Flaky"] == 3


async def test_the_call_timeout_bounds_its_retries_too() -> None:
    echo = Echo()
    echo.failures = [UNAVAILABLE] * 10
    clock = FakeClock()
    async with aio_server(echo) as (_, target):
        through = interceptor(target, attempts=10, clock=clock,
                              backoff=Backoff(initial=0.2, multiplier=1, cap=0.2,
                                              jitter="none"))
        with pytest.raises(grpc.aio.AioRpcError):
            await call(target, through, timeout=0.3)
    assert clock.sleeps == [0.2]


async def test_the_retry_budget_limits_retries() -> None:
    echo = Echo()
    echo.failures = [UNAVAILABLE] * 10
    budget = RetryBudget(ratio=0.0, min_per_second=0.0)
    async with aio_server(echo) as (_, target):
        with pytest.raises(grpc.aio.AioRpcError):
            await call(target, interceptor(target, attempts=5, budget=budget))
    assert echo.calls["Flaky"] == 1


async def test_a_spent_deadline_is_not_sent() -> None:
    echo = Echo()
    clock = FakeClock()
    async with aio_server(echo) as (_, target):
        through = interceptor(target, clock=clock)
        with deadline_after(0, clock=clock), pytest.raises(GrpcDeadlineExceededError) as spent:
            await call(target, through, "Echo")
    assert isinstance(spent.value, DeadlineExceededError)
    assert isinstance(spent.value, grpc.RpcError)
    assert spent.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "Echo" not in echo.calls


async def test_the_breaker_opens_on_unavailable_answers() -> None:
    echo = Echo()
    echo.failures = [UNAVAILABLE] * 10
    async with aio_server(echo) as (_, target):
        through = interceptor(target, attempts=1, trip=ConsecutiveFailures(threshold=2))
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await call(target, through)
        with pytest.raises(GrpcCircuitOpenError) as refused:
            await call(target, through)
    assert echo.calls["Flaky"] == 2
    assert through.breaker.state is State.OPEN
    error = refused.value
    assert isinstance(error, CircuitOpenError) and isinstance(error, grpc.RpcError)
    assert error.code() is UNAVAILABLE


async def test_the_breaker_opens_when_the_server_is_stopped() -> None:
    echo = Echo()
    async with aio_server(echo) as (server, target):
        through = interceptor(target, attempts=1, trip=ConsecutiveFailures(threshold=2))
        assert await call(target, through, "Echo") == b"x"
        await server.stop(None)
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call(target, through, "Echo")
            assert failed.value.code() is UNAVAILABLE
        with pytest.raises(GrpcCircuitOpenError):
            await call(target, through, "Echo")
    assert echo.calls["Echo"] == 1


async def test_application_errors_do_not_open_the_breaker() -> None:
    echo = Echo()
    echo.failures = [grpc.StatusCode.NOT_FOUND] * 5
    async with aio_server(echo) as (_, target):
        through = interceptor(target, attempts=1, trip=ConsecutiveFailures(threshold=2))
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError):
                await call(target, through)
    assert through.breaker.state is State.CLOSED


async def test_streaming_calls_get_the_deadline_as_their_timeout() -> None:
    echo = Echo()
    async with aio_server(echo) as (_, target):
        async with grpc.aio.insecure_channel(
                target, interceptors=AioClientInterceptor(target).interceptors) as channel:
            with deadline_after(0):
                with pytest.raises(GrpcDeadlineExceededError):
                    async for _ in channel.unary_stream(method("Stream"))(b""):
                        pass
            items = [item async for item in channel.unary_stream(method("Stream"))(b"")]
    assert items == [b"0", b"1", b"2"]


def test_pushback_reads_the_trailer() -> None:
    assert pushback((("grpc-retry-pushback-ms", "1500"),)) == 1.5
    assert pushback((("grpc-retry-pushback-ms", "soon"),)) == -1.0
    assert pushback((("other", "1"),)) is None
    assert pushback(None) is None


def test_policy_settings_are_validated_with_the_field_named() -> None:
    with pytest.raises(ConfigurationError, match=r"RpcClientPolicy.retry_codes"):
        RpcClientPolicy(retry_codes=frozenset({grpc.StatusCode.OK}))
    with pytest.raises(ConfigurationError, match=r"RpcClientPolicy.attempts"):
        RpcClientPolicy(attempts=0)
    with pytest.raises(ConfigurationError, match=r"AioClientInterceptor.target"):
        AioClientInterceptor("")
