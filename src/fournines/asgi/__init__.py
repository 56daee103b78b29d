"""ASGI service protection: health probes, golden metrics, deadlines, shedding, limits.

Work in progress (issue 3): the parts land one by one; ``protect()`` composes them.
"""

from ._state import Phase, ServiceState, instance_id

__all__ = ["Phase", "ServiceState", "instance_id"]
