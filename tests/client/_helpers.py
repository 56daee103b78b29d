"""Helpers to steer and inspect the downstream app (tests/client/apps/downstream.py)."""

from __future__ import annotations

from typing import Any

import httpx


def control(url: str, **settings: Any) -> None:
    """Set the downstream's behaviour (and make it forget what it saw)."""
    httpx.post(url + "/control", json=settings).raise_for_status()


def seen(url: str) -> list[dict[str, Any]]:
    """Every request the downstream saw since the last control call."""
    requests: list[dict[str, Any]] = httpx.get(url + "/seen").json()["requests"]
    return requests
