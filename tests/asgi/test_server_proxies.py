"""serve(): forwarded headers are believed only from the proxies the user names."""

from __future__ import annotations

from typing import Any

import pytest

from fournines._errors import ConfigurationError
from fournines.asgi._types import Receive, Scope, Send, respond
from fournines.asgi.server import _trusted_proxies, serve


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await respond(send, 200, b"ok")


@pytest.fixture(autouse=True)
def _no_proxies_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)


def test_no_proxy_is_trusted_by_default() -> None:
    assert _trusted_proxies(None, None) is None


@pytest.mark.parametrize(
    ("value", "proxies"),
    [
        ("127.0.0.1", ["127.0.0.1"]),
        ("10.0.0.0/8, ::1", ["10.0.0.0/8", "::1"]),
        (["192.0.2.1", "2001:db8::/32"], ["192.0.2.1", "2001:db8::/32"]),
        ("*", ["*"]),
    ],
)
def test_named_proxies_are_trusted(value: str | list[str], proxies: list[str]) -> None:
    assert _trusted_proxies(value, None) == proxies


def test_the_environment_can_name_the_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.1.2.3")
    assert _trusted_proxies(None, None) == ["10.1.2.3"]


def test_proxy_headers_false_trusts_none_even_with_the_environment_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.1.2.3")
    assert _trusted_proxies(None, False) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"proxy_headers": True}, "proxy_headers=True names no proxy"),
        ({"proxy_headers": "yes"}, "serve.proxy_headers must be a bool"),
        ({"proxy_headers": False, "forwarded_allow_ips": "10.0.0.1"},
         "forwarded_allow_ips '10.0.0.1' has no effect with proxy_headers=False"),
        ({"forwarded_allow_ips": ""}, "forwarded_allow_ips must name at least one proxy"),
        ({"forwarded_allow_ips": "10.0.0.1,"}, "no empty entry"),
        ({"forwarded_allow_ips": "10.0.0.0/33"}, "got '10.0.0.0/33'"),
        ({"forwarded_allow_ips": "proxy.internal"}, "IP addresses, networks"),
        ({"forwarded_allow_ips": "*, 10.0.0.1"}, "cannot be combined"),
        ({"forwarded_allow_ips": 10}, "must be a str or a list of str"),
    ],
)
def test_bad_proxy_settings_are_refused_before_serving(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        serve(ok, **options)


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.300")
    with pytest.raises(ConfigurationError, match="FORWARDED_ALLOW_IPS entries"):
        serve(ok)
