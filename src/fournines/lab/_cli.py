"""``fournines lab``: registered by :mod:`fournines.cli`."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``lab`` subcommand to the top-level subparsers ``sub``."""
    lab = sub.add_parser("lab", help="run the policy demo (the full lab comes later)")
    lab.add_argument("--duration", type=float, default=6.0, help="seconds of traffic (6)")
    lab.add_argument("--seed", type=int, default=7, help="random seed (7)")
    lab.set_defaults(run=_run)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not 0.5 <= args.duration <= 3600:
        parser.error("--duration must be between 0.5 and 3600 seconds")
    from . import run_demo  # noqa: PLC0415 - keep `fournines --help` fast

    run_demo(args.duration, seed=args.seed)
    return 0
