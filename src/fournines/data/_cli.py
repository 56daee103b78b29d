"""``fournines data init`` and ``fournines dlq ...``: registered by :mod:`fournines.cli`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

_DSN = "FOURNINES_DATABASE_URL"
_AMQP = "FOURNINES_AMQP_URL"


def register(sub: Any) -> None:
    """Add the ``data`` and ``dlq`` subcommands to the top-level subparsers ``sub``."""
    data = sub.add_parser("data", help="database schema of the outbox and inbox",
                          description="fournines data init DSN: create the outbox and inbox "
                                      "tables (idempotent; the SQL is fournines.data.SCHEMA).")
    actions = data.add_subparsers(dest="action", required=True)
    init = actions.add_parser("init", help="create the outbox and inbox tables")
    init.add_argument("dsn", nargs="?", default=os.environ.get(_DSN),
                      help=f"PostgreSQL DSN (default ${_DSN})")
    init.add_argument("--print-sql", action="store_true", help="print the SQL, run nothing")
    init.set_defaults(run=_init, command_parser=init)

    dlq = sub.add_parser("dlq", help="inspect and replay the dead letters of a queue or topic",
                         description="The dead letters of work queue (or Kafka topic) QUEUE "
                                     "live in QUEUE.dead. --url amqp://... is RabbitMQ, "
                                     "--url kafka://HOST:PORT is Kafka.")
    commands = dlq.add_subparsers(dest="action", required=True)
    for name, text in (("list", "one JSON line per dead letter"),
                       ("show", "one dead letter's headers and body, as JSON"),
                       ("replay", "send dead letters back to the work queue (all, or the IDs)"),
                       ("purge", "delete dead letters (all, or the IDs)")):
        parser = commands.add_parser(name, help=text, description=text)
        parser.add_argument("queue", metavar="QUEUE", help="the work queue")
        if name == "show":
            parser.add_argument("ids", metavar="ID", nargs=1, help="the message id")
        elif name in ("replay", "purge"):
            parser.add_argument("ids", metavar="ID", nargs="*", help="message ids (default: all)")
        if name == "list":
            parser.add_argument("--limit", type=int, default=None, help="list at most this many")
        parser.add_argument("--url", default=os.environ.get(_AMQP) or
                            "amqp://guest:guest@127.0.0.1/",
                            help=f"AMQP URL, or kafka://HOST:PORT[,HOST:PORT] for Kafka "
                                 f"(default ${_AMQP}, else RabbitMQ's guest on 127.0.0.1)")
        parser.set_defaults(run=_dlq, command_parser=parser)


def _init(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import SCHEMA, init_schema  # noqa: PLC0415 - keep `fournines --help` fast

    if args.print_sql:
        print(SCHEMA)
        return 0
    if not args.dsn:
        parser.error(f"a DSN is needed (argument or ${_DSN})")

    async def run() -> None:
        import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415

        conn = await asyncpg.connect(args.dsn)
        try:
            await init_schema(conn)
        finally:
            await conn.close()

    try:
        asyncio.run(run())
    except Exception as exc:
        print(f"{parser.prog}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("fournines_outbox and fournines_inbox are ready")
    return 0


def _dlq(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .._errors import DeadLetterNotFoundError  # noqa: PLC0415
    from . import (  # noqa: PLC0415
        list_dead_letters,
        list_kafka_dead_letters,
        purge_dead_letters,
        purge_kafka_dead_letters,
        replay_dead_letters,
        replay_kafka_dead_letters,
    )

    kafka = args.url.startswith("kafka://")  # the same commands on a topic's T.dead
    url = args.url.removeprefix("kafka://")
    lister: Any = list_kafka_dead_letters if kafka else list_dead_letters
    replayer: Any = replay_kafka_dead_letters if kafka else replay_dead_letters
    purger: Any = purge_kafka_dead_letters if kafka else purge_dead_letters
    try:
        if args.action in ("list", "show"):
            letters = asyncio.run(lister(args.queue, url, limit=getattr(
                args, "limit", None)))
            if args.action == "list":
                for letter in letters:
                    print(json.dumps(letter.summary()))
                return 0
            for letter in letters:
                if letter.id == args.ids[0]:
                    print(json.dumps({**letter.summary(), "headers": letter.headers,
                                      "body": letter.body.decode(errors="replace")},
                                     default=str, indent=2))
                    return 0
            raise DeadLetterNotFoundError(
                f"no dead letter of queue {args.queue!r} with id {args.ids[0]}")
        if args.action == "replay":
            ids = asyncio.run(replayer(args.queue, url, ids=args.ids))
            print(f"replayed {len(ids)} dead letter(s) to {args.queue}")
            return 0
        count = asyncio.run(purger(args.queue, url, ids=args.ids))
        print(f"purged {count} dead letter(s) of {args.queue}")
        return 0
    except DeadLetterNotFoundError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # broker unreachable, no such queue: one line, no traceback
        print(f"{parser.prog}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
