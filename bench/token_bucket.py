"""Claim 4: taking a token from a bucket that has tokens costs close to nothing.

Targets: sync (thread-safe) fournines ≤ 1/5 of the fastest sync peer; async,
fournines no slower than the fastest async peer (ratio ≤ 1).

Every limiter allows 10^9 calls per second (capacity 10^9), so it never runs
out. Each iteration takes a permit, checks it was granted (peers that return a
bool are checked with ``if not ...: _fail()``; fournines and the floor raise
when empty) and then calls the protected ``f`` / ``af``: the added ns is what
rate limiting adds to a call. Run: ``.venv/bin/python bench/token_bucket.py``.
"""

from __future__ import annotations

import warnings
from typing import Any

import _harness as h
import fournines
from _floors import FloorBucket, FloorBucketNoLock

RATE = 10**9
SYNC_TARGET = h.Target(vs_fastest_peer=0.2, text="≤ 1/5 of the fastest sync peer")
ASYNC_TARGET = h.Target(vs_fastest_peer=1.0, text="no slower than the fastest async peer")

GRANTED = "if not {acq}:\n    _fail()\n{call}"


def _limits_cancel_timer(storage: Any) -> Any:
    def after() -> None:
        # limits' MemoryStorage keeps re-arming a threading.Timer (10 ms) on every hit;
        # stop the pending one so it cannot wake up inside the next candidate's timing.
        storage.timer.cancel()
        storage.timer.join()

    return after


def sync_group() -> h.Group:
    import pyresilience
    from limits import RateLimitItemPerSecond
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter
    from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate, limiter_factory

    c: list[h.Candidate] = []
    c.append(h.Candidate("floor `b.try_acquire()` (threading.Lock)", h.FLOOR,
                         "b.try_acquire()\nf()", {"b": FloorBucket(RATE, RATE)}, lib="floor"))
    c.append(h.Candidate("floor without lock (not thread-safe)", h.INFO, "b.try_acquire()\nf()",
                         {"b": FloorBucketNoLock(RATE, RATE)}, lib="floor"))
    tb = fournines.TokenBucket(rate=RATE, capacity=RATE)
    c.append(h.Candidate("fournines `tb.try_acquire()`", h.OURS, "tb.try_acquire()\nf()",
                         {"tb": tb}, lib="fournines",
                         floor="floor `b.try_acquire()` (threading.Lock)"))
    c.append(h.Candidate("floor `b.call(f)`", h.FLOOR, "b.call(f)",
                         {"b": FloorBucket(RATE, RATE)}, lib="floor"))
    c.append(h.Candidate("fournines `tb.call(f)`", h.INFO, "tb.call(f)",
                         {"tb": fournines.TokenBucket(rate=RATE, capacity=RATE)},
                         lib="fournines", floor="floor `b.call(f)`",
                         note="the policy shell used by pipelines"))
    c.append(h.Candidate("fournines `Gcra.try_acquire()`", h.INFO, "g.try_acquire()\nf()",
                         {"g": fournines.Gcra(rate=RATE, burst=RATE)}, lib="fournines"))

    item = RateLimitItemPerSecond(RATE)
    st1 = MemoryStorage()
    c.append(h.Candidate("limits FixedWindow `hit()` (memory)", h.PEER,
                         GRANTED.format(acq="lim.hit(item, 'bench')", call="f()"),
                         {"lim": FixedWindowRateLimiter(st1), "item": item}, lib="limits",
                         after=_limits_cancel_timer(st1)))
    st2 = MemoryStorage()
    c.append(h.Candidate("limits SlidingWindowCounter `hit()` (memory)", h.PEER,
                         GRANTED.format(acq="lim.hit(item, 'bench')", call="f()"),
                         {"lim": SlidingWindowCounterRateLimiter(st2), "item": item},
                         lib="limits", after=_limits_cancel_timer(st2)))
    c.append(h.Candidate(
        "limits MovingWindow `hit()` (memory)", h.PEER, lib="limits",
        na="its in-memory moving window inserts every hit at the front of a Python list "
           "(`events[key][:0] = [...]`), O(hits in window) per call: with a limit that never "
           "runs out the cost has no fixed value (it grows with the loop length)"))

    bucket = InMemoryBucket([Rate(RATE, Duration.SECOND)])
    c.append(h.Candidate("pyrate-limiter `try_acquire(blocking=False)` (InMemoryBucket)", h.PEER,
                         GRANTED.format(acq="lim.try_acquire('bench', blocking=False)",
                                        call="f()"),
                         {"lim": Limiter(bucket)}, lib="pyrate-limiter",
                         before=bucket.flush,
                         note="the bucket keeps one RateItem per call; it is flushed before "
                              "each measurement (outside the timing)"))
    c.append(h.Candidate(
        "pyrate-limiter `try_acquire(blocking=False)` (token bucket)", h.PEER,
        GRANTED.format(acq="lim.try_acquire('bench', blocking=False)", call="f()"),
        {"lim": limiter_factory.create_token_bucket_limiter(rate_per_duration=RATE,
                                                            duration=Duration.SECOND)},
        lib="pyrate-limiter"))
    c.append(h.Candidate("pyresilience `RateLimiter.acquire()`", h.PEER,
                         GRANTED.format(acq="rl.acquire()", call="f()"),
                         {"rl": pyresilience.RateLimiter(
                             pyresilience.RateLimiterConfig(max_calls=RATE, period=1.0))},
                         lib="pyresilience"))
    c.append(h.Candidate("aiolimiter / hyx", h.PEER, lib="-",
                         na="asyncio-only (no sync limiter)"))
    return h.Group("Claim 4 — token bucket with tokens, sync (thread-safe)", "sync", c,
                   SYNC_TARGET,
                   claim="sync token bucket: fournines ≤ 1/5 of the fastest sync peer")


def async_group() -> h.Group:
    import pyresilience
    from aiolimiter import AsyncLimiter
    from hyx.ratelimit import tokenbucket
    from limits import RateLimitItemPerSecond
    from limits.aio.storage import MemoryStorage
    from limits.aio.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter
    from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate, limiter_factory

    c: list[h.Candidate] = []
    c.append(h.Candidate("floor `b.try_acquire()` (threading.Lock)", h.FLOOR,
                         "b.try_acquire()\nawait af()", {"b": FloorBucket(RATE, RATE)},
                         lib="floor"))
    c.append(h.Candidate("floor without lock (enough for one loop thread)", h.INFO,
                         "b.try_acquire()\nawait af()", {"b": FloorBucketNoLock(RATE, RATE)},
                         lib="floor"))
    c.append(h.Candidate("fournines `tb.try_acquire()` in a coroutine", h.OURS,
                         "tb.try_acquire()\nawait af()",
                         {"tb": fournines.TokenBucket(rate=RATE, capacity=RATE)},
                         lib="fournines", floor="floor `b.try_acquire()` (threading.Lock)"))
    c.append(h.Candidate("floor `await b.acall(af)`", h.FLOOR, "await b.acall(af)",
                         {"b": FloorBucket(RATE, RATE)}, lib="floor"))
    c.append(h.Candidate("fournines `await tb.acall(af)`", h.INFO, "await tb.acall(af)",
                         {"tb": fournines.TokenBucket(rate=RATE, capacity=RATE)},
                         lib="fournines", floor="floor `await b.acall(af)`",
                         note="the policy shell used by pipelines"))
    c.append(h.Candidate("fournines `await tb.aacquire()`", h.INFO,
                         "await tb.aacquire()\nawait af()",
                         {"tb": fournines.TokenBucket(rate=RATE, capacity=RATE)},
                         lib="fournines", note="waiting form (max_wait), reads the deadline"))

    al = AsyncLimiter(RATE, 1)
    c.append(h.Candidate("aiolimiter `async with limiter:`", h.PEER,
                         "async with lim:\n    await af()", {"lim": al}, lib="aiolimiter"))
    c.append(h.Candidate("aiolimiter `has_capacity()` + `await acquire()`", h.PEER,
                         "if not lim.has_capacity():\n    _fail()\nawait lim.acquire()\n"
                         "await af()", {"lim": AsyncLimiter(RATE, 1)}, lib="aiolimiter"))
    bucket = InMemoryBucket([Rate(RATE, Duration.SECOND)])
    c.append(h.Candidate(
        "pyrate-limiter `await try_acquire_async(blocking=False)` (InMemoryBucket)", h.PEER,
        GRANTED.format(acq="await lim.try_acquire_async('bench', blocking=False)",
                       call="await af()"),
        {"lim": Limiter(bucket)}, lib="pyrate-limiter", before=bucket.flush))
    c.append(h.Candidate(
        "pyrate-limiter `await try_acquire_async(blocking=False)` (token bucket)", h.PEER,
        GRANTED.format(acq="await lim.try_acquire_async('bench', blocking=False)",
                       call="await af()"),
        {"lim": limiter_factory.create_token_bucket_limiter(rate_per_duration=RATE,
                                                            duration=Duration.SECOND)},
        lib="pyrate-limiter"))
    item = RateLimitItemPerSecond(RATE)
    c.append(h.Candidate("limits.aio FixedWindow `await hit()` (memory)", h.PEER,
                         GRANTED.format(acq="await lim.hit(item, 'bench')", call="await af()"),
                         {"lim": FixedWindowRateLimiter(MemoryStorage()), "item": item},
                         lib="limits"))
    c.append(h.Candidate("limits.aio SlidingWindowCounter `await hit()` (memory)", h.PEER,
                         GRANTED.format(acq="await lim.hit(item, 'bench')", call="await af()"),
                         {"lim": SlidingWindowCounterRateLimiter(MemoryStorage()),
                          "item": item}, lib="limits"))
    c.append(h.Candidate("hyx `async with tokenbucket(...)`", h.PEER,
                         "async with tb:\n    await af()",
                         {"tb": tokenbucket(max_executions=RATE, per_time_secs=1)}, lib="hyx"))
    c.append(h.Candidate("pyresilience `await AsyncRateLimiter.acquire()`", h.PEER,
                         GRANTED.format(acq="await rl.acquire()", call="await af()"),
                         {"rl": pyresilience.AsyncRateLimiter(
                             pyresilience.RateLimiterConfig(max_calls=RATE, period=1.0))},
                         lib="pyresilience"))
    return h.Group("Claim 4 — token bucket with tokens, async", "async", c, ASYNC_TARGET,
                   claim="async token bucket: fournines no slower than the fastest async peer")


def groups() -> list[h.Group]:
    warnings.simplefilter("ignore", DeprecationWarning)
    loop = h.new_loop()
    sync = h.run_group(sync_group())
    agroup = h.build_in_loop(loop, async_group)
    h.run_group(agroup, loop)
    loop.close()
    return [sync, agroup]


if __name__ == "__main__":
    h.main(groups, "Claim 4 — token bucket with tokens available")
