"""A short, real-time demo of the policies, until the full lab replaces it.

A simulated payment dependency goes through three phases (healthy, failing,
recovered) while a client calls it every 20 ms through a pipeline of
stale cache -> timeout -> retry (with a budget) -> rate limiter -> breaker. Every
event is printed as it happens, and a summary at the end says what the
policies did: the breaker opening and recovering, retries, stale answers from
the cache, and calls refused by the rate limiter.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from .._events import (
    CallRejected,
    Event,
    StateChanged,
)
from ..instrumentation.logging import LoggingListener
from ..policies.backoff import Backoff
from ..policies.budget import RetryBudget
from ..policies.circuit_breaker import CircuitBreaker, ConsecutiveFailures
from ..policies.fallback import StaleCache, track_degradation
from ..policies.pipeline import Pipeline
from ..policies.rate_limit import TokenBucket
from ..policies.retry import Retry
from ..policies.timeout import Timeout

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """What happened in the demo, counted."""

    calls: int = 0
    full: int = 0
    degraded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    transitions: list[str] = field(default_factory=list)


class _FlakyPayment:
    """The dependency: healthy, then failing (errors or hangs), then healthy again."""

    def __init__(self, loop_time: float, fail_from: float, fail_until: float, seed: int) -> None:
        self.start = loop_time
        self.fail_from = fail_from
        self.fail_until = fail_until
        self.rng = random.Random(seed)
        self.served = 0

    async def status(self, order_id: int) -> str:
        self.served += 1
        t = asyncio.get_running_loop().time() - self.start
        if self.fail_from <= t < self.fail_until:
            if self.rng.random() < 0.3:
                await asyncio.sleep(1.0)  # hangs: the timeout must cut it
            raise ConnectionError("payment service unavailable")
        await asyncio.sleep(0.002)
        return f"order {order_id}: paid"


async def _run(duration: float, out: TextIO, seed: int) -> DemoResult:
    result = DemoResult()

    second: Counter[str] = Counter()

    def watch(event: Event) -> None:
        name = type(event).__name__
        result.events[name] += 1
        if isinstance(event, CallRejected):
            second[f"rejected:{event.policy}"] += 1
        else:
            second[name] += 1
        if isinstance(event, StateChanged):
            result.transitions.append(f"{event.old}->{event.new}")
            t = asyncio.get_running_loop().time() - started
            out.write(f"  [{t:5.2f}s] {LoggingListener.describe(event)[1]}\n")

    listeners = [watch]
    breaker = CircuitBreaker("payment", trip=ConsecutiveFailures(threshold=5),
                             reset_timeout=duration * 0.15, half_open_probes=3,
                             listeners=listeners)
    retry = Retry(attempts=3, backoff=Backoff(initial=0.01, cap=0.05), name="payment",
                  budget=RetryBudget(ratio=0.2, min_per_second=2, ttl=2.0, name="payment"),
                  listeners=listeners, rng=random.Random(seed))
    pipeline = Pipeline(
        StaleCache(max_age=300, name="payment-cache", listeners=listeners),
        Timeout(0.25, name="payment"),
        retry,
        TokenBucket(rate=80, capacity=4, name="payment-rate", listeners=listeners),
        breaker,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    payment = _FlakyPayment(started, duration * 0.3, duration * 0.6, seed)
    out.write(f"payment fails from {duration * 0.3:.1f}s to {duration * 0.6:.1f}s; "
              f"a client calls it every 20 ms (a burst of 10 every second)\n")
    out.write("  second  calls  full  stale  failed  retries  breaker-rejects  rate-limited\n")

    async def one(order_id: int) -> None:
        result.calls += 1
        second["calls"] += 1
        with track_degradation() as degradation:
            try:
                await pipeline.acall(payment.status, order_id % 5)
            except Exception as exc:
                result.failed[type(exc).__name__] += 1
                second["failed"] += 1
                return
        if degradation.degraded:
            result.degraded += 1
            second["stale"] += 1
        else:
            result.full += 1
            second["full"] += 1

    def report(t: int) -> None:
        out.write(
            f"  {t:>6}  {second['calls']:>5}  {second['full']:>4}  {second['stale']:>5}  "
            f"{second['failed']:>6}  {second['RetryScheduled']:>7}  "
            f"{second['rejected:circuit_breaker']:>15}  {second['rejected:rate_limit']:>12}\n"
        )
        second.clear()

    tasks = []
    i = 0
    last_report = 0
    while loop.time() - started < duration:
        now_s = int(loop.time() - started)
        if now_s > last_report:
            report(now_s)
            last_report = now_s
        burst = 10 if i % 50 == 0 else 1
        for _ in range(burst):
            tasks.append(asyncio.create_task(one(i)))
            i += 1
        await asyncio.sleep(0.02)
    await asyncio.gather(*tasks)
    report(last_report + 1)
    return result


def run_demo(duration: float = 6.0, *, out: TextIO = sys.stdout, seed: int = 7) -> DemoResult:
    """Run the demo for ``duration`` seconds, print what happens, return the counts."""
    out.write("fournines policy demo (the full lab comes with the lab issue)\n")
    result = asyncio.run(_run(duration, out, seed))
    out.write("\nsummary\n")
    rows = [
        ("calls", result.calls),
        ("answered in full", result.full),
        ("answered from the stale cache", result.degraded),
        ("failed", sum(result.failed.values())),
        ("retries scheduled", result.events["RetryScheduled"]),
        ("rejected (breaker open or rate limited)", result.events["CallRejected"]),
        ("fallback answers", result.events["FallbackUsed"]),
        ("breaker transitions", " ".join(result.transitions) or "none"),
    ]
    for label, value in rows:
        out.write(f"  {label:<42} {value}\n")
    if result.failed:
        out.write(f"  failures by type: {dict(result.failed)}\n")
    return result

