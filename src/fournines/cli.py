"""The ``fournines`` command line.

Each area registers its own subcommands from a small ``_cli`` module that imports nothing
heavy at module level, so ``fournines --help`` stays fast and the areas stay apart.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fournines ...``; returns the exit status."""
    from .chaos import _cli as chaos_cli  # noqa: PLC0415 - each area owns its commands
    from .lab import _cli as lab_cli  # noqa: PLC0415
    from .slo import _cli as slo_cli  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="fournines", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for area in (lab_cli, slo_cli, chaos_cli):
        area.register(sub)
    args = parser.parse_args(argv)
    status: int = args.run(args, parser)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
