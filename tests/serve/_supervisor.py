"""A real ``fournines serve`` process on loopback, and a client load that never stops.

``Served(tmp_path, workers=2)`` binds a listening socket in the test process and
hands it to ``python -m fournines serve --bind fd://N`` (no port race), with the
app of ``tests/serve/apps/versioned.py`` whose version is read from a file the
test rewrites. ``Load`` sends requests from threads all the time, over kept-alive
and over new connections, and records every failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.serve.apps.versioned:app"


def serve_env(version_file: Path) -> dict[str, str]:
    """The environment a ``fournines serve`` of the test app runs in."""
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}",
            "APP_VERSION_FILE": str(version_file)}


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m fournines serve ARGS`` to its end, stdout and stderr together."""
    version_file = tmp_path / "version"
    if not version_file.exists():
        version_file.write_text("v1")
    return subprocess.run([sys.executable, "-m", "fournines", "serve", *args],
                          env={**serve_env(version_file), **(env or {})}, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, check=False)


def wait_for(condition: Callable[[], bool], *, timeout: float = 30.0, what: str = "") -> None:
    """Poll ``condition`` until true; fail after ``timeout`` (generous: never a timing claim)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")


class Served:
    """One supervisor process with its own socket, log file and version file."""

    def __init__(self, tmp_path: Path, *, workers: int = 2, version: str = "v1",
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 drain_delay: float = 0.5, script: Path | None = None,
                 app: str = APP) -> None:
        self.app = app
        self.drain_delay = drain_delay
        self.script = script
        self.version_file = tmp_path / "version"
        self.version_file.write_text(version)
        self.log_path = tmp_path / "serve.log"
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.workers = workers
        self.args = args
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Served:
        command = [sys.executable, "-m", "fournines", "serve", self.app, "--workers",
                   str(self.workers), "--bind", f"fd://{self.sock.fileno()}",
                   "--app-dir", str(ROOT), "--drain-delay", str(self.drain_delay),
                   "--drain-timeout", "10",
                   "--no-access-log", *self.args]
        if self.script is not None:  # a script calling fournines.serve.run itself
            command = [sys.executable, str(self.script), f"fd://{self.sock.fileno()}",
                       str(self.workers), *self.args]
        env = {**serve_env(self.version_file), **self.env}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, pass_fds=(self.sock.fileno(),))
        # The supervisor holds the socket now; the test only connects.
        self.sock.close()
        return self

    def wait_ready(self, timeout: float = 30.0) -> Served:
        wait_for(lambda: self.log().count("Worker ") and "worker(s) ready" in self.log(),
                 timeout=timeout, what=f"all workers ready; log:\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str = "/") -> dict[str, object]:
        response = httpx.get(self.url + path, timeout=30)
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result

    def pids_serving(self, samples: int = 40) -> set[int]:
        return {int(str(self.get()["pid"])) for _ in range(samples)}

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class Load:
    """Requests sent all the time by threads: kept-alive connections and new ones."""

    def __init__(self, url: str, *, keepalive_threads: int = 2, fresh_threads: int = 1) -> None:
        self.url = url
        self.stop_event = threading.Event()
        self.failures: list[str] = []
        self.failed_started: list[float] = []  # time.monotonic() each failed request began
        self.versions: list[str] = []
        self.first_seen: dict[int, float] = {}  # worker PID -> when it first answered
        self.count = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._keepalive, daemon=True)
                        for _ in range(keepalive_threads)]
        self.threads += [threading.Thread(target=self._fresh, daemon=True)
                         for _ in range(fresh_threads)]

    def _record(self, response: httpx.Response | None, error: Exception | None,
                started: float) -> None:
        with self.lock:
            self.count += 1
            if error is not None:
                self.failures.append(repr(error))
                self.failed_started.append(started)
            elif response is not None and response.status_code != 200:
                self.failures.append(f"status {response.status_code}")
                self.failed_started.append(started)
            elif response is not None:
                answer = response.json()
                self.first_seen.setdefault(int(answer["pid"]), time.monotonic())
                version = str(answer["version"])
                if not self.versions or self.versions[-1] != version:
                    self.versions.append(version)

    def _keepalive(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop_event.is_set():
                started = time.monotonic()
                try:
                    self._record(client.get(self.url), None, started)
                except httpx.HTTPError as exc:
                    self._record(None, exc, started)
                time.sleep(0.005)

    def _fresh(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                self._record(httpx.get(self.url, timeout=30), None, started)
            except httpx.HTTPError as exc:
                self._record(None, exc, started)
            time.sleep(0.005)

    def served(self) -> int:
        with self.lock:
            return self.count

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(60)
