"""Route patterns for ``per_route`` and ``fallbacks``: exact paths, templates, prefixes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fournines import ConfigurationError, FallbackUsed, StaleCache
from fournines.client import STALE_HEADER, AsyncResilientTransport, ClientPolicy, ResilientTransport
from fournines.policies.backoff import Backoff
from fournines.testing import RecordingListener

from ._helpers import control, seen
from ._shells import Shell

EXACT = ClientPolicy(attempts=1)
TEMPLATE = ClientPolicy(attempts=2)
PREFIX = ClientPolicy(attempts=4)
_FAST = Backoff(initial=0.001, cap=0.005)


def routed() -> AsyncResilientTransport:
    return AsyncResilientTransport(per_route={
        ("GET", "/payments/{id}/status"): TEMPLATE,
        ("GET", "/payments/refunds/status"): EXACT,
        ("GET", "/payments/*"): PREFIX,
    })


def config_for(transport: AsyncResilientTransport, path: str, method: str = "GET") -> Any:
    return transport.policies_for("http://pay.example" + path, method).config


def test_a_template_matches_every_value_of_its_segment() -> None:
    transport = routed()
    assert config_for(transport, "/payments/42/status") is TEMPLATE
    assert config_for(transport, "/payments/order-7/status") is TEMPLATE


def test_one_template_is_one_set_of_policies_for_all_its_paths() -> None:
    transport = routed()
    one = transport.policies_for("http://pay.example/payments/1/status")
    assert transport.policies_for("http://pay.example/payments/2/status") is one
    assert one.name == "GET http://pay.example:80/payments/{id}/status"


def test_exact_beats_template_beats_prefix() -> None:
    transport = routed()
    assert config_for(transport, "/payments/refunds/status") is EXACT
    assert config_for(transport, "/payments/42/status") is TEMPLATE
    assert config_for(transport, "/payments/42/receipt") is PREFIX


def test_a_template_segment_needs_exactly_one_non_empty_segment() -> None:
    transport = routed()
    assert config_for(transport, "/payments//status") is PREFIX
    assert config_for(transport, "/payments/1/2/status") is PREFIX
    assert config_for(transport, "/payment/1/status").attempts == 3  # the default


def test_a_prefix_matches_what_starts_with_it_and_the_method_must_match() -> None:
    transport = AsyncResilientTransport(per_route={("GET", "/static/*"): PREFIX})
    assert config_for(transport, "/static/") is PREFIX
    assert config_for(transport, "/static/css/site.css") is PREFIX
    assert config_for(transport, "/static").attempts == 3
    assert config_for(transport, "/static/x", "POST").attempts == 3


def test_the_longest_prefix_and_the_most_literal_template_win() -> None:
    specific = ClientPolicy(attempts=5)
    transport = AsyncResilientTransport(per_route={
        ("GET", "/a/*"): PREFIX, ("GET", "/a/b/*"): specific,
        ("GET", "/{x}/{y}"): TEMPLATE, ("GET", "/a/{y}"): EXACT,
    })
    assert config_for(transport, "/a/b/c") is specific
    assert config_for(transport, "/a/c/d") is PREFIX
    assert config_for(transport, "/a/z") is EXACT
    assert config_for(transport, "/q/z") is TEMPLATE


@pytest.mark.parametrize("cls", [AsyncResilientTransport, ResilientTransport])
@pytest.mark.parametrize("field", ["per_route", "fallbacks"])
@pytest.mark.parametrize("path", ["pay", "payments/{id}/status", "static/*", ""])
def test_a_pattern_without_a_leading_slash_names_the_field(cls: Any, field: str,
                                                           path: str) -> None:
    value: Any = ClientPolicy() if field == "per_route" else StaleCache(max_age=1.0)
    with pytest.raises(ConfigurationError, match=rf"{cls.__name__}\.{field} key .*'/'"):
        cls(**{field: {("GET", path): value}})


@pytest.mark.parametrize("path", ["/pay/{id", "/pay/x{id}", "/pay/{}/status"])
def test_a_brace_that_is_not_a_whole_segment_is_refused(path: str) -> None:
    with pytest.raises(ConfigurationError, match=r"per_route key .*whole path segment"):
        AsyncResilientTransport(per_route={("GET", path): ClientPolicy()})


@pytest.mark.parametrize("path", ["/a/*/b", "/*/status", "/a*b"])
def test_a_star_that_does_not_end_the_pattern_is_refused(path: str) -> None:
    with pytest.raises(ConfigurationError, match=r"per_route key .*'\*' may only end"):
        AsyncResilientTransport(per_route={("GET", path): ClientPolicy()})


async def test_a_template_fallback_serves_each_order_its_own_stale_answer(
        shell: Shell, host_a: str) -> None:
    recorder = RecordingListener()
    client, _ = shell.client(config=ClientPolicy(attempts=1), listeners=[recorder],
                             fallbacks={("GET", "/payments/{id}/status"):
                                        StaleCache(max_age=300.0)})
    for order in ("1", "2"):
        control(host_a, body=f"order {order} paid")
        await client.get(host_a + f"/payments/{order}/status")
    control(host_a, mode="fail", status=503)
    for order in ("2", "1"):
        stale = await client.get(host_a + f"/payments/{order}/status")
        assert (stale.text, stale.headers[STALE_HEADER]) == (f"order {order} paid", "stale")
    assert (await client.get(host_a + "/payments/3/status")).status_code == 503


async def test_a_prefix_fallback_answers_for_every_path_under_it(shell: Shell,
                                                                 host_a: str) -> None:
    recorder = RecordingListener()

    def degraded(request: httpx.Request, exc: BaseException) -> httpx.Response:
        return httpx.Response(200, text=f"placeholder for {request.url.path}")

    client, _ = shell.client(config=ClientPolicy(attempts=1), listeners=[recorder],
                             fallbacks={("GET", "/avatars/*"): degraded})
    control(host_a, mode="fail", status=503)
    assert (await client.get(host_a + "/avatars/7.png")).text == "placeholder for /avatars/7.png"
    assert (await client.get(host_a + "/other")).status_code == 503
    # Named by the pattern: the event names stay few however many paths there are.
    assert [e.name for e in recorder.of(FallbackUsed)] == ["GET /avatars/*"]


async def test_a_template_route_retries_by_its_own_policy(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(attempts=1), per_route={
        ("GET", "/payments/{id}/status"): ClientPolicy(attempts=3, backoff=_FAST)})
    control(host_a, mode="fail", status=503)
    await client.get(host_a + "/payments/9/status")
    await client.get(host_a + "/orders/9")
    assert [(r["path"], r["attempt"]) for r in seen(host_a)] == [
        ("/payments/9/status", "1"), ("/payments/9/status", "2"),
        ("/payments/9/status", "3"), ("/orders/9", "1")]
