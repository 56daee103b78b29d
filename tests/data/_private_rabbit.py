"""A private RabbitMQ node for the tests that stop, restart or disturb the broker.

Its own node name, AMQP and distribution ports, data and log directories, so stopping
it disturbs nobody else on the machine's broker. Boot takes 4-15 s here and much more
when the machine is loaded: readiness is RabbitMQ's own ``await_startup`` (the node has
booted and its listeners are up), not merely an open port, and a node that does not
come up fails with the tail of its log.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .._servers import free_port, require_binary

# Generous: boot was measured at 12 s on an idle machine, and a loaded one is slower.
BOOT_TIMEOUT = 240.0


class PrivateRabbit:
    """``start()``, ``stop()`` (clean, the queues kept on disk), ``close_connections()``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port, dist = free_port(), free_port()
        self.node = f"fn_{uuid.uuid4().hex[:8]}@localhost"
        (root / "log").mkdir()
        (root / "mnesia").mkdir()
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        self.env = {**os.environ, "RABBITMQ_NODENAME": self.node,
                    "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(dist),
                    "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(root / "log"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
                    "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq")}
        try:  # Debian's rabbitmq-server drops to the rabbitmq user: it must own the files
            user = pwd.getpwnam("rabbitmq")
            for path in (root, *root.rglob("*")):
                os.chown(path, user.pw_uid, user.pw_gid)
        except (KeyError, PermissionError):
            pass
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rabbitmqctl", "-n", self.node, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def log_tail(self, lines: int = 30) -> str:
        logs = sorted((self.root / "log").glob("*.log"))
        text = "\n".join(path.read_text(errors="replace") for path in logs)
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env, check=True,
                       capture_output=True, timeout=60)
        # ``await_startup`` fails at once while the detached node has not yet registered
        # with epmd (seconds on a loaded machine): ask again until the deadline.
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            left = int(deadline - time.monotonic())
            done = self._ctl("await_startup", "--timeout", str(max(left, 1)), timeout=left + 30)
            if done.returncode == 0 and self.listening():
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the private RabbitMQ {self.node} did not start in {BOOT_TIMEOUT:.0f} s "
                    f"({done.stderr.strip()[:300]}); its log ends with:\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        self._ctl("stop", timeout=120)
        deadline = time.monotonic() + 60
        while self.listening():
            if time.monotonic() > deadline:
                raise AssertionError(f"the private RabbitMQ {self.node} still listens after stop")
            time.sleep(0.1)

    def ctl_ok(self, *args: str) -> None:
        """Run ``rabbitmqctl -n NODE ARGS...``; fail the test if it fails."""
        done = self._ctl(*args)
        assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stderr}"

    def close_connections(self, reason: str = "test") -> None:
        """Force-close every client connection (each client sees ``CONNECTION_FORCED``)."""
        self.ctl_ok("close_all_connections", reason)


@pytest.fixture(scope="module")
def private_rabbit() -> Iterator[PrivateRabbit]:
    """A private RabbitMQ node for the module, started before and stopped after it."""
    require_binary("rabbitmq-server", "rabbitmq-server")
    # Not under pytest's 0700 temp dir: the broker runs as the rabbitmq user.
    root = Path(tempfile.mkdtemp(prefix="fournines-rabbit-"))
    root.chmod(0o755)
    broker = PrivateRabbit(root)
    try:
        broker.start()
        yield broker
    finally:
        try:
            broker.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
