"""``fournines chaos proxy`` as a command, and :class:`FaultProxy` in process."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fournines.chaos.proxy import FaultProxy

from ._proxy_servers import ROOT, ProxyProcess, TcpServer, connect, round_trip


def test_the_command_creates_the_proxies_of_its_config_file(tmp_path: Path) -> None:
    echo = TcpServer()
    config = tmp_path / "proxies.json"
    config.write_text(json.dumps([
        {"name": "echo", "listen": "127.0.0.1:0", "upstream": echo.address},
        {"name": "spare", "listen": "127.0.0.1:0", "upstream": echo.address,
         "enabled": False},
    ]))
    process = ProxyProcess("--config", str(config)).start()
    try:
        proxies = httpx.get(f"{process.url}/proxies").json()
        assert proxies["echo"]["enabled"] is True
        assert proxies["spare"]["enabled"] is False
        with connect(proxies["echo"]["listen"]) as sock:
            round_trip(sock)
    finally:
        assert process.stop() == 0
        echo.close()


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "--config"),
    ('{"name": "x"}', "expected a JSON list of proxies"),
])
def test_the_command_rejects_a_bad_config_file(tmp_path: Path, content: str, message: str,
                                               ) -> None:
    config = tmp_path / "proxies.json"
    config.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "fournines", "chaos", "proxy", "--port", "0",
         "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_the_command_fails_when_a_configured_proxy_cannot_listen(tmp_path: Path) -> None:
    echo = TcpServer()
    config = tmp_path / "proxies.json"
    config.write_text(json.dumps([{"name": "clash", "listen": echo.address,
                                   "upstream": echo.address}]))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "fournines", "chaos", "proxy", "--port", "0",
             "--config", str(config)],
            capture_output=True, text=True, cwd=ROOT, timeout=30, check=False,
        )
    finally:
        echo.close()
    assert result.returncode == 1
    assert "address already in use" in result.stderr.lower()


async def test_fault_proxy_runs_in_process_with_its_api_url() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(echo, "127.0.0.1", 0)
    upstream_port = upstream.sockets[0].getsockname()[1]
    async with FaultProxy(port=0, seed=1) as chaos, httpx.AsyncClient(
            base_url=chaos.api_url) as api:
        assert chaos.api_url.startswith("http://127.0.0.1:")
        created = await api.post("/proxies", json={
            "name": "echo", "upstream": f"127.0.0.1:{upstream_port}"})
        host, port = created.json()["listen"].rsplit(":", 1)
        assert host == "127.0.0.1"  # no listen given: loopback, never all interfaces
        await api.post("/proxies/echo/toxics",
                       json={"type": "latency", "attributes": {"latency": 200}})
        reader, writer = await asyncio.open_connection(host, int(port))
        loop = asyncio.get_running_loop()
        start = loop.time()
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        assert loop.time() - start >= 0.8 * 0.200
        writer.close()
    upstream.close()
    await upstream.wait_closed()


async def test_fault_proxy_warns_when_its_api_is_not_on_loopback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="fournines.chaos.proxy"):
        async with FaultProxy(host="0.0.0.0", port=0):
            pass
    assert "anyone who can reach it" in caplog.text


async def test_fault_proxy_closes_its_proxies_on_exit() -> None:
    async with FaultProxy(port=0) as chaos, httpx.AsyncClient(base_url=chaos.api_url) as api:
        created = await api.post("/proxies", json={"name": "p", "upstream": "127.0.0.1:9"})
        listen = created.json()["listen"]
    with pytest.raises(ConnectionRefusedError):
        connect(listen, timeout=2)
