"""Start a benchmark app under uvicorn on its own core, and wrk on the other."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def taskset(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and os.cpu_count() else []


class Server:
    """uvicorn (uvloop + httptools, one worker) serving ``bench.asgi_apps:app``."""

    def __init__(self, variant: str, *, core: int = 0, path: str = "/orders/42",
                 loop: str = "uvloop") -> None:
        self.variant = variant
        self.loop = loop
        self.port = free_port()
        self.core = core
        self.path = path
        self.proc: subprocess.Popen[bytes] | None = None
        # What serve() runs: fournines' protocol sheds on arrival. "_asgi" variants
        # run uvicorn's own, so the shedder decides in its middleware.
        self.http = ("fournines.asgi.protocol:ShedHttpToolsProtocol"
                     if "fournines" in variant and not variant.endswith("_asgi")
                     else "httptools")

    def __enter__(self) -> Server:
        env = {**os.environ, "BENCH_VARIANT": self.variant,
               "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(
            [*taskset(self.core), sys.executable, "-m", "uvicorn", "bench.asgi_apps:app",
             "--host", "127.0.0.1", "--port", str(self.port), "--loop", self.loop,
             "--http", self.http, "--no-access-log", "--log-level", "warning"],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.variant}: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                httpx.get(f"http://127.0.0.1:{self.port}{self.path}", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.variant} did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wrk(port: int, path: str, *, seconds: float, connections: int = 32, core: int = 1) -> float:
    """Requests per second that wrk measured (non-2xx responses make it fail loudly)."""
    out = subprocess.run(
        [*taskset(core), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw error responses:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(match.group(1))
