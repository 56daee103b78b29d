"""Typed configuration from JSON or YAML text: parse, validate against a schema, dump back.

The schema is a dataclass (frozen, as fournines' own configs are) or, when pydantic
is installed, a pydantic model. Validation is strict, the way an operator's typo
should be caught: the types of the annotations are checked (``int`` is not ``bool``,
a ``float`` takes an ``int``, nested dataclasses, ``Optional``/``X | None``,
``list``/``tuple``/``set``/``dict``, ``Literal``, enums by value), unknown fields are
refused, and the dataclass's own ``__post_init__`` runs last. Every failure is a
:class:`ConfigValidationError` naming the key and the field path
(``rate.per_second``, ``routes[2].weight``).
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import enum
import json
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .._errors import ConfigurationError, FourNinesError

__all__ = ["ConfigUnavailableError", "ConfigValidationError", "dump", "parse", "validate"]

C = TypeVar("C")


class ConfigValidationError(ConfigurationError):
    """A configuration value was refused, with the key and the field path that say where.

    ``key`` is the etcd key, ``field`` the path inside the value (``""``: the
    whole value), ``problem`` what is wrong, ``revision`` the etcd revision the
    value came from (``None``: not from etcd). Also a ``ValueError`` (through
    :class:`~fournines.ConfigurationError`).
    """

    def __init__(self, key: str, field: str, problem: str, revision: int | None = None) -> None:
        where = f"{key}: field {field!r}: " if field else f"{key}: "
        super().__init__(where + problem)
        self.key = key
        self.field = field
        self.problem = problem
        self.revision = revision


class ConfigUnavailableError(FourNinesError, RuntimeError):
    """No configuration to start with.

    etcd could not be read (or holds no valid value) and there is neither a
    last-good snapshot nor a default.
    """


class _Invalid(Exception):
    """A problem at ``path`` (raised inside validation, turned into ConfigValidationError)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem


# -- parsing ----------------------------------------------------------------------------

def parse(text: str | bytes, key: str) -> object:
    """The data of a stored value: JSON, or else YAML (when PyYAML is installed).

    A value that starts like JSON (``{`` or ``[``) and is not valid JSON is
    reported as invalid JSON; anything else that fails is invalid YAML.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigValidationError(key, "", f"not UTF-8 text: {exc}") from None
    stripped = text.strip()
    if not stripped:
        raise ConfigValidationError(key, "", "the value is empty")
    try:
        return json.loads(stripped)
    except ValueError as exc:
        json_error = exc
    if stripped[0] in "{[":
        line = getattr(json_error, "lineno", "?")
        column = getattr(json_error, "colno", "?")
        message = getattr(json_error, "msg", str(json_error))
        raise ConfigValidationError(
            key, "", f"invalid JSON at line {line} column {column}: {message}") from None
    try:
        import yaml  # noqa: PLC0415 - optional
    except ImportError:
        raise ConfigValidationError(
            key, "", f"invalid JSON ({json_error}); YAML needs PyYAML (pip install pyyaml)"
        ) from None
    try:
        data = yaml.safe_load(stripped)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigValidationError(key, "", f"invalid YAML{where}: {problem}") from None
    if isinstance(data, str):
        # A lone YAML scalar: what a broken JSON or YAML document usually parses to.
        raise ConfigValidationError(
            key, "", f"invalid JSON or YAML: expected an object, got the text {_short(data)}")
    return data


# -- validation -------------------------------------------------------------------------

def validate(schema: type[C], data: object, key: str, revision: int | None = None) -> C:
    """``data`` (parsed JSON/YAML) checked against ``schema`` and built into one.

    :raises ConfigValidationError: naming ``key`` and the field path.
    """
    try:
        return typing.cast(C, _convert(data, schema, ""))
    except _Invalid as exc:
        raise ConfigValidationError(key, exc.path, exc.problem, revision) from None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _got(value: object) -> str:
    if value is None:
        return "null"
    return f"{type(value).__name__} {_short(value)}"


def _name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint) or _is_pydantic(hint):
            return f"an object ({hint.__name__})"
        return hint.__name__
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_name(a) for a in typing.get_args(hint))
    if origin is not None:
        return getattr(origin, "__name__", str(hint))
    return str(hint)


def _is_pydantic(cls: type) -> bool:
    return any(base.__module__.startswith("pydantic") and base.__name__ == "BaseModel"
               for base in cls.__mro__)


_FIELD_IN_MESSAGE = re.compile(r"^(?P<owner>\w+)\.(?P<field>\w+)\b")


def _convert(value: object, hint: Any, path: str) -> object:
    if hint is Any or hint is object:
        return value
    if hint is type(None) or hint is None:
        if value is None:
            return None
        raise _Invalid(path, f"expected null, got {_got(value)}")
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _convert(value, typing.get_args(hint)[0], path)
    if origin is typing.Union or origin is types.UnionType:
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        real = [o for o in options if o is not type(None)]
        if len(real) == 1:
            return _convert(value, real[0], path)
        for option in real:
            try:
                return _convert(value, option, path)
            except _Invalid:
                continue
        raise _Invalid(path, f"expected {_name(hint)}, got {_got(value)}")
    if origin is typing.Literal:
        for allowed in typing.get_args(hint):
            if value == allowed and type(value) is type(allowed):
                return allowed
        raise _Invalid(path, f"expected {_name(hint)}, got {_got(value)}")
    if origin in _SEQUENCES:
        return _sequence(value, hint, origin, path)
    if origin in _MAPPINGS:
        return _mapping(value, hint, path)
    if not isinstance(hint, type):
        raise _Invalid(path, f"the schema's type {hint!r} is not supported")
    if dataclasses.is_dataclass(hint):
        return _dataclass(value, hint, path)
    if _is_pydantic(hint):
        return _pydantic(value, hint, path)
    if issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in hint)
            raise _Invalid(path, f"expected one of {allowed}, got {_got(value)}") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint in _BARE:
        return _convert(value, _BARE[hint], path)
    elif isinstance(value, hint):
        return value
    raise _Invalid(path, f"expected {_name(hint)}, got {_got(value)}")


_SEQUENCES = (list, tuple, set, frozenset, cabc.Sequence, cabc.MutableSequence, cabc.Set,
              cabc.MutableSet)
_MAPPINGS = (dict, cabc.Mapping, cabc.MutableMapping)
_BARE: dict[Any, Any] = {list: list[Any], tuple: tuple[Any, ...], set: set[Any],
                         frozenset: frozenset[Any], dict: dict[Any, Any]}


def _sequence(value: object, hint: Any, origin: Any, path: str) -> object:
    if not isinstance(value, list):
        raise _Invalid(path, f"expected a list, got {_got(value)}")
    args = typing.get_args(hint)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise _Invalid(path, f"expected a list of {len(args)} items, got {len(value)}")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in pairs)
    item = args[0] if args else Any
    items = [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (list, cabc.MutableSequence):
        return items
    if origin in (tuple, cabc.Sequence):
        return tuple(items)  # immutable, like the frozen config holding it
    try:
        return set(items) if origin in (set, cabc.MutableSet) else frozenset(items)
    except TypeError:
        raise _Invalid(path, "expected a list of hashable items") from None


def _mapping(value: object, hint: Any, path: str) -> object:
    if not isinstance(value, dict):
        raise _Invalid(path, f"expected an object, got {_got(value)}")
    args = typing.get_args(hint)
    key_hint, value_hint = args if len(args) == 2 else (Any, Any)
    result = {}
    for raw, v in value.items():
        where = _join(path, str(raw))
        k: object = raw
        if key_hint is int and isinstance(raw, str):
            try:
                k = int(raw)  # JSON object keys are always text
            except ValueError:
                raise _Invalid(where, f"expected an int key, got {_got(raw)}") from None
        result[_convert(k, key_hint, where)] = _convert(v, value_hint, where)
    return result


def _dataclass(value: object, cls: type, path: str) -> object:
    if not isinstance(value, dict):
        raise _Invalid(path, f"expected an object ({cls.__name__}), got {_got(value)}")
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception as exc:  # a schema whose annotations cannot be resolved
        raise _Invalid(path, f"the schema {cls.__name__} cannot be read: {exc}") from None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in value if k not in fields]
    if unknown:
        name = str(unknown[0])
        known = ", ".join(sorted(fields)) or "none"
        raise _Invalid(_join(path, name), f"unknown field (known: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Invalid(_join(path, name), "missing (the field has no default)")
            continue
        kwargs[name] = _convert(value[name], hints.get(name, Any), _join(path, name))
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        # The dataclass's own checks: fournines' messages start "Owner.field must ...",
        # which names the field inside this object.
        message = str(exc)
        match = _FIELD_IN_MESSAGE.match(message)
        if match and match["owner"] == cls.__name__ and match["field"] in fields:
            raise _Invalid(_join(path, match["field"]),
                           message[match.end():].strip() or message) from None
        raise _Invalid(path, message) from None


def _pydantic(value: object, cls: type, path: str) -> object:
    import pydantic  # noqa: PLC0415 - only reached with a pydantic schema

    try:
        return cls.model_validate(value, strict=False)  # type: ignore[attr-defined]
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = path
        for part in first.get("loc", ()):
            where = f"{where}[{part}]" if isinstance(part, int) else _join(where, str(part))
        raise _Invalid(where, f"{first.get('msg', 'invalid')}, got "
                              f"{_got(first.get('input'))}") from None


# -- dumping ----------------------------------------------------------------------------

def dump(value: object) -> object:
    """Plain JSON data of a config object (dataclasses, pydantic models, enums, tuples)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump") and _is_pydantic(type(value)):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return dump(value.value)
    if isinstance(value, Mapping):
        return {str(dump(k)): dump(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [dump(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    return value


def to_text(value: object) -> str:
    """The JSON text stored for a config object (or plain data)."""
    return json.dumps(dump(value), indent=1, ensure_ascii=False, sort_keys=False)
