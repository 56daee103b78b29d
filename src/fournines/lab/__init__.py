"""The lab: fournines measuring itself. For now, a short demo of the policies."""

from .demo import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]
