"""``fournines lab`` end to end: live progress, the run, the table and the reports."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from .._errors import ConfigurationError
from .fleet import LabError
from .load import Outcome
from .runner import AUTO_RATE_SHARE, MAX_AUTO_RATE, LabResult, Progress, run_lab
from .scenario import Scenario, check_etcd, check_load, default_scenario, load_scenario

__all__ = ["RichProgress", "run_and_report"]


class RichProgress(Progress):
    """A rich progress bar per phase, with live counts of full, degraded and failed answers."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, TextColumn  # noqa: PLC0415
        from rich.progress import Progress as Bar  # noqa: PLC0415

        self.console = console
        self.bar = Bar(TextColumn("{task.description}"), BarColumn(bar_width=16),
                       TextColumn("{task.completed:>5.0f}/{task.total:.0f}"),
                       TextColumn("{task.fields[counts]}"),
                       console=console, transient=False)
        self.tasks: dict[str, Any] = {}
        self.counts: dict[str, list[int]] = {}
        self.fault: dict[str, str] = {}
        self.started = time.perf_counter()

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def phase(self, text: str) -> None:
        """Log a step."""
        self.console.log(text)

    def load_started(self, variant: str, total: int, duration: float) -> None:
        """A bar for this variant's load."""
        self.started = time.perf_counter()
        self.counts[variant] = [0, 0, 0]
        self.tasks[variant] = self.bar.add_task(f"{variant:<11}", total=total, counts="")

    def outcome(self, variant: str, outcome: Outcome) -> None:
        """Count one answer."""
        counts = self.counts[variant]
        counts[0 if outcome.ok and not outcome.degraded else 1 if outcome.ok else 2] += 1

    def tick(self, variant: str, elapsed: float, fault: str) -> None:
        """Refresh the bar."""
        full, degraded, failed = self.counts[variant]
        style = "red" if failed else "green"
        self.bar.update(self.tasks[variant], completed=full + degraded + failed,
                        counts=f"[green]{full} full[/] [yellow]{degraded} degraded[/] "
                               f"[{style}]{failed} failed[/] {elapsed:4.0f}s {fault}")

    def load_finished(self, variant: str) -> None:
        """Final counts."""
        self.tick(variant, time.perf_counter() - self.started, "done")


def _scenario(scenario_file: str | None, duration: float | None) -> Scenario:
    scenario = load_scenario(scenario_file) if scenario_file else default_scenario()
    if duration is not None and duration != scenario.duration:
        scenario = scenario.with_duration(duration)
    return scenario


def run_and_report(*, scenario_file: str | None = None, duration: float | None = None,
                   rate: float | None = None, seed: int = 7, out: Path = Path("lab-report"),
                   json_file: Path | None = None, redis_url: str | None = None,
                   prometheus: bool = False, console: Any = None,
                   etcd: str | None = None) -> int:
    """Run the lab, print the table, write ``out/report.html``, ``out/summary.svg``, JSON.

    Returns the exit status: 0 when the run completed (whatever the verdict:
    the lab measures, it does not gate), 1 when the lab itself could not run or
    the run could not do what the scenario asked (:attr:`LabResult.problems`: then
    no table and no HTML report, only the problems, and the JSON with them).
    Raises :class:`~fournines.ConfigurationError` for a bad scenario file, a load
    this machine cannot offer, or an output folder that cannot be created, before
    anything is started (the load is checked again against the measured capacity),
    and for a fault that needs the registry when ``etcd`` is ``None`` (``""``: the
    lab starts its own etcd; a URL: an existing one, see :func:`run_lab`).
    """
    from rich.console import Console  # noqa: PLC0415

    from .report import (  # noqa: PLC0415
        render_html,
        render_summary_svg,
        render_table,
        write_json,
    )

    console = console or Console()
    scenario = _scenario(scenario_file, duration)
    if scenario.loop is not None:
        if etcd is not None or redis_url or prometheus:
            raise ConfigurationError(f"{scenario.source}: a scenario with a loop runs its own "
                                     "Prometheus and no registry or Redis: drop --etcd, "
                                     "--redis and --prometheus")
        from .loop import run_loop_and_report  # noqa: PLC0415

        for option, folder in (("--out", out),
                               ("--json", json_file.parent if json_file else None)):
            if folder is not None:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ConfigurationError(f"{option} {folder}: cannot create the folder "
                                             f"({exc.strerror})") from exc
        return run_loop_and_report(scenario, seed=seed, rate=rate, out=out,
                                   json_file=json_file, console=console)
    check_etcd(scenario, etcd)
    if etcd:
        from ..discovery import EtcdEndpoints  # noqa: PLC0415

        EtcdEndpoints(etcd, "lab")  # a URL it refuses is refused before anything starts
    # Before anything starts, against the modelled capacity (the probe measures it later).
    model = scenario.payment.concurrency / scenario.payment.service_time
    planned = rate or scenario.rate or min(MAX_AUTO_RATE, AUTO_RATE_SHARE * model)
    check_load(scenario, rate=planned, capacity=model, capacity_from="modelled",
               rate_from="--rate" if rate else "rate" if scenario.rate else "the automatic rate")
    # Checked before the run, not after two minutes of it.
    for option, folder in (("--out", out), ("--json", json_file.parent if json_file else None)):
        if folder is None:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"{option} {folder}: cannot create the folder "
                                     f"({exc.strerror})") from exc
    logs = out / "logs"
    prom: Any = None
    console.print(f"[bold]fournines lab[/]: scenario {scenario.name!r} ({scenario.source}), "
                  f"{scenario.duration:g} s of load per variant, seed {seed}")
    try:
        with RichProgress(console) as progress:
            on_fleet = None
            if prometheus:
                from .prometheus import LabPrometheus  # noqa: PLC0415

                prom = LabPrometheus(out / "prometheus")
                progress.phase(f"starting Prometheus on {prom.url}")
                prom.start()
                on_fleet = prom.watch
            result: LabResult = run_lab(scenario, seed=seed, rate=rate, workdir=logs,
                                        progress=progress, redis_url=redis_url,
                                        on_fleet=on_fleet, etcd=etcd)
        if prom is not None:
            result.prometheus = prom.summary()
    except LabError as exc:
        console.print(f"[red]the lab could not run[/]: {exc}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[red]interrupted[/]: every process the lab started was stopped")
        return 130
    finally:
        if prom is not None:
            prom.stop()
    if result.problems:
        # Never a table of numbers that measured the lab instead of the fleet.
        console.print("[red]the run could not do what the scenario asked[/]; nothing was "
                      "measured:")
        for problem in result.problems:
            console.print(f"  [red]{problem}[/]")
        if json_file is not None:
            with contextlib.suppress(OSError):  # the problems are the message either way
                write_json(result, json_file)
                console.print(f"JSON (with the problems): {json_file}")
        print(f"fournines lab: the run could not do what the scenario asked: "
              f"{result.problems[0]}", file=sys.stderr)
        return 1
    render_table(result, console)
    report = out / "report.html"
    try:
        report.write_text(render_html(result), encoding="utf-8")
        (out / "summary.svg").write_text(render_summary_svg(result), encoding="utf-8")
        console.print(f"HTML report: {report} (and the main plots in {out / 'summary.svg'})")
        if json_file is not None:
            write_json(result, json_file)
            console.print(f"JSON: {json_file}")
    except OSError as exc:  # a full disk, a folder removed meanwhile: it ran, and failed
        print(f"fournines lab: cannot write the report: {exc}", file=sys.stderr)
        return 1
    if result.prometheus:
        console.print(f"Prometheus: {result.prometheus}")
    console.print(f"lab finished in {result.timings['total']:.1f} s")
    sys.stdout.flush()
    return 0
