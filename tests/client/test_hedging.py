"""Hedged requests through AsyncResilientTransport over real uvicorn endpoints."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from fournines import ConfigurationError, ConsecutiveFailures, RetryScheduled
from fournines.client._core import _HEDGE_MIN_SAMPLES
from fournines.client.balancing import AsyncBalancingTransport, OutlierEjection, P2CBalancer
from fournines.client.transport import AsyncResilientTransport, ClientPolicy
from fournines.testing import RecordingListener

from ..asgi._uvicorn import UvicornProcess

SERVICE = "http://service/work"


class Recording(httpx.AsyncBaseTransport):
    """Passes requests on to a real transport, noting (port, attempt header) of each."""

    def __init__(self) -> None:
        self.sent: list[tuple[int | None, str | None]] = []
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.url.port, request.headers.get("x-request-attempt")))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[UvicornProcess, UvicornProcess]]:
    slow = UvicornProcess("tests.client.apps.slow:app",
                          env={"DELAY_MS": "300", "SERVED_BY": "slow"}).start()
    try:
        fast = UvicornProcess("tests.client.apps.slow:app",
                              env={"DELAY_MS": "0", "SERVED_BY": "fast"}).start()
        try:
            yield slow, fast
        finally:
            fast.stop()
    finally:
        slow.stop()


def prefer_now(balancer: P2CBalancer) -> None:
    """Mark every endpoint as just picked, so no idle one is forced in (see balancing)."""
    now = balancer.clock.monotonic()
    for endpoint in balancer.endpoints:
        endpoint.last_pick = now
        endpoint.last_sample = now  # so a new sample moves the EWMA only a little


class Setup:
    def __init__(self, pair: tuple[UvicornProcess, UvicornProcess], prefer: str,
                 **policy: Any) -> None:
        slow, fast = pair
        self.slow_port = slow.port
        self.balancer = P2CBalancer([slow.url, fast.url])
        endpoints = {e.url: e for e in self.balancer.endpoints}
        # Seed the latency EWMAs (score: latency * (in-flight + 1)) so that every first
        # attempt goes to ``prefer``; with "slow", a hedge, sent while the slow endpoint
        # has an attempt in flight (0.3 * 2 > 0.5), goes to the fast one.
        endpoints[slow.url].latency = 0.3 if prefer == "slow" else 1.0
        endpoints[fast.url].latency = 0.5 if prefer == "slow" else 0.0001
        prefer_now(self.balancer)
        self.recording = Recording()
        self.listener = RecordingListener()
        self.transport = AsyncResilientTransport(
            AsyncBalancingTransport(self.balancer, transport=self.recording),
            config=ClientPolicy(trip=ConsecutiveFailures(threshold=1000), **policy),
            listeners=[self.listener],
        )
        self.client = httpx.AsyncClient(transport=self.transport, timeout=10.0)

    @property
    def hedges(self) -> list[RetryScheduled]:
        return [e for e in self.listener.events
                if isinstance(e, RetryScheduled) and e.policy == "hedge"]

    def slow_first_attempts(self) -> int:
        return sum(1 for port, attempt in self.recording.sent
                   if port == self.slow_port and attempt == "1")


@pytest.fixture
async def setups() -> AsyncIterator[list[Setup]]:
    made: list[Setup] = []
    yield made
    for setup in made:
        await setup.client.aclose()


async def test_hedge_wins_when_the_first_attempt_is_slow(
    pair: tuple[UvicornProcess, UvicornProcess], setups: list[Setup],
) -> None:
    setup = Setup(pair, "slow", hedge_after=0.05)
    setups.append(setup)
    served = Counter()
    for _ in range(6):
        response = await setup.client.get(SERVICE)
        assert response.status_code == 200
        served[response.headers["x-served-by"]] += 1
    # Every first attempt went to the slow endpoint; each was hedged, and the hedge
    # (to the fast one) answered first: the slow attempt was abandoned, not awaited.
    assert setup.slow_first_attempts() == 6
    assert served == {"fast": 6}
    assert len(setup.hedges) == 6
    assert all(e.delay == pytest.approx(0.05) for e in setup.hedges)
    assert all(e.in_flight == 0 for e in setup.balancer.endpoints)


async def test_hedges_are_bounded_by_the_retry_budget(
    pair: tuple[UvicornProcess, UvicornProcess], setups: list[Setup],
) -> None:
    # ratio 0 and 0.3/s over 10 s: three hedges in all.
    setup = Setup(pair, "slow", hedge_after=0.05, budget_ratio=0.0,
                  budget_min_per_second=0.3, budget_ttl=10.0)
    setups.append(setup)
    served = Counter()
    for _ in range(6):
        response = await setup.client.get(SERVICE)
        served[response.headers["x-served-by"]] += 1
    assert setup.slow_first_attempts() == 6
    assert len(setup.hedges) == 3
    assert served == {"fast": 3, "slow": 3}


async def test_post_is_never_hedged(
    pair: tuple[UvicornProcess, UvicornProcess], setups: list[Setup],
) -> None:
    setup = Setup(pair, "slow", hedge_after=0.05)
    setups.append(setup)
    for _ in range(3):
        response = await setup.client.post(SERVICE, content=b"x")
        assert response.headers["x-served-by"] == "slow"
    assert setup.hedges == []
    assert len(setup.recording.sent) == 3


async def test_no_hedge_when_the_first_attempt_answers_quickly(
    pair: tuple[UvicornProcess, UvicornProcess], setups: list[Setup],
) -> None:
    setup = Setup(pair, "fast", hedge_after=0.2)
    setups.append(setup)
    for _ in range(10):
        response = await setup.client.get(SERVICE)
        assert response.headers["x-served-by"] == "fast"
    assert setup.hedges == []
    assert len(setup.recording.sent) == 10


async def test_quantile_hedge_delay_follows_observed_latency(
    pair: tuple[UvicornProcess, UvicornProcess], setups: list[Setup],
) -> None:
    # The fallback delay (5 s) would never hedge; after 20 fast samples, p95 does.
    setup = Setup(pair, "fast", hedge_after=5.0, hedge_quantile=0.95)
    setups.append(setup)
    for _ in range(_HEDGE_MIN_SAMPLES - 1):
        await setup.client.get(SERVICE)
    assert setup.hedges == []
    # More samples, so the first connections' set-up stays above the 95th percentile
    # instead of becoming it. Once p95 (about a millisecond) is known, a warm-up call
    # that hiccups on this shared machine may itself be hedged: count from here on.
    for _ in range(40):
        await setup.client.get(SERVICE)
    before = len(setup.hedges)
    slow, fast = pair
    endpoints = {e.url: e for e in setup.balancer.endpoints}
    endpoints[slow.url].latency = 0.3
    endpoints[fast.url].latency = 0.5
    prefer_now(setup.balancer)
    response = await setup.client.get(SERVICE)
    assert response.headers["x-served-by"] == "fast"
    hedges = setup.hedges[before:]
    assert hedges
    assert all(hedge.delay < 0.3 for hedge in hedges)


@pytest.mark.parametrize("settings", [
    {"hedge_after": -1.0}, {"hedge_after": "0.1"}, {"hedge_quantile": 0.95},
    {"hedge_after": 0.1, "hedge_quantile": 0.0}, {"hedge_after": 0.1, "hedge_quantile": 1.5},
])
def test_hedge_settings_are_validated(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="hedge_"):
        ClientPolicy(**settings)


@pytest.fixture
def trio() -> Iterator[list[UvicornProcess]]:
    procs = [UvicornProcess("tests.client.apps.slow:app", env={"SERVED_BY": f"s{i}"})
             for i in range(3)]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def test_retries_go_to_other_endpoints_when_one_is_down(
    trio: list[UvicornProcess],
) -> None:
    trio[2].stop()
    transport = AsyncResilientTransport(
        # One failure ejects an endpoint (for longer than the test), so a retry never
        # goes back to the dead one.
        AsyncBalancingTransport(P2CBalancer(
            [p.url for p in trio],
            ejection=OutlierEjection(consecutive_failures=1, base_ejection=60.0,
                                     max_ejection=60.0))),
        config=ClientPolicy(trip=ConsecutiveFailures(threshold=1000)),
    )
    served: Counter[str] = Counter()
    async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
        for _ in range(100):
            response = await client.get(SERVICE)
            assert response.status_code == 200
            served[response.headers["x-served-by"]] += 1
    assert sum(served.values()) == 100
    assert set(served) == {"s0", "s1"}
