"""A StaleCache as a route's fallback: the last good answer, served (marked) when calls fail.

Every spec runs through both transport shells.
"""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import pytest

from fournines import (
    CircuitOpenError,
    ConfigurationError,
    ConsecutiveFailures,
    FallbackUsed,
    StaleCache,
)
from fournines.client import (
    STALE_AGE_EXTENSION,
    STALE_HEADER,
    AsyncResilientTransport,
    ClientPolicy,
)
from fournines.testing import FakeClock, RecordingListener

from ..asgi._uvicorn import UvicornProcess
from ._helpers import control, seen
from ._shells import Shell

ROUTE = ("GET", "/payments/42/status")
NO_RETRY = ClientPolicy(attempts=1)


@pytest.fixture
def make_client(shell: Shell) -> Any:
    """A client of each shell in turn whose ROUTE falls back to ``cache``."""

    def make(cache: StaleCache[Any], inner: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("config", NO_RETRY)
        return shell.client(inner, fallbacks={ROUTE: cache}, **kwargs)[0]

    return make


async def test_last_good_answer_is_served_marked_stale_on_5xx(make_client: Any,
                                                              host_a: str) -> None:
    recorder = RecordingListener()
    client = make_client(StaleCache(max_age=300.0, listeners=[recorder]))
    control(host_a, body="paid")
    fresh = await client.get(host_a + ROUTE[1])
    assert fresh.text == "paid"
    assert STALE_HEADER not in fresh.headers

    control(host_a, mode="fail", status=503)
    stale = await client.get(host_a + ROUTE[1])
    assert (stale.status_code, stale.text) == (200, "paid")
    assert stale.headers[STALE_HEADER] == "stale"
    assert int(stale.headers["age"]) >= 0
    assert stale.extensions[STALE_AGE_EXTENSION] >= 0.0
    [used] = recorder.of(FallbackUsed)
    assert used.stale_age is not None
    assert isinstance(used.error, httpx.HTTPStatusError)
    assert len(seen(host_a)) == 1  # the failing call was really made


async def test_stale_answer_is_served_while_the_breaker_is_open(make_client: Any,
                                                                host_a: str) -> None:
    policy = ClientPolicy(attempts=1, trip=ConsecutiveFailures(threshold=1), reset_timeout=60,
                          initial_reset_timeout=None)
    client = make_client(StaleCache(max_age=300.0), config=policy)
    control(host_a, body="paid")
    await client.get(host_a + ROUTE[1])
    control(host_a, mode="fail", status=500)
    assert (await client.get(host_a + ROUTE[1])).text == "paid"  # opens the breaker
    for _ in range(3):
        stale = await client.get(host_a + ROUTE[1])
        assert stale.headers[STALE_HEADER] == "stale"
    assert len(seen(host_a)) == 1  # the open breaker kept the rest off the network
    with pytest.raises(CircuitOpenError):
        await client.get(host_a + "/payments/43/status")  # nothing cached for that URL


async def test_stale_answer_replaces_a_connect_error(make_client: Any) -> None:
    recorder = RecordingListener()
    client = make_client(StaleCache(max_age=300.0, listeners=[recorder]))
    downstream = UvicornProcess("tests.client.apps.downstream:app", ready_path="/seen").start()
    try:
        control(downstream.url, body="paid")
        await client.get(downstream.url + ROUTE[1])
    finally:
        downstream.stop()
    stale = await client.get(downstream.url + ROUTE[1])
    assert (stale.text, stale.headers[STALE_HEADER]) == ("paid", "stale")
    assert isinstance(recorder.of(FallbackUsed)[0].error, httpx.ConnectError)
    with pytest.raises(httpx.ConnectError):
        await client.get(downstream.url + "/payments/43/status")  # nothing cached there


async def test_answers_older_than_max_age_are_not_served(make_client: Any,
                                                         host_a: str) -> None:
    clock = FakeClock()
    client = make_client(StaleCache(max_age=300.0, clock=clock))
    control(host_a, body="paid")
    await client.get(host_a + ROUTE[1])
    control(host_a, mode="fail", status=503)
    clock.advance(301.0)
    response = await client.get(host_a + ROUTE[1])
    assert (response.status_code, response.text) == (503, "failing")
    assert STALE_HEADER not in response.headers


async def test_each_url_of_the_route_has_its_own_entry(make_client: Any, host_a: str) -> None:
    client = make_client(StaleCache(max_age=300.0))
    for order in ("1", "2"):
        control(host_a, body=f"order {order}")
        await client.get(host_a + ROUTE[1], params={"order": order})
    control(host_a, mode="fail", status=503)
    assert (await client.get(host_a + ROUTE[1], params={"order": "2"})).text == "order 2"
    assert (await client.get(host_a + ROUTE[1], params={"order": "1"})).text == "order 1"


async def test_cache_is_bounded_in_entries_and_body_size(make_client: Any, host_a: str) -> None:
    client = make_client(StaleCache(max_age=300.0, max_keys=1), max_stale_bytes=10)
    control(host_a, body="x" * 11)
    await client.get(host_a + ROUTE[1], params={"big": "1"})
    for order in ("1", "2"):
        control(host_a, body=f"order {order}")
        await client.get(host_a + ROUTE[1], params={"order": order})
    control(host_a, mode="fail", status=503)
    assert (await client.get(host_a + ROUTE[1], params={"order": "2"})).text == "order 2"
    evicted = await client.get(host_a + ROUTE[1], params={"order": "1"})
    assert evicted.status_code == 503
    too_big = await client.get(host_a + ROUTE[1], params={"big": "1"})
    assert too_big.status_code == 503


async def test_other_routes_and_failed_answers_are_not_cached(make_client: Any,
                                                              host_a: str) -> None:
    cache: StaleCache[Any] = StaleCache(max_age=300.0)
    client = make_client(cache)
    control(host_a, body="other")
    await client.get(host_a + "/payments/42")
    control(host_a, mode="fail", status=404)
    await client.get(host_a + ROUTE[1])
    assert len(cache) == 0


def test_fallbacks_must_be_functions_or_stale_caches() -> None:
    with pytest.raises(ConfigurationError, match=r"fallbacks\[\('GET', '/x'\)\]"):
        AsyncResilientTransport(fallbacks={("GET", "/x"): "cached"})  # type: ignore[dict-item]


async def test_a_cached_answer_is_never_served_to_other_credentials(make_client: Any,
                                                                    host_a: str) -> None:
    client = make_client(StaleCache(max_age=300.0))
    control(host_a, body="alice's status")
    alice = {"authorization": "Bearer alice"}
    assert (await client.get(host_a + ROUTE[1], headers=alice)).text == "alice's status"

    control(host_a, mode="fail", status=503)
    bob = await client.get(host_a + ROUTE[1], headers={"authorization": "Bearer bob"})
    assert bob.status_code == 503                # nothing cached for bob's credentials
    anonymous = await client.get(host_a + ROUTE[1])
    assert anonymous.status_code == 503          # nor for a caller without any
    again = await client.get(host_a + ROUTE[1], headers=alice)
    assert (again.status_code, again.text) == (200, "alice's status")
    assert again.headers[STALE_HEADER] == "stale"


# -- answers already read by the transport below (httpx.MockTransport, in-process ones) ------


def answering(*answers: httpx.Response) -> httpx.MockTransport:
    """An in-process transport giving ``answers`` in turn, built (so read) with their bodies."""
    queue = list(answers)
    return httpx.MockTransport(lambda request: queue.pop(0))


async def test_an_already_read_answer_is_passed_on_and_kept(make_client: Any) -> None:
    inner = answering(httpx.Response(200, content=b"paid"),
                      httpx.Response(503, content=b"down"))
    client = make_client(StaleCache(max_age=300.0), inner=inner)
    fresh = await client.get("http://payments" + ROUTE[1])
    assert (fresh.status_code, fresh.text) == (200, "paid")
    assert STALE_HEADER not in fresh.headers
    stale = await client.get("http://payments" + ROUTE[1])
    assert (stale.status_code, stale.text) == (200, "paid")
    assert stale.headers[STALE_HEADER] == "stale"


async def test_an_already_read_encoded_answer_is_kept_decoded(make_client: Any) -> None:
    # Read at construction, the body is held decoded: the kept copy must not claim gzip.
    inner = answering(httpx.Response(200, content=gzip.compress(b"paid"),
                                     headers={"content-encoding": "gzip"}),
                      httpx.Response(503, content=b"down"))
    client = make_client(StaleCache(max_age=300.0), inner=inner)
    assert (await client.get("http://payments" + ROUTE[1])).text == "paid"
    stale = await client.get("http://payments" + ROUTE[1])
    assert (stale.status_code, stale.text) == (200, "paid")
    assert "content-encoding" not in stale.headers
    assert stale.headers["content-length"] == "4"
