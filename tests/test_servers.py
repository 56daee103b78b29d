"""Specification of the test-server helpers themselves."""

from __future__ import annotations

import pytest

from ._servers import require_binary


def test_missing_binary_fails_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOURNINES_ALLOW_SKIP", raising=False)
    with pytest.raises(pytest.fail.Exception, match="install the Debian package 'etcd-server'"):
        require_binary("fournines-no-such-binary", "etcd-server")


def test_missing_binary_skips_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOURNINES_ALLOW_SKIP", "1")
    with pytest.raises(pytest.skip.Exception, match="etcd-server"):
        require_binary("fournines-no-such-binary", "etcd-server")


def test_present_binary_is_found() -> None:
    assert require_binary("sh", "dash").endswith("sh")
