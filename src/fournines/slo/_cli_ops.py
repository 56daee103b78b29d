"""``fournines slo budget|gate|dashboard`` and ``fournines remediate``.

Registered by :mod:`fournines.slo._cli`; heavy imports wait until a command runs,
so ``fournines --help`` stays fast.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .gate import SLOBudget
    from .spec import SLOSpec

_EXIT_ERROR = 2  # a bad command line or input file (see fournines.cli for the convention)
_EXIT_FAILED = 1  # it ran, and its work could not be done


def register(commands: Any, sub: Any = None, *rest: Any) -> None:
    """Add ``budget``, ``gate``, ``dashboard`` to ``commands`` and ``remediate`` to ``sub``."""
    budget = commands.add_parser(
        "budget", help="error budget per SLO from Prometheus (table or --json)")
    budget.add_argument("spec", help="SLO spec file (fournines, Sloth or OpenSLO)")
    _prometheus_args(budget)
    budget.add_argument("--json", action="store_true", help="print JSON for machines")
    budget.set_defaults(run=_run_budget, command_parser=budget)

    gate = commands.add_parser(
        "gate", help="deploy gate: exit 0 proceed, 1 budget forbids, 2 no data/unreachable",
        description="Exit 0 when deploys may proceed, 1 when the error budget forbids them "
                    "(or a person must approve), 2 when there is no data or Prometheus "
                    "cannot be reached.")
    gate.add_argument("spec", help="SLO spec file")
    _prometheus_args(gate)
    gate.add_argument("--environment", default="",
                      help="'production' turns on the manual-approval tier")
    gate.add_argument("--proceed-at", type=float, default=20.0, metavar="PERCENT",
                      help="remaining budget at or above which deploys proceed (20)")
    gate.add_argument("--block-below", type=float, default=15.0, metavar="PERCENT",
                      help="remaining budget below which deploys are blocked (15)")
    gate.add_argument("--approval-below", type=float, default=5.0, metavar="PERCENT",
                      help="in production, below this a person must approve (5)")
    gate.add_argument("--caution", choices=("proceed", "block"), default="proceed",
                      help="what the band between --block-below and --proceed-at does "
                           "(proceed, with a warning)")
    gate.add_argument("--json", action="store_true", help="print JSON for machines")
    gate.set_defaults(run=_run_gate, command_parser=gate)

    dashboard = commands.add_parser("dashboard", help="Grafana dashboard JSON for a spec")
    dashboard.add_argument("spec", help="SLO spec file")
    dashboard.add_argument("-o", "--output", help="write to this file (default: stdout)")
    dashboard.add_argument("--title", help="dashboard title")
    dashboard.add_argument("--uid", help="dashboard uid (default: fournines-slo-SERVICE)")
    dashboard.set_defaults(run=_run_dashboard, command_parser=dashboard)

    if sub is not None:
        remediate = sub.add_parser(
            "remediate", help="Alertmanager webhook receiver running allowlisted actions")
        remediate.add_argument("--config", required=True, help="remediate config (YAML)")
        remediate.add_argument("--dry-run", action="store_true",
                               help="decide and log, run nothing (overrides the config)")
        remediate.add_argument("--listen", help="HOST:PORT (overrides the config's listen)")
        remediate.set_defaults(run=_run_remediate, command_parser=remediate)


def _prometheus_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prometheus", required=True, metavar="URL",
                        help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds per query (10)")


def _load(path: str) -> SLOSpec:
    from .spec import load_spec  # noqa: PLC0415 - keep `fournines --help` fast

    return load_spec(path)


def _read(args: argparse.Namespace) -> tuple[SLOSpec, list[SLOBudget]]:
    import time  # noqa: PLC0415

    from .._errors import ConfigurationError  # noqa: PLC0415
    from .gate import read_budgets  # noqa: PLC0415
    from .prometheus import PrometheusClient  # noqa: PLC0415

    spec = _load(args.spec)
    try:
        client = PrometheusClient(args.prometheus, timeout=args.timeout)
    except ConfigurationError as exc:
        raise ConfigurationError(f"--prometheus: {exc}") from None
    # One evaluation instant for every query, so the numbers of a report agree.
    at = time.time()
    with client:
        return spec, read_budgets(spec, lambda expr: client.value(expr, at=at))


def _error(parser: argparse.ArgumentParser, message: str) -> int:
    # Named by the subcommand (parser.prog is "fournines slo budget"), like its usage.
    print(f"{parser.prog}: {message}", file=sys.stderr)
    return _EXIT_ERROR


def _number(value: float | None, fmt: str, suffix: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    return format(value, fmt) + suffix


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def budget_table(spec: SLOSpec, budgets: list[SLOBudget]) -> str:
    """The people's view of a budget report."""
    from .budget import BURN_RATE_WINDOWS  # noqa: PLC0415

    windows = list(BURN_RATE_WINDOWS)
    head = ["SLO", "objective", "budget", "budget req", "consumed", "consumed req",
            "remaining", *[f"burn {w}" for w in windows], "burn period"]
    rows = [head]
    for item in budgets:
        b = item.budget
        rows.append([
            item.slo.name, f"{b.objective:g}% {item.slo.period}",
            _number(b.total_minutes, ".2f", " min"), _number(b.total_requests, ".0f"),
            _number(b.consumed_minutes, ".2f", " min"), _number(b.consumed_requests, ".0f"),
            _number(b.remaining_percent, ".1f", " %"),
            *[_number(b.burn_rates.get(w), ".2f") for w in windows],
            _number(b.burn_rates.get(item.slo.period), ".2f")])
    slis = "\n".join(f"  {item.slo.name}: {item.sli}" for item in budgets)
    return f"service {spec.service}\n{_table(rows)}\nSLIs:\n{slis}"


def _check_timeout(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout:g}")


def _run_budget(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .._errors import ConfigurationError  # noqa: PLC0415
    from .prometheus import PrometheusError  # noqa: PLC0415

    _check_timeout(args, parser)
    try:
        spec, budgets = _read(args)
    except (ConfigurationError, PrometheusError) as exc:
        return _error(parser, str(exc))
    if args.json:
        print(json.dumps({"service": spec.service, "prometheus": args.prometheus,
                          "slos": [item.as_dict() for item in budgets]}, indent=2))
    else:
        print(budget_table(spec, budgets))
    return 0


def _run_gate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .._errors import ConfigurationError  # noqa: PLC0415
    from .gate import EXIT_NO_DATA, GatePolicy, decide  # noqa: PLC0415
    from .prometheus import PrometheusError  # noqa: PLC0415

    _check_timeout(args, parser)
    # Checked here, in the user's words (flags), before GatePolicy checks its own fields.
    flags = (("--approval-below", args.approval_below), ("--block-below", args.block_below),
             ("--proceed-at", args.proceed_at))
    for flag, value in flags:
        if not 0 <= value <= 100:
            parser.error(f"{flag} must be between 0 and 100, got {value:g}")
    for (low_flag, low), (high_flag, high) in itertools.pairwise(flags):
        if low > high:
            parser.error(f"{low_flag} ({low:g}) must be at most {high_flag} ({high:g})")
    policy = GatePolicy(proceed_percent=args.proceed_at, block_percent=args.block_below,
                        approval_percent=args.approval_below,
                        caution_blocks=args.caution == "block")
    try:
        _, budgets = _read(args)
    except (ConfigurationError, PrometheusError) as exc:
        # Unreachable, a refused query or a broken spec: the gate cannot tell, so never 0.
        print(f"fournines slo gate: NO DECISION: {exc}", file=sys.stderr)
        return EXIT_NO_DATA
    except Exception as exc:  # a crash must not read as "blocked" (exit 1)
        print(f"fournines slo gate: NO DECISION: unexpected {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EXIT_NO_DATA
    status, decisions = decide(budgets, policy, environment=args.environment)
    if args.json:
        print(json.dumps({"exit_status": status, "decisions": [
            {"slo": d.slo, "verdict": d.verdict, "exit_status": d.exit_status,
             "remaining_percent": d.remaining_percent, "message": d.message}
            for d in decisions]}, indent=2))
    else:
        for decision in decisions:
            print(decision.message)
        print({0: "gate: PROCEED (exit 0)", 1: "gate: FORBIDDEN by the error budget (exit 1)",
               2: "gate: NO DATA, no decision (exit 2)"}[status])
    return status


def _run_dashboard(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .._errors import ConfigurationError  # noqa: PLC0415
    from .dashboard import build_dashboard  # noqa: PLC0415
    from .rules import write_atomic  # noqa: PLC0415

    try:
        spec = _load(args.spec)
    except ConfigurationError as exc:
        return _error(parser, str(exc))
    text = json.dumps(build_dashboard(spec, title=args.title, uid=args.uid), indent=2) + "\n"
    if args.output:
        try:
            # Grafana's provisioner may read it at any moment: old file or new, never half.
            write_atomic(args.output, text)
        except OSError as exc:
            return _error(parser, f"cannot write {args.output}: {exc}")
    else:
        sys.stdout.write(text)
    return 0


def _run_remediate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import dataclasses  # noqa: PLC0415

    from .._errors import ConfigurationError  # noqa: PLC0415
    from .remediate import Remediator, WebhookServer, load_config  # noqa: PLC0415

    listen: tuple[str, int] | None = None
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            parser.error(f"--listen must be HOST:PORT, got {args.listen!r}")
        listen = host.strip("[]"), int(port)
    try:
        config = load_config(args.config)
        if args.dry_run:
            config = dataclasses.replace(config, dry_run=True)
        if listen is not None:
            config = dataclasses.replace(config, host=listen[0], port=listen[1])
    except ConfigurationError as exc:
        return _error(parser, str(exc))
    try:
        remediator = Remediator(config, background=True)
    except ConfigurationError as exc:
        return _error(parser, str(exc))
    try:
        server = WebhookServer(remediator)
    except OSError as exc:
        remediator.close()
        print(f"fournines remediate: cannot listen on {config.host}:{config.port}: {exc}",
              file=sys.stderr)
        return _EXIT_FAILED

    stopped_by: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopped_by.append(signum)
        # shutdown() waits for serve_forever to return: call it off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    mode = " (dry run)" if config.dry_run else ""
    print(f"fournines remediate: listening on {server.url}{mode}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        remediator.close()
    # SIGTERM is how a supervisor stops a daemon (done: 0); Ctrl-C is an interruption (130),
    # the exit convention every fournines command keeps.
    return 130 if stopped_by and stopped_by[0] == signal.SIGINT else 0
