"""Attributes of a package that import an optional dependency on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, table: Mapping[str, tuple[str, str]]) -> Callable[[str], object]:
    """A module ``__getattr__`` serving ``table``: name -> (module, install hint).

    ``import fournines`` stays free of optional packages; the first access to a
    name imports its module, and a missing dependency fails with the hint.
    """

    def __getattr__(name: str) -> object:
        entry = table.get(name)
        if entry is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, hint = entry
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError as exc:
            raise ImportError(f"{package}.{name} needs {hint}") from exc

    return __getattr__
