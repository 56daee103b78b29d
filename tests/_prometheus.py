"""A private Prometheus server for integration tests.

``PrometheusServer(targets=["127.0.0.1:8000"])`` writes a config that scrapes
the targets every second, starts ``prometheus`` on a free loopback port with
its storage in a temp dir, and waits for ``/-/ready``. ``query(expr)`` runs an
instant query; ``wait_for(expr, predicate)`` polls until the result satisfies
the predicate (scrapes are asynchronous, so tests wait for data, with a
deadline, instead of sleeping). ``stop()`` terminates it and removes the dir.

A missing binary fails the test naming the Debian package ``prometheus``
(skips with ``FOURNINES_ALLOW_SKIP=1``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from ._servers import free_port, require_binary


class PrometheusServer:
    """One prometheus process scraping ``targets`` (``host:port``) at ``metrics_path``."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        metrics_path: str = "/metrics",
        scrape_interval: str = "1s",
        job: str = "app",
    ) -> None:
        self.binary = require_binary("prometheus", "prometheus")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fournines-prometheus-"))
        self.config_path = self.dir / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write the config.
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                       "scrape_timeout": scrape_interval},
            "scrape_configs": [{
                "job_name": job,
                "metrics_path": metrics_path,
                "static_configs": [{"targets": list(targets)}],
            }],
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = self.dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> PrometheusServer:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config_path}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             f"--storage.tsdb.path={self.dir / 'data'}"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.dir,
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/-/ready", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"prometheus not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (``[]`` when nothing matches)."""
        response = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5)
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {body}")
        return list(body["data"]["result"])

    def scalar(self, expr: str) -> float | None:
        """The value of a query returning one series, ``None`` when it returns none."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, predicate: Callable[[float | None], bool],
                 timeout: float = 20.0) -> float | None:
        """Poll ``scalar(expr)`` until ``predicate`` holds; fail with the last value."""
        end = time.monotonic() + timeout
        value = self.scalar(expr)
        while not predicate(value):
            if time.monotonic() > end:
                targets = httpx.get(self.url + "/api/v1/targets", timeout=5).text
                raise AssertionError(
                    f"{expr} = {value} after {timeout}s; targets: {targets}\n{self.log()}")
            time.sleep(0.2)
            value = self.scalar(expr)
        return value

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if hasattr(self, "_log"):
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
