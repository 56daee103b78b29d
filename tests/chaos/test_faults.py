"""Faults as policies: rates, targets, switches, durations, and what each fault does."""

from __future__ import annotations

import asyncio
import itertools
import math
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from fournines import ConfigurationError, FaultInjected, Pipeline
from fournines.chaos import (
    ChaosMiddleware,
    CrashFault,
    ErrorFault,
    Fault,
    InjectedFaultError,
    LatencyFault,
    current_request,
    instance_share,
)
from fournines.testing import FakeClock, RecordingListener

N = 100_000


def binomial_interval(n: int, p: float, confidence: float = 0.99) -> tuple[int, int]:
    """The central ``confidence`` interval of Binomial(n, p), from the exact pmf."""
    tail = (1 - confidence) / 2
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    lo_k, hi_k = max(0, int(mean - 12 * sd)), min(n, int(mean + 12 * sd) + 1)

    def pmf(k: int) -> float:
        log = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
               + k * math.log(p) + (n - k) * math.log1p(-p))
        return math.exp(log)

    pmfs = [pmf(k) for k in range(lo_k, hi_k + 1)]
    below, low = 0.0, lo_k
    for k, mass in zip(range(lo_k, hi_k + 1), pmfs, strict=True):
        if below + mass > tail:
            low = k
            break
        below += mass
    above, high = 0.0, hi_k
    for k, mass in zip(range(hi_k, lo_k - 1, -1), reversed(pmfs), strict=True):
        if above + mass > tail:
            high = k
            break
        above += mass
    return low, high


def count_injections(fault: Fault, n: int = N) -> int:
    injected = 0
    for _ in range(n):
        try:
            fault.call(int)
        except InjectedFaultError:
            injected += 1
    return injected


def lag1(values: list[float]) -> float:
    """The lag-1 autocorrelation of ``values``."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    cov = sum((a - mean) * (b - mean) for a, b in itertools.pairwise(values))
    return cov / (len(values) - 1) / var


def test_binomial_interval_helper_matches_the_normal_approximation() -> None:
    low, high = binomial_interval(N, 0.5)
    half_width = 2.5758 * math.sqrt(N * 0.25)
    assert abs(low - (N / 2 - half_width)) <= 2
    assert abs(high - (N / 2 + half_width)) <= 2


@pytest.mark.parametrize("seed", [0, 1, 2, 42, 2026])
@pytest.mark.parametrize("rate", [0.01, 0.2, 0.5])
def test_observed_rate_lies_in_the_99_percent_binomial_interval(seed: int, rate: float) -> None:
    fault = ErrorFault(rate=rate, seed=seed)
    injected = count_injections(fault)
    low, high = binomial_interval(N, rate)
    assert low <= injected <= high
    assert (fault.calls, fault.injected) == (N, injected)


def test_rate_zero_never_fires_and_rate_one_always_fires() -> None:
    assert count_injections(ErrorFault(rate=0.0, seed=1), 10_000) == 0
    assert count_injections(ErrorFault(rate=1.0, seed=1), 10_000) == 10_000


def test_same_seed_same_decisions() -> None:
    def decisions(seed: int) -> list[bool]:
        fault = ErrorFault(rate=0.3, seed=seed)
        return [fault.roll() for _ in range(1000)]

    assert decisions(5) == decisions(5)
    assert decisions(5) != decisions(6)


def test_correlation_makes_bursts_but_keeps_the_rate() -> None:
    fault = ErrorFault(rate=0.2, correlation=0.5, seed=3)
    fired = [fault.roll() for _ in range(N)]
    share = sum(fired) / N
    # Correlated draws vary more than independent ones: Var ~ p(1-p)/n * (1+c)/(1-c).
    sd = math.sqrt(0.2 * 0.8 / N * 3)
    assert abs(share - 0.2) < 4 * sd
    assert lag1([float(f) for f in fired]) == pytest.approx(0.5, abs=0.03)


def test_uncorrelated_decisions_have_no_lag_one_autocorrelation() -> None:
    fault = ErrorFault(rate=0.2, seed=3)
    assert abs(lag1([float(fault.roll()) for _ in range(N)])) < 0.015


def test_disabled_fault_never_fires_until_enabled() -> None:
    fault = ErrorFault(enabled=False)
    assert fault.call(lambda: "ok") == "ok"
    assert fault.calls == 0
    fault.enable()
    with pytest.raises(InjectedFaultError):
        fault.call(lambda: "ok")
    fault.disable()
    assert fault.call(lambda: "ok") == "ok"


def test_fault_turns_itself_off_after_its_duration() -> None:
    clock = FakeClock()
    fault = ErrorFault(duration=10, clock=clock)
    assert fault.remaining == 10
    clock.advance(9.5)
    assert fault.remaining == pytest.approx(0.5)
    with pytest.raises(InjectedFaultError):
        fault.call(int)
    clock.advance(0.5)
    assert fault.expired
    assert fault.call(lambda: 7) == 7
    # Expiry is for good: switching it on again does not bring it back.
    fault.enable()
    assert fault.call(lambda: 7) == 7


def test_a_fault_is_a_policy_in_a_pipeline_sync_async_and_as_decorator() -> None:
    clock = FakeClock()
    latency = LatencyFault(latency=0.25, clock=clock)
    pipeline = Pipeline(latency, ErrorFault(rate=0.0))
    assert pipeline.call(lambda x: x * 2, 21) == 42

    async def double(x: int) -> int:
        return x * 2

    assert asyncio.run(pipeline.acall(double, 4)) == 8

    @latency
    def hello() -> str:
        return "hi"

    assert hello() == "hi"
    assert clock.sleeps == [0.25, 0.25, 0.25]
    assert latency.injected == 3


def test_error_fault_raises_instead_of_calling() -> None:
    calls: list[int] = []
    fault = ErrorFault(error=lambda: ConnectionResetError("chaos"))
    with pytest.raises(ConnectionResetError, match="chaos"):
        fault.call(calls.append, 1)

    async def run() -> None:
        await fault.acall(asyncio.sleep, 0)

    with pytest.raises(ConnectionResetError):
        asyncio.run(run())
    assert calls == []


def test_error_fault_raises_a_fresh_exception_each_time() -> None:
    fault = ErrorFault(error=KeyError)
    seen = []
    for _ in range(2):
        try:
            fault.call(int)
        except KeyError as exc:
            seen.append(exc)
    assert len(seen) == 2 and seen[0] is not seen[1]


def test_default_error_names_the_fault() -> None:
    with pytest.raises(InjectedFaultError, match="'payments-down'"):
        ErrorFault(name="payments-down").call(int)


def test_fixed_latency_sleeps_on_the_injected_clock() -> None:
    clock = FakeClock()
    fault = LatencyFault(latency=0.1, rate=0.5, seed=9, clock=clock)
    for _ in range(1000):
        fault.call(int)
    assert clock.sleeps == [0.1] * fault.injected
    assert 400 < fault.injected < 600


def test_async_latency_awaits_the_clock() -> None:
    clock = FakeClock()
    fault = LatencyFault(latency=2.0, clock=clock)

    async def run() -> str:
        return await fault.acall(asyncio.sleep, 0, "done")

    assert asyncio.run(run()) == "done"
    assert clock.sleeps == [2.0]


def test_latency_never_holds_a_call_past_the_faults_duration() -> None:
    # Automatic recovery: a fault that removes itself after 5 s must not keep a call
    # waiting for its 3000 s latency.
    clock = FakeClock()
    blocking = LatencyFault(latency=3000.0, duration=5.0, clock=clock)
    awaiting = LatencyFault(latency=3000.0, duration=6.0, clock=clock)
    clock.advance(2.0)
    blocking.call(int)  # sleeps 3 s: the clock is at 5

    async def run() -> None:
        await awaiting.acall(asyncio.sleep, 0)

    asyncio.run(run())
    assert clock.sleeps == [3.0, 1.0]


def test_jitter_stays_within_bounds_and_averages_to_the_latency() -> None:
    fault = LatencyFault(latency=0.1, jitter=0.02, seed=4)
    delays = [fault.delay() for _ in range(20_000)]
    assert min(delays) >= 0.08 and max(delays) <= 0.12
    assert sum(delays) / len(delays) == pytest.approx(0.1, abs=0.001)
    assert abs(lag1(delays)) < 0.03


def test_jitter_correlation_makes_consecutive_delays_alike() -> None:
    fault = LatencyFault(latency=0.1, jitter=0.05, correlation=0.5, seed=4)
    delays = [fault.delay() for _ in range(20_000)]
    # netem's mixing u = (1-c) r + c u_prev is an AR(1) process: lag-1 correlation c.
    assert lag1(delays) == pytest.approx(0.5, abs=0.05)
    assert min(delays) >= 0.05 and max(delays) <= 0.15


def test_latency_from_a_distribution() -> None:
    clock = FakeClock()
    fault = LatencyFault(latency=0.01, distribution=lambda rng: rng.expovariate(10.0),
                         seed=1, clock=clock)
    for _ in range(20_000):
        fault.call(int)
    assert min(clock.sleeps) >= 0.01
    assert sum(clock.sleeps) / len(clock.sleeps) == pytest.approx(0.11, rel=0.05)


def test_negative_draws_count_as_no_delay() -> None:
    fault = LatencyFault(distribution=lambda rng: -1.0)
    assert fault.delay() == 0.0


def test_firing_sends_fault_injected_events() -> None:
    recorder = RecordingListener()
    clock = FakeClock()
    LatencyFault(latency=0.5, clock=clock, listeners=[recorder], name="slow").call(int)
    with pytest.raises(InjectedFaultError):
        ErrorFault(listeners=[recorder]).call(int)
    events = recorder.of(FaultInjected)
    assert [(e.kind, e.name, e.delay) for e in events] == [
        ("latency", "slow", 0.5), ("error", "error", None)]


def test_instance_share_picks_about_that_share_of_instances() -> None:
    ids = [f"orders-{i}" for i in range(20_000)]
    picked = sum(instance_share(i) < 0.3 for i in ids)
    # One fixed set of ids, so one draw: the 99.9 % interval (this set sits at -2.8 sd).
    low, high = binomial_interval(len(ids), 0.3, confidence=0.999)
    assert low <= picked <= high


def test_instance_share_is_nested_and_stable_across_processes() -> None:
    ids = [f"svc-{i}" for i in range(200)]
    small = {i for i in ids if instance_share(i) < 0.3}
    large = {i for i in ids if instance_share(i) < 0.5}
    assert small < large
    code = ("from fournines.chaos import instance_share;"
            f"print([instance_share(i) for i in {ids!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == repr([instance_share(i) for i in ids])


def test_instance_target_selects_by_instance_id() -> None:
    inside = next(f"i{k}" for k in range(1000) if instance_share(f"i{k}") < 0.5)
    outside = next(f"i{k}" for k in range(1000) if instance_share(f"i{k}") >= 0.5)
    with pytest.raises(InjectedFaultError):
        ErrorFault(instances=0.5, instance=inside).call(int)
    assert ErrorFault(instances=0.5, instance=outside).call(lambda: 1) == 1
    assert not ErrorFault(instances=0.0, instance=inside).active


def test_route_or_header_fault_never_fires_outside_a_request() -> None:
    assert current_request() is None
    assert ErrorFault(route="/orders").call(lambda: 1) == 1
    assert ErrorFault(header="x-chaos").call(lambda: 1) == 1


async def drive(app: Any, path: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> int:
    """One in-process HTTP request through an ASGI app; the response status."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": list(headers),
             "client": ("127.0.0.1", 5000)}
    await app(scope, receive, send)
    return int(sent[0]["status"])


def endpoint_through(policy: Any) -> Callable[..., Any]:
    """An ASGI app whose work runs through ``policy``: 500 when the policy raises."""

    async def work() -> None:
        await asyncio.sleep(0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await policy.acall(work)
            status = 200
        except InjectedFaultError:
            status = 500
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def test_faults_inside_the_app_see_the_route_and_headers_of_the_request() -> None:
    routed = ChaosMiddleware(endpoint_through(ErrorFault(route="/orders")))
    headed = ChaosMiddleware(endpoint_through(ErrorFault(header="x-chaos")))

    async def run() -> list[int]:
        return [
            await drive(routed, "/orders/1"), await drive(routed, "/users"),
            await drive(headed, "/", [(b"x-chaos", b"yes")]), await drive(headed, "/"),
        ]

    assert asyncio.run(run()) == [500, 200, 500, 200]


def test_middleware_faults_apply_in_process_with_their_status() -> None:
    clock = FakeClock()
    app = ChaosMiddleware(endpoint_through(Pipeline()), clock=clock, faults=[
        LatencyFault(latency=1.5, clock=clock), ErrorFault(status=503, route="/pay")])

    async def run() -> list[int]:
        return [await drive(app, "/pay"), await drive(app, "/")]

    assert asyncio.run(run()) == [503, 200]
    assert clock.sleeps == [1.5, 1.5]


CRASH_SCRIPT = textwrap.dedent("""
    import atexit, sys
    from fournines.chaos import CrashFault
    atexit.register(lambda: print("atexit ran", flush=True))
    print("before", flush=True)
    try:
        CrashFault({options}).call(print, "call ran", flush=True)
    finally:
        print("finally ran", flush=True)
""")


@pytest.mark.parametrize(("options", "returncode"), [("", -9), ("exit_code=3", 3)])
def test_crash_fault_ends_the_process_without_cleanup(options: str, returncode: int) -> None:
    result = subprocess.run([sys.executable, "-c", CRASH_SCRIPT.format(options=options)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == returncode
    assert result.stdout == "before\n"


def test_crash_fault_at_rate_zero_lets_the_process_live() -> None:
    script = CRASH_SCRIPT.format(options="rate=0.0")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0
    assert result.stdout.splitlines() == ["before", "call ran", "finally ran", "atexit ran"]


@pytest.mark.parametrize(("build", "message"), [
    (lambda: ErrorFault(rate=1.5), "ErrorFault.rate"),
    (lambda: LatencyFault(latency=-1), "LatencyFault.latency"),
    (lambda: LatencyFault(jitter=0.1, distribution=lambda r: 0.0), "LatencyFault.jitter"),
    (lambda: ErrorFault(status=200), "ErrorFault.status"),
    (lambda: ErrorFault(route="orders"), "FaultTarget.route"),
    (lambda: ErrorFault(header="x chaos"), "FaultTarget.header"),
    (lambda: ErrorFault(instances=2), "FaultTarget.instances"),
    (lambda: CrashFault(exit_code=300), "CrashFault.exit_code"),
    (lambda: LatencyFault(correlation=-0.1), "LatencyFault.correlation"),
    (lambda: ErrorFault(duration=0), "ErrorFault.duration"),
    (lambda: ChaosMiddleware(endpoint_through(Pipeline()), allow_from=["not-a-net"]),
     "ChaosMiddleware.allow_from"),
    (lambda: ChaosMiddleware(endpoint_through(Pipeline()), admin_prefix="chaos"),
     "ChaosMiddleware.admin_prefix"),
    (lambda: ChaosMiddleware(endpoint_through(Pipeline()), admin_token=""),
     "ChaosMiddleware.admin_token"),
])
def test_bad_settings_are_refused_naming_the_field(
    build: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message.replace(".", r"\.")):
        build()


def test_logging_listener_describes_injected_faults() -> None:
    from fournines.instrumentation.logging import LoggingListener

    event = FaultInjected(policy="fault", name="slow", kind="latency", delay=0.1, route="/x")
    assert LoggingListener.describe(event) == (
        20, "fault 'slow': injected latency fault of 0.100s on /x")


async def request(app: Any, method: str, path: str, body: bytes = b"",
                  headers: Sequence[tuple[bytes, bytes]] = ()) -> int:
    """One in-process request with a body; the response status."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "headers": list(headers),
               "client": ("127.0.0.1", 5000)}, receive, send)
    return int(sent[0]["status"])


def test_faults_added_through_the_api_follow_the_middleware_seed() -> None:
    auth = [(b"authorization", b"Bearer t")]
    body = b'{"kind": "error", "rate": 0.5, "duration": 60}'

    async def statuses(seed: int) -> list[int]:
        app = ChaosMiddleware(endpoint_through(Pipeline()), admin_token="t", seed=seed)
        assert await request(app, "POST", "/chaos/faults", body, auth) == 201
        return [await request(app, "GET", "/") for _ in range(200)]

    first, again, other = (asyncio.run(statuses(s)) for s in (5, 5, 6))
    assert first == again
    assert first != other
    assert 50 < first.count(500) < 150


@pytest.mark.parametrize(("fault", "setting"), [
    (ErrorFault(rate=1.0), "rate"),
    (ErrorFault(), "status"),
    (ErrorFault(), "error"),
    (ErrorFault(), "enabled"),
    (ErrorFault(), "name"),
    (ErrorFault(), "target"),
    (ErrorFault(duration=5.0), "duration"),
    (LatencyFault(latency=0.1), "latency"),
    (LatencyFault(jitter=0.1), "jitter"),
    (LatencyFault(), "correlation"),
    (CrashFault(exit_code=3), "exit_code"),
])
def test_a_faults_settings_are_read_only(fault: Any, setting: str) -> None:
    before = getattr(fault, setting)
    with pytest.raises(AttributeError):
        setattr(fault, setting, "x")
    assert getattr(fault, setting) == before


def test_enable_and_disable_are_the_switch() -> None:
    fault = ErrorFault(enabled=False)
    fault.enable()
    assert fault.enabled
    fault.disable()
    assert not fault.enabled
