"""Real uvicorn processes on loopback for ASGI tests.

``UvicornProcess("tests.asgi.apps.health_app:app")`` starts
``python -m uvicorn`` on a free port with the repository root on
``PYTHONPATH``, waits until it answers, and stops it (SIGTERM, then SIGKILL)
afterwards. ``env`` adds environment variables for the app; ``args`` adds
uvicorn options.

``ServedModule("tests.asgi.apps.protected_app")`` is the same for a module that
calls :func:`fournines.asgi.serve` itself (``python -m module``, ``PORT`` set).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from .._servers import free_port

ROOT = Path(__file__).resolve().parents[2]


class UvicornProcess:
    """One uvicorn server process running an app given as ``module:attribute``."""

    def __init__(
        self,
        app: str,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        ready_path: str = "/livez",
        factory: bool = False,
    ) -> None:
        self.app = app
        self.port = free_port()
        self.env = env or {}
        self.args = args or []
        self.ready_path = ready_path
        self.factory = factory
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"uvicorn-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> UvicornProcess:
        command = self.command()
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}", **self.env}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.proc.returncode}:\n{self.log()}")
            try:
                httpx.get(self.url + self.ready_path, timeout=0.5)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"uvicorn did not answer within {timeout}s:\n{self.log()}")

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1",
                   "--port", str(self.port), "--no-access-log", *self.args]
        if self.factory:
            command.append("--factory")
        return command

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if hasattr(self, "_log"):
            self._log.close()

    def __enter__(self) -> UvicornProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class ServedModule(UvicornProcess):
    """``python -m <module>``, a module that runs ``serve()`` on ``PORT`` (loopback)."""

    def command(self) -> list[str]:
        self.env = {"PORT": str(self.port), **self.env}
        return [sys.executable, "-m", self.app, *self.args]
