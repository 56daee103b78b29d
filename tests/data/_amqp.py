"""The machine's RabbitMQ for the message tests: one vhost of its own per test module.

The vhost is made with ``rabbitmqctl`` (the management plugin is not enabled here);
where that is not possible, the tests share ``/`` and rely on their unique queue names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

HOST = os.environ.get("FOURNINES_AMQP_HOST", "127.0.0.1")


def _ctl(*args: str) -> bool:
    if shutil.which("rabbitmqctl") is None:
        return False
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=60, check=False)
    return done.returncode == 0


def _reachable() -> None:
    import socket

    try:
        socket.create_connection((HOST, 5672), timeout=5).close()
    except OSError as exc:
        message = (f"RabbitMQ is not reachable at {HOST}:5672 ({exc}); start it "
                   "(apt-get install -y rabbitmq-server; service rabbitmq-server start)")
        if os.environ.get("FOURNINES_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def amqp_url() -> Iterator[str]:
    """The AMQP URL of a vhost made for this test module alone (deleted after it)."""
    _reachable()
    vhost = f"fournines_{uuid.uuid4().hex[:8]}"
    if _ctl("add_vhost", vhost) and _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*",
                                          ".*"):
        try:
            yield f"amqp://guest:guest@{HOST}/{vhost}"
        finally:
            _ctl("delete_vhost", vhost)
    else:
        yield f"amqp://guest:guest@{HOST}/"


def unique(prefix: str) -> str:
    """A queue name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
