"""A published Toxiproxy client, unchanged, against the fault proxy subprocess.

``toxiproxy-python`` (PyPI ``toxiproxy-python``, last released 2019) keeps its API address
in class attributes; each test points it at this module's proxy process.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from toxiproxy import Toxiproxy
from toxiproxy.exceptions import NotFound, ProxyExists

from ._proxy_servers import (  # noqa: F401 - fixtures, by name
    ProxyProcess,
    TcpServer,
    api_fixture,
    connect,
    echo_fixture,
    proxy_process_fixture,
    round_trip,
)


@pytest.fixture
def toxiproxy(proxy_process: ProxyProcess, api: httpx.Client) -> Iterator[Toxiproxy]:
    client = Toxiproxy()
    client.update_api_consumer("127.0.0.1", proxy_process.port)
    yield client


def test_the_client_sees_a_running_server_and_its_version(toxiproxy: Toxiproxy) -> None:
    assert toxiproxy.running()
    assert b"fournines" in toxiproxy.version()


def test_the_client_creates_a_proxy_that_forwards(toxiproxy: Toxiproxy, echo: TcpServer,
                                                  ) -> None:
    proxy = toxiproxy.create(upstream=echo.address, name="echo")
    assert proxy.enabled is True
    assert set(toxiproxy.proxies()) == {"echo"}
    with connect(proxy.listen) as sock:
        round_trip(sock)


def test_the_client_gets_proxy_exists_for_a_duplicate(toxiproxy: Toxiproxy, echo: TcpServer,
                                                      ) -> None:
    toxiproxy.create(upstream=echo.address, name="echo")
    with pytest.raises(ProxyExists):
        toxiproxy.create(upstream=echo.address, name="echo")


def test_a_latency_toxic_added_by_the_client_delays_traffic(toxiproxy: Toxiproxy,
                                                            echo: TcpServer) -> None:
    proxy = toxiproxy.create(upstream=echo.address, name="echo")
    proxy.add_toxic(type="latency", attributes={"latency": 300})
    toxic = proxy.get_toxic("latency_downstream")
    assert toxic is not None
    assert toxic.attributes == {"latency": 300, "jitter": 0}
    assert toxic.stream == "downstream"
    with connect(proxy.listen) as sock:
        assert round_trip(sock) >= 0.8 * 0.300
        proxy.destroy_toxic("latency_downstream")
        assert proxy.toxics() == {}


def test_the_clients_down_context_refuses_connections_then_restores(
    toxiproxy: Toxiproxy, echo: TcpServer,
) -> None:
    proxy = toxiproxy.create(upstream=echo.address, name="echo")
    host, port = proxy.listen.rsplit(":", 1)
    with proxy.down():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=2)
    with connect(proxy.listen) as sock:
        round_trip(sock)


def test_the_client_populates_and_resets(toxiproxy: Toxiproxy, echo: TcpServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{probe.getsockname()[1]}"
    created = toxiproxy.populate([{"name": "db", "upstream": echo.address, "listen": listen}])
    assert [p.name for p in created] == ["db"]
    proxy = toxiproxy.get_proxy("db")
    proxy.add_toxic(type="timeout", attributes={"timeout": 0})
    proxy.disable()
    assert toxiproxy.reset()
    proxy = toxiproxy.get_proxy("db")
    assert proxy.enabled is True
    assert proxy.toxics() == {}
    start = time.monotonic()
    with connect(listen) as sock:
        round_trip(sock)
    assert time.monotonic() - start < 5


def test_the_client_destroys_all_proxies(toxiproxy: Toxiproxy, echo: TcpServer) -> None:
    toxiproxy.create(upstream=echo.address, name="a")
    toxiproxy.create(upstream=echo.address, name="b")
    toxiproxy.destroy_all()
    assert toxiproxy.proxies() == {}


def test_the_client_gets_not_found_for_a_missing_toxic_proxy(toxiproxy: Toxiproxy,
                                                             echo: TcpServer) -> None:
    proxy = toxiproxy.create(upstream=echo.address, name="echo")
    proxy.destroy()
    with pytest.raises(NotFound):
        proxy.toxics()
