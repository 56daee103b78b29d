"""The 3-service chain: retry budgets keep a failing bottom from being hammered.

top -> middle -> bottom, three real uvicorn processes. top and middle call the
next hop through ``AsyncResilientTransport`` (3 attempts, per-host retry budget;
the breaker is set out of reach so only the budget limits calls); the bottom
answers 503 to everything, and a failing hop answers 503 in turn, so every layer
wants to retry.

The bound, reasoned per hop. A retry budget with ratio ``r`` and floor
``f = min_per_second * ttl`` lets a client make at most ``r * R + f`` retries for
``R`` logical requests within one ``ttl`` (the test runs well inside one ttl, so
one window covers it). A hop that receives ``R`` requests therefore sends at most
``(1 + r) * R + f`` calls to the next one:

    calls reaching middle  M <= (1 + r) * N + f
    calls reaching bottom  B <= (1 + r) * M + f <= (1 + r)**2 * N + (1 + r) * f + f

With N = 100, r = 0.1 and f = 6 that is at most 116 calls at the middle and
133 at the bottom, against attempts ** layers = 3 * 3 = 9 times N = 900 with
naive per-layer retries, which the same chain with budgets disabled (ratio and
floor out of reach) shows by running it.
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

    def __init__(self, ratio: float, min_per_second: float) -> None:
        self.bottom = UvicornProcess("tests.client.apps.downstream:app", ready_path="/seen")
        self.middle: UvicornProcess | None = None
        self.top: UvicornProcess | None = None
        self.env = {"CHAIN_RATIO": str(ratio), "CHAIN_MIN_PER_SECOND": str(min_per_second),
                    "CHAIN_TTL": str(TTL), "CHAIN_ATTEMPTS": str(ATTEMPTS)}

    def start(self) -> Chain:
        self.bottom.start()
        httpx.post(self.bottom.url + "/control", json={"mode": "fail", "status": 503})
        self.middle = UvicornProcess("tests.client.apps.downstream:chain_app",
                                     ready_path="/seen",
                                     env={**self.env, "CHAIN_NEXT": self.bottom.url}).start()
        self.top = UvicornProcess("tests.client.apps.downstream:chain_app", ready_path="/seen",
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
    for label, ratio, floor in (("budgeted", RATIO, MIN_PER_SECOND), ("naive", 1000.0, 1000.0)):
        chain = Chain(ratio, floor)
        try:
            results[label] = chain.start().drive()
        finally:
            chain.stop()
    yield results


def test_budgets_bound_calls_at_the_bottom(measured: dict[str, tuple[int, int, int]],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    top, middle, bottom = measured["budgeted"]
    naive_bottom = measured["naive"][2]
    middle_bound = (1 + RATIO) * N + FLOOR
    bottom_bound = (1 + RATIO) * middle + FLOOR
    with capsys.disabled():
        print(f"\n3-service chain, bottom failing 100 %, {N} requests at the top, "
              f"{ATTEMPTS} attempts per layer")
        print(f"{'':28}{'top':>8}{'middle':>8}{'bottom':>8}{'bottom/N':>10}")
        for label, counts in measured.items():
            print(f"{label:28}" + "".join(f"{c:>8}" for c in counts)
                  + f"{counts[2] / N:>10.2f}")
        print(f"{'formula: naive (3 x 3)':28}{N:>8}{N * ATTEMPTS:>8}{N * ATTEMPTS**2:>8}"
              f"{ATTEMPTS**2:>10.2f}")
        print(f"{'bound: budget per hop':28}{N:>8}{middle_bound:>8.0f}"
              f"{(1 + RATIO) * middle_bound + FLOOR:>8.0f}")
    assert top == N
    assert N <= middle <= middle_bound
    assert middle <= bottom <= bottom_bound
    assert bottom <= (1 + RATIO) ** 2 * N + (1 + RATIO) * FLOOR + FLOOR
    assert bottom * 5 < naive_bottom


def test_naive_retries_multiply(measured: dict[str, tuple[int, int, int]]) -> None:
    assert measured["naive"] == (N, N * ATTEMPTS, N * ATTEMPTS**2)
