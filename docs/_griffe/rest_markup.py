"""A griffe extension: render the reST markup of fournines' docstrings as Markdown.

The docstrings are written for Sphinx (``:class:`X```, ``text::`` before a literal
block, ``>>>`` examples) while mkdocs reads Markdown. The ``:param:`` fields are
parsed by mkdocstrings' ``sphinx`` docstring style; this extension translates
the rest before parsing:

- a role (``:class:`~fournines.asgi.shutdown.LifecycleMiddleware```) becomes an
  optional cross-reference: a link when the target is rendered, plain code when
  it is not (a private helper, an attribute), never a warning;
- ``text::`` loses one colon (the indented block after it already is a Markdown
  code block);
- a run of ``>>>`` lines (and their output) becomes a fenced ``pycon`` block,
  which Markdown would otherwise read as nested block quotes.

The reference shows documented members only, so an enumeration's docstring also
gains the list of its members: they are never documented one by one, and a
reader needs them.

Only the rendered text changes: the source docstrings stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):`(?P<target>[^`]+)`")


def _link(obj: griffe.Object, target: str) -> str:
    short = target.startswith("~")
    target = target.lstrip("~").removesuffix("()")
    title = target.rsplit(".", 1)[-1] if short else target
    first, _, rest = target.partition(".")
    try:
        # Relative names resolve like Python names do, in the docstring's own scope.
        base = obj.resolve(first)
    except (griffe.NameResolutionError, ValueError):
        base = first
    identifier = f"{base}.{rest}" if rest else base
    return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'


def _fence_doctests(text: str) -> str:
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if not stripped.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(stripped)]
        out.append(f"{indent}```pycon")
        # A doctest runs until the first blank line, as doctest reads it.
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        out.append(f"{indent}```")
    return "\n".join(out)


def _is_enum(cls: griffe.Object) -> bool:
    bases = getattr(cls, "bases", ())
    return any(str(base).rsplit(".", 1)[-1].endswith("Enum") for base in bases)


def translate(obj: griffe.Object, text: str) -> str:
    """The Markdown rendering of the reST docstring ``text`` of ``obj``."""
    text = _ROLE.sub(lambda m: _link(obj, m["target"]), text)
    text = re.sub(r"(?m)(\S)::$", r"\1:", text)
    text = re.sub(r"(?m)^(\s*)::$", "", text)
    return _fence_doctests(text)


class RestMarkup(griffe.Extension):
    """Translate every docstring once the object tree is complete."""

    def __init__(self) -> None:
        super().__init__()
        self._done: set[int] = set()

    def _translate(self, obj: griffe.Object) -> None:
        docstring = obj.docstring
        if docstring is not None and id(docstring) not in self._done:
            self._done.add(id(docstring))
            if obj.is_class and _is_enum(obj):
                members = ", ".join(
                    f"`{name} = {member.value}`" for name, member in obj.members.items()
                    if isinstance(member, griffe.Attribute) and not name.startswith("_")
                )
                docstring.value += f"\n\nMembers: {members}." if members else ""
            docstring.value = translate(obj, docstring.value)

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring, if it has one."""
        self._translate(obj)

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the package's own docstring (``on_object`` covers its members)."""
        self._translate(pkg)
