"""Turning ``on=`` style settings (types, tuples, predicates) into one fast predicate."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from .._errors import ConfigurationError

ExceptionFilter: TypeAlias = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)


def exception_predicate(
    owner: str, field: str, spec: ExceptionFilter
) -> Callable[[BaseException], bool]:
    """Build ``exc -> bool`` from an exception type, a tuple of them, or a predicate."""
    if isinstance(spec, type) and issubclass(spec, BaseException):
        kinds: tuple[type[BaseException], ...] = (spec,)
    elif isinstance(spec, tuple):
        if not spec:
            # isinstance(exc, ()) is always False: the setting would select nothing, ever.
            raise ConfigurationError(
                f"{owner}.{field} is an empty tuple, which matches no exception: name at "
                "least one exception type"
            )
        if not all(isinstance(k, type) and issubclass(k, BaseException) for k in spec):
            raise ConfigurationError(
                f"{owner}.{field} must hold exception types only, got {spec!r}"
            )
        kinds = spec
    elif callable(spec):
        return spec  # type: ignore[return-value]
    else:
        raise ConfigurationError(
            f"{owner}.{field} must be an exception type, a tuple of them or a predicate, "
            f"got {spec!r}"
        )

    def matches(exc: BaseException) -> bool:
        return isinstance(exc, kinds)

    return matches
