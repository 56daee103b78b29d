"""grpc.health.v1 fed by fournines' checks and state, and the graceful stop."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from fournines.asgi import Check, GracefulShutdown, Phase, ServiceState
from fournines.grpc import AioServerInterceptor, HealthService, aio_stop_gracefully
from fournines.testing import FakeClock

from ._service import Echo, aio_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def ready() -> ServiceState:
    state = ServiceState()
    state.mark_ready()
    return state


async def check(target: str, service: str = "") -> Any:
    async with grpc.aio.insecure_channel(target) as channel:
        return await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)


async def test_check_is_serving_when_ready_and_not_serving_once_draining() -> None:
    health = HealthService(state=ready())
    async with aio_server(Echo(), health=health) as (_, target):
        assert (await check(target)).status == SERVING
        health.drain()
        assert (await check(target)).status == NOT_SERVING


async def test_check_is_not_serving_while_starting() -> None:
    health = HealthService(state=ServiceState())
    async with aio_server(Echo(), health=health) as (_, target):
        assert (await check(target)).status == NOT_SERVING


async def test_a_failing_critical_check_is_not_serving() -> None:
    async def down() -> None:
        raise ConnectionRefusedError("database down")

    health = HealthService(checks=[Check("db", down)], state=ready(), cache_ttl=0)
    async with aio_server(Echo(), health=health) as (_, target):
        assert (await check(target)).status == NOT_SERVING


async def test_a_failing_non_critical_check_still_serves() -> None:
    async def down() -> None:
        raise ConnectionRefusedError("cache down")

    health = HealthService(checks=[Check("cache", down, critical=False)], state=ready())
    async with aio_server(Echo(), health=health) as (_, target):
        assert (await check(target)).status == SERVING


async def test_named_services_are_answered_and_unknown_ones_are_not_found() -> None:
    health = HealthService(state=ready(), services=["test.Echo"])
    async with aio_server(Echo(), health=health) as (_, target):
        assert (await check(target, "test.Echo")).status == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await check(target, "no.Such")
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND


async def test_watch_sends_serving_then_not_serving_on_drain() -> None:
    # A long interval: the change must come from drain() itself, not from a re-read.
    health = HealthService(state=ready(), watch_interval=60)
    async with aio_server(Echo(), health=health) as (_, target):
        async with grpc.aio.insecure_channel(target) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=10)
            first = await stream.read()
            health.drain()
            second = await stream.read()
            stream.cancel()
    assert (first.status, second.status) == (SERVING, NOT_SERVING)


async def test_watch_of_an_unknown_service_says_service_unknown() -> None:
    health = HealthService(state=ready())
    async with aio_server(Echo(), health=health) as (_, target):
        async with grpc.aio.insecure_channel(target) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="no.Such"), timeout=10)
            first = await stream.read()
            stream.cancel()
    assert first.status == SERVICE_UNKNOWN


async def test_graceful_stop_says_not_serving_before_the_server_stops() -> None:
    state = ready()
    health = HealthService(state=state, watch_interval=60)
    clock = FakeClock()
    timing = GracefulShutdown(drain_delay=5.0, drain_timeout=1.0, grace_period=None)
    echo = Echo()
    async with aio_server(echo, health=health,
                          interceptors=[AioServerInterceptor(state=state)]) as (server, target):
        async with grpc.aio.insecure_channel(target) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert (await stream.read()).status == SERVING
            stopping = asyncio.create_task(
                aio_stop_gracefully(server, health, shutdown=timing, clock=clock))
            assert (await stream.read()).status == NOT_SERVING
            await stopping
    assert clock.sleeps == [5.0]  # the drain delay, before server.stop
    assert state.phase is Phase.STOPPED
