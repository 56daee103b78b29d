"""The closed loop: SLO alert -> Alertmanager -> ``fournines remediate`` -> a restart, measured.

A scenario with a ``loop:`` section (``examples/lab/closed-loop.yaml``) runs the
protected fleet twice with the same load and the same ``leak``, a fault that only
a restart cures:

1. **with the loop**: a private Prometheus scrapes the fleet and evaluates the SLO
   rules ``fournines slo rules`` generates for every service (the gateway's is the
   users' SLO; each has the seed's plain P1 rule, error ratio above 0.1 % over the
   short window); a private Alertmanager routes the ``P1`` alerts to
   ``fournines remediate``, whose allowlisted action for a service is
   ``fournines serve --control SOCKET --reload``: the leaking service runs under
   ``fournines serve`` and is replaced new first, the lab's ``kubectl rollout
   restart``. Remediate's guardrails stay on: one restart per service per
   ``cooldown``, at most ``max_actions`` in the run.
2. **without the loop**: the same, with remediate in dry run: the alert fires and
   the decision is logged, nothing is restarted; the on-call restarts the service
   by hand at the fault's end.

Time is compressed (``time_scale``, 60 by default: a lab second stands for a minute,
a minute of load for an hour). Prometheus' scrape and evaluation intervals (15 s ->
0.25 s), the rules' windows and ``for:`` durations (5m -> 5 s, ``for: 2m`` -> 2 s, the
30d period -> 12 h) and Alertmanager's timers are divided by it; the rules are the
generated ones otherwise, name for name (``fournines_slo:error_ratio:rate5m`` keeps
its name and covers 5 lab seconds). Alertmanager repeats a firing group every
second (where production waits hours) so that every run shows the cooldown refusing
the repeats.

The result says, per pass: the time to detect (fault start -> the P1 alert firing in
Prometheus' ``ALERTS`` series, which is queried and printed), the time to remediate
(fault start -> the first second after the restart in which every page was
answered), the availability with its exact 95 % interval, and every decision of
remediate (its audit log): the remediation timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from .confidence import CLOPPER_PEARSON
from .fleet import DIE_WITH_PARENT, FaultProxy, Fleet, LabError, free_port
from .load import Arrival, Outcome, arrivals
from .prometheus import LabPrometheus
from .runner import (
    AUTO_RATE_SHARE,
    MAX_AUTO_RATE,
    Progress,
    _run_variant,
    probe_capacity,
    run_problems,
    warm_up,
)
from .scenario import LEAK_SERVICES, Fault, LoopSettings, Scenario, check_load
from .stats import CONFIDENCE, VariantSummary, summarize

__all__ = [
    "ALERT",
    "PASSES",
    "LoopPass",
    "LoopResult",
    "LoopStack",
    "alert_lines",
    "cooldown_held",
    "generate_lab_rules",
    "lab_slo_spec",
    "render_loop_html",
    "render_loop_table",
    "run_closed_loop",
    "run_loop_and_report",
    "scale_duration",
    "scale_rules",
    "time_to_healthy",
    "write_loop_json",
]

ALERT = "SLOHighErrorRate"
"""The P1 alert the loop acts on (the seed's plain rule, ``fournines slo rules``)."""
PASSES = ("loop", "no loop")
"""The two passes: remediation on, and remediation in dry run."""
SCRAPE_INTERVAL = 15.0
"""Prometheus' scrape and evaluation interval in operation seconds (divided by the scale)."""
HEALTHY_FOR = 1.0
"""Lab seconds of pages all answered that count as the service being healthy again."""

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0,
          "y": 31536000.0}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_RANGE = re.compile(r"\[((?:\d+(?:ms|s|m|h|d|w|y))+)\]")


def _seconds(text: str) -> float:
    """Seconds of a Prometheus duration (``1h30m``, ``5m``, ``250ms``)."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def _duration(seconds: float) -> str:
    """A Prometheus duration for ``seconds``, whole milliseconds (``5s``, ``250ms``)."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def scale_duration(text: str, scale: float) -> str:
    """The Prometheus duration ``text`` divided by ``scale`` (``5m``, 60 -> ``5s``)."""
    return _duration(_seconds(text) / scale)


def scale_rules(text: str, scale: float) -> str:
    """Generated rules (YAML) with every range, ``for:`` and interval divided by ``scale``.

    The rules stay the generated ones in everything else, names included: only time
    is compressed. Each group is evaluated every ``15 s / scale``.
    """
    import yaml  # noqa: PLC0415 - the lab extra

    document = yaml.safe_load(text)
    interval = _duration(SCRAPE_INTERVAL / scale)
    for group in document["groups"]:
        group["interval"] = interval
        for rule in group["rules"]:
            rule["expr"] = _RANGE.sub(lambda m: f"[{scale_duration(m.group(1), scale)}]",
                                      rule["expr"])
            if "for" in rule:
                rule["for"] = scale_duration(rule["for"], scale)
    head = (f"# `fournines slo rules` output with time divided by {scale:g} (the lab's "
            f"compressed time): ranges, for: and intervals only.\n")
    return head + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def lab_slo_spec(service: str) -> str:
    """The fournines SLO spec (YAML) the loop's rules for ``service`` come from.

    Availability 99.99 % over 30 days from the service's own middleware metrics, the
    SRE workbook's burn-rate alerts and the seed's plain P1 rule (0.1 %).
    """
    return json.dumps({
        "service": service,
        "slos": [{"name": "availability", "objective": 99.99, "period": "30d",
                  "sli": {"availability": {
                      "selector": f'job="fournines-lab",service="{service}"'}},
                  "alerting": {"simple": True, "simple_percent": 0.1}}]}, indent=1) + "\n"


def generate_lab_rules(directory: Path, scale: float,
                       services: tuple[str, ...] = LEAK_SERVICES) -> tuple[Path, list[list[str]]]:
    """Write each service's spec, run ``fournines slo rules`` on it, scale and join them.

    Returns the scaled rule file (``directory/slo-rules.yml``) and the commands run.
    """
    commands, running = [], []
    for service in services:
        spec = directory / f"slo-{service}.yaml"
        spec.write_text(lab_slo_spec(service), encoding="utf-8")
        command = [sys.executable, "-m", "fournines", "slo", "rules", str(spec),
                   "-o", str(directory / f"slo-{service}.rules.yml")]
        commands.append(command)
        running.append(subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE))
    groups: list[Any] = []
    import yaml  # noqa: PLC0415 - the lab extra

    for service, proc in zip(services, running, strict=True):
        _, stderr = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise LabError(f"the loop: `fournines slo rules` failed for {service}: "
                           f"{stderr.decode(errors='replace')[-500:]}")
        text = (directory / f"slo-{service}.rules.yml").read_text(encoding="utf-8")
        groups += yaml.safe_load(scale_rules(text, scale))["groups"]
    rules = directory / "slo-rules.yml"
    rules.write_text(f"# `fournines slo rules` for {', '.join(services)}, time divided by "
                     f"{scale:g} (ranges, for: and intervals only)\n"
                     + yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    return rules, commands


class _LoopPrometheus(LabPrometheus):
    """The lab's Prometheus with scaled intervals, the scaled rules and an Alertmanager."""

    def __init__(self, directory: Path, scale: float, alertmanager: str) -> None:
        super().__init__(directory)
        self.scale = scale
        self.alertmanager = alertmanager
        self.rules_command: list[list[str]] = []

    def start(self) -> None:
        """Generate the rules, scale them and start Prometheus (which refuses bad rules)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        rules, self.rules_command = generate_lab_rules(self.dir, self.scale)
        self.targets.write_text("[]", encoding="utf-8")
        interval = _duration(SCRAPE_INTERVAL / self.scale)
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": interval},
            "rule_files": [str(rules)],
            "alerting": {"alertmanagers": [{"static_configs": [
                {"targets": [self.alertmanager]}]}]},
            "scrape_configs": [{"job_name": "fournines-lab", "file_sd_configs": [
                {"files": [str(self.targets)], "refresh_interval": "1s"}]}],
        }
        path = self.dir / "prometheus.yml"
        path.write_text(json.dumps(config, indent=1), encoding="utf-8")
        # A firing alert is sent again every resend delay (1m -> 1 s), so Alertmanager's
        # repeats reach remediate and its cooldown is seen to refuse them.
        _spawn_and_wait(
            [self.binary, f"--config.file={path}", f"--web.listen-address=127.0.0.1:{self.port}",
             f"--storage.tsdb.path={self.dir / 'data'}",
             f"--rules.alert.resend-delay={_duration(60.0 / self.scale)}"],
            self, self.url + "/-/ready", "prometheus")

    def range_query(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        """A range query's series: ``[{"metric": {...}, "values": [[t, "v"], ...]}]``."""
        response = httpx.get(self.url + "/api/v1/query_range", timeout=10.0,
                             params={"query": expr, "start": start, "end": end, "step": step})
        response.raise_for_status()
        result: list[Any] = response.json()["data"]["result"]
        return result


def _spawn_and_wait(command: list[str], owner: Any, ready_url: str, what: str) -> None:
    log = (owner.dir / f"{what}.log").open("ab")
    owner.proc = subprocess.Popen([*DIE_WITH_PARENT, *command], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if owner.proc.poll() is not None:
            raise LabError(f"the loop: {what} exited with {owner.proc.returncode}; see "
                           f"{owner.dir / (what + '.log')}")
        try:
            if httpx.get(ready_url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise LabError(f"the loop: {what} was not ready within 20 s; see "
                   f"{owner.dir / (what + '.log')}")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Process:
    """A directory and a process (Alertmanager, remediate)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        _stop(self.proc)


class LoopStack:
    """Prometheus, Alertmanager and ``fournines remediate`` for one pass, in ``directory``.

    ``restartable`` maps each service the loop may restart to its ``fournines serve``
    control socket; remediate gets one allowlisted action per service, matching the
    P1 alert of that service's own SLO. ``dry_run``: remediate decides and logs,
    restarts nothing (the pass without the loop).
    """

    def __init__(self, directory: Path, settings: LoopSettings,
                 restartable: dict[str, Path], *, dry_run: bool) -> None:
        self.dir = directory
        self.settings = settings
        self.restartable = restartable
        self.dry_run = dry_run
        self.alertmanager = _Process(directory / "alertmanager")
        self.alertmanager_port = free_port()
        self.remediate = _Process(directory / "remediate")
        self.remediate_port = free_port()
        self.audit_log = self.remediate.dir / "audit.jsonl"
        self.prometheus = _LoopPrometheus(directory / "prometheus", settings.time_scale,
                                          f"127.0.0.1:{self.alertmanager_port}")

    def remediate_config(self) -> dict[str, Any]:
        """The remediate config: one action per restartable service, under the guardrails."""
        command = [sys.executable, "-m", "fournines", "serve", "--control"]
        return {
            "listen": f"127.0.0.1:{self.remediate_port}", "path": "/alerts",
            "token_file": "token", "dry_run": self.dry_run,
            "max_actions_per_hour": self.settings.max_actions,
            "command_timeout": 60, "audit_log": str(self.audit_log),
            "allow": [command],
            "actions": [{"name": f"restart-{service}",
                         "match": {"alertname": ALERT, "severity": "P1",
                                   "fournines_service": service},
                         "command": [*command, str(socket), "--reload"],
                         "target": f"service/{service}",
                         "cooldown": self.settings.cooldown}
                        for service, socket in sorted(self.restartable.items())],
        }

    def alertmanager_config(self, token_file: Path) -> dict[str, Any]:
        """P1 alerts to remediate, grouped per alert and service, timers scaled."""
        scale = self.settings.time_scale
        return {
            "route": {"receiver": "nobody", "group_by": ["alertname", "fournines_service"],
                      "group_wait": _duration(30.0 / scale),
                      "group_interval": _duration(60.0 / scale),
                      # Hours in production; a second here, so the cooldown is exercised.
                      "repeat_interval": "1s",
                      "routes": [{"matchers": ['severity="P1"'], "receiver": "remediate"}]},
            "receivers": [{"name": "nobody"}, {"name": "remediate", "webhook_configs": [{
                "url": f"http://127.0.0.1:{self.remediate_port}/alerts",
                "send_resolved": False,
                "http_config": {"authorization": {"type": "Bearer",
                                                  "credentials_file": str(token_file)}}}]}],
        }

    def start(self) -> None:
        """Start remediate, Alertmanager, then Prometheus (each waited for)."""
        alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if alertmanager is None:
            raise LabError("the closed loop needs Alertmanager (Debian: apt-get install -y "
                           "prometheus-alertmanager)")
        for directory in (self.alertmanager.dir, self.remediate.dir):
            directory.mkdir(parents=True, exist_ok=True)
        token = self.remediate.dir / "token"
        token.touch(mode=0o600)
        token.write_text(secrets.token_urlsafe(24), encoding="utf-8")
        config = self.remediate.dir / "remediate.json"
        config.write_text(json.dumps(self.remediate_config(), indent=1), encoding="utf-8")
        _spawn_and_wait([sys.executable, "-m", "fournines", "remediate", "--config",
                         str(config)], self.remediate,
                        f"http://127.0.0.1:{self.remediate_port}/healthz", "remediate")
        am_config = self.alertmanager.dir / "alertmanager.yml"
        am_config.write_text(json.dumps(self.alertmanager_config(token), indent=1),
                             encoding="utf-8")
        _spawn_and_wait([alertmanager, f"--config.file={am_config}",
                         f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
                         f"--storage.path={self.alertmanager.dir / 'data'}",
                         "--cluster.listen-address="],  # no gossip port: one node
                        self.alertmanager,
                        f"http://127.0.0.1:{self.alertmanager_port}/-/ready", "alertmanager")
        self.prometheus.start()

    def audit(self) -> list[dict[str, Any]]:
        """Remediate's audit log so far, one dict per decision."""
        if not self.audit_log.exists():
            return []
        lines = []
        for line in self.audit_log.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    def alerts(self, start: float, end: float) -> list[dict[str, Any]]:
        """Every ``ALERTS`` series between wall times ``start`` and ``end``, with its spans.

        Each: ``labels`` (``alertname``, ``alertstate``, ``fournines_service``,
        ``severity``...), ``first`` and ``last`` (wall times of the first and last
        sample) and ``spans`` (runs of samples without a gap, as wall-time pairs).
        """
        step = SCRAPE_INTERVAL / self.settings.time_scale
        out = []
        try:
            found = self.prometheus.range_query("ALERTS", start, end, step)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise LabError(f"the loop: Prometheus did not answer the ALERTS query "
                           f"({type(exc).__name__}: {exc}); see {self.prometheus.dir}") from exc
        for series in found:
            times = [float(t) for t, _ in series["values"]]
            spans: list[list[float]] = []
            for t in times:
                if spans and t - spans[-1][1] <= 2.5 * step:
                    spans[-1][1] = t
                else:
                    spans.append([t, t])
            out.append({"labels": series["metric"], "first": times[0], "last": times[-1],
                        "spans": spans})
        return out

    def stop(self) -> None:
        """Stop Prometheus, Alertmanager and remediate."""
        self.prometheus.stop()
        self.alertmanager.stop()
        self.remediate.stop()


def time_to_healthy(outcomes: list[Outcome], after: float,
                    hold: float = HEALTHY_FOR) -> float | None:
    """The first time at or after ``after`` from which every page for ``hold`` s was answered.

    Lab seconds from the start of the load; ``None`` when the load ended first.
    """
    failures = sorted(o.at for o in outcomes if not o.ok and o.at >= after)
    end = max((o.at for o in outcomes), default=0.0)
    candidate = after
    for failed in failures:
        if failed < candidate + hold:
            candidate = failed + 1e-3
        else:
            break
    return candidate if candidate + hold <= end else None


def cooldown_held(audit: list[dict[str, Any]], cooldown: float) -> bool:
    """Whether no target was acted on twice within ``cooldown`` s (by the audit's clock).

    Counts ``executed``, ``failed`` and ``dry-run`` decisions: each took the target's
    cooldown. The audit stamps when a command finished, so the gap between two is the
    gap between their starts give or take the restarts' own durations: a tolerance of
    a second is allowed for that.
    """
    acted: dict[str, list[float]] = {}
    for line in audit:
        if line.get("decision") in ("executed", "failed", "dry-run") and line.get("target"):
            acted.setdefault(str(line["target"]), []).append(_stamp(str(line["ts"])))
    return all(b - a >= cooldown - 1.0 for times in acted.values()
               for a, b in zip(sorted(times), sorted(times)[1:], strict=False))


def _stamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass(slots=True)
class LoopPass:
    """What one pass measured (``loop`` or ``no loop``)."""

    name: str
    summary: VariantSummary
    outcomes: list[Outcome]
    fault_log: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    """``ALERTS`` series of the pass, times in lab seconds (see :meth:`LoopStack.alerts`)."""
    start_wall: float
    """Wall time (Unix seconds) of the start of the load: lab time 0."""
    fault: Fault
    rules_command: list[list[str]] = field(default_factory=list)

    def _lab(self, wall: float) -> float:
        return wall - self.start_wall

    def alert_first(self, state: str, service: str | None = None) -> float | None:
        """When the P1 alert was first in ``state`` (lab s), for ``service`` or any."""
        times = [start for a in self.alerts
                 if a["labels"].get("alertname") == ALERT
                 and a["labels"].get("alertstate") == state
                 and (service is None or a["labels"].get("fournines_service") == service)
                 for start, _ in a["spans"] if start >= self.fault.at]
        return min(times, default=None)

    @property
    def detected_at(self) -> float | None:
        """When the first P1 alert fired after the fault began (lab s)."""
        return self.alert_first("firing")

    @property
    def time_to_detect(self) -> float | None:
        """Fault start -> the P1 alert firing in Prometheus, lab seconds."""
        at = self.detected_at
        return None if at is None else at - self.fault.at

    @property
    def restarts(self) -> list[float]:
        """When each restart finished (lab s): the loop's and, at the fault's end, by hand."""
        done = [self._lab(_stamp(str(a["ts"]))) for a in self.audit
                if a.get("decision") == "executed"]
        for entry in self.fault_log:
            if entry["action"] == "end" and entry["fault"] == self.fault.label() \
                    and entry.get("restarted"):
                done.append(float(entry["done"]))
        return sorted(done)

    @property
    def healthy_at(self) -> float | None:
        """When pages were all answered again for :data:`HEALTHY_FOR` s (lab s).

        Counted from the P1 alert firing (or, if it never fired, the fault's first
        failed page): the first such window after it. A restart's own blips (a cold
        worker shedding its first burst) count against it.
        """
        anchor = self.detected_at
        if anchor is None:
            failed = [o.at for o in self.outcomes if not o.ok and o.at >= self.fault.at]
            if not failed:
                return None
            anchor = min(failed)
        return time_to_healthy(self.outcomes, anchor)

    @property
    def time_to_remediate(self) -> float | None:
        """Fault start -> healthy again after a restart, lab seconds."""
        at = self.healthy_at
        return None if at is None else at - self.fault.at

    def decisions(self) -> dict[str, int]:
        """Remediate's decisions counted (executed, refused, dry-run, ignored...)."""
        counts: dict[str, int] = {}
        for line in self.audit:
            counts[str(line.get("decision"))] = counts.get(str(line.get("decision")), 0) + 1
        return counts

    def timeline(self) -> list[tuple[float, str]]:
        """The remediation timeline: (lab seconds, what happened), in order."""
        events: list[tuple[float, str]] = []
        for entry in self.fault_log:
            what = "begins" if entry["action"] == "begin" else "ends"
            extra = ""
            if entry["action"] == "end" and entry["fault"] == self.fault.label():
                extra = (" (restarted by hand: nothing had cured it)" if entry.get("restarted")
                         else " (nothing to do: already restarted)")
            events.append((float(entry["at"]), f"fault {entry['fault']} {what}{extra}"))
        failed = [o.at for o in self.outcomes if not o.ok and o.at >= self.fault.at]
        if failed:
            events.append((min(failed), "first failed page"))
        for alert in self.alerts:
            labels = alert["labels"]
            if labels.get("severity") not in ("P1", "page"):
                continue  # the absent-traffic tickets of the first seconds, tickets
            for start, end in alert["spans"]:
                events.append((start, f"ALERTS {labels.get('alertname')} "
                                      f"{labels.get('fournines_service', '')} "
                                      f"{labels.get('severity', '')} {labels.get('alertstate')} "
                                      f"(until {end:.2f} s)"))
        # Repeats refused by the cooldown come every second: one line per run of them.
        refused: list[float] = []

        def flush() -> None:
            if refused:
                events.append((refused[0], f"remediate: {len(refused)} repeat(s) refused by "
                                           f"the cooldown until {refused[-1]:.2f} s"))
                refused.clear()

        for line in self.audit:
            decision = str(line.get("decision"))
            at = self._lab(_stamp(str(line["ts"])))
            if decision == "ignored":
                continue  # alerts no action matches (the gateway's own P1): counted only
            if decision == "refused" and str(line.get("reason", "")).startswith("cooldown"):
                refused.append(at)
                continue
            flush()
            what = {"executed": "restart done", "dry-run": "would restart (dry run)",
                    "refused": "refused", "failed": "restart failed"}.get(decision, decision)
            detail = line.get("reason") or ""
            status = f", exit {line['returncode']}" if "returncode" in line else ""
            events.append((at, f"remediate: {what} {line.get('target', '')}{status} "
                               f"{detail}".rstrip()))
        flush()
        if self.healthy_at is not None:
            events.append((self.healthy_at, f"healthy: every page answered for "
                                            f"{HEALTHY_FOR:g} s"))
        return sorted(events, key=lambda e: e[0])

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the pass (every request included)."""
        return {
            "summary": self.summary.to_json(),
            "time_to_detect": self.time_to_detect,
            "time_to_remediate": self.time_to_remediate,
            "detected_at": self.detected_at, "healthy_at": self.healthy_at,
            "restarts": self.restarts, "decisions": self.decisions(),
            "timeline": [{"at": at, "event": what} for at, what in self.timeline()],
            "alerts": self.alerts, "audit": self.audit, "fault_log": self.fault_log,
            "start_wall": self.start_wall, "rules_command": self.rules_command,
            "request_log": [{"at": o.at, "status": o.status, "latency": o.latency,
                             "degraded": o.degraded, "send_lag": o.send_lag,
                             "error": o.error} for o in self.outcomes],
        }


@dataclass(slots=True)
class LoopResult:
    """Both passes of a closed-loop scenario."""

    scenario: Scenario
    seed: int
    rate: float
    passes: dict[str, LoopPass] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    workdir: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def settings(self) -> LoopSettings:
        """The scenario's loop settings."""
        assert self.scenario.loop is not None
        return self.scenario.loop

    def cooldown_held(self) -> bool:
        """Whether no pass acted on a target twice within the cooldown."""
        return all(cooldown_held(p.audit, self.settings.cooldown) for p in self.passes.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the run."""
        s, loop = self.scenario, self.settings
        return {
            "scenario": {"name": s.name, "source": s.source, "duration": s.duration,
                         "loop": {"time_scale": loop.time_scale, "cooldown": loop.cooldown,
                                  "max_actions": loop.max_actions}},
            "seed": self.seed, "rate": self.rate,
            "statistics": {"interval_method": CLOPPER_PEARSON, "confidence": CONFIDENCE},
            "faults": [{"kind": f.kind, "label": f.label(), "at": f.at, "end": f.end}
                       for f in s.faults],
            "alert": ALERT, "cooldown_held": self.cooldown_held(),
            "passes": {name: p.to_json() for name, p in self.passes.items()},
            "timings": self.timings, "problems": self.problems,
        }


class _Clocked(Progress):
    """Passes every hook on, and notes the wall time at which the load starts."""

    def __init__(self, inner: Progress) -> None:
        self.inner = inner
        self.start_wall = math.nan

    def phase(self, text: str) -> None:
        self.inner.phase(text)

    def load_started(self, variant: str, total: int, duration: float) -> None:
        # _run_variant starts its load 0.2 s after it computes the start, just before this.
        self.start_wall = time.time() + 0.2
        self.inner.load_started(variant, total, duration)

    def outcome(self, variant: str, outcome: Outcome) -> None:
        self.inner.outcome(variant, outcome)

    def tick(self, variant: str, elapsed: float, fault: str) -> None:
        self.inner.tick(variant, elapsed, fault)

    def load_finished(self, variant: str) -> None:
        self.inner.load_finished(variant)


class _Labelled(Progress):
    """The progress of one pass under its own name (both passes run the protected fleet)."""

    def __init__(self, inner: Progress, name: str) -> None:
        self.inner = inner
        self.name = name

    def phase(self, text: str) -> None:
        self.inner.phase(text)

    def load_started(self, variant: str, total: int, duration: float) -> None:
        self.inner.load_started(self.name, total, duration)

    def outcome(self, variant: str, outcome: Outcome) -> None:
        self.inner.outcome(self.name, outcome)

    def tick(self, variant: str, elapsed: float, fault: str) -> None:
        self.inner.tick(self.name, elapsed, fault)

    def load_finished(self, variant: str) -> None:
        self.inner.load_finished(self.name)


async def _run(scenario: Scenario, *, seed: int, rate: float | None, workdir: Path,
               progress: Progress, passes: tuple[str, ...]) -> LoopResult:
    settings = scenario.loop
    assert settings is not None
    leaks = [f for f in scenario.faults if f.kind == "leak"]
    fault = leaks[0]
    served = frozenset(f.service for f in leaks)
    t0 = time.perf_counter()
    # SIGTERM ends the run like Ctrl-C, so every `finally` stops what the lab started.
    task = asyncio.current_task()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    result = LoopResult(scenario=scenario, seed=seed, rate=math.nan, workdir=str(workdir))
    schedule: list[Arrival] = []
    for name in passes:
        folder = workdir / name.replace(" ", "-")
        folder.mkdir(parents=True, exist_ok=True)
        # Both passes run the protected fleet, whose proxy routes have one name each.
        proxy = FaultProxy(folder)
        progress.phase(f"{name}: starting the fault proxy")
        await proxy.start()
        try:
            fleet = Fleet("protected", folder, proxy, scenario.payment, seed, served=served)
            restartable = {s: p for s in sorted(served) if (p := fleet.control_path(s))}
            stack = LoopStack(folder / "loop", settings, restartable, dry_run=name != "loop")
            clocked = _Clocked(_Labelled(progress, name))
            fault_log: list[dict[str, Any]] = []
            try:
                mode = "dry run" if stack.dry_run else "restarts on"
                progress.phase(f"{name}: starting remediate ({mode}), Alertmanager, "
                               f"Prometheus, and the protected fleet ({', '.join(sorted(served))}"
                               " under fournines serve)")
                await asyncio.gather(asyncio.to_thread(stack.start), fleet.start())
                await warm_up(fleet.gateway_url)
                stack.prometheus.watch(fleet)
                if not schedule:
                    progress.phase("probing the payment service's capacity (1 s)")
                    capacity = await probe_capacity(fleet.services["payment"].url,
                                                    scenario.payment.concurrency)
                    if not capacity > 0:
                        raise LabError("the payment service answered nothing during the "
                                       "capacity probe")
                    rate = rate or scenario.rate or min(MAX_AUTO_RATE,
                                                        AUTO_RATE_SHARE * capacity)
                    check_load(scenario, rate=rate, capacity=capacity)
                    schedule = arrivals(scenario, rate, capacity, seed)
                    result.rate = rate
                t = time.perf_counter()
                outcomes, scraper = await _run_variant(fleet, scenario, schedule, clocked,
                                                       fault_log, {})
                result.timings[f"{name}_load"] = time.perf_counter() - t
                for entry in fault_log:
                    if entry["action"] == "end" and entry["fault"] == fault.label():
                        # Fleet.end restarts by hand only what still leaked.
                        entry["restarted"] = fault.service in fleet.hand_restarts
                # The last evaluations of the load's end reach Prometheus' API.
                await asyncio.sleep(2 * SCRAPE_INTERVAL / settings.time_scale)
                end_wall = time.time()
                alerts = await asyncio.to_thread(stack.alerts, clocked.start_wall - 1.0,
                                                 end_wall)
                for alert in alerts:
                    alert["first"] -= clocked.start_wall
                    alert["last"] -= clocked.start_wall
                    alert["spans"] = [[a - clocked.start_wall, b - clocked.start_wall]
                                      for a, b in alert["spans"]]
                result.problems += [p.replace("protected", name, 1)
                                    for p in run_problems("protected", outcomes, fault_log)]
                result.passes[name] = LoopPass(
                    name=name, summary=summarize(name, outcomes, scraper.samples,
                                                 scenario.faults, scenario.duration),
                    outcomes=outcomes, fault_log=fault_log, audit=stack.audit(),
                    alerts=alerts, start_wall=clocked.start_wall, fault=fault,
                    rules_command=stack.prometheus.rules_command)
            finally:
                await fleet.stop()
                stack.stop()
        finally:
            await proxy.stop()
        if result.problems:
            break
    result.timings["total"] = time.perf_counter() - t0
    return result


def run_closed_loop(scenario: Scenario, *, seed: int = 7, rate: float | None = None,
                    workdir: Path | None = None, progress: Progress | None = None,
                    passes: tuple[str, ...] = PASSES) -> LoopResult:
    """Run a scenario's closed loop: each of ``passes`` in turn (see the module docs).

    Raises :class:`LabError` when the scenario has no ``loop:`` section, or when
    Prometheus, Alertmanager or a process of the fleet cannot start.
    """
    if scenario.loop is None:
        raise LabError(f"{scenario.source}: no loop: section, nothing to close")
    for name in passes:
        if name not in PASSES:
            raise LabError(f"unknown pass {name!r} (known: {', '.join(PASSES)})")
    if workdir is None:
        import tempfile  # noqa: PLC0415

        workdir = Path(tempfile.mkdtemp(prefix="fournines-lab-loop-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run(scenario, seed=seed, rate=rate, workdir=workdir,
                            progress=progress or Progress(), passes=passes))


# -- the report -----------------------------------------------------------------------------


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _availability(summary: VariantSummary) -> str:
    interval = summary.availability_interval
    return (f"{summary.availability * 100:.3f} % [{interval.lower * 100:.3f}, "
            f"{interval.upper * 100:.3f}]")


def _rows(result: LoopResult) -> list[tuple[str, ...]]:
    """The comparison table: one row per measure, one column per pass."""
    passes = list(result.passes.values())
    rows: list[tuple[str, ...]] = [
        ("availability (exact 95 % interval)", *(_availability(p.summary) for p in passes)),
        ("pages failed / answered", *(f"{p.summary.failed} / {p.summary.requests}"
                                      for p in passes)),
        (f"time to detect (fault start -> {ALERT} firing)",
         *(_secs(p.time_to_detect) for p in passes)),
        ("time to remediate (fault start -> healthy)",
         *(_secs(p.time_to_remediate) for p in passes)),
        ("alert firing -> healthy", *(_secs(None if p.healthy_at is None
                                            or p.detected_at is None
                                            else p.healthy_at - p.detected_at)
                                      for p in passes)),
        ("restarts (by the loop, by hand)",
         *(f"{p.decisions().get('executed', 0)}, "
           f"{sum(1 for e in p.fault_log if e.get('restarted'))}" for p in passes)),
        ("remediate's decisions", *(", ".join(f"{k} {v}" for k, v in sorted(
            p.decisions().items())) or "none" for p in passes)),
    ]
    return rows


def alert_lines(result: LoopResult) -> list[str]:
    """Prometheus' ``ALERTS`` series of each pass, one line each (as queried)."""
    lines = []
    for name, one in result.passes.items():
        if not one.alerts:
            lines.append(f"{name}: no ALERTS series")
        for alert in sorted(one.alerts, key=lambda a: a["first"]):
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(alert["labels"].items())
                              if k in ("alertname", "alertstate", "fournines_service",
                                       "severity"))
            spans = ", ".join(f"{a:.2f}-{b:.2f} s" for a, b in alert["spans"])
            lines.append(f"{name}: ALERTS{{{labels}}} {spans}")
    return lines


def render_loop_table(result: LoopResult, console: Any) -> None:
    """Print the comparison, the ``ALERTS`` series and each pass's timeline with rich."""
    from rich.table import Table  # noqa: PLC0415

    names = list(result.passes)
    table = Table(title=f"closed loop: {result.scenario.name} ({result.rate:.0f} req/s, "
                        f"{result.scenario.duration:g} s per pass, seed {result.seed})")
    table.add_column("")
    for name in names:
        table.add_column("with the loop" if name == "loop"
                         else "without (remediate dry run)")
    for row in _rows(result):
        table.add_row(*row)
    console.print(table)
    console.print("[bold]Prometheus ALERTS[/] (query_range ALERTS, lab seconds):")
    for line in alert_lines(result):
        console.print(f"  {line}", markup=False, highlight=False)
    for name, one in result.passes.items():
        console.print(f"[bold]remediation timeline, {name}[/]:")
        for at, what in one.timeline():
            console.print(f"  {at:7.2f} s  {what}", markup=False, highlight=False)
    held = result.cooldown_held()
    console.print(f"cooldown {result.settings.cooldown:g} s per service: "
                  f"{'[green]held[/]' if held else '[red]BROKEN[/]'} in every pass")


def render_loop_html(result: LoopResult) -> str:
    """The closed loop's self-contained HTML report."""
    from html import escape  # noqa: PLC0415

    from .report import plot_svg  # noqa: PLC0415

    names = list(result.passes)
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for row in _rows(result))
    faults = [(f.at, f.end, f.label()) for f in result.scenario.faults]
    colours = {"loop": "#2a7", "no loop": "#c33"}
    plot = plot_svg("pages answered per second", result.scenario.duration,
                    [(n, colours.get(n, "#555"), p.summary.series.get("availability", []))
                     for n, p in result.passes.items()], faults,
                    y_label="answered", y_min=0.0, y_max=1.0, y_format="{:.0%}")
    timelines = ""
    for name, one in result.passes.items():
        items = "".join(f"<tr><td>{at:.2f} s</td><td>{escape(what)}</td></tr>"
                        for at, what in one.timeline())
        timelines += (f"<h2>Remediation timeline: {escape(name)}</h2>"
                      f"<table><tr><th>lab time</th><th>event</th></tr>{items}</table>")
    alerts = "".join(f"<li><code>{escape(line)}</code></li>" for line in alert_lines(result))
    loop = result.settings
    held = result.cooldown_held()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fournines lab: closed loop</title>
<style>body{{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.3em .6em;
text-align:left}}code{{font-size:.9em}}.ok{{color:#2a7}}.bad{{color:#c33}}</style></head>
<body><h1>Closed loop: {escape(result.scenario.name)}</h1>
<p>The protected fleet twice under the same load and the same leak: with the loop
(SLO rules from <code>fournines slo rules</code> in Prometheus, the {ALERT} P1 alert routed
by Alertmanager to <code>fournines remediate</code>, which reloads the leaking service
through <code>fournines serve --reload</code>) and without it (remediate in dry run; the
service is restarted by hand at the fault's end). Time is divided by {loop.time_scale:g}:
the rules' 5m window is {scale_duration('5m', loop.time_scale)} here, their
<code>for: 2m</code> {scale_duration('2m', loop.time_scale)}. Cooldown
{loop.cooldown:g} s per service, at most {loop.max_actions} restarts:
<b class="{'ok' if held else 'bad'}">{'held' if held else 'BROKEN'}</b>.
Intervals are exact ({CLOPPER_PEARSON}) at {CONFIDENCE:.0%}.</p>
<table><tr><th></th>{head}</tr>{rows}</table>
{plot}
<h2>Prometheus ALERTS</h2><ul>{alerts}</ul>
{timelines}
</body></html>
"""


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_loop_json(result: LoopResult, path: Path) -> None:
    """Write ``result.to_json()`` to ``path`` (NaN as null)."""
    path.write_text(json.dumps(_clean(result.to_json()), indent=1), encoding="utf-8")


def run_loop_and_report(scenario: Scenario, *, seed: int = 7, rate: float | None = None,
                        out: Path = Path("lab-report"), json_file: Path | None = None,
                        console: Any = None) -> int:
    """``fournines lab`` for a scenario with a loop: run both passes, print, write reports.

    Writes ``out/loop.html`` and, with ``json_file``, the JSON (every request kept).
    Returns 0 when both passes ran, 1 when the lab could not run or a pass could not
    do what the scenario asked.
    """
    from rich.console import Console  # noqa: PLC0415

    from .main import RichProgress  # noqa: PLC0415

    console = console or Console()
    console.print(f"[bold]fournines lab[/]: closed loop {scenario.name!r} "
                  f"({scenario.source}), {scenario.duration:g} s per pass, seed {seed}")
    try:
        with RichProgress(console) as progress:
            result = run_closed_loop(scenario, seed=seed, rate=rate, workdir=out / "logs",
                                     progress=progress)
    except LabError as exc:
        console.print(f"[red]the lab could not run[/]: {exc}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[red]interrupted[/]: every process the lab started was stopped")
        return 130
    if json_file is not None:
        write_loop_json(result, json_file)
        console.print(f"JSON: {json_file}")
    if result.problems:
        for problem in result.problems:
            console.print(f"  [red]{problem}[/]")
        return 1
    render_loop_table(result, console)
    report = out / "loop.html"
    report.write_text(render_loop_html(result), encoding="utf-8")
    console.print(f"HTML report: {report}")
    console.print(f"lab finished in {result.timings['total']:.1f} s")
    return 0
