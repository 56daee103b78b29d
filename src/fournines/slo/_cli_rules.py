"""Subcommands of ``fournines slo`` that live with the rules modules."""

from __future__ import annotations

from typing import Any


def register(commands: Any, *rest: Any) -> None:
    """Add this module's subcommands to the ``slo`` subparsers ``commands``."""
