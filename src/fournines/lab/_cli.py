"""``fournines lab``: registered by :mod:`fournines.cli`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the ``lab`` subcommand to the top-level subparsers ``sub``."""
    lab = sub.add_parser(
        "lab", help="run the four-nines lab: a real fleet under real faults, measured",
        description="Run the same load and faults against an unprotected and a protected "
                    "fleet of real services, and report whether 99.99 % held: every "
                    "availability with its exact 95 % confidence interval, \"held\" only "
                    "when the one-sided lower bound proves it.")
    lab.add_argument("--duration", type=float, default=None,
                     help="seconds of load per variant (default: the scenario's, 75); "
                          "fault times scale with it")
    lab.add_argument("--rate", type=float, default=None,
                     help="requests per second (default: the scenario's, or 60 %% of the "
                          "measured capacity, at most 400)")
    lab.add_argument("--seed", type=int, default=7, help="random seed (7)")
    lab.add_argument("--scenario", metavar="FILE", default=None,
                     help="a scenario YAML file (default: the one shipped with fournines)")
    lab.add_argument("--out", metavar="DIR", default="lab-report",
                     help="where the HTML report and process logs go (lab-report)")
    lab.add_argument("--json", metavar="FILE", default=None, help="also write the results "
                     "as JSON to FILE")
    lab.add_argument("--redis", metavar="URL", default=None,
                     help="rate-limit the protected gateway with a Redis GCRA at URL")
    lab.add_argument("--prometheus", action="store_true",
                     help="start a local Prometheus scraping the fleet (needs `prometheus`)")
    lab.add_argument("--etcd", metavar="URL", nargs="?", const="", default=None,
                     help="the protected fleet finds its services through etcd, with 2 "
                          "payment instances: alone, a private etcd the lab starts (needs "
                          "`etcd`, Debian's etcd-server); with URL, an existing etcd")
    lab.set_defaults(run=_run, command_parser=lab)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.duration is not None and not 1 <= args.duration <= 3600:
        parser.error("--duration must be between 1 and 3600 seconds")
    from .scenario import MAX_RATE  # noqa: PLC0415

    if args.rate is not None and not 1 <= args.rate <= MAX_RATE:
        parser.error(f"--rate must be between 1 and {MAX_RATE:g} requests per second")
    from .._errors import ConfigurationError  # noqa: PLC0415

    try:
        from .main import run_and_report  # noqa: PLC0415 - keep `fournines --help` fast
    except ImportError as exc:  # pragma: no cover - depends on the installation
        parser.exit(2, f"fournines lab: error: {exc}; install 'fournines[lab]'\n")
    try:
        return run_and_report(
            scenario_file=args.scenario, duration=args.duration, rate=args.rate,
            seed=args.seed, out=Path(args.out),
            json_file=Path(args.json) if args.json else None,
            redis_url=args.redis, prometheus=args.prometheus, etcd=args.etcd,
        )
    except ConfigurationError as exc:
        parser.exit(2, f"fournines lab: error: {exc}\n")
