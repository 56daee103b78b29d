"""Real gunicorn processes on loopback for the WSGI tests, and a small open-loop client.

``Gunicorn("tests.wsgi.apps.flask_app:app", worker="gthread")`` starts gunicorn
with fournines' hooks (``tests/wsgi/apps/gunicorn_conf.py``) on a free port, waits
until ``/livez`` answers, and stops it afterwards. ``worker="gthread"`` runs
:class:`fournines.wsgi.gunicorn.ThreadWorker`, ``"sync"`` gunicorn's sync worker.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .._servers import free_port

ROOT = Path(__file__).resolve().parents[2]

APPS = {
    "flask": "tests.wsgi.apps.flask_app:app",
    "django": "tests.wsgi.apps.djangoapp.wsgi:application",
}


@dataclass
class Reply:
    status: int  # -1: connection error
    headers: dict[str, str]
    body: bytes


def get(port: int, path: str, headers: dict[str, str] | None = None,
        timeout: float = 10.0) -> Reply:
    """One GET on a new connection (no keep-alive: each request is its own arrival)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"connection": "close", **(headers or {})})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    except OSError:
        return Reply(-1, {}, b"")
    finally:
        conn.close()


class Gunicorn:
    """One gunicorn master with its workers."""

    def __init__(self, app: str, *, worker: str = "gthread", workers: int = 1, threads: int = 4,
                 env: dict[str, str] | None = None) -> None:
        self.app = APPS.get(app, app)
        self.worker = worker
        self.workers = workers
        # gunicorn runs gthread instead of sync when threads > 1: sync means one thread.
        self.threads = 1 if worker == "sync" else threads
        self.env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gunicorn-{self.port}.log"

    def start(self, timeout: float = 30.0) -> Gunicorn:
        worker_class = ("fournines.wsgi.gunicorn.ThreadWorker" if self.worker == "gthread"
                        else self.worker)
        command = [sys.executable, "-m", "gunicorn", self.app, "-b", f"127.0.0.1:{self.port}",
                   "-c", str(ROOT / "tests/wsgi/apps/gunicorn_conf.py"), "-k", worker_class,
                   "-w", str(self.workers), "--threads", str(self.threads),
                   "--backlog", "2048"]
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}", **self.env}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            if get(self.port, "/livez", timeout=1.0).status == 200:
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@dataclass
class Sent:
    at: float  # time.monotonic() when it was due
    reply: Reply


def open_loop(port: int, path: str, *, rate: float, seconds: float,
              headers: dict[str, str] | None = None, stamp: str | None = None,
              stop: threading.Event | None = None, pool: int = 128) -> list[Sent]:
    """Send GETs at ``rate`` per second for ``seconds`` whatever the server does.

    ``stamp`` names a header set to the send time (``t=<epoch seconds>``), as a
    proxy's ``X-Request-Start``. ``stop`` ends the run early.
    """
    results: list[Sent] = []
    lock = threading.Lock()

    def one(due: float) -> None:
        sent_headers = dict(headers or {})
        if stamp is not None:
            sent_headers[stamp] = f"t={time.time():.6f}"
        reply = get(port, path, sent_headers)
        with lock:
            results.append(Sent(due, reply))

    interval = 1.0 / rate
    with ThreadPoolExecutor(max_workers=pool) as executor:
        start = time.monotonic()
        n = 0
        while n * interval < seconds and not (stop is not None and stop.is_set()):
            due = start + n * interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            executor.submit(one, due)
            n += 1
    return sorted(results, key=lambda s: s.at)
