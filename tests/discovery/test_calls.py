"""Calls through the balancer fed by EtcdEndpoints keep succeeding while etcd is down."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from fournines.client import AsyncBalancingTransport
from fournines.discovery import EtcdEndpoints, EtcdRegistry, Instance

from .._servers import EtcdServer
from ._helpers import eventually


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def payment_servers() -> Iterator[list[str]]:
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Ok) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


async def test_no_call_fails_while_etcd_is_down(
    etcd_server: EtcdServer, payment_servers: list[str],
) -> None:
    async with EtcdRegistry(etcd_server.url, ttl=2) as registry, \
            EtcdEndpoints(etcd_server.url, "payment", probe_interval=0.3) as payments:
        for n, url in enumerate(payment_servers):
            await registry.register(Instance(service="payment", id=f"p{n}", address=url))
        await eventually(lambda: len(payments.endpoints()) == 2)
        statuses: list[int] = []
        async with httpx.AsyncClient(transport=AsyncBalancingTransport(payments)) as client:

            async def call() -> None:
                statuses.append((await client.get("http://payment/status")).status_code)

            etcd_server.kill()
            for _ in range(25):  # calls at a steady rate through an outage longer than the TTL
                await call()
                await asyncio.sleep(0.1)
            etcd_server.start()
            await eventually(lambda: payments.in_sync and registry.is_registered)
            await call()

    assert statuses == [200] * 26
