"""Many hosts: what the transport keeps above ``max_hosts``, how it groups hosts, what it reports.

The other hosts are real HTTP servers on loopback (one port each), so every call
goes through the network like any other.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from fournines import CircuitOpenError, ConfigurationError, ConsecutiveFailures, State
from fournines.client import AsyncResilientTransport, ClientPolicy, HostEvicted
from fournines.instrumentation.prometheus import PrometheusListener
from fournines.testing import FakeClock, RecordingListener

from .._servers import free_port
from ._helpers import control, seen
from ._shells import Shell

ONCE = ClientPolicy(attempts=1, trip=ConsecutiveFailures(threshold=2))


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def others() -> Iterator[list[str]]:
    """Eight more hosts (one loopback port each) that answer ``ok``."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Ok) for _ in range(8)]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield [f"http://127.0.0.1:{server.server_address[1]}" for server in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


async def call_all(client: Any, hosts: list[str]) -> None:
    for host in hosts:
        assert (await client.get(host + "/x")).status_code == 200


async def test_an_open_breaker_is_kept_while_twice_max_hosts_other_hosts_are_called(
        shell: Shell, host_a: str, others: list[str]) -> None:
    client, transport = shell.client(config=ONCE, max_hosts=4, clock=FakeClock())
    control(host_a, mode="fail", status=503)
    for _ in range(2):
        await client.get(host_a + "/x")
    await call_all(client, others)  # 2 x max_hosts

    assert transport.policies_for(host_a).breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        await client.get(host_a + "/x")
    assert len(seen(host_a)) == 2


async def test_a_failing_host_among_more_than_max_hosts_healthy_ones_trips_its_breaker(
        shell: Shell, host_a: str, others: list[str]) -> None:
    # Round robin over 9 hosts with room for 3: the failing host must not be the
    # one evicted each round, or its failures are forgotten and it is never cut off.
    client, transport = shell.client(config=ONCE, max_hosts=3, clock=FakeClock())
    control(host_a, mode="fail", status=503)
    for _ in range(2):
        assert (await client.get(host_a + "/x")).status_code == 503
        await call_all(client, others)

    assert transport.policies_for(host_a).breaker.state is State.OPEN


async def test_a_host_with_a_request_in_flight_is_never_evicted(
        shell: Shell, host_a: str, others: list[str]) -> None:
    policy = ClientPolicy(attempts=1, max_concurrent=1)
    client, transport = shell.client(config=policy, max_hosts=2, clock=FakeClock())
    async with client.held(host_a + "/x"):
        kept = transport.policies_for(host_a)
        await call_all(client, others)
        # Evicted, a fresh bulkhead would let a second request through.
        assert transport.policies_for(host_a) is kept
        assert kept.bulkhead is not None and kept.bulkhead.active == 1


async def test_when_every_kept_host_is_busy_a_new_host_shares_the_overflow_policies(
        shell: Shell, host_a: str, others: list[str]) -> None:
    events = RecordingListener()
    client, transport = shell.client(config=ONCE, max_hosts=1, clock=FakeClock(),
                                     listeners=[events])
    async with client.held(host_a + "/x"):
        await call_all(client, others[:2])
        assert [(e.kind, e.name) for e in events.of(HostEvicted)] == [
            ("overflow", others[0]), ("overflow", others[1])]
        assert transport.policies_for(others[0]).name == "_other"
    events.clear()
    await call_all(client, others[:1])

    assert [(e.kind, e.name) for e in events.of(HostEvicted)] == [("evicted", host_a)]


async def test_evictions_and_overflows_are_counted_in_a_metric(
        shell: Shell, host_a: str, others: list[str]) -> None:
    registry = CollectorRegistry()
    client, _ = shell.client(config=ONCE, max_hosts=2, clock=FakeClock(),
                             listeners=[PrometheusListener(registry)])
    await call_all(client, others[:5])  # 3 evicted: each new host pushes the oldest out
    async with client.held(host_a + "/x"):  # evicts others[3]
        async with client.held(others[0] + "/x"):  # evicts others[4]
            await call_all(client, others[1:3])  # both kept hosts busy: 2 overflows

    def count(kind: str) -> float:
        return registry.get_sample_value("http_client_host_evictions_total",
                                         {"kind": kind}) or 0.0

    assert count("evicted") == 5
    assert count("overflow") == 2


async def test_the_host_label_names_at_most_max_hosts_hosts(
        shell: Shell, others: list[str]) -> None:
    registry = CollectorRegistry()
    client, _ = shell.client(config=ONCE, max_hosts=2, clock=FakeClock(),
                             listeners=[PrometheusListener(registry)])
    await call_all(client, others[:4])
    await call_all(client, others[:1])

    def count(host: str) -> float:
        return registry.get_sample_value(
            "http_client_request_duration_seconds_count",
            {"host": host, "method": "GET", "status_class": "2xx"}) or 0.0

    assert [count(h) for h in others[:4]] == [2, 1, 0, 0]
    assert count("_other") == 2


async def test_host_key_groups_hosts_into_one_set_of_policies(
        shell: Shell, host_a: str, host_b: str) -> None:
    group = {httpx.URL(host_a).port, httpx.URL(host_b).port}

    def payments(request: httpx.Request) -> str | None:
        return "payments" if request.url.port in group else None

    client, transport = shell.client(config=ONCE, host_key=payments, clock=FakeClock())
    control(host_a, mode="fail", status=503)
    for _ in range(2):
        await client.get(host_a + "/x")

    with pytest.raises(CircuitOpenError):
        await client.get(host_b + "/x")
    assert seen(host_b) == []
    assert transport.policies_for(host_b) is transport.policies_for(host_a)
    assert transport.policies_for(host_b).name == "payments"


async def test_host_key_none_keys_by_origin(shell: Shell, host_a: str, host_b: str) -> None:
    client, transport = shell.client(config=ONCE, host_key=lambda request: None,
                                     clock=FakeClock())
    control(host_a, mode="fail", status=503)
    for _ in range(2):
        await client.get(host_a + "/x")

    assert (await client.get(host_b + "/x")).status_code == 200
    assert transport.policies_for(host_b).name == host_b


def test_host_key_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match=r"AsyncResilientTransport\.host_key"):
        AsyncResilientTransport(host_key="payments")  # type: ignore[arg-type]


async def test_host_key_must_return_a_string(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(host_key=lambda request: 42)
    with pytest.raises(ConfigurationError, match=r"host_key must return a str or None, got 42"):
        await client.get(host_a + "/x")


async def test_concurrent_calls_over_more_hosts_than_max_hosts_leave_none_counted_in_flight(
        shell: Shell, host_a: str, host_b: str, others: list[str]) -> None:
    events = RecordingListener()
    client, _ = shell.client(config=ONCE, max_hosts=3, clock=FakeClock(), listeners=[events])
    # The sync shell's calls run in threads: the counts must survive real concurrency.
    calls = [client.get(others[i % 6] + "/x") for i in range(60)]
    assert {r.status_code for r in await asyncio.gather(*calls)} == {200}
    events.clear()
    await call_all(client, [host_a, host_b, others[6]])

    # Had any host been left counted busy, a new host would have overflowed instead.
    assert [e.kind for e in events.of(HostEvicted)] == ["evicted"] * 3


async def test_a_host_whose_requests_failed_is_idle_again_once_they_end(
        shell: Shell, host_a: str, others: list[str]) -> None:
    events = RecordingListener()
    policy = ClientPolicy(attempts=2, trip=ConsecutiveFailures(threshold=100))
    client, _ = shell.client(config=policy, max_hosts=1, clock=FakeClock(), listeners=[events])
    control(host_a, mode="fail", status=503)
    assert (await client.get(host_a + "/x")).status_code == 503  # retried, then answered
    await call_all(client, others[:1])
    refused = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(httpx.ConnectError):
        await client.get(refused + "/x")  # retried, then raised
    await call_all(client, others[1:2])

    assert [(e.kind, e.name) for e in events.of(HostEvicted)] == [
        ("evicted", host_a), ("evicted", others[0]), ("evicted", refused)]
