"""The four-nines lab: a real fleet under real faults, measured twice (unprotected, protected).

``fournines lab`` (or :func:`run_lab` with a :class:`Scenario`) starts a gateway,
an order, a payment and a profile service as uvicorn processes on loopback,
drives open-loop load through them while a fault schedule plays, and reports
whether the 99.99 % objective held for each variant: with exact 95 %
confidence intervals, and "held" only when the one-sided lower bound proves it
(:mod:`fournines.lab.confidence`, pure arithmetic, usable alone).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from .confidence import (
    Difference,
    Interval,
    Verdict,
    clopper_pearson,
    clopper_pearson_lower,
    clopper_pearson_upper,
    judge,
    newcombe_difference,
    sample_size_to_prove,
    wilson,
)
from .scenario import (
    Fault,
    LoopSettings,
    PaymentModel,
    Scenario,
    default_scenario,
    load_scenario,
)

# The runner imports httpx (the `lab` extra), and this package is imported by
# `fournines --help`: load it on first use.
__getattr__, __dir__ = lazy_attributes("fournines.lab", {
    "LabError": ("fournines.lab.fleet", "pip install 'fournines[lab]'"),
    "LabResult": ("fournines.lab.runner", "pip install 'fournines[lab]'"),
    "run_lab": ("fournines.lab.runner", "pip install 'fournines[lab]'"),
    "run_and_report": ("fournines.lab.main", "pip install 'fournines[lab]'"),
    "LoopResult": ("fournines.lab.loop", "pip install 'fournines[lab]'"),
    "run_closed_loop": ("fournines.lab.loop", "pip install 'fournines[lab]'"),
}, globals())

if TYPE_CHECKING:  # the real types for a user's type checker; never imported at run time
    from .fleet import LabError
    from .loop import LoopResult, run_closed_loop
    from .main import run_and_report
    from .runner import LabResult, run_lab

__all__ = [
    "Difference",
    "Fault",
    "Interval",
    "LabError",
    "LabResult",
    "LoopResult",
    "LoopSettings",
    "PaymentModel",
    "Scenario",
    "Verdict",
    "clopper_pearson",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "default_scenario",
    "judge",
    "load_scenario",
    "newcombe_difference",
    "run_and_report",
    "run_closed_loop",
    "run_lab",
    "sample_size_to_prove",
    "wilson",
]
