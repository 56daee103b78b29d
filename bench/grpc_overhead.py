"""What fournines' gRPC interceptors cost: calls per second with and without them.

Two real ``grpc.aio`` servers on loopback in this process, one bare and one with
``AioServerInterceptor(metrics, shedder, rate limit)`` and the health service; the
protected one is called through ``AioClientInterceptor``, the bare one through a
plain channel. Rounds alternate (bare, protected, bare, ...) so that the machine's
noise hits both; each round sends ``CALLS`` unary calls, ``CONCURRENCY`` at a time.
A third pair, no-op interceptors, shows what gRPC's interceptor machinery costs by
itself (grpc.aio runs an intercepted call in a task of its own). Prints the median
throughput of each and the ratios.

    python bench/grpc_overhead.py            # ROUNDS=7 CALLS=2000 CONCURRENCY=16
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry

from fournines import TokenBucket
from fournines.grpc import (
    AioClientInterceptor,
    AioServerInterceptor,
    HealthService,
    RpcMetrics,
    RpcRateLimit,
    load_shedder,
)

ROUNDS = int(os.environ.get("ROUNDS", "7"))
CALLS = int(os.environ.get("CALLS", "2000"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "16"))


async def echo(request: bytes, context: Any) -> bytes:
    return request


class NoopServer(grpc.aio.ServerInterceptor):
    """gRPC's own interceptor machinery, doing nothing: what any interceptor costs."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


class NoopClient(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any,
                                    request: Any) -> Any:
        return await continuation(details, request)


async def start(interceptors: list[Any]) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def round_of(rpc: Any) -> float:
    """Calls per second of one round."""
    remaining = CALLS

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await rpc(b"x", timeout=5)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return CALLS / (time.perf_counter() - began)


async def main() -> None:
    bare_server, bare_target = await start([])
    protected = AioServerInterceptor(
        metrics=RpcMetrics(registry=CollectorRegistry()), shedder=load_shedder(),
        rate_limits=[RpcRateLimit(limiter=TokenBucket(rate=1e9, capacity=1e9))])
    protected_server, protected_target = await start([protected])
    noop_server, noop_target = await start([NoopServer()])
    HealthService().add_to_aio_server(protected_server)
    client = AioClientInterceptor(protected_target)
    async with grpc.aio.insecure_channel(bare_target) as bare_channel, \
            grpc.aio.insecure_channel(protected_target,
                                      interceptors=client.interceptors) as protected_channel, \
            grpc.aio.insecure_channel(noop_target, interceptors=[NoopClient()]) as noop_channel:
        bare_rpc = bare_channel.unary_unary("/bench.Echo/Echo")
        protected_rpc = protected_channel.unary_unary("/bench.Echo/Echo")
        noop_rpc = noop_channel.unary_unary("/bench.Echo/Echo")
        for rpc in (bare_rpc, noop_rpc, protected_rpc):  # warm up
            await round_of(rpc)
        bare, noop, guarded = [], [], []
        for _ in range(ROUNDS):
            bare.append(await round_of(bare_rpc))
            noop.append(await round_of(noop_rpc))
            guarded.append(await round_of(protected_rpc))
    await bare_server.stop(None)
    await protected_server.stop(None)
    await noop_server.stop(None)
    b, n, g = statistics.median(bare), statistics.median(noop), statistics.median(guarded)
    print(f"gRPC unary, {CALLS} calls x {ROUNDS} rounds, concurrency {CONCURRENCY}, "
          "client and servers in one process")
    print(f"  bare channel + bare server          {b:9.0f} calls/s  ({1e6 / b:6.1f} µs/call)")
    print(f"  no-op interceptors (gRPC's own)     {n:9.0f} calls/s  ({1e6 / n:6.1f} µs/call)")
    print(f"  fournines client + server           {g:9.0f} calls/s  ({1e6 / g:6.1f} µs/call)")
    print(f"  ratio protected / bare              {g / b:9.2f}x")
    print(f"  ratio protected / no-op             {g / n:9.2f}x")
    print(f"  added per call over bare            {1e6 / g - 1e6 / b:9.1f} µs")
    print(f"  added per call over no-op           {1e6 / g - 1e6 / n:9.1f} µs")


if __name__ == "__main__":
    asyncio.run(main())
