"""What each toxic does to real traffic through the fault proxy subprocess.

Timing checks use medians and generous bounds (the latency toxic must add what it says,
+/- 20 % plus jitter); byte checks are exact.
"""

from __future__ import annotations

import socket
import statistics
import time

import httpx
import pytest

from ._proxy_servers import (  # noqa: F401 - fixtures, by name
    TcpServer,
    add_toxic,
    api_fixture,
    connect,
    echo_fixture,
    make_proxy,
    proxy_process_fixture,
    recv_all,
    recv_exactly,
    round_trip,
)


def median_round_trip(sock: socket.socket, count: int = 7) -> float:
    return statistics.median(round_trip(sock) for _ in range(count))


def test_a_latency_toxic_adds_its_latency_to_each_round_trip(api: httpx.Client,
                                                             echo: TcpServer) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        base = median_round_trip(sock)
        add_toxic(api, type="latency", attributes={"latency": 250})
        added = median_round_trip(sock) - base
    assert 0.8 * 0.250 <= added <= 1.2 * 0.250


def test_latency_on_both_streams_adds_up(api: httpx.Client, echo: TcpServer) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        add_toxic(api, type="latency", stream="upstream", attributes={"latency": 100})
        add_toxic(api, type="latency", stream="downstream", attributes={"latency": 150})
        assert 0.8 * 0.250 <= median_round_trip(sock, 5) <= 1.2 * 0.250 + 0.02


def test_jitter_spreads_the_latency_within_its_bounds(api: httpx.Client, echo: TcpServer,
                                                      ) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        add_toxic(api, type="latency", attributes={"latency": 200, "jitter": 100})
        samples = [round_trip(sock) for _ in range(12)]
    assert min(samples) >= 0.8 * 0.100
    assert statistics.median(samples) <= 1.2 * 0.300
    assert max(samples) - min(samples) >= 0.040  # twelve equal draws from 200 ms: ~never


def test_removing_latency_makes_an_open_connection_fast_again(api: httpx.Client,
                                                               echo: TcpServer) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        add_toxic(api, type="latency", attributes={"latency": 400})
        assert round_trip(sock) >= 0.8 * 0.400
        api.delete("/proxies/svc/toxics/latency_downstream")
        assert median_round_trip(sock, 5) < 0.200


def test_a_toxic_with_toxicity_zero_never_acts(api: httpx.Client, echo: TcpServer) -> None:
    listen = make_proxy(api, echo.address)
    add_toxic(api, type="limit_data", toxicity=0.0, attributes={"bytes": 1})
    for _ in range(10):
        with connect(listen) as sock:
            sock.sendall(b"hello")
            assert recv_exactly(sock, 5) == b"hello"


def test_toxicity_is_the_share_of_connections_the_toxic_acts_on(api: httpx.Client,
                                                                echo: TcpServer) -> None:
    listen = make_proxy(api, echo.address)
    add_toxic(api, type="limit_data", toxicity=0.5, attributes={"bytes": 1})
    cut = 0
    for _ in range(60):
        with connect(listen) as sock:
            sock.sendall(b"hello")
            cut += recv_exactly(sock, 5) == b"h"
    # Binomial(60, 0.5): outside [15, 45] with probability below 1e-4
    assert 15 <= cut <= 45


def test_limit_data_closes_after_exactly_n_bytes(api: httpx.Client, echo: TcpServer) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        add_toxic(api, type="limit_data", attributes={"bytes": 1000})
        sock.sendall(bytes(range(256)) * 12)  # 3072 bytes echoed back
        received = recv_all(sock)
    assert len(received) == 1000
    assert received == (bytes(range(256)) * 12)[:1000]


def test_limit_data_upstream_limits_what_the_server_receives(api: httpx.Client,
                                                             echo: TcpServer) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        add_toxic(api, type="limit_data", stream="upstream", attributes={"bytes": 700})
        sock.sendall(b"x" * 5000)
        assert len(recv_all(sock)) <= 700  # the connection closes as the limit is reached
    assert echo.wait_finished(1) == [700]


def test_a_timeout_toxic_passes_nothing_then_closes_after_its_timeout(
    api: httpx.Client, echo: TcpServer,
) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        add_toxic(api, type="timeout", attributes={"timeout": 500})
        start = time.monotonic()
        sock.sendall(b"hello")
        assert recv_all(sock) == b""
        assert time.monotonic() - start >= 0.45


def test_a_timeout_of_zero_holds_the_connection_until_the_toxic_goes(
    api: httpx.Client, echo: TcpServer,
) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        add_toxic(api, type="timeout", attributes={"timeout": 0})
        sock.sendall(b"hello")
        sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            sock.recv(10)  # held: neither data nor close
        sock.settimeout(10.0)
        api.delete("/proxies/svc/toxics/timeout_downstream")
        assert recv_all(sock) == b""  # Toxiproxy closes the held links on removal


def test_an_upstream_timeout_stops_requests_but_not_the_servers_greeting(
    api: httpx.Client,
) -> None:
    greeter = TcpServer(greeting=b"hi!")
    try:
        with connect(make_proxy(api, greeter.address)) as sock:
            add_toxic(api, type="timeout", stream="upstream", attributes={"timeout": 0})
            assert recv_exactly(sock, 3) == b"hi!"
            sock.sendall(b"hello")
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(10)
    finally:
        greeter.close()


def test_reset_peer_resets_the_connection(api: httpx.Client, echo: TcpServer) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        add_toxic(api, type="reset_peer", stream="upstream", attributes={"timeout": 100})
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            recv_all(sock)


def test_bandwidth_limits_the_transfer_rate(api: httpx.Client, echo: TcpServer) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        add_toxic(api, type="bandwidth", attributes={"rate": 50})  # 50 KB/s
        payload = b"z" * 100_000  # two seconds' worth
        start = time.monotonic()
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload
        elapsed = time.monotonic() - start
    assert 0.8 * 2.0 <= elapsed <= 6.0


def test_slicer_delivers_the_data_in_small_pieces(api: httpx.Client, echo: TcpServer) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        add_toxic(api, type="slicer",
                  attributes={"average_size": 10, "size_variation": 4, "delay": 20_000})
        payload = bytes(range(200))
        sock.sendall(payload)
        pieces: list[bytes] = []
        while sum(map(len, pieces)) < len(payload):
            pieces.append(sock.recv(1000))
    assert b"".join(pieces) == payload
    assert len(pieces) >= 5  # about 20 slices 20 ms apart; a busy reader may merge some


def test_slow_close_delays_the_close(api: httpx.Client, echo: TcpServer) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        add_toxic(api, type="slow_close", attributes={"delay": 600})
        round_trip(sock)
        start = time.monotonic()
        sock.shutdown(socket.SHUT_WR)  # the echo server then closes its side
        assert recv_all(sock) == b""
        assert time.monotonic() - start >= 0.5


def test_an_unreachable_upstream_closes_the_client_connection(api: httpx.Client) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"  # bound, not listening: refused
        with connect(make_proxy(api, dead)) as sock:
            try:
                assert sock.recv(10) == b""
            except ConnectionResetError:
                pass
