"""The lab's etcd: a private single node it starts, kills and restarts, or one it is given.

``fournines lab --etcd`` starts :class:`LabEtcd` (Debian's ``etcd-server``) on free
loopback ports with its data in the lab's work folder; ``--etcd URL`` uses an
existing etcd, which the lab never takes down (``registry_outage`` needs the
lab's own). Each run writes under a prefix of its own (:func:`run_prefix`), so
runs sharing one etcd never see each other's instances.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from .fleet import DIE_WITH_PARENT, LabError, free_port

__all__ = ["LAB_TTL", "LabEtcd", "run_prefix"]

LAB_TTL = 10.0
"""Seconds a lab instance's record outlives its last keepalive (EtcdRegistry's default).

Longer than the registry's longest wait between attempts (5 s), so that the
leases etcd restores after a restart are refreshed before they expire: a
registry outage must not end with every instance dropping out of discovery."""


def run_prefix() -> str:
    """A key prefix of this run alone: ``fournines-lab/<random>/services``."""
    return f"fournines-lab/{secrets.token_hex(6)}/services"


class LabEtcd:
    """A private single-node etcd the lab owns: ``start``, ``kill``, ``start`` again, ``stop``."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise LabError("--etcd without a URL starts a private etcd, and `etcd` is not "
                           "installed: apt-get install etcd-server (or give --etcd URL)")
        self.binary = binary
        self.client_port = free_port()
        self.peer_port = free_port()
        self.dir = workdir / "etcd"
        self.log = workdir / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def url(self) -> str:
        """The client URL."""
        return f"http://127.0.0.1:{self.client_port}"

    async def start(self, timeout: float = 20.0) -> None:
        """Start etcd (again, on the same data, after :meth:`kill`) and wait until healthy."""
        peer = f"http://127.0.0.1:{self.peer_port}"
        command = [*DIE_WITH_PARENT, self.binary, "--name", "lab",
                   "--data-dir", str(self.dir), "--listen-client-urls", self.url,
                   "--advertise-client-urls", self.url, "--listen-peer-urls", peer,
                   "--initial-advertise-peer-urls", peer, "--initial-cluster", f"lab={peer}",
                   "--initial-cluster-state", "existing" if self._started else "new",
                   "--initial-cluster-token", "fournines-lab"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._started = True
        end = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=0.5) as client:
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    raise LabError(f"etcd exited with status {self.proc.returncode}; see "
                                   f"{self.log}")
                try:
                    response = await client.get(self.url + "/health")
                    if b'"true"' in response.content:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise LabError(f"etcd did not become healthy at {self.url} within {timeout:g} s; "
                       f"see {self.log}")

    def kill(self) -> None:
        """SIGKILL (an outage: clients see refused connections until :meth:`start`)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
