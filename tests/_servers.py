"""Real servers for tests: started on free loopback ports in temp dirs, stopped after.

A missing binary fails the test with the Debian package to install, unless
FOURNINES_ALLOW_SKIP=1 is set (then it skips, with the same message).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_binary(name: str, package: str) -> str:
    sbin = Path("/usr/sbin") / name
    path = shutil.which(name) or (str(sbin) if sbin.exists() else None)
    if path:
        return path
    message = (
        f"{name} not found: install the Debian package {package!r} "
        f"(apt-get install -y {package}; `make test` does this when run as root)"
    )
    if os.environ.get("FOURNINES_ALLOW_SKIP") == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """A private redis-server: ``url``, ``kill()`` (SIGKILL) and ``start()`` again."""

    def __init__(self) -> None:
        self.binary = require_binary("redis-server", "redis-server")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fournines-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class EtcdServer:
    """A private single-node etcd (Debian ``etcd-server``) on free loopback ports.

    ``url`` is the client URL; ``kill()`` (SIGKILL), ``stop()`` (SIGTERM and clean up),
    ``pause()``/``resume()`` (SIGSTOP/SIGCONT: a hung etcd, not a dead one) and ``start()``
    again with the same data directory, so the keys survive a restart.
    """

    def __init__(self, *, name: str = "n1", client_port: int | None = None,
                 peer_port: int | None = None, initial_cluster: str | None = None,
                 data_dir: str | None = None) -> None:
        self.binary = require_binary("etcd", "etcd-server")
        self.name = name
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.initial_cluster = initial_cluster or f"{name}=http://127.0.0.1:{self.peer_port}"
        self.dir = data_dir or tempfile.mkdtemp(prefix="fournines-etcd-")
        self.proc: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, *, wait: bool = True) -> None:
        state = "existing" if self._started else "new"
        self.proc = subprocess.Popen(
            [self.binary, "--name", self.name, "--data-dir", os.path.join(self.dir, self.name),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
             "--initial-cluster", self.initial_cluster,
             "--initial-cluster-state", state, "--initial-cluster-token", "fournines-test"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._started = True
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 15.0) -> None:
        import urllib.request

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=0.5) as r:
                    if b'"true"' in r.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"etcd {self.name} not healthy at {self.url} after {timeout}s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class EtcdCluster:
    """Three etcd members on loopback forming one real cluster (``urls``, ``members``)."""

    def __init__(self, size: int = 3) -> None:
        peers = [free_port() for _ in range(size)]
        initial = ",".join(f"n{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(peers))
        data_dir = tempfile.mkdtemp(prefix="fournines-etcd-cluster-")
        self.members = [
            EtcdServer(name=f"n{i + 1}", peer_port=p, initial_cluster=initial, data_dir=data_dir)
            for i, p in enumerate(peers)
        ]
        self.dir = data_dir

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self) -> None:
        for m in self.members:
            m.start(wait=False)
        for m in self.members:
            m.wait_healthy(30.0)

    def leader(self) -> EtcdServer:
        """The member that is leader now (from each member's maintenance status)."""
        import json
        import urllib.request

        for m in self.members:
            if m.proc is None:
                continue
            try:
                req = urllib.request.Request(
                    f"{m.url}/v3/maintenance/status", data=b"{}", method="POST")
                with urllib.request.urlopen(req, timeout=1) as r:
                    status = json.loads(r.read())
            except OSError:
                continue
            if status.get("leader") == status.get("header", {}).get("member_id"):
                return m
        raise RuntimeError("no etcd leader found")

    def cleanup(self) -> None:
        for m in self.members:
            m.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
