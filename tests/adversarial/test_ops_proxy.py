"""The fault proxy's HTTP API used as an attacker would: listeners for the network, relays to
the cloud metadata address, and calls without the token.

Each test runs the real ``fournines chaos proxy`` process and talks to it over real sockets.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from .._servers import free_port
from ..chaos._proxy_servers import ProxyProcess, TcpServer, connect, round_trip

TOKEN = "adversarial-proxy-token-0123456789"
METADATA = "169.254.169.254:80"


def bindable(host: str, port: int) -> bool:
    """Whether nobody else listens on ``host:port`` (the proxy did not bind it)."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def test_a_listener_on_every_interface_is_refused_by_default() -> None:
    process = ProxyProcess().start()
    port = free_port()
    try:
        response = httpx.post(f"{process.url}/proxies", json={
            "name": "meta", "listen": f"0.0.0.0:{port}", "upstream": METADATA})
        assert response.status_code == 403
        body = response.json()
        assert body["status"] == 403 and body["error"].startswith(f"listen 0.0.0.0:{port}: ")
        assert "--allow-listen" in body["error"]
        assert bindable("0.0.0.0", port), "the refused proxy listens anyway"
        assert httpx.get(f"{process.url}/proxies/meta").status_code == 404
        # ":port" (Toxiproxy: every interface) and a disabled proxy are refused the same way
        for listen, enabled in ((f":{port}", True), (f"0.0.0.0:{port}", False)):
            refused = httpx.post(f"{process.url}/proxies", json={
                "name": "meta", "listen": listen, "upstream": METADATA, "enabled": enabled})
            assert refused.status_code == 403, refused.text
    finally:
        assert process.stop() == 0


def test_every_way_of_making_a_listener_is_held_to_loopback() -> None:
    process = ProxyProcess().start()
    port = free_port()
    try:
        populate = httpx.post(f"{process.url}/populate", json=[
            {"name": "a", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"},
            {"name": "b", "listen": f"0.0.0.0:{port}", "upstream": METADATA}])
        assert populate.status_code == 403
        assert populate.json()["error"].startswith(f"listen 0.0.0.0:{port}: ")
        assert httpx.get(f"{process.url}/proxies").json() == {}  # checked before any is made
        created = httpx.post(f"{process.url}/proxies", json={
            "name": "a", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"})
        assert created.status_code == 201
        moved = httpx.post(f"{process.url}/proxies/a", json={"listen": f"0.0.0.0:{port}"})
        assert moved.status_code == 403
        assert httpx.get(f"{process.url}/proxies/a").json()["listen"].startswith("127.0.0.1:")
    finally:
        assert process.stop() == 0


def test_allow_listen_opens_exactly_the_addresses_it_names() -> None:
    echo = TcpServer()
    process = ProxyProcess("--allow-listen", "0.0.0.0").start()
    try:
        response = httpx.post(f"{process.url}/proxies", json={
            "name": "open", "listen": "0.0.0.0:0", "upstream": echo.address})
        assert response.status_code == 201, response.text
        port = response.json()["listen"].rsplit(":", 1)[1]
        with connect(f"127.0.0.1:{port}") as sock:
            round_trip(sock)
    finally:
        assert process.stop() == 0
        echo.close()


def test_an_upstream_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    echo = TcpServer()
    process = ProxyProcess("--allow-upstream", f"127.0.0.1:{echo.port}").start()
    try:
        response = httpx.post(f"{process.url}/proxies", json={
            "name": "meta", "listen": "127.0.0.1:0", "upstream": METADATA})
        assert response.status_code == 403
        assert response.json()["error"].startswith(f"upstream {METADATA}: ")
        other = httpx.post(f"{process.url}/proxies", json={
            "name": "other", "upstream": f"127.0.0.1:{echo.port + 1}"})
        assert other.status_code == 403  # the port is part of the pattern
        allowed = httpx.post(f"{process.url}/proxies", json={
            "name": "echo", "upstream": echo.address})
        assert allowed.status_code == 201
        with connect(allowed.json()["listen"]) as sock:
            round_trip(sock)
        moved = httpx.patch(f"{process.url}/proxies/echo", json={"upstream": METADATA})
        assert moved.status_code == 403
        assert httpx.get(f"{process.url}/proxies/echo").json()["upstream"] == echo.address
    finally:
        assert process.stop() == 0
        echo.close()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.token"
    path.write_text(TOKEN + "\n")
    return path


def test_with_a_token_file_the_api_answers_only_requests_that_carry_it(
        token_file: Path) -> None:
    process = ProxyProcess("--token-file", str(token_file)).start()
    try:
        for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"},
                        {"authorization": f"Basic {TOKEN}"}):
            response = httpx.post(f"{process.url}/proxies", headers=headers, json={
                "name": "meta", "listen": "127.0.0.1:0", "upstream": METADATA})
            assert response.status_code == 401
            assert response.json()["status"] == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert httpx.get(f"{process.url}/version").status_code == 401
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{process.url}/proxies", headers=auth).json() == {}
    finally:
        assert process.stop() == 0
