"""The ``fournines`` command line.

Each area registers its own subcommands from a small ``_cli`` module that imports nothing
heavy at module level, so ``fournines --help`` stays fast and the areas stay apart. Each
subcommand sets ``run`` (its function) and ``command_parser`` (its own parser, so that its
errors print its usage, not the top-level one) as parser defaults.

Exit status, the same for every command: 0 done; 1 the command ran and its check failed or
its work could not be done (``slo gate`` forbids, the lab's fleet did not run or its run
could not do what the scenario asked, a server could not listen); 2 the command line or an
input is wrong (a usage error; a bad, oversized or too deeply nested spec, scenario or
config file, see ``fournines._files``; a malformed URL), and, for the commands that read
Prometheus, no data or no answer (a gate that cannot see never says yes); 130 interrupted.
Input a command cannot use is one line on stderr naming the file or flag, never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fournines ...``; returns the exit status."""
    from . import __version__  # noqa: PLC0415
    from .chaos import _cli as chaos_cli  # noqa: PLC0415 - each area owns its commands
    from .data import _cli as data_cli  # noqa: PLC0415
    from .discovery import _cli as config_cli  # noqa: PLC0415
    from .lab import _cli as lab_cli  # noqa: PLC0415
    from .serve import _cli as serve_cli  # noqa: PLC0415
    from .serve import _k8s_cli as k8s_cli  # noqa: PLC0415
    from .slo import _cli as slo_cli  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="fournines", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fournines {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for area in (lab_cli, slo_cli, chaos_cli, serve_cli, k8s_cli, config_cli, data_cli):
        area.register(sub)
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand's own parser, with its usage (not the top-level one)
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        status: int = args.run(args, args.command_parser)
    except KeyboardInterrupt:  # Ctrl-C is an answer, not a crash: no traceback
        print(f"{args.command_parser.prog}: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
