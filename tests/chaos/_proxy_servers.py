"""Real processes and sockets for the fault proxy tests.

``ProxyProcess`` runs ``python -m fournines chaos proxy --port 0`` and reads the API URL it
prints. ``TcpServer`` is a threaded loopback server that echoes (optionally greeting first)
and records how many bytes each connection delivered, so tests can count bytes on both
sides of the proxy.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


class ProxyProcess:
    """The fault proxy as a real subprocess, API on an ephemeral loopback port."""

    def __init__(self, *args: str) -> None:
        self.args = list(args)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> ProxyProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fournines", "chaos", "proxy", "--port", "0", *self.args],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until it listens, or EOF on failure
        if "API on " not in line:
            self.proc.wait(timeout)
            self.log.seek(0)
            stderr = self.log.read().decode(errors="replace")
            self.stop()
            raise RuntimeError(f"fault proxy did not start: {line!r} {stderr}")
        self.url = line.split("API on ", 1)[1].strip()
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode

    def clear(self) -> None:
        """Delete every proxy (tests share one process)."""
        with httpx.Client(base_url=self.url) as api:
            for name in api.get("/proxies").json():
                api.delete(f"/proxies/{name}")


class TcpServer:
    """A threaded loopback TCP server: echo, with an optional greeting on connect."""

    def __init__(self, *, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.received: list[int] = []  # bytes received, per finished connection
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        total = 0
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.greeting:
                conn.sendall(self.greeting)
            while data := conn.recv(65536):
                total += len(data)
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()
            with self.done:
                self.received.append(total)
                self.done.notify_all()

    def wait_finished(self, count: int, timeout: float = 10.0) -> list[int]:
        end = time.monotonic() + timeout
        with self.done:
            while len(self.received) < count:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"only {len(self.received)} of {count} "
                                         "upstream connections finished")
                self.done.wait(left)
            return list(self.received)

    def close(self) -> None:
        self.sock.close()


def connect(listen: str, timeout: float = 10.0) -> socket.socket:
    host, port = listen.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock: socket.socket) -> bytes:
    """Everything until the peer closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    """Seconds for ``payload`` to come back from an echo server."""
    start = time.monotonic()
    sock.sendall(payload)
    echoed = recv_exactly(sock, len(payload))
    assert echoed == payload
    return time.monotonic() - start


# -- fixtures, imported by the test_proxy* modules ------------------------------------------

@pytest.fixture(scope="module", name="proxy_process")
def proxy_process_fixture() -> Iterator[ProxyProcess]:
    """One fault proxy subprocess per test module."""
    process = ProxyProcess().start()
    yield process
    assert process.stop() == 0, "the fault proxy did not exit cleanly on SIGTERM"


@pytest.fixture(name="api")
def api_fixture(proxy_process: ProxyProcess) -> Iterator[httpx.Client]:
    """An httpx client on the proxy's API; every proxy is deleted after the test."""
    with httpx.Client(base_url=proxy_process.url, timeout=10.0) as client:
        yield client
    proxy_process.clear()


@pytest.fixture(name="echo")
def echo_fixture() -> Iterator[TcpServer]:
    server = TcpServer()
    yield server
    server.close()


def make_proxy(api: httpx.Client, upstream: str, name: str = "svc") -> str:
    """Create a proxy on an ephemeral port; returns its listen address."""
    response = api.post("/proxies", json={"name": name, "listen": "127.0.0.1:0",
                                          "upstream": upstream})
    assert response.status_code == 201, response.text
    return str(response.json()["listen"])


def add_toxic(api: httpx.Client, proxy: str = "svc", **toxic: object) -> dict[str, object]:
    response = api.post(f"/proxies/{proxy}/toxics", json=toxic)
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result
