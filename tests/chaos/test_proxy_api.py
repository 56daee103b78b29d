"""The fault proxy's HTTP API, called as Toxiproxy's README documents it (raw httpx).

The proxy runs as a real subprocess (``python -m fournines chaos proxy``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time

import httpx
import pytest

from .._servers import require_binary
from ._proxy_servers import (  # noqa: F401 - fixtures, by name
    ProxyProcess,
    TcpServer,
    add_toxic,
    api_fixture,
    connect,
    echo_fixture,
    make_proxy,
    proxy_process_fixture,
    round_trip,
)


def refused(listen: str) -> bool:
    try:
        connect(listen, timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_version_answers_json(api: httpx.Client) -> None:
    response = api.get("/version")
    assert response.status_code == 200
    assert response.json()["version"].startswith("fournines-")


def test_creating_a_proxy_answers_201_with_the_bound_listen_address(
    api: httpx.Client, echo: TcpServer,
) -> None:
    response = api.post("/proxies", json={"name": "redis", "listen": "127.0.0.1:0",
                                          "upstream": echo.address})
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "redis"
    assert body["upstream"] == echo.address
    assert body["enabled"] is True
    assert body["toxics"] == []
    host, port = body["listen"].rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0


def test_a_proxy_forwards_bytes_both_ways(api: httpx.Client, echo: TcpServer) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        sock.sendall(b"hello")
        assert sock.recv(5) == b"hello"


def test_a_proxy_created_disabled_does_not_listen(api: httpx.Client, echo: TcpServer) -> None:
    response = api.post("/proxies", json={"name": "off", "listen": "127.0.0.1:0",
                                          "upstream": echo.address, "enabled": False})
    assert response.status_code == 201
    assert response.json()["enabled"] is False


def test_creating_a_proxy_twice_is_a_409_conflict(api: httpx.Client, echo: TcpServer) -> None:
    make_proxy(api, echo.address)
    response = api.post("/proxies", json={"name": "svc", "listen": "127.0.0.1:0",
                                          "upstream": echo.address})
    assert response.status_code == 409
    assert response.json() == {"error": "proxy already exists", "status": 409}


@pytest.mark.parametrize("missing", ["name", "upstream"])
def test_a_proxy_without_a_required_field_is_a_400_naming_it(
    api: httpx.Client, missing: str,
) -> None:
    body = {"name": "svc", "upstream": "127.0.0.1:1", "listen": "127.0.0.1:0"}
    del body[missing]
    response = api.post("/proxies", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": f"missing required field: {missing}", "status": 400}


def test_a_body_that_is_not_json_is_a_400_bad_request_body(api: httpx.Client) -> None:
    response = api.post("/proxies", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"].startswith("bad request body")


def test_a_listen_address_in_use_is_a_500_and_no_proxy(api: httpx.Client, echo: TcpServer,
                                                       ) -> None:
    response = api.post("/proxies", json={"name": "clash", "listen": echo.address,
                                          "upstream": echo.address})
    assert response.status_code == 500
    assert "address already in use" in response.json()["error"].lower()
    assert api.get("/proxies/clash").status_code == 404


def test_an_unknown_proxy_is_a_404(api: httpx.Client) -> None:
    for response in (api.get("/proxies/nope"), api.delete("/proxies/nope"),
                     api.get("/proxies/nope/toxics"),
                     api.post("/proxies/nope/toxics", json={"type": "latency"})):
        assert response.status_code == 404
        assert response.json() == {"error": "proxy not found", "status": 404}


def test_listing_proxies_maps_names_to_proxies_with_their_toxics(
    api: httpx.Client, echo: TcpServer,
) -> None:
    make_proxy(api, echo.address, name="a")
    make_proxy(api, echo.address, name="b")
    add_toxic(api, "b", type="latency", attributes={"latency": 10})
    listed = api.get("/proxies").json()
    assert set(listed) == {"a", "b"}
    assert listed["a"]["toxics"] == []
    assert [t["name"] for t in listed["b"]["toxics"]] == ["latency_downstream"]


def test_a_new_toxic_defaults_to_downstream_full_toxicity_and_type_stream_name(
    api: httpx.Client, echo: TcpServer,
) -> None:
    make_proxy(api, echo.address)
    toxic = add_toxic(api, type="latency", attributes={"latency": 100})
    assert toxic == {"name": "latency_downstream", "type": "latency", "stream": "downstream",
                     "toxicity": 1.0, "attributes": {"latency": 100, "jitter": 0}}
    assert api.get("/proxies/svc/toxics/latency_downstream").json() == toxic


def test_toxics_are_listed_upstream_first_then_downstream(api: httpx.Client, echo: TcpServer,
                                                          ) -> None:
    make_proxy(api, echo.address)
    add_toxic(api, type="latency", name="d1")
    add_toxic(api, type="latency", name="u1", stream="upstream")
    add_toxic(api, type="bandwidth", name="d2", attributes={"rate": 100})
    names = [t["name"] for t in api.get("/proxies/svc/toxics").json()]
    assert names == ["u1", "d1", "d2"]


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"type": "poison"}, 400, "invalid toxic type"),
    ({"type": "latency", "stream": "sideways"}, 400,
     "stream was invalid, can be either upstream or downstream"),
    ({"type": "latency"}, 409, "toxic already exists"),
])
def test_a_bad_toxic_is_refused_with_toxiproxys_error(
    api: httpx.Client, echo: TcpServer, body: dict[str, object], status: int, error: str,
) -> None:
    make_proxy(api, echo.address)
    add_toxic(api, type="latency")
    response = api.post("/proxies/svc/toxics", json=body)
    assert response.status_code == status
    assert response.json() == {"error": error, "status": status}


def test_updating_a_toxic_merges_attributes_and_toxicity(api: httpx.Client, echo: TcpServer,
                                                         ) -> None:
    make_proxy(api, echo.address)
    add_toxic(api, type="latency", attributes={"latency": 100, "jitter": 5})
    for method in ("POST", "PATCH"):  # POST is Toxiproxy's old verb, PATCH its new one
        response = api.request(method, "/proxies/svc/toxics/latency_downstream",
                               json={"attributes": {"latency": 300}, "toxicity": 0.5})
        assert response.status_code == 200
        assert response.json()["attributes"] == {"latency": 300, "jitter": 5}
        assert response.json()["toxicity"] == 0.5


def test_deleting_a_toxic_answers_204_and_then_404(api: httpx.Client, echo: TcpServer) -> None:
    make_proxy(api, echo.address)
    add_toxic(api, type="timeout", attributes={"timeout": 0})
    assert api.delete("/proxies/svc/toxics/timeout_downstream").status_code == 204
    response = api.delete("/proxies/svc/toxics/timeout_downstream")
    assert response.status_code == 404
    assert response.json() == {"error": "toxic not found", "status": 404}
    assert api.get("/proxies/svc/toxics").json() == []


def test_disabling_a_proxy_refuses_new_connections_and_enabling_restores_them(
    api: httpx.Client, echo: TcpServer,
) -> None:
    listen = make_proxy(api, echo.address)
    response = api.post("/proxies/svc", json={"enabled": False})
    assert response.status_code == 200
    assert response.json()["enabled"] is False
    assert response.json()["listen"] == listen
    assert refused(listen)
    assert api.patch("/proxies/svc", json={"enabled": True}).json()["enabled"] is True
    with connect(listen) as sock:
        round_trip(sock)


def test_disabling_a_proxy_closes_its_open_connections(api: httpx.Client, echo: TcpServer,
                                                       ) -> None:
    with connect(make_proxy(api, echo.address)) as sock:
        round_trip(sock)
        api.post("/proxies/svc", json={"enabled": False})
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass  # closed either way


def test_changing_the_upstream_moves_the_proxy_to_it(api: httpx.Client, echo: TcpServer) -> None:
    greeter = TcpServer(greeting=b"hi!")
    try:
        listen = make_proxy(api, echo.address)
        response = api.post("/proxies/svc", json={"upstream": greeter.address})
        assert response.json()["upstream"] == greeter.address
        with connect(listen) as sock:
            assert sock.recv(3) == b"hi!"
    finally:
        greeter.close()


def test_deleting_a_proxy_closes_its_listener(api: httpx.Client, echo: TcpServer) -> None:
    listen = make_proxy(api, echo.address)
    assert api.delete("/proxies/svc").status_code == 204
    assert refused(listen)
    assert api.get("/proxies/svc").status_code == 404


def test_populate_creates_proxies_and_leaves_unchanged_ones_alone(
    api: httpx.Client, echo: TcpServer,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    wanted = [{"name": "one", "listen": f"127.0.0.1:{port}", "upstream": echo.address}]
    first = api.post("/populate", json=wanted)
    assert first.status_code == 201
    assert [p["name"] for p in first.json()["proxies"]] == ["one"]
    add_toxic(api, "one", type="latency")
    again = api.post("/populate", json=wanted)
    assert again.status_code == 201
    # same listen and upstream: the very same proxy, toxics kept
    assert [t["name"] for t in again.json()["proxies"][0]["toxics"]] == ["latency_downstream"]


def test_populate_with_a_new_upstream_replaces_the_proxy(api: httpx.Client, echo: TcpServer,
                                                         ) -> None:
    listen = make_proxy(api, echo.address, name="one")
    add_toxic(api, "one", type="latency")
    response = api.post("/populate", json=[{"name": "one", "listen": listen,
                                            "upstream": "127.0.0.1:9"}])
    assert response.status_code == 201
    assert response.json()["proxies"][0]["upstream"] == "127.0.0.1:9"
    assert response.json()["proxies"][0]["toxics"] == []


def test_populate_checks_every_proxy_before_creating_any(api: httpx.Client, echo: TcpServer,
                                                         ) -> None:
    response = api.post("/populate", json=[
        {"name": "good", "listen": "127.0.0.1:0", "upstream": echo.address},
        {"listen": "127.0.0.1:0", "upstream": echo.address},
    ])
    assert response.status_code == 400
    assert response.json()["error"] == "missing required field: name at proxy 2"
    assert api.get("/proxies").json() == {}


def test_reset_removes_every_toxic_and_enables_every_proxy(api: httpx.Client, echo: TcpServer,
                                                           ) -> None:
    listen = make_proxy(api, echo.address)
    add_toxic(api, type="timeout", attributes={"timeout": 0})
    api.post("/proxies/svc", json={"enabled": False})
    assert api.post("/reset").status_code == 204
    proxy = api.get("/proxies/svc").json()
    assert proxy["enabled"] is True
    assert proxy["toxics"] == []
    with connect(listen) as sock:
        round_trip(sock)  # the timeout toxic would have swallowed this


def test_browsers_are_refused_so_web_pages_cannot_drive_the_api(api: httpx.Client) -> None:
    response = api.post("/reset", headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"})
    assert response.status_code == 403


def test_unknown_paths_are_404_and_wrong_methods_405(api: httpx.Client) -> None:
    assert api.get("/nothing").status_code == 404
    assert api.put("/proxies").status_code == 405


@pytest.mark.parametrize("body", [
    b'{"type": "latency", "attributes": {"latency": 1' + b"0" * 400 + b'}}',
    b'{"type": "bandwidth", "attributes": {"rate": 9223372036854775808}}',
    b'{"type": "slicer", "attributes": {"delay": -9223372036854775809}}',
    b'{"type": "latency", "toxicity": 1' + b"0" * 400 + b"}",
    b'{"type": "latency", "toxicity": NaN}',
    b'{"type": "latency", "attributes": {"latency": Infinity}}',
    b'{"type": "latency", "attributes": {"latency": "100"}}',
])
def test_numbers_go_would_not_decode_are_a_400_and_add_no_toxic(
    api: httpx.Client, echo: TcpServer, body: bytes,
) -> None:
    # Toxiproxy decodes attributes into int64 and rejects NaN/Infinity as invalid JSON;
    # accepting them here crashed the link (a leaked, silent connection) or wrote
    # JSON no client could parse.
    listen = make_proxy(api, echo.address)
    response = api.post("/proxies/svc/toxics", content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("bad request body")
    assert api.get("/proxies/svc/toxics").json() == []
    with connect(listen) as sock:
        round_trip(sock)


@pytest.mark.parametrize("path", ["/proxies", "/populate", "/proxies/svc/toxics"])
def test_deeply_nested_json_is_a_400_bad_request_body(api: httpx.Client, echo: TcpServer,
                                                      path: str) -> None:
    make_proxy(api, echo.address)
    response = api.post(path, content=b"[" * 100_000)
    assert response.status_code == 400
    assert response.json()["error"].startswith("bad request body")


def proxy_sockets_to(ss: str, proxy: ProxyProcess, port: int) -> int:
    """TCP sockets the proxy process still holds (has a descriptor for) to ``port``."""
    assert proxy.proc is not None
    out = subprocess.run([ss, "-tnpH", "dst", f"127.0.0.1:{port}"], capture_output=True,
                         text=True, check=True).stdout
    return sum(f"pid={proxy.proc.pid}," in line for line in out.splitlines())


def test_deleting_a_proxy_releases_upstream_sockets_that_never_read() -> None:
    # An upstream that stops reading leaves bytes queued in the proxy; deleting the proxy
    # must still let go of the socket (Toxiproxy's Go conns just close) instead of
    # keeping it open until the upstream reads, possibly forever.
    ss = require_binary("ss", "iproute2")
    sink = socket.create_server(("127.0.0.1", 0))
    sink_port = sink.getsockname()[1]
    proxy = ProxyProcess().start()
    held: list[socket.socket] = []
    try:
        with httpx.Client(base_url=proxy.url, timeout=10) as api:
            listen = make_proxy(api, f"127.0.0.1:{sink_port}")
            with connect(listen) as client:
                upstream, _ = sink.accept()
                held.append(upstream)
                upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                client.settimeout(1)
                with contextlib.suppress(TimeoutError):
                    client.sendall(b"x" * 8_000_000)  # fills every buffer on the way
                assert proxy_sockets_to(ss, proxy, sink_port) == 1
                assert api.delete("/proxies/svc").status_code == 204
                deadline = time.monotonic() + 20
                while proxy_sockets_to(ss, proxy, sink_port) and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert proxy_sockets_to(ss, proxy, sink_port) == 0
    finally:
        for sock in held:
            sock.close()
        sink.close()
        proxy.stop()


def test_a_body_over_10_mib_is_refused_before_it_is_read(proxy_process: ProxyProcess) -> None:
    host, port = proxy_process.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /proxies HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 20000000\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize("upstream", ["a" * 64 + ".invalid:80", "\udcff:80"])
def test_an_upstream_that_cannot_be_resolved_closes_the_client_cleanly(upstream: str) -> None:
    # A host name the IDNA codec or the resolver refuses must end like a refused upstream:
    # client closed, one warning; not an unhandled exception in the accept callback.
    proxy = ProxyProcess().start()
    try:
        with httpx.Client(base_url=proxy.url, timeout=10) as api:
            created = api.post("/proxies", content=json.dumps(  # \u-escapes the surrogate
                {"name": "svc", "upstream": upstream}))
            assert created.status_code == 201
            with connect(created.json()["listen"]) as sock:
                assert sock.recv(10) == b""
            assert api.get("/version").status_code == 200
        log = ""
        deadline = time.monotonic() + 10
        while "cannot connect to upstream" not in log and time.monotonic() < deadline:
            time.sleep(0.05)
            proxy.log.seek(0)
            log = proxy.log.read().decode(errors="replace")
    finally:
        proxy.stop()
    assert "Unhandled exception" not in log
    assert "cannot connect to upstream" in log
