"""``fournines chaos ...``: registered by :mod:`fournines.cli`."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    """Add the ``chaos`` subcommands to the top-level subparsers ``sub``."""
    group = sub.add_parser("chaos", help="chaos commands")
    group.set_defaults(run=_usage, command_parser=group)
    commands = group.add_subparsers(dest="chaos_command")
    proxy = commands.add_parser(
        "proxy",
        help="run the fault proxy (Toxiproxy's HTTP API and toxics)",
        description="Run a TCP fault proxy that speaks Toxiproxy's HTTP API, so Toxiproxy "
                    "clients can create proxies and add toxics to them.",
    )
    proxy.add_argument("--host", default="127.0.0.1",
                       help="API address (127.0.0.1; anything else lets others break traffic)")
    proxy.add_argument("--port", type=int, default=8474,
                       help="API port (8474, Toxiproxy's; 0 picks a free one)")
    proxy.add_argument("--config", metavar="FILE",
                       help="JSON list of proxies to create at start, as for POST /populate")
    proxy.add_argument("--seed", type=int, default=None,
                       help="seed for jitter, slicing and toxicity draws")
    proxy.add_argument("--allow-listen", action="append", default=[], metavar="ADDR",
                       help="an IP address or CIDR proxies may listen on besides loopback, "
                            "e.g. 0.0.0.0 (repeat, or separate with commas)")
    proxy.add_argument("--allow-upstream", action="append", default=None, metavar="HOST:PORT",
                       help="only let proxies connect to these: HOST an IP, CIDR, name or *, "
                            "PORT a number, LOW-HIGH or *, e.g. 10.0.0.0/8:6379 "
                            "(repeat, or separate with commas; default: any upstream)")
    proxy.add_argument("--token-file", metavar="FILE",
                       help="API requests must carry 'Authorization: Bearer <token>' with "
                            "the token in FILE (default: $FOURNINES_CHAOS_PROXY_TOKEN if "
                            "set, else no token)")
    proxy.set_defaults(run=_run_proxy, command_parser=proxy)


def _usage(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # A group without its command is a usage error (stderr, status 2), not a help request.
    parser.error("a COMMAND is required")


def _run_proxy(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import asyncio  # noqa: PLC0415 - keep `fournines --help` fast
    import logging  # noqa: PLC0415
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from .._errors import ConfigurationError  # noqa: PLC0415
    from ._toxics import ApiError  # noqa: PLC0415
    from .proxy import FaultProxy  # noqa: PLC0415

    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    config: list[Any] = []
    if args.config:
        from .._files import json_document, read_text  # noqa: PLC0415

        try:  # bounded in size and nesting: a hostile file is refused before json recurses
            config = json_document(read_text(args.config))
            if not isinstance(config, list):
                raise ConfigurationError("expected a JSON list of proxies")
        except ConfigurationError as exc:
            # A bad input file: one line naming it, no usage (the command line was right).
            print(f"fournines chaos proxy: --config {args.config}: {exc}", file=sys.stderr)
            return 2
    token = os.environ.get("FOURNINES_CHAOS_PROXY_TOKEN", "").strip() or None
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as file:
                token = file.read().strip()
        except (OSError, ValueError) as exc:
            parser.error(f"--token-file {args.token_file}: {exc}")
    allow_listen = [item for arg in args.allow_listen for item in arg.split(",") if item]
    allow_upstream = None if args.allow_upstream is None else [
        item for arg in args.allow_upstream for item in arg.split(",") if item]
    try:
        chaos = FaultProxy(host=args.host, port=args.port, seed=args.seed, config=config,
                           allow_listen=allow_listen, allow_upstream=allow_upstream,
                           token=token)
    except ConfigurationError as exc:
        option = {"allow_listen": "--allow-listen", "allow_upstream": "--allow-upstream",
                  "token": "--token-file"}
        where = next((flag for key, flag in option.items() if f"FaultProxy.{key}" in str(exc)),
                     "")
        parser.error(f"{where}: {exc}" if where else str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def serve() -> int:
        try:
            await chaos.start()
        except ApiError as exc:
            if exc.status >= 500:  # a proxy of --config could not listen: it ran and failed
                print(f"fournines chaos proxy: {exc}", file=sys.stderr)
                return 1
            # The API refused a proxy of --config (as it would a POST /populate): bad input.
            print(f"fournines chaos proxy: --config {args.config}: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # the API could not listen: it ran and failed
            print(f"fournines chaos proxy: {exc}", file=sys.stderr)
            return 1
        print(f"fournines chaos proxy: API on {chaos.api_url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await chaos.aclose()
        return 0

    return asyncio.run(serve())
