"""``fournines lab --prometheus``: a local Prometheus that scrapes the fleet while it runs.

Prometheus (the Debian ``prometheus`` binary) starts on a free loopback port
with its data in ``DIR/prometheus``; it finds each protected fleet's services
through a file-based service discovery file the lab rewrites as fleets come
and go, and scrapes them every second, evaluating the SLO issue's rules for the
gateway's availability at 99.99 % (``fournines slo rules``). At the end the lab asks it, through its
HTTP API, how many requests and policy events it saw, and stops it; the data
directory stays, so ``prometheus --storage.tsdb.path=DIR/prometheus/data``
can open the run again later.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from .fleet import DIE_WITH_PARENT, Fleet, LabError, free_port

__all__ = ["LabPrometheus"]

_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: fournines-lab
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 1s
"""


def _slo_rules() -> str:
    """The SLO issue's rules for the gateway's availability at 99.99 %."""
    from ..slo.rules import generate_rules  # noqa: PLC0415
    from ..slo.spec import parse_spec  # noqa: PLC0415

    spec = parse_spec({"service": "gateway", "slos": [{
        "name": "availability", "objective": 99.99,
        "sli": {"availability": {"selector": 'job="fournines-lab",service="gateway"'}},
    }]}, source="fournines lab")
    return generate_rules(spec)


class LabPrometheus:
    """A private Prometheus for one lab run."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("prometheus") or (
            "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
        if binary is None:
            raise LabError("--prometheus: no `prometheus` binary found "
                           "(Debian: apt-get install -y prometheus)")
        self.binary = binary
        self.dir = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = directory / "targets.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self._groups: list[dict[str, Any]] = []

    def start(self) -> None:
        """Start Prometheus and wait until it is ready."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.targets.write_text("[]", encoding="utf-8")
        config = self.dir / "prometheus.yml"
        rules = self.dir / "slo-rules.yml"
        rules.write_text(_slo_rules(), encoding="utf-8")
        config.write_text(_CONFIG.format(targets=self.targets, rules=rules), encoding="utf-8")
        log = (self.dir / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [*DIE_WITH_PARENT, self.binary, f"--config.file={config}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             f"--storage.tsdb.path={self.dir / 'data'}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise LabError(f"--prometheus: prometheus exited with {self.proc.returncode}; "
                               f"see {self.dir / 'prometheus.log'}")
            try:
                if httpx.get(self.url + "/-/ready", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise LabError("--prometheus: prometheus was not ready within 15 s")

    def watch(self, fleet: Fleet) -> None:
        """Scrape ``fleet`` from now on (only the protected fleet serves ``/metrics``)."""
        if fleet.variant != "protected":
            return
        self._groups.extend(
            {"targets": [s.url.removeprefix("http://")],
             "labels": {"variant": fleet.variant, "service": name}}
            for name, s in fleet.processes.items())
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._groups), encoding="utf-8")
        tmp.replace(self.targets)

    def query(self, expr: str) -> float | None:
        """One instant query's first value (``None`` when empty or failing)."""
        from ..slo.prometheus import PrometheusClient, PrometheusError  # noqa: PLC0415

        try:
            with PrometheusClient(self.url, timeout=5) as client:
                samples = client.query(expr)
        except PrometheusError:
            return None
        return samples[0].value if samples else None

    def summary(self) -> str:
        """What Prometheus saw, in one line."""
        requests = self.query('sum(max_over_time(http_requests_total{variant="protected"}[5m]))')
        retries = self.query('sum(max_over_time(fournines_retries_total[5m]))')
        up = self.query('count(max_over_time(up{job="fournines-lab"}[5m]) == 1)')
        burn = self.query('max_over_time(fournines_slo:error_ratio:rate5m'
                          '{fournines_service="gateway"}[5m])')
        slo = ("no SLO sample yet" if burn is None
               else f"worst gateway 5m error ratio (SLO rules) {burn:.4%}")
        return (f"{self.url} scraped {int(up or 0)} services of the protected fleet: "
                f"{int(requests or 0)} HTTP requests, {int(retries or 0)} retries; {slo} "
                f"(data kept in {self.dir / 'data'})")

    def stop(self) -> None:
        """Stop Prometheus."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
