"""Subcommands of ``fournines slo`` that live with the rules modules: ``rules`` and ``check``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["register"]


def register(commands: Any, *rest: Any) -> None:
    """Add ``slo rules`` and ``slo check`` to the ``slo`` subparsers ``commands``."""
    rules = commands.add_parser(
        "rules", help="generate Prometheus recording and alerting rules from an SLO spec",
        description="Generate Prometheus rules (error ratios, meta series, multi-window "
                    "multi-burn-rate alerts) from a fournines, Sloth (prometheus/v1 or "
                    "PrometheusServiceLevel, one or several documents) or OpenSLO v1 spec.")
    rules.add_argument("spec", metavar="SPEC", help="the SLO spec file (YAML)")
    rules.add_argument("-o", "--output", metavar="FILE",
                       help="write the rules here (atomically) instead of to stdout")
    rules.add_argument("--tests", metavar="FILE",
                       help="also write a `promtool test rules` suite for them (needs -o)")
    rules.set_defaults(run=_rules, command_parser=rules)
    check = commands.add_parser(
        "check", help="validate an SLO spec and print its objectives, budgets and burn rates")
    check.add_argument("spec", metavar="SPEC", help="the SLO spec file (YAML)")
    check.set_defaults(run=_check, command_parser=check)


def _rules(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ._promtool import generate_tests  # noqa: PLC0415 - keep `fournines --help` fast
    from .rules import generate_rules, write_atomic  # noqa: PLC0415
    from .spec import SpecError, load_specs  # noqa: PLC0415

    if args.tests and not args.output:
        parser.error("--tests needs -o/--output: the suite names the rules file it tests")
    try:
        specs = load_specs(args.spec)
    except SpecError as exc:
        print(f"fournines slo rules: {exc}", file=sys.stderr)
        return 2
    text = generate_rules(specs)
    if not args.output:
        sys.stdout.write(text)
        return 0
    suite = None
    if args.tests:
        relative = os.path.relpath(os.path.abspath(args.output),
                                   os.path.dirname(os.path.abspath(args.tests)))
        suite, skipped = generate_tests(specs, relative)
        for name in skipped:
            print(f"fournines slo rules: no test scenarios for SLO {name!r}: its SLI queries "
                  "are not of the form sum(rate(SELECTOR[{{.window}}])), or its rules have "
                  "evaluation intervals of their own", file=sys.stderr)
    try:
        write_atomic(args.output, text)
        if suite is not None:
            write_atomic(args.tests, suite)
    except OSError as exc:
        print(f"fournines slo rules: cannot write: {exc}", file=sys.stderr)
        return 2
    return 0


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .spec import SpecError, load_specs  # noqa: PLC0415

    try:
        specs = load_specs(args.spec)
    except SpecError as exc:
        print(f"fournines slo check: {exc}", file=sys.stderr)
        return 2
    for spec in specs:
        _print_check(spec)
    return 0


def _print_check(spec: Any) -> None:
    from .rules import burn_rate_windows, exact  # noqa: PLC0415

    print(f"{spec.source}: service {spec.service}, {len(spec.slos)} SLO(s)")
    for slo in spec.slos:
        budget = slo.error_budget_ratio
        minutes = budget * slo.period_seconds / 60
        tiers = ", ".join(f"{w.severity} {exact(f)}x ({w.long}/{w.short})"
                          for w, f in burn_rate_windows(slo)) or "no burn-rate alerts"
        print(f"  {slo.name}: {exact(slo.objective_ratio * 100)} % over {slo.period}; "
              f"error budget {exact(budget * 100)} % = {minutes.normalize():f} minutes; {tiers}")
