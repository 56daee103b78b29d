"""``fournines slo ...`` and ``fournines remediate``: registered by :mod:`fournines.cli`."""

from __future__ import annotations

import argparse
from typing import Any

from . import _cli_ops, _cli_rules


def register(sub: Any) -> None:
    """Add the ``slo`` subcommands (and ``remediate``) to the top-level subparsers ``sub``."""
    group = sub.add_parser("slo", help="SLO rules, error budgets, the deploy gate, dashboards")
    group.set_defaults(run=_usage, command_parser=group)
    commands = group.add_subparsers(dest="slo_command", metavar="COMMAND")
    _cli_rules.register(commands)
    _cli_ops.register(commands, sub)


def _usage(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # A group without its command is a usage error (stderr, status 2), not a help request.
    parser.error("a COMMAND is required")
