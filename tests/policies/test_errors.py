"""Specification of the exception hierarchy: the drawing in ``fournines._errors`` is the
whole tree, each class under its real parent, and every FourNinesError subclass in it."""

from __future__ import annotations

import importlib
import re

import pytest

import fournines
from fournines import _errors

# Where the public error classes live: the core and each subpackage's curated names.
_PACKAGES = (
    "fournines",
    "fournines.aiohttp",
    "fournines.asgi",
    "fournines.chaos",
    "fournines.client",
    "fournines.data",
    "fournines.discovery",
    "fournines.grpc",
    "fournines.lab",
    "fournines.serve",
    "fournines.serve.k8s",
    "fournines.slo",
    "fournines.wsgi",
)


def drawn_tree() -> dict[str, str]:
    """``{class name: drawn parent name}`` read from the module docstring."""
    assert _errors.__doc__ is not None
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in _errors.__doc__.splitlines():
        match = re.match(r"^(\s*)(?:[│ ]*[├└]── )?([A-Z]\w+)\b", line)
        if match is None or not ("──" in line or line.strip() == "FourNinesError"):
            continue
        depth = len(line) - len(line.lstrip(" │├└─"))
        name = match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth, name))
    return parents


def find(name: str) -> type[BaseException]:
    for package in _PACKAGES:
        found = getattr(importlib.import_module(package), name, None)
        if isinstance(found, type) and issubclass(found, BaseException):
            return found
    raise AssertionError(f"{name} is drawn but no package exports it")


def all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *all_subclasses(sub)}
    return found


@pytest.mark.parametrize("name", list(drawn_tree()))
def test_each_drawn_class_is_under_its_drawn_parent(name: str) -> None:
    parent = drawn_tree()[name]
    assert find(parent) in find(name).__bases__


def test_every_fournines_error_is_drawn() -> None:
    for package in _PACKAGES:
        importlib.import_module(package)
    public = {cls.__name__ for cls in all_subclasses(fournines.FourNinesError)
              if not cls.__name__.startswith("_") and cls.__module__.startswith("fournines")}
    assert public - set(drawn_tree()) == set()

