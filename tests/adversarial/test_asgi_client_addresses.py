"""Forged client addresses: a peer cannot pick its own rate-limit key (issue 13).

A ``protect()``-ed app keyed by IP (``TokenBucket(capacity=5)``, no refill during
the test) runs under ``serve()`` in its own process on a free loopback port; the
test is a local peer that forges every forwarding header it can.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from ..asgi._uvicorn import ServedModule

APP = "tests.asgi.apps.protected_app"
CAPACITY = 5


def _forged_address(rng: random.Random) -> str:
    return f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _forged_headers(rng: random.Random) -> dict[str, str]:
    address = _forged_address(rng)
    return {"x-forwarded-for": address, "forwarded": f"for={address}",
            "x-real-ip": address}


@pytest.fixture
def no_proxies_named() -> Iterator[ServedModule]:
    with ServedModule(APP, env={"FORWARDED_ALLOW_IPS": ""}) as server:
        yield server


@pytest.fixture(scope="module")  # its tests use distinct client addresses
def loopback_proxy_named() -> Iterator[ServedModule]:
    with ServedModule(APP, env={"PROXIES": "127.0.0.1"}) as server:
        yield server


def test_forged_forwarding_headers_share_the_peers_bucket(
    no_proxies_named: ServedModule,
) -> None:
    rng = random.Random(13)
    with httpx.Client(base_url=no_proxies_named.url) as client:
        statuses = Counter(client.get("/limited/whoami", headers=_forged_headers(rng)).status_code
                           for _ in range(50))
    assert statuses == {200: CAPACITY, 429: 50 - CAPACITY}


def test_without_named_proxies_the_app_sees_the_peer_address(
    no_proxies_named: ServedModule,
) -> None:
    response = httpx.get(no_proxies_named.url + "/limited/whoami",
                         headers={"x-forwarded-for": "203.0.113.7"})
    assert (response.status_code, response.text) == (200, "127.0.0.1")


def test_a_named_proxy_forwarded_address_is_the_client_address(
    loopback_proxy_named: ServedModule,
) -> None:
    response = httpx.get(loopback_proxy_named.url + "/limited/whoami",
                         headers={"x-forwarded-for": "203.0.113.7"})
    assert (response.status_code, response.text) == (200, "203.0.113.7")


def test_behind_a_named_proxy_each_forwarded_client_has_its_own_bucket(
    loopback_proxy_named: ServedModule,
) -> None:
    rng = random.Random(13)
    addresses = {_forged_address(rng) for _ in range(50)}
    with httpx.Client(base_url=loopback_proxy_named.url) as client:
        statuses = Counter(client.get("/limited/whoami",
                                      headers={"x-forwarded-for": address}).status_code
                           for address in addresses)
    assert statuses == {200: len(addresses)}


def test_behind_a_named_proxy_the_address_it_appended_is_used_not_the_forged_one(
    loopback_proxy_named: ServedModule,
) -> None:
    # A proxy appends its peer to what the client sent: the client forges the left part.
    response = httpx.get(loopback_proxy_named.url + "/limited/whoami",
                         headers={"x-forwarded-for": "198.51.100.1, 203.0.113.7"})
    assert response.text == "203.0.113.7"


def test_proxies_named_in_the_environment_are_trusted() -> None:
    with ServedModule(APP, env={"FORWARDED_ALLOW_IPS": "127.0.0.1"}) as server:
        response = httpx.get(server.url + "/limited/whoami",
                             headers={"x-forwarded-for": "203.0.113.7"})
    assert response.text == "203.0.113.7"
