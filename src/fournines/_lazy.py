"""Attributes of a package that import an optional dependency on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, table: Mapping[str, tuple[str, str]], namespace: Mapping[str, Any]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` serving ``table``: name -> (module, hint).

    ``import fournines`` stays free of optional packages; the first access to a
    name imports its module, and a missing dependency fails with the hint.
    ``__dir__`` lists the lazy names with the module's own (``namespace``, its
    ``globals()``), so completion and ``dir()`` see them before first use. Type
    checkers do not run ``__getattr__``: each package also imports the same names
    under ``if TYPE_CHECKING:``, which gives them their real types.
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

    def __dir__() -> list[str]:
        return sorted({*namespace, *table})

    return __getattr__, __dir__
