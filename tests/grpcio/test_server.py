"""The server interceptor against a real grpc.aio server and client on loopback."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry

from fournines import ConfigurationError, KeyedLimiter, TokenBucket
from fournines.asgi import Phase, ServiceState
from fournines.grpc import (
    PUSHBACK_KEY,
    AioClientInterceptor,
    AioServerInterceptor,
    HealthService,
    RpcMetrics,
    RpcRateLimit,
    load_shedder,
)
from fournines.policies.adaptive import FixedLimit

from ._service import Echo, aio_server, method


async def call(target: str, name: str, request: bytes = b"x", *, timeout: float | None = 5.0,
               metadata: tuple[tuple[str, str], ...] | None = None) -> bytes:
    async with grpc.aio.insecure_channel(target) as channel:
        answer: bytes = await channel.unary_unary(method(name))(
            request, timeout=timeout, metadata=metadata)
        return answer


async def test_the_handler_runs_under_the_callers_grpc_deadline() -> None:
    echo = Echo()
    async with aio_server(echo, interceptors=[AioServerInterceptor()]) as (_, target):
        await call(target, "Remaining", timeout=3.0)
    (remaining,) = echo.remaining
    # gRPC's own clocks and its timeout encoding may hand back a few ms more than was sent.
    assert remaining is not None
    assert 0 < remaining < 3.5


async def test_a_call_without_a_grpc_deadline_has_no_fournines_deadline() -> None:
    echo = Echo()
    async with aio_server(echo, interceptors=[AioServerInterceptor()]) as (_, target):
        assert await call(target, "Remaining", timeout=None) == b"none"


async def forward(request: bytes, *, timeout: float, intercepted: bool = True
                  ) -> tuple[float | None, float | None]:
    """client -> A -> B: the fournines deadlines A's and B's handlers ran under."""
    a, b = Echo(), Echo()
    async with aio_server(b, interceptors=[AioServerInterceptor()]) as (_, b_target), \
            aio_server(a, interceptors=[AioServerInterceptor()]) as (_, a_target):
        interceptors = AioClientInterceptor(b_target).interceptors if intercepted else []
        async with grpc.aio.insecure_channel(b_target, interceptors=interceptors) as channel:
            a.downstream = channel
            await call(a_target, "Forward", request, timeout=timeout)
    (at_a,), (at_b,) = a.remaining, b.remaining
    return at_a, at_b


async def test_the_deadline_propagates_over_two_hops() -> None:
    at_a, at_b = await forward(b"", timeout=4.0)
    # gRPC hands each hop the time left when the call was sent, counted from its arrival
    # (and its timeout encoding may round up a few ms): B sees about what A had left.
    assert at_a is not None and at_b is not None
    assert 0 < at_b < 4.5


async def test_the_next_hop_sees_a_deadline_the_handler_shortened() -> None:
    """A forwards inside deadline_after(1.0): B's remaining time is that, not the client's."""
    at_a, at_b = await forward(b"1.0", timeout=30.0)
    assert at_a is not None and at_a > 20
    assert at_b is not None and 0 < at_b < 1.5
    assert at_b < at_a


async def test_without_the_client_interceptor_the_next_hop_gets_no_deadline() -> None:
    _, at_b = await forward(b"", timeout=4.0, intercepted=False)
    assert at_b is None


async def test_a_rate_limited_call_is_resource_exhausted_with_pushback() -> None:
    echo = Echo()
    limit = RpcRateLimit(limiter=TokenBucket(rate=0.01, capacity=1), methods=[method("Echo")])
    async with aio_server(echo, interceptors=[AioServerInterceptor(rate_limits=[limit])]) as (
            _, target):
        assert await call(target, "Echo") == b"x"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(target, "Echo")
        # Methods the rule does not name are not limited.
        assert await call(target, "Remaining") != b""
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == "rate limited"
    trailers = dict(refused.value.trailing_metadata() or ())
    assert int(trailers[PUSHBACK_KEY]) > 0
    assert echo.calls["Echo"] == 1


async def test_a_keyed_rate_limit_gives_each_caller_its_own_budget() -> None:
    echo = Echo()

    def caller(name: str, context: grpc.aio.ServicerContext[object, object]) -> str | None:
        return dict(context.invocation_metadata() or ()).get("x-api-key")  # type: ignore[return-value]

    limit = RpcRateLimit(limiter=KeyedLimiter(lambda: TokenBucket(rate=0.01, capacity=1)),
                         key=caller)
    async with aio_server(echo, interceptors=[AioServerInterceptor(rate_limits=[limit])]) as (
            _, target):
        await call(target, "Echo", metadata=(("x-api-key", "a"),))
        await call(target, "Echo", metadata=(("x-api-key", "b"),))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(target, "Echo", metadata=(("x-api-key", "a"),))
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_shed_call_is_resource_exhausted_while_the_limit_is_in_use() -> None:
    echo = Echo()
    shedder = load_shedder(FixedLimit(1))
    async with aio_server(echo, interceptors=[AioServerInterceptor(shedder=shedder)]) as (
            _, target):
        held = asyncio.create_task(call(target, "Hold"))
        await echo.entered.wait()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(target, "Echo")
        echo.release.set()
        assert await held == b"released"
        assert await call(target, "Echo") == b"x"  # room again
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == "load shed"
    assert PUSHBACK_KEY in dict(refused.value.trailing_metadata() or ())
    assert shedder.shed_overload == 1
    assert shedder.in_flight == 0


async def test_critical_metadata_gets_the_shedders_headroom() -> None:
    echo = Echo()
    shedder = load_shedder(FixedLimit(1))
    async with aio_server(echo, interceptors=[AioServerInterceptor(shedder=shedder)]) as (
            _, target):
        held = asyncio.create_task(call(target, "Hold"))
        await echo.entered.wait()
        answer = await call(target, "Echo", metadata=(("x-priority", "critical"),))
        echo.release.set()
        await held
    assert answer == b"x"


async def test_health_checks_are_never_shed() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

    echo = Echo()
    health = HealthService()
    shedder = load_shedder(FixedLimit(1))
    async with aio_server(echo, interceptors=[AioServerInterceptor(shedder=shedder)],
                          health=health) as (_, target):
        held = asyncio.create_task(call(target, "Hold"))
        await echo.entered.wait()
        async with grpc.aio.insecure_channel(target) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5)
        echo.release.set()
        await held
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_draining_refuses_with_unavailable_when_asked_to() -> None:
    echo = Echo()
    state = ServiceState()
    state.mark_ready()
    interceptor = AioServerInterceptor(state=state, refuse_when_draining=True)
    async with aio_server(echo, interceptors=[interceptor]) as (_, target):
        assert await call(target, "Echo") == b"x"
        state.mark_draining()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(target, "Echo")
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == "draining"


async def test_draining_still_serves_by_default() -> None:
    echo = Echo()
    state = ServiceState()
    state.mark_draining()
    async with aio_server(echo, interceptors=[AioServerInterceptor(state=state)]) as (_, target):
        assert await call(target, "Echo") == b"x"
    assert state.phase is Phase.DRAINING


async def test_a_deadline_error_in_the_handler_is_answered_deadline_exceeded() -> None:
    echo = Echo()
    async with aio_server(echo, interceptors=[AioServerInterceptor()]) as (_, target):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(target, "Expire")
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_golden_metrics_count_each_method_and_code() -> None:
    echo = Echo()
    echo.failures = [grpc.StatusCode.INVALID_ARGUMENT]
    registry = CollectorRegistry()
    metrics = RpcMetrics(registry=registry)
    async with aio_server(echo, interceptors=[AioServerInterceptor(metrics=metrics)]) as (
            _, target):
        await call(target, "Echo")
        await call(target, "Echo")
        with pytest.raises(grpc.aio.AioRpcError):
            await call(target, "Flaky")
        async with grpc.aio.insecure_channel(target) as channel:
            items = [item async for item in channel.unary_stream(method("Stream"))(b"")]
    assert items == [b"0", b"1", b"2"]
    labels = {"grpc_type": "unary", "grpc_service": "test.Echo", "grpc_method": "Echo",
              "grpc_code": "OK"}
    assert sample(registry, "grpc_server_handled_total", **labels) == 2
    assert sample(registry, "grpc_server_handling_seconds_count", **labels) == 2
    assert sample(registry, "grpc_server_handled_total", grpc_type="unary",
                  grpc_service="test.Echo", grpc_method="Flaky",
                  grpc_code="INVALID_ARGUMENT") == 1
    assert sample(registry, "grpc_server_handled_total", grpc_type="server_stream",
                  grpc_service="test.Echo", grpc_method="Stream", grpc_code="OK") == 1
    assert sample(registry, "grpc_server_in_flight") == 0
    assert sample(registry, "grpc_server_handling_seconds_bucket", le="0.3", **labels) == 2


async def test_methods_without_a_handler_are_not_counted() -> None:
    registry = CollectorRegistry()
    metrics = RpcMetrics(registry=registry)
    async with aio_server(Echo(), interceptors=[AioServerInterceptor(metrics=metrics)]) as (
            _, target):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(target, "NoSuchMethod")
    assert failed.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert sample(registry, "grpc_server_handled_total", grpc_type="unary",
                  grpc_service="test.Echo", grpc_method="NoSuchMethod",
                  grpc_code="UNIMPLEMENTED") is None


def test_settings_are_validated_with_the_field_named() -> None:
    with pytest.raises(ConfigurationError, match=r"RpcRateLimit.key is required"):
        RpcRateLimit(limiter=KeyedLimiter(lambda: TokenBucket(rate=1, capacity=1)))
    with pytest.raises(ConfigurationError, match=r"RpcRateLimit.methods"):
        RpcRateLimit(limiter=TokenBucket(rate=1, capacity=1), methods="/a.B/C")
    with pytest.raises(ConfigurationError, match=r"AioServerInterceptor.refuse_when_draining"):
        AioServerInterceptor(refuse_when_draining=True)
    with pytest.raises(ConfigurationError, match=r"AioServerInterceptor.shedder"):
        AioServerInterceptor(shedder=object())  # type: ignore[arg-type]
