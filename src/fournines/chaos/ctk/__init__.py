"""A Chaos Toolkit extension: fournines faults, toxics and partitions as actions, plus probes.

Use it in an experiment with ``"provider": {"type": "python", "module":
"fournines.chaos.ctk.actions", "func": "inject_fault", ...}`` (or
``fournines.chaos.ctk.probes``). Actions:

- ``inject_fault`` / ``remove_fault``: through the admin API of a
  :class:`~fournines.chaos.ChaosMiddleware` (one instance, by URL);
  ``inject_fault_by_label`` / ``remove_faults_by_label``: on the instances of a
  service picked by labels (``mode`` ``one``, ``all``, ``fixed`` or
  ``fixed-percent``, as Chaos Mesh selects pods);
- ``add_toxic`` / ``remove_toxic``: through Toxiproxy's HTTP API (Toxiproxy itself
  or ``fournines chaos proxy``);
- ``partition`` / ``heal``: packet drops with :mod:`fournines.chaos.network`
  (needs root).

Probes: ``health_status``, ``service_healthy``, ``availability``,
``service_availability``, ``active_faults``, ``error_ratio`` (Prometheus or a
``/metrics`` page) and ``slo_burn_rate``.

The admin token comes from the ``token`` argument or from the activity's
secrets (``chaos_token``), so it need not be written into the experiment.
:func:`discover` is what ``chaos discover`` calls for an extension package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["discover"]


def discover(discover_system: bool = True) -> dict[str, Any]:
    """Describe this extension's actions and probes (Chaos Toolkit's discovery format)."""
    from chaoslib.discovery.discover import (  # type: ignore[import-untyped]  # noqa: PLC0415
        discover_actions,
        discover_probes,
        initialize_discovery_result,
    )

    from ... import __version__  # noqa: PLC0415

    discovery: dict[str, Any] = initialize_discovery_result(
        "fournines", __version__, "fournines")
    discovery["activities"].extend(discover_actions("fournines.chaos.ctk.actions"))
    discovery["activities"].extend(discover_probes("fournines.chaos.ctk.probes"))
    return discovery
