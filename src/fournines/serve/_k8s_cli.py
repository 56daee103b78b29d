"""``fournines k8s manifest``: registered by :mod:`fournines.cli`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

# Flag -> spec field, for the flags that hold one value each.
_VALUE_FLAGS: dict[str, tuple[str, type]] = {
    "--name": ("name", str), "--image": ("image", str), "--app": ("app", str),
    "--namespace": ("namespace", str), "--replicas": ("replicas", int),
    "--workers": ("workers", int), "--port": ("port", int),
    "--service-port": ("service_port", int), "--drain-delay": ("drain_delay", float),
    "--drain-timeout": ("drain_timeout", float), "--margin": ("margin", float),
    "--grace-period": ("grace_period", int), "--cpu": ("cpu", str), "--memory": ("memory", str),
    "--cpu-limit": ("cpu_limit", str), "--memory-limit": ("memory_limit", str),
    "--max-surge": ("max_surge", int), "--pdb-max-unavailable": ("pdb_max_unavailable", int),
}


def register(sub: Any) -> None:
    """Add the ``k8s`` subcommand (and its ``manifest`` action) to the subparsers ``sub``."""
    k8s = sub.add_parser("k8s", help="Kubernetes manifests that match fournines serve's drain",
                         description="Kubernetes manifests for a service run by fournines serve.")
    actions = k8s.add_subparsers(dest="action", required=True)
    k8s.set_defaults(command_parser=k8s)
    manifest = actions.add_parser(
        "manifest", help="write a Deployment, Service and PodDisruptionBudget",
        description="Write a Deployment (running `fournines serve` in exec form, probes on "
                    "/startupz /livez /readyz, terminationGracePeriodSeconds derived from "
                    "the drain), a Service and a PodDisruptionBudget. Flags override the "
                    "fields of --config FILE (a YAML mapping of the same names, with "
                    "underscores: drain_delay).")
    manifest.add_argument("--config", metavar="FILE", help="a YAML mapping of the spec's fields")
    manifest.add_argument("-o", "--output", metavar="FILE",
                          help="write here (atomically) instead of to stdout")
    manifest.add_argument("--no-comments", action="store_true",
                          help="leave out the comments that explain each setting")
    helps = {
        "--name": "Deployment, Service and PDB name (an RFC 1035 label)",
        "--image": "the container image (with fournines[serve] installed)",
        "--app": "MODULE:APP for fournines serve", "--namespace": "the namespace (none)",
        "--replicas": "pods (3)", "--workers": "uvicorn workers per pod (1)",
        "--port": "the container port (8000)", "--service-port": "the Service's port (80)",
        "--drain-delay": "seconds serving with readiness failing after SIGTERM (5)",
        "--drain-timeout": "seconds in-flight requests then have (20)",
        "--margin": "seconds left for lifespan shutdown and exit (5)",
        "--grace-period": "terminationGracePeriodSeconds (derived: delay + timeout + margin)",
        "--cpu": "CPU request (250m)", "--memory": "memory request (256Mi)",
        "--cpu-limit": "CPU limit (none)",
        "--memory-limit": "memory limit (512Mi; 'none' for no limit)",
        "--max-surge": "extra pods during a rollout (1)",
        "--pdb-max-unavailable": "pods a node drain may evict at once (1)",
    }
    for flag, (_, kind) in _VALUE_FLAGS.items():
        manifest.add_argument(flag, type=kind, default=None, help=helps[flag])
    manifest.add_argument("--factory", action="store_true", default=None,
                          help="MODULE:APP is a function that returns the app")
    manifest.add_argument("--env", action="append", metavar="NAME=VALUE", default=None,
                          help="a plain environment variable; repeatable")
    manifest.add_argument("--secret-env", action="append", metavar="NAME=SECRET/KEY",
                          default=None, help="a variable read from a Secret; repeatable")
    manifest.add_argument("--serve-arg", action="append", metavar="ARG", default=None,
                          help="one more fournines serve argument (--serve-arg=--max-requests "
                               "--serve-arg=10000); repeatable")
    manifest.set_defaults(run=_run, command_parser=manifest)


def _pairs(flag: str, given: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    pairs = {}
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.exit(2, f"{parser.prog}: error: {flag} must be NAME=VALUE, got {item!r}\n")
        pairs[key] = value
    return pairs


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .._errors import ConfigurationError  # noqa: PLC0415
    from . import k8s  # noqa: PLC0415

    flags: dict[str, str] = {}  # field -> the flag that set it
    values: dict[str, Any] = {}
    for flag, (name, _) in _VALUE_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            # `--memory-limit none` takes the default limit away.
            none = name in ("cpu_limit", "memory_limit") and value == "none"
            values[name], flags[name] = None if none else value, flag
    if args.factory:
        values["factory"], flags["factory"] = True, "--factory"
    for flag, name in (("--env", "env"), ("--secret-env", "secret_env")):
        given = getattr(args, name)
        if given is not None:
            values[name], flags[name] = _pairs(flag, given, parser), flag
    if args.serve_arg is not None:
        values["serve_args"], flags["serve_args"] = tuple(args.serve_arg), "--serve-arg"
    try:
        if args.config is not None:  # flags replace the file's fields (env extends it)
            spec = k8s.load_spec(args.config, values)
        else:
            for name in ("name", "image", "app"):
                if name not in values:
                    parser.exit(2, f"{parser.prog}: error: --{name} is required "
                                   "(or --config FILE)\n")
            spec = k8s.ManifestSpec(**values)
        text = k8s.manifest_yaml(spec, comments=not args.no_comments, source=args.config)
    except k8s.ManifestError as exc:
        where = (flags[exc.field] if exc.field in flags and exc.file is None
                 else f"{args.config}: {exc.field}" if args.config is not None
                 else f"--{exc.field.replace('_', '-')}")
        parser.exit(2, f"{parser.prog}: error: {where} {exc.problem}\n")
    except ConfigurationError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        k8s.write_manifest(args.output, text)
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: error: cannot write {args.output}: "
                       f"{exc.strerror or exc}\n")
    return 0
