"""Chaos engineering: faults as policies, runtime fault control, a fault proxy, network faults.

- :mod:`fournines.chaos.faults`: :class:`LatencyFault`, :class:`ErrorFault`,
  :class:`CrashFault`, policies that compose in a :class:`~fournines.Pipeline`;
- :mod:`fournines.chaos.asgi`: :class:`ChaosMiddleware`, faults per request and an
  admin API to add and remove them at run time;
- :mod:`fournines.chaos.proxy`: :class:`FaultProxy`, a TCP fault proxy speaking
  Toxiproxy's HTTP API (``fournines chaos proxy``);
- :mod:`fournines.chaos.network`: network namespaces, partitions, loss and delay
  (:class:`Topology`, :func:`partition`, :func:`add_delay`, :func:`heal`);
- :mod:`fournines.chaos.ctk`: a Chaos Toolkit extension (actions and probes).
"""

from .asgi import ChaosMiddleware
from .faults import (
    CrashFault,
    ErrorFault,
    Fault,
    FaultTarget,
    InjectedFaultError,
    LatencyFault,
    current_request,
    instance_share,
)
from .network import (
    NetworkCapabilities,
    NetworkFaultError,
    Node,
    Topology,
    add_delay,
    call_in_netns,
    capabilities,
    heal,
    heal_all,
    partition,
)
from .proxy import DEFAULT_API_PORT, FaultProxy

__all__ = [
    "DEFAULT_API_PORT",
    "ChaosMiddleware",
    "CrashFault",
    "ErrorFault",
    "Fault",
    "FaultProxy",
    "FaultTarget",
    "InjectedFaultError",
    "LatencyFault",
    "NetworkCapabilities",
    "NetworkFaultError",
    "Node",
    "Topology",
    "add_delay",
    "call_in_netns",
    "capabilities",
    "current_request",
    "heal",
    "heal_all",
    "instance_share",
    "partition",
]
