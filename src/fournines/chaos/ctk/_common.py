"""What the actions and probes share: tokens, instance selection, HTTP errors."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

__all__ = ["ExtensionError", "admin_headers", "fail", "select_instances"]

DEFAULT_PREFIX = "/chaos/faults"
MODES = ("one", "all", "fixed", "fixed-percent")


class ExtensionError(Exception):
    """An activity could not do its job (Chaos Toolkit records it as failed)."""


def fail(message: str) -> Exception:
    """Chaos Toolkit's own ``ActivityFailed`` when chaoslib is there, else ours."""
    try:
        from chaoslib.exceptions import (  # type: ignore[import-untyped]  # noqa: PLC0415
            ActivityFailed,
        )
    except ImportError:  # pragma: no cover - chaostoolkit-lib not installed
        return ExtensionError(message)
    return ActivityFailed(message)  # type: ignore[no-any-return]


def admin_headers(token: str | None, secrets: Mapping[str, Any] | None) -> dict[str, str]:
    """The ``Authorization`` header from ``token`` or the secret ``chaos_token``."""
    token = token or (secrets or {}).get("chaos_token")
    if not token:
        raise fail("no admin token: pass token=... or a secret named chaos_token")
    return {"Authorization": f"Bearer {token}"}


def proxy_headers(token: str | None, secrets: Mapping[str, Any] | None) -> dict[str, str]:
    """The ``Authorization`` header for a fault proxy API, if a token is given.

    From ``token`` or the secret ``proxy_token``; none at all for Toxiproxy itself, which
    has no authentication, so an experiment written for Toxiproxy runs unchanged.
    """
    token = token or (secrets or {}).get("proxy_token")
    return {"Authorization": f"Bearer {token}"} if token else {}


def check_response(response: httpx.Response, *expected: int) -> None:
    """Raise a failure naming the request unless its status is one of ``expected``."""
    if response.status_code not in expected:
        request = response.request
        raise fail(f"{request.method} {request.url} answered {response.status_code}: "
                   f"{response.text[:300]}")


def matches(instance: Mapping[str, Any], selector: Mapping[str, str] | None) -> bool:
    """Whether ``instance["labels"]`` has every label of ``selector``."""
    labels = instance.get("labels") or {}
    return all(labels.get(key) == value for key, value in (selector or {}).items())


def select_instances(
    instances: Sequence[Mapping[str, Any]],
    selector: Mapping[str, str] | None,
    mode: str = "all",
    value: float | None = None,
    seed: int | None = None,
) -> list[Mapping[str, Any]]:
    """The instances ``selector`` matches, cut down by ``mode`` (as Chaos Mesh selects pods).

    ``one``: one at random; ``all``: every one; ``fixed``: ``value`` of them at
    random; ``fixed-percent``: ``value`` percent of them (rounded up) at random.
    """
    if isinstance(instances, str | bytes) or not all(
        isinstance(i, Mapping) and isinstance(i.get("url"), str) for i in instances
    ):
        raise fail("instances must be a list of objects with a 'url' (and 'labels')")
    if mode not in MODES:
        raise fail(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    matched = [i for i in instances if matches(i, selector)]
    if not matched:
        raise fail(f"no instance matches the selector {dict(selector or {})!r}")
    if mode == "all":
        return matched
    if mode == "one":
        count = 1
    elif mode == "fixed":
        # Chaos Mesh refuses values that select nobody: the fault would prove nothing.
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 1:
            raise fail(f"mode 'fixed' needs a value >= 1 (instances), got {value!r}")
        count = min(len(matched), int(value))
    else:
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not 0 < value <= 100):
            raise fail(f"mode 'fixed-percent' needs a value in (0, 100], got {value!r}")
        count = min(len(matched), math.ceil(len(matched) * float(value) / 100.0))
    return random.Random(seed).sample(matched, count)
