"""Claim 5: a whole pipeline stays cheap on the happy path.

Async: timeout(10 s) + retry(3 attempts) + breaker + token bucket (10^9/s) +
bulkhead(10), outermost first. Target: fournines ``Pipeline.acall`` ≤ 1/3 of the
same stack built from hyx decorators (hyx has all five).

Sync: retry + breaker + token bucket + bulkhead (no timeout: pyresilience's sync
timeout runs the call in a thread pool, fournines' sets a deadline only).
Target: fournines ``Pipeline.call`` ≤ 1/5 of pyresilience's ``@resilient`` with
the same four patterns.
Run: ``.venv/bin/python bench/pipeline.py``.
"""

from __future__ import annotations

import warnings

import _harness as h
import fournines
from _floors import FloorPipeline

RATE = 10**9


def _stack(timeout: bool) -> fournines.Pipeline:
    policies: list[fournines.Policy] = []
    if timeout:
        policies.append(fournines.Timeout(10.0))
    policies += [
        fournines.Retry(attempts=3),
        fournines.CircuitBreaker("pipeline"),
        fournines.TokenBucket(rate=RATE, capacity=RATE),
        fournines.Bulkhead(max_concurrent=10),
    ]
    return fournines.Pipeline(*policies)


def async_group() -> h.Group:
    import pyresilience as pr
    from hyx.bulkhead import bulkhead
    from hyx.circuitbreaker import consecutive_breaker
    from hyx.ratelimit import tokenbucket
    from hyx.retry import retry
    from hyx.timeout import timeout

    af = h.af
    c: list[h.Candidate] = []
    c.append(h.Candidate("floor: all five inlined in one coroutine", h.FLOOR,
                         "await p.acall(af)", {"p": FloorPipeline()}, lib="floor",
                         note="one frame, no deadline context; the timeout is "
                              "`loop.call_at(deadline, task.cancel)`"))
    p = _stack(timeout=True)
    c.append(h.Candidate("fournines `await Pipeline(...).acall(af)`", h.OURS, "await p.acall(af)",
                         {"p": p}, lib="fournines", floor="floor: all five inlined in one coroutine"))
    c.append(h.Candidate("fournines pipeline decorator `await g()`", h.OURS, "await g()",
                         {"g": _stack(timeout=True)(af)}, lib="fournines",
                         floor="floor: all five inlined in one coroutine"))

    hyx_fn = timeout(10.0)(
        retry(attempts=3)(
            consecutive_breaker(failure_threshold=5, recovery_time_secs=60)(
                tokenbucket(max_executions=RATE, per_time_secs=1)(
                    bulkhead(max_concurrency=10, max_capacity=10)(af)))))
    c.append(h.Candidate("hyx decorators timeout∘retry∘breaker∘tokenbucket∘bulkhead", h.PEER,
                         "await g()", {"g": hyx_fn}, lib="hyx",
                         note="hyx's timeout runs every call in a new task under "
                              "`asyncio.wait_for`"))
    pr_fn = pr.resilient(
        timeout=pr.TimeoutConfig(seconds=10.0, per_attempt=False),
        retry=pr.RetryConfig(max_attempts=3),
        circuit_breaker=pr.CircuitBreakerConfig(failure_threshold=5),
        rate_limiter=pr.RateLimiterConfig(max_calls=RATE, period=1.0),
        bulkhead=pr.BulkheadConfig(max_concurrent=10),
    )(af)
    c.append(h.Candidate("pyresilience `@resilient(timeout, retry, breaker, limiter, bulkhead)`",
                         h.PEER, "await g()", {"g": pr_fn}, lib="pyresilience",
                         note="its async timeout is `asyncio.wait_for` (a new task per call in "
                              "3.11)"))
    return h.Group("Claim 5 — async pipeline: timeout + retry + breaker + limiter + bulkhead",
                   "async", c,
                   h.Target(vs_lib={"hyx": 1 / 3},
                            text="≤ 1/3 of hyx (fastest-peer and floor ratios shown for "
                                 "information)"),
                   claim="async pipeline: fournines ≤ 1/3 of the same stack in hyx")


def sync_group() -> h.Group:
    import pyresilience as pr

    f = h.f
    c: list[h.Candidate] = []
    c.append(h.Candidate("floor: all four inlined in one frame", h.FLOOR, "p.call(f)",
                         {"p": FloorPipeline()}, lib="floor"))
    c.append(h.Candidate("fournines `Pipeline(...).call(f)`", h.OURS, "p.call(f)",
                         {"p": _stack(timeout=False)}, lib="fournines",
                         floor="floor: all four inlined in one frame"))
    c.append(h.Candidate("fournines pipeline decorator `g()`", h.OURS, "g()",
                         {"g": _stack(timeout=False)(f)}, lib="fournines",
                         floor="floor: all four inlined in one frame"))
    pr_fn = pr.resilient(
        retry=pr.RetryConfig(max_attempts=3),
        circuit_breaker=pr.CircuitBreakerConfig(failure_threshold=5),
        rate_limiter=pr.RateLimiterConfig(max_calls=RATE, period=1.0),
        bulkhead=pr.BulkheadConfig(max_concurrent=10),
    )(f)
    c.append(h.Candidate("pyresilience `@resilient(retry, breaker, limiter, bulkhead)`", h.PEER,
                         "g()", {"g": pr_fn}, lib="pyresilience"))
    c.append(h.Candidate("hyx", h.PEER, na="hyx is asyncio-only", lib="hyx"))
    return h.Group("Claim 5 — sync pipeline: retry + breaker + limiter + bulkhead", "sync", c,
                   h.Target(vs_lib={"pyresilience": 1 / 5}, text="≤ 1/5 of pyresilience"),
                   claim="sync pipeline: fournines ≤ 1/5 of pyresilience's equivalent")


def groups() -> list[h.Group]:
    warnings.simplefilter("ignore", DeprecationWarning)
    loop = h.new_loop()
    agroup = h.build_in_loop(loop, async_group)
    h.run_group(agroup, loop)
    sync = h.run_group(sync_group())
    loop.close()
    return [agroup, sync]


if __name__ == "__main__":
    h.main(groups, "Claim 5 — whole pipelines")
