"""Reading the files users hand to fournines (SLO specs, lab scenarios, configs), bounded.

These files come from people and from CI, so they may be hostile or broken: a file of
gigabytes, or ``[[[[...]]]]`` a thousand levels deep, which makes PyYAML's composer (it
recurses once per level) and :func:`json.loads` raise :class:`RecursionError`. Every file
is therefore checked against two limits before anything recurses over it:

- its size, read with a cap (:data:`MAX_BYTES`): a larger file is refused unread;
- its nesting (:data:`MAX_DEPTH` levels of lists and mappings): for YAML the depth is
  counted as the composer descends, and the document is refused before the composer goes
  one level deeper; for JSON a linear scan counts the brackets outside strings before
  :func:`json.loads` sees the text;
- for YAML, its size with aliases expanded (:data:`MAX_NODES`), counted as it is
  composed, so that nine aliases of nine aliases of ... cannot hang whatever walks or
  prints the data.

No real spec, scenario or config comes near either limit (they nest 5-6 levels and
weigh a few kilobytes). Errors are :class:`~fournines.ConfigurationError` whose message
is the problem alone ("nested deeper than 64 levels at line 3, column 9"): callers
prefix the file (and the flag) in their own words.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any

from ._errors import ConfigurationError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "json_document", "read_text", "yaml_documents"]

MAX_BYTES = 1024 * 1024
"""The largest input file fournines reads: 1 MiB."""

MAX_DEPTH = 64
"""The deepest nesting of lists and mappings an input file may have."""

MAX_NODES = 1_000_000
"""The most values (scalars, lists, mappings) a YAML file may hold with its aliases
expanded; without aliases a 1 MiB file holds fewer."""

# A JSON string (escapes included) or one bracket: strings are skipped whole, so a bracket
# inside one is not counted.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def read_text(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES) -> str:
    """The file's text (UTF-8), refused if larger than ``max_bytes`` (read at most that + 1)."""
    try:
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ConfigurationError(f"larger than {max_bytes} bytes, the limit for input files")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"not UTF-8 text (byte {exc.start})") from None


@functools.cache
def _loader() -> type[Any]:
    import yaml  # noqa: PLC0415 - an optional dependency (the slo and lab extras)

    class BoundedLoader(yaml.SafeLoader):
        """``SafeLoader`` whose composer refuses to descend past ``max_depth`` collections."""

        max_depth = MAX_DEPTH
        depth = 0

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            # Expanded size of each node of the current document, by id (the document
            # holds every node alive until it is composed, so ids are not reused).
            self.sizes: dict[int, int] = {}

        def compose_document(self) -> Any:
            try:
                return super().compose_document()
            finally:
                self.sizes.clear()

        def compose_node(self, parent: Any, index: Any) -> Any:
            collection = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            if collection:
                if self.depth >= self.max_depth:
                    raise ConfigurationError(
                        f"nested deeper than {self.max_depth} levels at line {mark.line + 1}, "
                        f"column {mark.column + 1} (the limit for input files)")
                self.depth += 1
            try:
                node = super().compose_node(parent, index)
            finally:
                if collection:
                    self.depth -= 1
            self._size(node, mark)
            return node

        def _size(self, node: Any, mark: Any) -> None:
            # Nodes as the program will see them, aliases expanded: an alias is cheap to
            # write and shares its node, but whatever walks or prints the data pays for
            # every copy ("billion laughs": 9 aliases of 9 aliases of ... in a few lines).
            sizes = self.sizes
            if id(node) in sizes:
                return
            if isinstance(node, yaml.SequenceNode):
                size = 1 + sum(sizes.get(id(child), 1) for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                size = 1 + sum(sizes.get(id(k), 1) + sizes.get(id(v), 1) for k, v in node.value)
            else:
                size = 1
            if size > MAX_NODES:
                raise ConfigurationError(
                    f"more than {MAX_NODES} values once its aliases are expanded, at line "
                    f"{mark.line + 1} (the limit for input files)")
            sizes[id(node)] = size

    return BoundedLoader


def yaml_documents(text: str, *, max_depth: int = MAX_DEPTH) -> list[Any]:
    """Every non-empty document of a YAML stream (safe types only), nesting bounded."""
    import yaml  # noqa: PLC0415

    loader = _loader()(text)
    loader.max_depth = max_depth
    try:
        documents = []
        while loader.check_data():
            document = loader.get_data()
            if document is not None:
                documents.append(document)
        return documents
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"not valid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()


def json_document(text: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``text``, its nesting checked before it is parsed."""
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            if depth > max_depth:
                line = text.count("\n", 0, token.start()) + 1
                raise ConfigurationError(
                    f"nested deeper than {max_depth} levels at line {line} (the limit for "
                    "input files)")
        elif bracket in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"not valid JSON: {exc}") from None
