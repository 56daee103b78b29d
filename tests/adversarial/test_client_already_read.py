"""Reproduction (issue 13): a stale-cache route behind a transport whose answers are
already read (``httpx.MockTransport``, in-process test transports).

On the issue's main every 200 raised ``httpx.StreamConsumed`` with a ``StaleCache``
fallback, while the same call without the fallback worked: the transport re-read a
body its transport below had already read when it built the answer. Both shells, and
the same route against a real uvicorn server for comparison.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fournines import StaleCache
from fournines.client import STALE_HEADER, AsyncResilientTransport, ClientPolicy, ResilientTransport

from ..asgi._uvicorn import UvicornProcess
from ..client._helpers import control

PATH = "/payments/42/status"
ROUTE = ("GET", "/payments/{id}/status")


@pytest.fixture(scope="module")
def downstream() -> Iterator[str]:
    server = UvicornProcess("tests.client.apps.downstream:app", ready_path="/seen").start()
    try:
        yield server.url
    finally:
        server.stop()


def already_read(statuses: list[int]) -> httpx.MockTransport:
    """Answers ``statuses`` in turn, each built with its body (so read at once)."""
    queue = list(statuses)
    return httpx.MockTransport(
        lambda request: httpx.Response(queue.pop(0), content=b"paid", request=request))


async def get_twice(shell: str, inner: Any, url: str,
                    between: Any = None) -> tuple[httpx.Response, httpx.Response]:
    kwargs: dict[str, Any] = {"config": ClientPolicy(attempts=1),
                              "fallbacks": {ROUTE: StaleCache(max_age=300.0)}}
    if shell == "async":
        async with httpx.AsyncClient(transport=AsyncResilientTransport(inner, **kwargs)) as c:
            first = await c.get(url)
            if between is not None:
                between()
            return first, await c.get(url)
    with httpx.Client(transport=ResilientTransport(inner, **kwargs)) as client:
        first = client.get(url)
        if between is not None:
            between()
        return first, client.get(url)


@pytest.mark.parametrize("shell", ["async", "sync"])
async def test_a_mock_transport_answer_is_passed_on_and_kept(shell: str) -> None:
    fresh, stale = await get_twice(shell, already_read([200, 503]), "http://payments" + PATH)
    assert (fresh.status_code, fresh.text) == (200, "paid")
    assert (stale.status_code, stale.text, stale.headers[STALE_HEADER]) == (200, "paid", "stale")


@pytest.mark.parametrize("shell", ["async", "sync"])
async def test_a_real_server_answer_is_passed_on_and_kept(shell: str, downstream: str) -> None:
    control(downstream, body="paid")
    fresh, stale = await get_twice(shell, None, downstream + PATH,
                                   between=lambda: control(downstream, mode="fail", status=503))
    assert (fresh.status_code, fresh.text) == (200, "paid")
    assert (stale.status_code, stale.text, stale.headers[STALE_HEADER]) == (200, "paid", "stale")
