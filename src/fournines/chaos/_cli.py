"""``fournines chaos ...``: registered by :mod:`fournines.cli`."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``chaos`` subcommands to the top-level subparsers ``sub``."""
    group = sub.add_parser("chaos", help="chaos commands")
    group.set_defaults(run=_usage)
    commands = group.add_subparsers(dest="chaos_command")
    del commands  # subcommands are added by their modules as they land


def _usage(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    parser.parse_args([args.command, "--help"])
    return 2
