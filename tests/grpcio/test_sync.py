"""The sync twins: a real grpc.server (thread pool) and a sync channel on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from fournines import CircuitOpenError, ConsecutiveFailures, TokenBucket, current_deadline
from fournines.asgi import GracefulShutdown, ServiceState
from fournines.grpc import (
    ClientInterceptor,
    GrpcCircuitOpenError,
    HealthService,
    RpcClientPolicy,
    RpcMetrics,
    RpcRateLimit,
    ServerInterceptor,
    stop_gracefully,
)
from fournines.policies.backoff import Backoff
from fournines.testing import FakeClock

from ._service import SERVICE, method


class SyncEcho:
    def __init__(self) -> None:
        self.remaining: list[float | None] = []
        self.failures: list[grpc.StatusCode] = []
        self.calls = 0

    def remaining_deadline(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        deadline = current_deadline()
        self.remaining.append(None if deadline is None else deadline.remaining())
        return b"ok"

    def flaky(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        if self.failures:
            context.abort(self.failures.pop(0), "flaky")
        return b"ok"

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from (b"a", b"b")


@contextmanager
def sync_server(echo: SyncEcho, interceptors: list[Any], health: HealthService
                ) -> Iterator[tuple[grpc.Server, str]]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
    unary = grpc.unary_unary_rpc_method_handler
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Remaining": unary(echo.remaining_deadline),
        "Flaky": unary(echo.flaky),
        "Stream": grpc.unary_stream_rpc_method_handler(echo.stream),
    }),))
    health.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()
        health.close()


def test_a_sync_server_and_client_share_deadline_limits_health_and_breaker() -> None:
    echo = SyncEcho()
    state = ServiceState()
    state.mark_ready()
    health = HealthService(state=state, watch_interval=60)
    registry = CollectorRegistry()
    limit = RpcRateLimit(limiter=TokenBucket(rate=0.01, capacity=1), methods=[method("Flaky")])
    interceptor = ServerInterceptor(metrics=RpcMetrics(registry=registry), rate_limits=[limit],
                                    state=state)
    with sync_server(echo, [interceptor], health) as (server, target):
        protect = ClientInterceptor(target, policy=RpcClientPolicy(
            attempts=1, trip=ConsecutiveFailures(threshold=1),
            backoff=Backoff(initial=0.01, jitter="none")), clock=FakeClock())
        with grpc.insecure_channel(target) as raw:
            channel = grpc.intercept_channel(raw, protect)
            # The handler runs under the caller's deadline.
            assert channel.unary_unary(method("Remaining"))(b"", timeout=3.0) == b"ok"
            assert list(channel.unary_stream(method("Stream"))(b"", timeout=3.0)) == [b"a", b"b"]
            # The rate limit answers RESOURCE_EXHAUSTED (not a breaker failure).
            assert channel.unary_unary(method("Flaky"))(b"", timeout=3.0) == b"ok"
            with pytest.raises(grpc.RpcError) as limited:
                channel.unary_unary(method("Flaky"))(b"", timeout=3.0)
            assert limited.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            stub = health_pb2_grpc.HealthStub(raw)
            request = health_pb2.HealthCheckRequest(service="")
            assert stub.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            watch = stub.Watch(request, timeout=10)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            stop_gracefully(server, health, shutdown=GracefulShutdown(
                drain_delay=1.0, drain_timeout=1.0, grace_period=None), clock=FakeClock())
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            # The server is gone: UNAVAILABLE opens the breaker, the next call is refused.
            with pytest.raises(grpc.RpcError) as gone:
                channel.unary_unary(method("Remaining"))(b"", timeout=3.0)
            assert gone.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            with pytest.raises(GrpcCircuitOpenError) as refused:
                channel.unary_unary(method("Remaining"))(b"", timeout=3.0)
    (remaining,) = echo.remaining
    assert remaining is not None and 0 < remaining < 3.5
    assert isinstance(refused.value, CircuitOpenError)
    assert registry.get_sample_value("grpc_server_handled_total", {
        "grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Flaky",
        "grpc_code": "RESOURCE_EXHAUSTED"}) == 1
    assert registry.get_sample_value("grpc_server_handled_total", {
        "grpc_type": "server_stream", "grpc_service": SERVICE, "grpc_method": "Stream",
        "grpc_code": "OK"}) == 1


def test_the_sync_client_retries_unavailable_only() -> None:
    echo = SyncEcho()
    echo.failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT]
    health = HealthService()
    clock = FakeClock()
    with sync_server(echo, [ServerInterceptor()], health) as (_, target):
        protect = ClientInterceptor(target, policy=RpcClientPolicy(
            attempts=5, backoff=Backoff(initial=0.1, jitter="none")), clock=clock)
        with grpc.insecure_channel(target) as raw:
            channel = grpc.intercept_channel(raw, protect)
            with pytest.raises(grpc.RpcError) as failed:
                channel.unary_unary(method("Flaky"))(b"", timeout=3.0)
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert echo.calls == 2
    assert clock.sleeps == [0.1]
