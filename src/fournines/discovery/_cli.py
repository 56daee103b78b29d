"""``fournines config get|set|watch|history``: registered by :mod:`fournines.cli`.

Exit status: 0 done; 1 etcd cannot be reached or the key has no value; 2 the
value (or ``--schema``) is wrong: one line on stderr naming the key and field.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

_DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"


def register(sub: Any) -> None:
    """Add the ``config`` subcommands to the top-level subparsers ``sub``."""
    group = sub.add_parser(
        "config", help="read, write, watch and list the history of config in etcd",
        description="Operate the config centre: typed configuration in etcd keys.")
    group.set_defaults(run=_usage, command_parser=group)
    commands = group.add_subparsers(dest="config_command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text,
                                                              description=help_text)
        parser.add_argument("key", metavar="KEY", help="the etcd key, e.g. payment/limits")
        parser.add_argument(
            "--endpoints", default=os.environ.get("FOURNINES_ETCD_ENDPOINTS", _DEFAULT_ENDPOINTS),
            help="etcd client URLs, comma-separated (default $FOURNINES_ETCD_ENDPOINTS, "
                 f"else {_DEFAULT_ENDPOINTS})")
        parser.add_argument("--timeout", type=float, default=2.0,
                            help="seconds each call to etcd may take (2)")
        parser.add_argument("--schema", metavar="MODULE:CLASS", default=None,
                            help="validate against this dataclass or pydantic model")
        parser.set_defaults(command_parser=parser)
        return parser

    def prefixed(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--prefix", action="store_true",
                            help="KEY is a prefix: each key under it is one field")

    get = command("get", "print the value of KEY (validated with --schema)")
    prefixed(get)
    get.set_defaults(run=_get)
    put = command("set", "validate VALUE (with --schema) and write it to KEY")
    put.add_argument("value", metavar="VALUE", nargs="?", default=None,
                     help="JSON or YAML text; '-' or absent: read stdin")
    put.add_argument("--file", default=None, help="read the value from this file")
    prefixed(put)
    put.set_defaults(run=_set)
    watch = command("watch", "print the value of KEY, then each change (refusals on stderr)")
    watch.add_argument("--count", type=int, default=None,
                       help="exit after printing this many values (default: never)")
    prefixed(watch)
    watch.set_defaults(run=_watch)
    history = command("history", "list KEY's past values, newest first (until compaction)")
    history.add_argument("--limit", type=int, default=20, help="at most this many (20)")
    prefixed(history)
    history.set_defaults(run=_history)


def _usage(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    parser.error("a COMMAND is required (get, set, watch or history)")


def _endpoints(args: argparse.Namespace) -> list[str]:
    return [url.strip() for url in args.endpoints.split(",") if url.strip()]


def _schema(args: argparse.Namespace) -> type | None:
    import importlib  # noqa: PLC0415 - keep `fournines --help` fast

    if args.schema is None:
        return None
    module_name, _, attribute = args.schema.partition(":")
    if not module_name or not attribute:
        raise _Usage(f"--schema must be MODULE:CLASS, got {args.schema!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")  # the operator's working directory, as `python -m` does
    try:
        found: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except ImportError as exc:
        raise _Usage(f"--schema {args.schema}: cannot import {module_name!r}: {exc}") from None
    except AttributeError:
        raise _Usage(f"--schema {args.schema}: {module_name!r} has no {attribute!r}") from None
    if not isinstance(found, type):
        raise _Usage(f"--schema {args.schema}: not a class, got {found!r}")
    return found


class _Usage(Exception):
    """A wrong flag or input: exit 2."""


def _guarded(args: argparse.Namespace, work: Any) -> int:
    import asyncio  # noqa: PLC0415

    from .._errors import ConfigurationError  # noqa: PLC0415
    from . import ConfigUnavailableError, ConfigValidationError  # noqa: PLC0415

    prog = args.command_parser.prog
    try:
        result: int = asyncio.run(work())
    except _Usage as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except ConfigValidationError as exc:
        print(f"{prog}: refused: {exc}", file=sys.stderr)
        return 2
    except ConfigUnavailableError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except ConfigurationError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return result


def _one_line(data: object) -> str:
    import json  # noqa: PLC0415

    from ._schema import dump  # noqa: PLC0415

    return json.dumps(dump(data), ensure_ascii=False, separators=(",", ":"))


def _get(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    async def work() -> int:
        from .config import get_config  # noqa: PLC0415

        schema = _schema(args)
        value, revision = await get_config(_endpoints(args), args.key, schema=schema,
                                           timeout=args.timeout, prefix=args.prefix)
        if schema is None:
            import json  # noqa: PLC0415

            print(json.dumps(value, indent=1, ensure_ascii=False))
        else:
            from ._schema import to_text  # noqa: PLC0415

            print(to_text(value))
        print(f"revision {revision}", file=sys.stderr)
        return 0

    return _guarded(args, work)


def _set(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    async def work() -> int:
        from .config import put_config  # noqa: PLC0415

        schema = _schema(args)
        if args.file is not None:
            if args.value is not None:
                raise _Usage("give VALUE or --file, not both")
            with open(args.file, encoding="utf-8") as file:
                text = file.read()
        elif args.value is None or args.value == "-":
            text = sys.stdin.read()
        else:
            text = args.value
        revision = await put_config(_endpoints(args), args.key, text, schema=schema,
                                    timeout=args.timeout, prefix=args.prefix)
        print(f"revision {revision}")
        return 0

    return _guarded(args, work)


def _watch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.count is not None and args.count < 1:
        parser.error("--count must be >= 1")

    async def work() -> int:
        import asyncio  # noqa: PLC0415

        from .._events import ConfigChanged, ConfigRejected, Event  # noqa: PLC0415
        from .config import ConfigWatcher  # noqa: PLC0415

        schema = _schema(args) or object
        done = asyncio.Event()
        printed = 0

        def show(revision: int, value: object, source: str) -> None:
            nonlocal printed
            suffix = "" if source == "etcd" else f"\t({source})"
            print(f"{revision}\t{_one_line(value)}{suffix}", flush=True)
            printed += 1
            if args.count is not None and printed >= args.count:
                done.set()

        def listen(event: Event) -> None:
            if isinstance(event, ConfigRejected):
                print(f"{args.command_parser.prog}: revision {event.revision} refused: "
                      f"{event.error}", file=sys.stderr, flush=True)
            elif isinstance(event, ConfigChanged) and event.old is not None:
                show(event.revision, event.new, event.source)

        watcher: ConfigWatcher[Any] = ConfigWatcher(_endpoints(args), args.key, schema,
                                                    timeout=args.timeout,
                                                    listeners=[listen], prefix=args.prefix)
        async with watcher:
            show(watcher.revision, watcher.current, watcher.source or "etcd")
            await done.wait()
        return 0

    return _guarded(args, work)


def _history(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.limit < 1:
        parser.error("--limit must be >= 1")

    async def work() -> int:
        from ._schema import parse, validate  # noqa: PLC0415
        from .config import config_history  # noqa: PLC0415

        schema = _schema(args)
        past = await config_history(_endpoints(args), args.key, limit=args.limit,
                                    timeout=args.timeout, prefix=args.prefix)
        if not past:
            what = "no key under the prefix" if args.prefix else "no value"
            print(f"{args.command_parser.prog}: {args.key}: {what} in etcd", file=sys.stderr)
            return 1
        for entry in past:
            text = " ".join(entry.value.split())
            mark = ""
            if schema is not None:
                try:
                    validate(schema, parse(entry.value, args.key), args.key, entry.revision)
                except Exception as exc:  # a refused past value is shown, marked
                    mark = f"\t(invalid: {getattr(exc, 'problem', exc)})"
            print(f"{entry.revision}\t{text}{mark}")
        return 0

    return _guarded(args, work)
