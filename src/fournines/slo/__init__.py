"""Service level objectives: specs, Prometheus rules, error budgets and the deploy gate.

:func:`load_spec` reads a fournines, Sloth (``prometheus/v1`` or Kubernetes
``PrometheusServiceLevel``) or OpenSLO v1 spec into :class:`SLOSpec` (:func:`load_specs`
reads Sloth's multi-document files); :func:`generate_rules` turns it into Prometheus recording
and multi-window multi-burn-rate alerting rules (``fournines slo rules``).
"""

from .budget import (
    BURN_RATE_WINDOWS,
    Budget,
    burn_rate,
    compute_budget,
    error_budget,
    parse_duration,
)
from .dashboard import build_dashboard
from .gate import (
    EXIT_FORBID,
    EXIT_NO_DATA,
    EXIT_PROCEED,
    GateDecision,
    GatePolicy,
    SLOBudget,
    decide,
    read_budget,
    read_budgets,
)
from .prometheus import (
    PrometheusClient,
    PrometheusError,
    PrometheusQueryError,
    PrometheusUnreachableError,
)
from .remediate import RemediateConfig, Remediator, WebhookServer, load_config
from .rules import (
    RECORD_ERROR_RATIO,
    RECORD_PERIOD_ERROR_RATIO,
    burn_rate_factor,
    generate_rules,
)
from .spec import (
    INFO_METRIC,
    SLO,
    SLOTH_PLUGINS,
    Alerting,
    BudgetExhaustedAlert,
    EventsSLI,
    LabelRemoval,
    LatencySLI,
    RuleIntervals,
    SLOSpec,
    SpecError,
    error_ratio_query,
    load_spec,
    load_specs,
    parse_spec,
    parse_specs,
)
from .tracker import BudgetSnapshot, BudgetTracker, TrackingMiddleware

__all__ = [
    "BURN_RATE_WINDOWS",
    "EXIT_FORBID",
    "EXIT_NO_DATA",
    "EXIT_PROCEED",
    "INFO_METRIC",
    "RECORD_ERROR_RATIO",
    "RECORD_PERIOD_ERROR_RATIO",
    "SLO",
    "SLOTH_PLUGINS",
    "Alerting",
    "Budget",
    "BudgetExhaustedAlert",
    "BudgetSnapshot",
    "BudgetTracker",
    "EventsSLI",
    "GateDecision",
    "GatePolicy",
    "LabelRemoval",
    "LatencySLI",
    "PrometheusClient",
    "PrometheusError",
    "PrometheusQueryError",
    "PrometheusUnreachableError",
    "RemediateConfig",
    "Remediator",
    "RuleIntervals",
    "SLOBudget",
    "SLOSpec",
    "SpecError",
    "TrackingMiddleware",
    "WebhookServer",
    "build_dashboard",
    "burn_rate",
    "burn_rate_factor",
    "compute_budget",
    "decide",
    "error_budget",
    "error_ratio_query",
    "generate_rules",
    "load_config",
    "load_spec",
    "load_specs",
    "parse_duration",
    "parse_spec",
    "parse_specs",
    "read_budget",
    "read_budgets",
]
