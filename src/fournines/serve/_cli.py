"""``fournines serve``: registered by :mod:`fournines.cli`."""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(sub: Any) -> None:
    """Add the ``serve`` subcommand to the top-level subparsers ``sub``."""
    serve = sub.add_parser(
        "serve", help="serve an ASGI app with N uvicorn workers and zero-downtime reloads",
        description="Bind the sockets once and run uvicorn workers on them. SIGHUP: rolling "
                    "reload, new workers first (a broken new version is refused and the old "
                    "workers keep serving). SIGTERM/SIGINT: drain every worker and exit 0.")
    serve.add_argument("app", metavar="MODULE:APP", nargs="?", default=None,
                       help="the ASGI app, e.g. myservice.main:app")
    serve.add_argument("--control", metavar="PATH",
                       default=os.environ.get("FOURNINES_SERVE_CONTROL") or None,
                       help="the supervisor's control socket (mode 0600; default "
                            "$FOURNINES_SERVE_CONTROL): served with MODULE:APP, used by "
                            "--reload and --status")
    client = serve.add_mutually_exclusive_group()
    client.add_argument("--reload", action="store_true",
                        help="reload the running supervisor on --control and wait: exit 0 "
                             "when every worker runs the new code, 1 when it was aborted")
    client.add_argument("--status", action="store_true",
                        help="print the running supervisor's state (JSON) from --control")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (1)")
    serve.add_argument("--bind", action="append", metavar="ADDRESS", default=None,
                       help="HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N; repeatable "
                            "(default: systemd's sockets, else 127.0.0.1:8000)")
    serve.add_argument("--factory", action="store_true",
                       help="MODULE:APP is a function that returns the app")
    serve.add_argument("--app-dir", default=".", help="put first on the workers' sys.path (.)")
    serve.add_argument("--drain-delay", type=float, default=5.0,
                       help="seconds a stopping worker keeps serving with readiness failing (5)")
    serve.add_argument("--drain-timeout", type=float, default=20.0,
                       help="seconds in-flight requests then have to finish (20)")
    serve.add_argument("--grace-period", type=float, default=30.0,
                       help="the platform's termination grace period; drain delay + timeout "
                            "must be shorter (30)")
    serve.add_argument("--startup-timeout", type=float, default=30.0,
                       help="seconds a new worker has to become ready (30)")
    serve.add_argument("--heartbeat-timeout", type=float, default=10.0,
                       help="seconds without a heartbeat before a worker is replaced (10)")
    serve.add_argument("--max-requests", type=int, default=None,
                       help="replace a worker (new first) after this many requests")
    serve.add_argument("--max-requests-jitter", type=int, default=0,
                       help="add up to this many to --max-requests, per worker (0)")
    serve.add_argument("--reload-batch", type=int, default=1, metavar="N",
                       help="workers replaced at a time on a reload or recycle, each new "
                            "one first (1)")
    serve.add_argument("--max-rss", type=float, default=None, metavar="MIB",
                       help="replace a worker (new first) whose resident memory exceeds "
                            "this many MiB")
    serve.add_argument("--fork", action="store_true",
                       help="fork workers from the supervisor (fournines and uvicorn "
                            "imported once: faster replacements; upgrading those two is then "
                            "a SIGUSR2, the app is still re-imported on SIGHUP)")
    serve.add_argument("--metrics-bind", default=None, metavar="HOST:PORT",
                       help="serve the supervisor's own /metrics, /livez and /readyz here "
                            "(off by default)")
    serve.add_argument("--log-level", default="info", help="uvicorn's log level (info)")
    serve.add_argument("--no-access-log", action="store_true", help="no uvicorn access log")
    serve.set_defaults(run=_run, command_parser=serve)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import logging  # noqa: PLC0415 - keep `fournines --help` fast
    import sys  # noqa: PLC0415

    from .._errors import ConfigurationError  # noqa: PLC0415

    if args.reload or args.status:
        return _client(args, parser)
    if args.app is None:
        parser.error("MODULE:APP is required (or --reload / --status)")
    try:
        from ..asgi import GracefulShutdown  # noqa: PLC0415
        from .supervisor import ServeError, run  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the installation
        parser.exit(2, f"fournines serve: error: {exc}; install 'fournines[serve]'\n")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:     [supervisor] %(message)s"))
    log = logging.getLogger("fournines.serve")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    options: dict[str, Any] = {}
    if args.no_access_log:
        options["access_log"] = False
    try:
        shutdown = GracefulShutdown(drain_delay=args.drain_delay,
                                    drain_timeout=args.drain_timeout,
                                    grace_period=args.grace_period)
        run(args.app, workers=args.workers, bind=args.bind, factory=args.factory,
            app_dir=args.app_dir, shutdown=shutdown, startup_timeout=args.startup_timeout,
            heartbeat_timeout=args.heartbeat_timeout, max_requests=args.max_requests,
            max_requests_jitter=args.max_requests_jitter, reload_batch=args.reload_batch,
            max_rss=args.max_rss, fork=args.fork, metrics_bind=args.metrics_bind,
            log_level=args.log_level,
            control=args.control, **options)
    except ConfigurationError as exc:
        parser.exit(2, f"fournines serve: error: {exc}\n")
    except ServeError as exc:
        parser.exit(1, f"fournines serve: error: {exc}\n")
    finally:
        log.removeHandler(handler)
    return 0


def _client(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json  # noqa: PLC0415

    from . import control  # noqa: PLC0415

    if args.app is not None:
        parser.error("--reload and --status talk to a running supervisor: no MODULE:APP")
    if args.control is None:
        parser.error("--reload and --status need --control PATH (or FOURNINES_SERVE_CONTROL)")
    try:
        if args.status:
            print(json.dumps(control.status(args.control), indent=2))
            return 0
        answer = control.reload(args.control)
    except control.ControlError as exc:
        parser.exit(1, f"fournines serve: error: {exc}\n")
    if answer.get("ok"):
        print(answer.get("message", "reloaded"))
        return 0
    parser.exit(1, f"fournines serve: error: {answer.get('message', 'reload failed')}\n")
