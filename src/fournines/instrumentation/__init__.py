"""Listeners that turn fournines events into logs and Prometheus metrics.

>>> import fournines
>>> from fournines.instrumentation import LoggingListener
>>> fournines.add_listener(LoggingListener())
"""

from .logging import LoggingListener
from .prometheus import PrometheusListener

__all__ = ["LoggingListener", "PrometheusListener"]
