"""The fault proxy's allow-lists and token: what they take, what they refuse, and how.

In process (:class:`FaultProxy` on real loopback sockets) and, for the flags, as the real
``fournines chaos proxy`` command.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from toxiproxy import Toxiproxy

from fournines._errors import ConfigurationError
from fournines.chaos.proxy import FaultProxy

from ._proxy_servers import ROOT, ProxyProcess

TOKEN = "guard-test-token-0123456789"


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


async def echoes(listen: str) -> bool:
    host, port = listen.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"ping")
        await writer.drain()
        return await asyncio.wait_for(reader.read(4), 5) == b"ping"
    finally:
        writer.close()


@pytest.mark.parametrize(("keywords", "message"), [
    ({"allow_listen": ["everywhere"]}, r"FaultProxy.allow_listen\[0\] must be an IP address "
                                       r"or CIDR .*got 'everywhere'"),
    ({"allow_listen": "0.0.0.0"}, "FaultProxy.allow_listen must be a list of patterns"),
    ({"allow_upstream": ["10.0.0.0/8"]}, r"FaultProxy.allow_upstream\[0\] must be HOST:PORT"),
    ({"allow_upstream": ["::1:80"]}, r"allow_upstream\[0\] .*IPv6 in brackets"),
    ({"allow_upstream": ["db:9-8"]}, r"allow_upstream\[0\] must be HOST:PORT"),
    ({"allow_upstream": ["db:70000"]}, r"allow_upstream\[0\] must be HOST:PORT"),
    ({"allow_upstream": ["a b:80"]}, r"allow_upstream\[0\] must be HOST:PORT"),
    ({"allow_upstream": []}, "FaultProxy.allow_upstream must list at least one pattern"),
    ({"token": "short"}, "FaultProxy.token must be a string of at least 16 characters"),
])
def test_bad_guard_settings_are_refused_naming_the_field(keywords: dict[str, object],
                                                         message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        FaultProxy(port=0, **keywords)  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern", ["127.0.0.1:{port}", "127.0.0.0/8:*", "*:{port}",
                                     "[::1]:1-65535,127.0.0.1:{low}-{high}", "localhost:*"])
async def test_upstream_patterns_that_allow_the_echo_server(echo_port: int, pattern: str,
                                                            ) -> None:
    rules = pattern.format(port=echo_port, low=echo_port - 1, high=echo_port + 1).split(",")
    async with FaultProxy(port=0, allow_upstream=rules) as chaos, httpx.AsyncClient(
            base_url=chaos.api_url) as api:
        upstream = "localhost" if "localhost" in pattern else "127.0.0.1"
        created = await api.post("/proxies", json={"name": "echo",
                                                   "upstream": f"{upstream}:{echo_port}"})
        assert created.status_code == 201, created.text
        assert await echoes(created.json()["listen"])


async def test_a_name_is_allowed_by_the_addresses_it_resolves_to(echo_port: int) -> None:
    async with FaultProxy(port=0, allow_upstream=["127.0.0.0/8:*"]) as chaos, \
            httpx.AsyncClient(base_url=chaos.api_url) as api:
        created = await api.post("/proxies", json={"name": "echo",
                                                   "upstream": f"localhost:{echo_port}"})
        assert created.status_code == 201, created.text
        assert await echoes(created.json()["listen"])


async def test_a_name_that_resolves_outside_the_allow_list_is_refused(echo_port: int) -> None:
    async with FaultProxy(port=0, allow_upstream=["10.0.0.0/8:*"]) as chaos, \
            httpx.AsyncClient(base_url=chaos.api_url) as api:
        refused = await api.post("/proxies", json={"name": "echo",
                                                   "upstream": f"localhost:{echo_port}"})
        assert refused.status_code == 403
        assert refused.json() == {"status": 403, "error": (
            f"upstream localhost:{echo_port}: not allowed: not in the fault proxy's upstream "
            "allow-list (--allow-upstream), by name or by any address it resolves to")}


@pytest.mark.parametrize("upstream", [":{port}", "127.0.0.2:{port}", "LOCALHOST:1",
                                      "[::1]:{port}"])
async def test_upstreams_the_patterns_do_not_cover_are_refused(echo_port: int, upstream: str,
                                                               ) -> None:
    rules = [f"127.0.0.1:{echo_port}", f"localhost:{echo_port}"]
    async with FaultProxy(port=0, allow_upstream=rules) as chaos, httpx.AsyncClient(
            base_url=chaos.api_url) as api:
        wanted = upstream.format(port=echo_port)
        refused = await api.post("/proxies", json={"name": "p", "upstream": wanted})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"].startswith(f"upstream {wanted}: not allowed")
        assert (await api.get("/proxies")).json() == {}


async def test_allow_listen_takes_cidrs_and_still_refuses_what_they_do_not_cover() -> None:
    async with FaultProxy(port=0, allow_listen=["10.0.0.0/8"]) as chaos, httpx.AsyncClient(
            base_url=chaos.api_url) as api:
        refused = await api.post("/proxies", json={"name": "p", "listen": "0.0.0.0:0",
                                                   "upstream": "127.0.0.1:9"})
        assert refused.status_code == 403
        assert "an address --allow-listen / allow_listen does not name" in refused.json()[
            "error"]
        assert (await api.post("/proxies", json={"name": "p", "listen": "localhost:0",
                                                 "upstream": "127.0.0.1:9"})).status_code == 201


async def test_with_a_token_the_toxiproxy_client_is_turned_away_with_401() -> None:
    # Toxiproxy clients cannot send the token: that is why it is opt-in.
    async with FaultProxy(port=0, token=TOKEN) as chaos:
        client = Toxiproxy()
        client.update_api_consumer("127.0.0.1", chaos.port)
        version = await asyncio.to_thread(client.version)
        assert b'"status": 401' in version
        async with httpx.AsyncClient(base_url=chaos.api_url) as api:
            authorised = await api.get("/version", headers={"authorization": f"Bearer {TOKEN}"})
            assert authorised.status_code == 200


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fournines", "chaos", "proxy", "--port", "0",
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=30,
                          check=False, env={**os.environ, "PYTHONPATH": str(ROOT / "src"),
                                            **(env or {})})


@pytest.mark.parametrize(("args", "message"), [
    (["--allow-upstream", "10.0.0.0/8"], r"--allow-upstream: FaultProxy.allow_upstream\[0\]"),
    (["--allow-listen", "0.0.0.0,anywhere"], r"--allow-listen: FaultProxy.allow_listen\[1\]"),
    (["--token-file", "/nonexistent/token"], "--token-file /nonexistent/token: .*No such file"),
])
def test_the_command_refuses_bad_guard_flags_with_exit_2(args: list[str], message: str,
                                                         ) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert re.search(message, result.stderr), result.stderr


def test_the_command_refuses_a_config_proxy_on_every_interface_with_exit_2(
        tmp_path: Path) -> None:
    config = tmp_path / "proxies.json"
    config.write_text('[{"name": "open", "listen": "0.0.0.0:0", "upstream": "127.0.0.1:9"}]')
    result = run("--config", str(config))
    assert result.returncode == 2
    assert "listen 0.0.0.0:0: not allowed" in result.stderr and "at proxy 1" in result.stderr


def test_the_command_takes_its_token_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOURNINES_CHAOS_PROXY_TOKEN", TOKEN)
    process = ProxyProcess().start()
    try:
        assert httpx.get(f"{process.url}/proxies").status_code == 401
        assert httpx.get(f"{process.url}/proxies",
                         headers={"authorization": f"Bearer {TOKEN}"}).json() == {}
    finally:
        assert process.stop() == 0
