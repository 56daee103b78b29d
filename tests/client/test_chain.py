"""The 3-service chain: retry budgets keep a failing bottom from being hammered.

top -> middle -> bottom, three real uvicorn processes. top and middle call the
next hop through ``AsyncResilientTransport`` (3 attempts, per-host retry budget;
the breaker is set out of reach so only the budget limits calls); the bottom
answers 503 to everything, and a failing hop answers 503 in turn, so every layer
wants to retry.

The bound. A retry budget with ratio ``r`` and floor ``f = min_per_second * ttl``
lets a client make at most ``r * R + f`` retries for ``R`` logical requests within
one ``ttl`` (the test runs well inside one ttl). The middle retries its calls to
the bottom within its budget; when it gives up it answers 503 with retry
pushback (``x-no-retry``, sent by the deadline middleware every fournines
service wears), so the top does not retry at all. Retries happen at one layer
only, the one next to the failure:

    calls reaching middle  M == N
    calls reaching bottom  B <= (1 + r) * N + f

With N = 100, r = 0.1 and f = 6 that is at most 116 calls at the bottom, against
attempts ** layers = 3 * 3 = 9 times N = 900 with naive per-layer retries, which
the same chain without fournines on the server side and with budgets out of
reach shows by running it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from ..asgi._uvicorn import UvicornProcess

N = 100
RATIO = 0.1
MIN_PER_SECOND = 0.1
TTL = 60.0
FLOOR = MIN_PER_SECOND * TTL
ATTEMPTS = 3


class Chain:
    """Three services: top -> middle -> bottom (the bottom always 503)."""

    def __init__(self, ratio: float, min_per_second: float, app: str = "chain_app") -> None:
        self.app = f"tests.client.apps.downstream:{app}"
        self.bottom = UvicornProcess("tests.client.apps.downstream:app", ready_path="/seen")
        self.middle: UvicornProcess | None = None
        self.top: UvicornProcess | None = None
        self.env = {"CHAIN_RATIO": str(ratio), "CHAIN_MIN_PER_SECOND": str(min_per_second),
                    "CHAIN_TTL": str(TTL), "CHAIN_ATTEMPTS": str(ATTEMPTS)}

    def start(self) -> Chain:
        self.bottom.start()
        httpx.post(self.bottom.url + "/control", json={"mode": "fail", "status": 503})
        self.middle = UvicornProcess(self.app, ready_path="/seen",
                                     env={**self.env, "CHAIN_NEXT": self.bottom.url}).start()
        self.top = UvicornProcess(self.app, ready_path="/seen",
                                  env={**self.env, "CHAIN_NEXT": self.middle.url}).start()
        return self

    def stop(self) -> None:
        for server in (self.top, self.middle, self.bottom):
            if server is not None:
                server.stop()

    def drive(self) -> tuple[int, int, int]:
        """Send N requests at the top; return the calls seen by top, middle, bottom."""
        assert self.top is not None and self.middle is not None

        async def run() -> None:
            gate = asyncio.Semaphore(10)
            async with httpx.AsyncClient(timeout=30.0) as client:

                async def one() -> None:
                    async with gate:
                        response = await client.get(self.top.url + "/work")  # type: ignore[union-attr]
                        assert response.status_code == 503

                await asyncio.gather(*(one() for _ in range(N)))

        asyncio.run(run())
        return tuple(  # type: ignore[return-value]
            httpx.get(s.url + "/seen").json()["count"] for s in (self.top, self.middle, self.bottom)
        )


@pytest.fixture(scope="module")
def measured() -> Iterator[dict[str, tuple[int, int, int]]]:
    results: dict[str, tuple[int, int, int]] = {}
    # naive: per-layer retries without budgets, served without fournines (no pushback).
    for label, ratio, floor, app in (("budgeted", RATIO, MIN_PER_SECOND, "chain_app"),
                                     ("naive", 1000.0, 1000.0, "chain_app_plain")):
        chain = Chain(ratio, floor, app)
        try:
            results[label] = chain.start().drive()
        finally:
            chain.stop()
    yield results


def test_budgets_bound_calls_at_the_bottom(measured: dict[str, tuple[int, int, int]],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    top, middle, bottom = measured["budgeted"]
    naive_bottom = measured["naive"][2]
    bottom_bound = (1 + RATIO) * N + FLOOR
    with capsys.disabled():
        print(f"\n3-service chain, bottom failing 100 %, {N} requests at the top, "
              f"{ATTEMPTS} attempts per layer")
        print(f"{'':28}{'top':>8}{'middle':>8}{'bottom':>8}{'bottom/N':>10}")
        for label, counts in measured.items():
            print(f"{label:28}" + "".join(f"{c:>8}" for c in counts)
                  + f"{counts[2] / N:>10.2f}")
        print(f"{'formula: naive (3 x 3)':28}{N:>8}{N * ATTEMPTS:>8}{N * ATTEMPTS**2:>8}"
              f"{ATTEMPTS**2:>10.2f}")
        print(f"{'bound: (1 + r) x N + floor':28}{N:>8}{N:>8}{bottom_bound:>8.0f}")
    assert top == N
    assert middle == N  # pushback: the top never retried
    assert N <= bottom <= bottom_bound
    assert bottom * 5 < naive_bottom


def test_naive_retries_multiply(measured: dict[str, tuple[int, int, int]]) -> None:
    assert measured["naive"] == (N, N * ATTEMPTS, N * ATTEMPTS**2)
