"""The four-nines lab: a real fleet under real faults, measured twice (unprotected, protected).

``fournines lab`` (or :func:`run_lab` with a :class:`Scenario`) starts a gateway,
an order, a payment and a profile service as uvicorn processes on loopback,
drives open-loop load through them while a fault schedule plays, and reports
whether the 99.99 % objective held for each variant.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from .scenario import Fault, PaymentModel, Scenario, default_scenario, load_scenario

# The runner imports httpx (the `lab` extra), and this package is imported by
# `fournines --help`: load it on first use.
__getattr__, __dir__ = lazy_attributes("fournines.lab", {
    "LabError": ("fournines.lab.fleet", "pip install 'fournines[lab]'"),
    "LabResult": ("fournines.lab.runner", "pip install 'fournines[lab]'"),
    "run_lab": ("fournines.lab.runner", "pip install 'fournines[lab]'"),
    "run_and_report": ("fournines.lab.main", "pip install 'fournines[lab]'"),
}, globals())

if TYPE_CHECKING:  # the real types for a user's type checker; never imported at run time
    from .fleet import LabError
    from .main import run_and_report
    from .runner import LabResult, run_lab

__all__ = [
    "Fault",
    "LabError",
    "LabResult",
    "PaymentModel",
    "Scenario",
    "default_scenario",
    "load_scenario",
    "run_and_report",
    "run_lab",
]
