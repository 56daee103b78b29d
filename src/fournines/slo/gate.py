"""The deploy gate: whether a change may ship, given what is left of the error budget.

:func:`read_budgets` asks Prometheus for each SLO's error ratio over its period
and over the burn-rate windows (the spec's own queries, traffic-weighted);
:func:`decide` applies a :class:`GatePolicy` to the result. Exit statuses of
``fournines slo gate``:

- ``0`` proceed: every SLO has at least ``proceed_percent`` (20 %) of its budget
  left (run the automatic end-to-end checks as usual), or sits in the caution band;
- ``1`` the budget forbids it: some SLO has less than ``block_percent`` (15 %)
  left; in production below ``approval_percent`` (5 %) a person must approve;
- ``2`` unknown: no data for some SLO (no traffic, a NaN, a missing series) or
  Prometheus cannot be reached. A gate that cannot see never says yes.

A forbidding SLO wins over one without data (1 before 2): the budget that is
known to be spent is the more useful thing to report.

Between ``block_percent`` and ``proceed_percent`` (15-20 %) is the *caution*
band: the deploy proceeds (exit 0) with a warning to ship only small, easily
reverted changes behind a canary, since a budget there is one bad day from the
freeze. The band is hysteresis: teams see the freeze coming before it hits.
``caution_blocks=True`` (``--caution block``) makes the band forbid instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._errors import ConfigurationError, check_number
from .budget import BURN_RATE_WINDOWS, Budget, compute_budget
from .spec import SLO, EventsSLI, SLOSpec, error_ratio_query, total_query

__all__ = [
    "EXIT_FORBID",
    "EXIT_NO_DATA",
    "EXIT_PROCEED",
    "GateDecision",
    "GatePolicy",
    "SLOBudget",
    "decide",
    "read_budget",
    "read_budgets",
]

EXIT_PROCEED = 0
"""The deploy may proceed."""
EXIT_FORBID = 1
"""The error budget forbids the deploy (or a person must approve it)."""
EXIT_NO_DATA = 2
"""No data, or Prometheus unreachable: the gate cannot tell, so it does not say yes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SLOBudget:
    """One SLO of a spec and its budget as read from Prometheus."""

    slo: SLO
    budget: Budget

    @property
    def sli(self) -> str:
        """A one-line description of the SLI."""
        sli = self.slo.sli
        if isinstance(sli, EventsSLI):
            return f"events: ({sli.error_query}) / ({sli.total_query})"
        selector = f"{{{sli.selector}}}" if sli.selector else ""
        return f"latency: {sli.histogram}{selector} faster than {sli.threshold:g}s"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: the SLO's name, SLI, period and every budget number."""
        sli = self.slo.sli
        sli_dict: dict[str, object] = (
            {"kind": "events", "error_query": sli.error_query, "total_query": sli.total_query}
            if isinstance(sli, EventsSLI) else
            {"kind": "latency", "histogram": sli.histogram, "threshold_seconds": sli.threshold,
             "selector": sli.selector})
        return {"name": self.slo.name, "period": self.slo.period, "sli": sli_dict,
                **self.budget.as_dict()}


Query = Callable[[str], "float | None"]


def read_budget(slo: SLO, value: Query, *,
                windows: Sequence[str] = BURN_RATE_WINDOWS) -> SLOBudget:
    """The budget of ``slo`` from ``value(expr)`` (e.g. ``PrometheusClient.value``).

    Requests over the period are the total rate times the period's length: that
    is what ``rate()`` over the period measured (it divides the increase by the
    range), also when Prometheus holds less history than the period.
    """
    ratio = value(error_ratio_query(slo, slo.period))
    total_rate = value(total_query(slo, slo.period))
    requests = None if total_rate is None else total_rate * slo.period_seconds
    ratios: dict[str, float | None] = {w: value(error_ratio_query(slo, w)) for w in windows}
    ratios[slo.period] = ratio
    budget = compute_budget(objective=slo.objective, period_seconds=slo.period_seconds,
                            error_ratio=ratio, requests=requests, window_error_ratios=ratios)
    return SLOBudget(slo=slo, budget=budget)


def read_budgets(spec: SLOSpec, value: Query, *,
                 windows: Sequence[str] = BURN_RATE_WINDOWS) -> list[SLOBudget]:
    """:func:`read_budget` for every SLO of ``spec``, in order."""
    return [read_budget(slo, value, windows=windows) for slo in spec.slos]


@dataclass(frozen=True, slots=True, kw_only=True)
class GatePolicy:
    """Thresholds on the remaining budget, in percent (the seed's defaults).

    ``approval_percent <= block_percent <= proceed_percent`` is required.
    """

    proceed_percent: float = 20.0
    block_percent: float = 15.0
    approval_percent: float = 5.0
    caution_blocks: bool = False

    def __post_init__(self) -> None:
        for name in ("proceed_percent", "block_percent", "approval_percent"):
            check_number("GatePolicy", name, getattr(self, name), minimum=0, maximum=100)
        if not self.approval_percent <= self.block_percent <= self.proceed_percent:
            raise ConfigurationError(
                "GatePolicy needs approval_percent <= block_percent <= proceed_percent, got "
                f"{self.approval_percent:g}, {self.block_percent:g}, {self.proceed_percent:g}")


@dataclass(frozen=True, slots=True, kw_only=True)
class GateDecision:
    """The verdict for one SLO: ``proceed``, ``caution``, ``block``, ``approval``, ``no-data``."""

    slo: str
    verdict: str
    exit_status: int
    remaining_percent: float | None
    message: str


def _verdict(item: SLOBudget, policy: GatePolicy, production: bool) -> GateDecision:
    name = item.slo.name
    remaining = item.budget.remaining_percent
    if remaining is None or math.isnan(remaining):
        return GateDecision(
            slo=name, verdict="no-data", exit_status=EXIT_NO_DATA, remaining_percent=None,
            message=f"{name}: NO DATA: no traffic or no series for this SLO over "
                    f"{item.slo.period}; the gate cannot tell, so it does not say yes")
    # Rounded so that float noise (19.999999999999996) does not cross a threshold.
    remaining = round(remaining, 6)
    shown = f"{remaining:.1f} % of the error budget left"
    if remaining >= policy.proceed_percent:
        return GateDecision(
            slo=name, verdict="proceed", exit_status=EXIT_PROCEED, remaining_percent=remaining,
            message=f"{name}: PROCEED: {shown}; run the automatic end-to-end checks")
    if remaining >= policy.block_percent:
        status = EXIT_FORBID if policy.caution_blocks else EXIT_PROCEED
        action = "BLOCKED (caution band blocks)" if policy.caution_blocks else "CAUTION"
        return GateDecision(
            slo=name, verdict="caution", exit_status=status, remaining_percent=remaining,
            message=f"{name}: {action}: {shown} (below {policy.proceed_percent:g} %); ship only "
                    "small, easily reverted changes behind a canary")
    if production and remaining < policy.approval_percent:
        return GateDecision(
            slo=name, verdict="approval", exit_status=EXIT_FORBID, remaining_percent=remaining,
            message=f"{name}: MANUAL APPROVAL REQUIRED: {shown} in production (below "
                    f"{policy.approval_percent:g} %); a person must approve this deploy")
    return GateDecision(
        slo=name, verdict="block", exit_status=EXIT_FORBID, remaining_percent=remaining,
        message=f"{name}: BLOCKED: {shown} (below {policy.block_percent:g} %); only "
                "reliability fixes until the budget recovers")


def decide(budgets: Sequence[SLOBudget], policy: GatePolicy | None = None, *,
           environment: str = "") -> tuple[int, list[GateDecision]]:
    """The gate's exit status and one decision per SLO.

    :param environment: ``"production"`` (or ``"prod"``) turns on the manual-approval tier.
    """
    policy = policy or GatePolicy()
    production = environment.lower() in ("production", "prod")
    decisions = [_verdict(item, policy, production) for item in budgets]
    statuses = {d.exit_status for d in decisions}
    if not decisions:
        return EXIT_NO_DATA, decisions
    if EXIT_FORBID in statuses:
        return EXIT_FORBID, decisions
    if EXIT_NO_DATA in statuses:
        return EXIT_NO_DATA, decisions
    return EXIT_PROCEED, decisions
