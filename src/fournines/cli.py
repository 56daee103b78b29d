"""The ``fournines`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fournines ...``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="fournines", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    lab = sub.add_parser("lab", help="run the policy demo (the full lab comes later)")
    lab.add_argument("--duration", type=float, default=6.0, help="seconds of traffic (6)")
    lab.add_argument("--seed", type=int, default=7, help="random seed (7)")
    args = parser.parse_args(argv)
    if args.command == "lab":
        if not 0.5 <= args.duration <= 3600:
            parser.error("--duration must be between 0.5 and 3600 seconds")
        from .lab import run_demo  # noqa: PLC0415 - keep `fournines --help` fast

        run_demo(args.duration, seed=args.seed)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
