"""``fournines.serve.run`` from a script, recording the supervisor's events as JSON lines.

Usage: ``python run_with_events.py BIND WORKERS``; the events go to ``EVENTS_FILE``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from fournines import Event, add_listener
from fournines.asgi import GracefulShutdown
from fournines.serve import run


def record(event: Event) -> None:
    with open(os.environ["EVENTS_FILE"], "a") as file:
        file.write(json.dumps({"type": type(event).__name__, **dataclasses.asdict(event)})
                   + "\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: [supervisor] %(message)s")
    add_listener(record)
    run("tests.serve.apps.versioned:app", bind=sys.argv[1], workers=int(sys.argv[2]),
        app_dir=str(Path(__file__).resolve().parents[3]), access_log=False,
        shutdown=GracefulShutdown(drain_delay=0.2, drain_timeout=10))
