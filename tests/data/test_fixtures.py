"""The data tests' PostgreSQL fixture: an unreachable server fails loudly, or skips when allowed."""

from __future__ import annotations

import pytest

from .._servers import free_port
from . import conftest


def test_an_unreachable_postgres_fails_the_test_saying_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(conftest, "PORT", free_port())
    monkeypatch.delenv("FOURNINES_ALLOW_SKIP", raising=False)
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL is not reachable"):
        conftest._admin()


def test_an_unreachable_postgres_skips_with_allow_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "PORT", free_port())
    monkeypatch.setenv("FOURNINES_ALLOW_SKIP", "1")
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL is not reachable"):
        conftest._admin()
