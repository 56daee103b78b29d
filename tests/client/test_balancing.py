from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator, Sequence

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fournines import ConfigurationError
from fournines.client.balancing import (
    AsyncBalancingTransport,
    Endpoint,
    EndpointEjected,
    NoEndpointsError,
    OutlierEjection,
    P2CBalancer,
    StaticEndpoints,
)
from fournines.testing import FakeClock, RecordingListener

from .._servers import free_port
from ..asgi._uvicorn import UvicornProcess

URLS = ["http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003"]


class MutableSource:
    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = tuple(urls)

    def endpoints(self) -> Sequence[str]:
        return self.urls


def make(urls: Sequence[str] = URLS, clock: FakeClock | None = None, seed: int = 7,
         **kwargs: object) -> tuple[P2CBalancer, FakeClock]:
    clock = clock or FakeClock()
    balancer = P2CBalancer(urls, clock=clock, rng=random.Random(seed), **kwargs)  # type: ignore[arg-type]
    return balancer, clock


def by_url(balancer: P2CBalancer) -> dict[str, Endpoint]:
    return {e.url: e for e in balancer.endpoints}


def prime(balancer: P2CBalancer, clock: FakeClock, latencies: dict[str, float]) -> None:
    """Give every endpoint a latency sample without going through pick()."""
    endpoints = by_url(balancer)
    for url, latency in latencies.items():
        endpoints[url].in_flight += 1
        balancer.release(endpoints[url], latency, failed=False)
    clock.advance(0.001)


def run_sequential(balancer: P2CBalancer, clock: FakeClock, n: int,
                   latency: dict[str, float]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        endpoint = balancer.pick()
        counts[endpoint.url] += 1
        clock.advance(0.001)
        balancer.release(endpoint, latency[endpoint.url], failed=False)
    return counts


def fail(balancer: P2CBalancer, endpoint: Endpoint, times: int) -> None:
    for _ in range(times):
        endpoint.in_flight += 1
        balancer.release(endpoint, 0.001, failed=True)


# -- unit, sans-I/O -------------------------------------------------------------------------


def test_picks_spread_across_equal_endpoints() -> None:
    balancer, clock = make()
    counts = run_sequential(balancer, clock, 3000, dict.fromkeys(URLS, 0.01))
    assert set(counts) == set(URLS)
    assert all(700 < c < 1300 for c in counts.values()), counts


def test_endpoint_with_ten_times_the_latency_is_rarely_picked() -> None:
    balancer, clock = make()
    latency = {URLS[0]: 0.01, URLS[1]: 0.01, URLS[2]: 0.1}
    prime(balancer, clock, latency)
    counts = run_sequential(balancer, clock, 2000, latency)
    assert counts[URLS[2]] < 0.02 * 2000, counts


def test_in_flight_pressure_shifts_picks_to_the_slower_endpoint() -> None:
    balancer, clock = make(URLS[:2])
    latency = {URLS[0]: 0.01, URLS[1]: 0.02}
    prime(balancer, clock, latency)
    # Released at once, the faster endpoint wins every draw...
    assert run_sequential(balancer, clock, 200, latency)[URLS[1]] <= 2
    # ...but held in flight, its load grows until the slower one scores better.
    held = Counter(balancer.pick().url for _ in range(30))
    assert held[URLS[1]] >= 7, held
    assert held[URLS[0]] > held[URLS[1]], held


def test_new_endpoint_without_samples_gets_tried() -> None:
    source = MutableSource(URLS)
    balancer, clock = make(source)  # type: ignore[arg-type]
    prime(balancer, clock, dict.fromkeys(URLS, 0.05))
    new = "http://127.0.0.1:8004"
    source.urls = (*URLS, new)
    counts = run_sequential(balancer, clock, 40, {**dict.fromkeys(URLS, 0.05), new: 0.05})
    assert counts[new] >= 5, counts
    assert by_url(balancer)[new].latency == pytest.approx(0.05)


def test_endpoint_is_ejected_after_consecutive_failures() -> None:
    balancer, clock = make()
    endpoint = by_url(balancer)[URLS[0]]
    fail(balancer, endpoint, 4)
    assert not endpoint.is_ejected(clock.monotonic())
    fail(balancer, endpoint, 1)
    assert endpoint.is_ejected(clock.monotonic())
    assert URLS[0] not in run_sequential(balancer, clock, 100, dict.fromkeys(URLS, 0.01))


def test_success_in_between_resets_the_failure_count() -> None:
    balancer, clock = make()
    endpoint = by_url(balancer)[URLS[0]]
    fail(balancer, endpoint, 4)
    endpoint.in_flight += 1
    balancer.release(endpoint, 0.01, failed=False)
    fail(balancer, endpoint, 4)
    assert not endpoint.is_ejected(clock.monotonic())


def test_ejection_period_grows_and_is_capped() -> None:
    balancer, clock = make(ejection=OutlierEjection(base_ejection=1.0, max_ejection=5.0))
    endpoint = by_url(balancer)[URLS[0]]
    fail(balancer, endpoint, 5)
    periods = []
    for _ in range(5):
        periods.append(endpoint.ejected_until - clock.monotonic())
        clock.advance(periods[-1])
        assert endpoint.is_half_open(clock.monotonic())
        fail(balancer, endpoint, 1)  # a half-open endpoint goes back out at once
    assert periods == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_ejected_endpoint_returns_after_its_period_and_one_success_restores_it() -> None:
    recorder = RecordingListener()
    balancer, clock = make(listeners=[recorder])
    endpoint = by_url(balancer)[URLS[0]]
    fail(balancer, endpoint, 5)
    clock.advance(1.0)
    counts = run_sequential(balancer, clock, 100, dict.fromkeys(URLS, 0.01))
    assert counts[URLS[0]] > 10, counts
    assert endpoint.times_ejected == 0
    # Fully restored: a single failure no longer ejects it, five do (for the base period).
    fail(balancer, endpoint, 1)
    assert not endpoint.is_ejected(clock.monotonic())
    fail(balancer, endpoint, 4)
    assert endpoint.ejected_until - clock.monotonic() == 1.0
    assert [e.endpoint for e in recorder.of(EndpointEjected)] == [URLS[0], URLS[0]]


def test_half_open_endpoint_takes_one_attempt_at_a_time() -> None:
    balancer, clock = make(URLS[:2], ejection=OutlierEjection(max_ejected_ratio=1.0))
    endpoint = by_url(balancer)[URLS[0]]
    prime(balancer, clock, {URLS[0]: 0.001, URLS[1]: 0.1})
    fail(balancer, endpoint, 5)
    clock.advance(1.0)
    picks = Counter(balancer.pick().url for _ in range(20))  # all held in flight
    assert picks[URLS[0]] == 1, picks


def test_max_ejected_ratio_keeps_one_of_two_failing_endpoints() -> None:
    balancer, clock = make(URLS[:2])
    first, second = balancer.endpoints
    fail(balancer, first, 5)
    fail(balancer, second, 20)
    now = clock.monotonic()
    assert first.is_ejected(now)
    assert not second.is_ejected(now)
    assert {balancer.pick().url for _ in range(20)} == {second.url}


def test_single_endpoint_is_never_ejected() -> None:
    balancer, clock = make(URLS[:1], ejection=OutlierEjection(max_ejected_ratio=1.0))
    (only,) = balancer.endpoints
    fail(balancer, only, 50)
    assert not only.is_ejected(clock.monotonic())
    assert balancer.pick() is only


def test_source_changes_keep_stats_of_endpoints_that_stay() -> None:
    source = MutableSource(URLS)
    balancer, clock = make(source)  # type: ignore[arg-type]
    prime(balancer, clock, {URLS[0]: 0.02, URLS[1]: 0.03, URLS[2]: 0.04})
    kept = by_url(balancer)[URLS[1]]
    fail(balancer, kept, 2)
    source.urls = (URLS[1], "http://127.0.0.1:8009/")
    endpoints = by_url(balancer)
    assert set(endpoints) == {URLS[1], "http://127.0.0.1:8009"}
    assert endpoints[URLS[1]] is kept
    assert kept.latency == pytest.approx(0.03)
    assert kept.consecutive_failures == 2
    assert endpoints["http://127.0.0.1:8009"].latency is None


def test_empty_source_rejects_picks() -> None:
    balancer, _ = make([])
    with pytest.raises(NoEndpointsError):
        balancer.pick()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"consecutive_failures": 0}, "OutlierEjection.consecutive_failures"),
        ({"consecutive_failures": 2.5}, "OutlierEjection.consecutive_failures"),
        ({"base_ejection": 0}, "OutlierEjection.base_ejection"),
        ({"max_ejection": -1}, "OutlierEjection.max_ejection"),
        ({"base_ejection": 10.0, "max_ejection": 5.0}, "OutlierEjection.max_ejection"),
        ({"max_ejected_ratio": 1.5}, "OutlierEjection.max_ejected_ratio"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        OutlierEjection(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://h:1", "http://h:1/api", "http://h:x"])
def test_bad_endpoint_urls_name_the_source(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"P2CBalancer\.source"):
        P2CBalancer([url])


def test_a_single_string_is_not_a_list_of_endpoints() -> None:
    with pytest.raises(ConfigurationError, match=r"P2CBalancer\.source"):
        P2CBalancer("http://127.0.0.1:8001")
    with pytest.raises(ConfigurationError, match=r"StaticEndpoints\.urls"):
        StaticEndpoints("http://127.0.0.1:8001")


operations = st.lists(
    st.one_of(
        st.tuples(st.just("fail"), st.integers(0, 4), st.integers(1, 6)),
        st.tuples(st.just("ok"), st.integers(0, 4), st.just(1)),
        st.tuples(st.just("advance"), st.integers(0, 3000), st.just(0)),
        st.tuples(st.just("pick"), st.integers(0, 1), st.just(0)),
    ),
    max_size=60,
)


@given(n=st.integers(1, 5), ratio=st.sampled_from([0.0, 0.3, 0.5, 1.0]), ops=operations,
       seed=st.integers(0, 1000))
def test_pick_never_returns_an_ejected_endpoint_while_a_healthy_one_exists(
    n: int, ratio: float, ops: list[tuple[str, int, int]], seed: int
) -> None:
    clock = FakeClock()
    balancer = P2CBalancer(URLS[:1] + [f"http://127.0.0.1:{9000 + i}" for i in range(n - 1)],
                           clock=clock, rng=random.Random(seed),
                           ejection=OutlierEjection(consecutive_failures=2,
                                                    max_ejected_ratio=ratio))
    endpoints = balancer.endpoints
    for op, a, b in ops:
        if op == "fail":
            fail(balancer, endpoints[a % n], b)
        elif op == "ok":
            endpoints[a % n].in_flight += 1
            balancer.release(endpoints[a % n], 0.01 * (a + 1), failed=False)
        elif op == "advance":
            clock.advance(a / 1000)
        else:
            now = clock.monotonic()
            assert any(not e.is_ejected(now) for e in endpoints)
            picked = balancer.pick()
            assert not picked.is_ejected(now)
            if a:  # release half of them, keep the rest in flight
                balancer.release(picked, 0.01, failed=False)


# -- the httpx shell over an in-process transport (request rewriting and outcomes) ----------


async def test_transport_rewrites_the_target_and_keeps_the_rest() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    transport = AsyncBalancingTransport(URLS[:1], transport=httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post("https://orders.internal/v1/orders?id=7",
                                     headers={"x-trace": "abc"}, content=b"body")
    (sent,) = seen
    assert str(sent.url) == "http://127.0.0.1:8001/v1/orders?id=7"
    assert sent.headers["host"] == "127.0.0.1:8001"
    assert sent.headers["x-trace"] == "abc"
    assert sent.method == "POST" and sent.content == b"body"
    assert str(response.request.url) == "https://orders.internal/v1/orders?id=7"


@pytest.mark.parametrize(("status", "failed"), [(200, False), (404, False), (429, False),
                                                (500, True), (503, True)])
async def test_transport_counts_5xx_as_failures_and_4xx_as_successes(
    status: int, failed: bool
) -> None:
    transport = AsyncBalancingTransport(
        URLS[:1], transport=httpx.MockTransport(lambda request: httpx.Response(status)))
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get("http://service/")
    (endpoint,) = transport.balancer.endpoints
    assert (endpoint.failures, endpoint.successes) == ((1, 0) if failed else (0, 1))
    assert endpoint.in_flight == 0


async def test_transport_counts_transport_errors_as_failures() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    transport = AsyncBalancingTransport(URLS[:1], transport=httpx.MockTransport(refuse))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://service/")
    (endpoint,) = transport.balancer.endpoints
    assert (endpoint.failures, endpoint.consecutive_failures, endpoint.in_flight) == (1, 1, 0)


# -- real servers ---------------------------------------------------------------------------


@pytest.fixture
def servers(request: pytest.FixtureRequest) -> Iterator[list[UvicornProcess]]:
    delays: list[int] = request.param
    procs = [UvicornProcess("tests.client.apps.slow:app",
                            env={"DELAY_MS": str(delay), "SERVED_BY": f"s{i}"})
             for i, delay in enumerate(delays)]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def drive(client: httpx.AsyncClient, total: int, concurrency: int
                ) -> tuple[Counter[str], list[BaseException]]:
    served: Counter[str] = Counter()
    errors: list[BaseException] = []
    remaining = iter(range(total))

    async def worker() -> None:
        for _ in remaining:
            try:
                response = await client.get("http://service/work?x=1")
            except httpx.TransportError as exc:
                errors.append(exc)
            else:
                assert response.status_code == 200
                served[response.headers["x-served-by"]] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return served, errors


@pytest.mark.parametrize("servers", [[0, 0, 200]], indirect=True)
async def test_slow_endpoint_gets_few_requests_after_warm_up(
    servers: list[UvicornProcess],
) -> None:
    transport = AsyncBalancingTransport([p.url for p in servers])
    async with httpx.AsyncClient(transport=transport, timeout=10) as client:
        _, warm_errors = await drive(client, 60, 8)
        served, errors = await drive(client, 300, 8)
    print(f"after warm-up: {dict(served)}")
    assert not warm_errors and not errors
    assert sum(served.values()) == 300
    assert served["s2"] < 30, served
    assert served["s0"] > 0 and served["s1"] > 0, served


@pytest.mark.parametrize("servers", [[0, 0, 0]], indirect=True)
async def test_killed_endpoint_is_ejected_and_requests_keep_succeeding(
    servers: list[UvicornProcess],
) -> None:
    ejection = OutlierEjection()
    balancer = P2CBalancer([p.url for p in servers], ejection=ejection)
    concurrency = 8
    async with httpx.AsyncClient(transport=AsyncBalancingTransport(balancer),
                                 timeout=10) as client:
        warm, _ = await drive(client, 30, concurrency)
        assert set(warm) == {"s0", "s1", "s2"}
        servers[2].stop()
        served, errors = await drive(client, 300, concurrency)
    dead = by_url(balancer)[servers[2].url]
    print(f"served {dict(served)}, errors {len(errors)}, ejected {dead.times_ejected}x")
    # Failures lower the dead endpoint's score, so it loses its traffic after a few
    # errors; it is ejected if it still reaches the consecutive-failure threshold.
    assert dead.times_ejected >= 1 or dead.failures < ejection.consecutive_failures
    assert 1 <= len(errors) <= ejection.consecutive_failures + concurrency + 2, errors
    assert sum(served.values()) + len(errors) == 300
    assert set(served) == {"s0", "s1"}


async def test_failures_move_early_traffic_off_a_dead_endpoint() -> None:
    """Before any ejection (switched off here), a refusing endpoint stops being picked."""
    live = [UvicornProcess("tests.client.apps.slow:app", env={"SERVED_BY": f"s{i}"})
            for i in range(2)]
    for process in live:
        process.start()
    try:
        dead_url = f"http://127.0.0.1:{free_port()}"
        balancer = P2CBalancer([*(p.url for p in live), dead_url],
                               ejection=OutlierEjection(consecutive_failures=1_000_000))
        async with httpx.AsyncClient(transport=AsyncBalancingTransport(balancer),
                                     timeout=10) as client:
            served, errors = await drive(client, 150, 4)
    finally:
        for process in live:
            process.stop()
    dead = by_url(balancer)[dead_url]
    print(f"served {dict(served)}, dead endpoint failures {dead.failures}")
    assert dead.times_ejected == 0
    # Warm-up scores an unsampled endpoint like the fastest one; without the failure
    # factor the dead one took about a third of these 150 requests.
    assert 1 <= dead.failures <= 12, dead.failures
    assert sum(served.values()) + len(errors) == 150


def test_no_endpoints_error_is_a_rejection_from_the_shared_hierarchy() -> None:
    import fournines
    import fournines.client

    assert NoEndpointsError is fournines.NoEndpointsError is fournines.client.NoEndpointsError
    assert issubclass(NoEndpointsError, fournines.RejectedError)
    assert EndpointEjected is fournines.EndpointEjected is fournines.client.EndpointEjected
    with pytest.raises(fournines.RejectedError, match="no endpoints: 'orders'"):
        P2CBalancer([], name="orders").pick()
