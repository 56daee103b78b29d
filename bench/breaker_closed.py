"""Claim 1: a closed breaker costs close to nothing (sync and async).

Targets: fournines ≤ 1.5x the floor's added cost, ≤ 1/4 of the fastest peer.

Every breaker is closed, consecutive-failure style (threshold 5), and protects
the counting ``f`` / ``af`` of the harness. Run: ``.venv/bin/python bench/breaker_closed.py``.
"""

from __future__ import annotations

import warnings

import _harness as h
import fournines
from _floors import FloorBreaker

CLAIM = "closed breaker: fournines ≤ 1.5x floor's added cost, ≤ 1/4 of the fastest peer"
TARGET = h.Target(vs_floor=1.5, vs_fastest_peer=0.25,
                  text="≤ 1.5x its floor, ≤ 1/4 of the fastest peer")


def sync_group() -> h.Group:
    import circuitbreaker
    import purgatory
    import pybreaker
    import pyresilience
    from aiobreaker import CircuitBreaker as AioBreaker

    f = h.f
    cands: list[h.Candidate] = []

    fl = FloorBreaker()
    cands.append(h.Candidate("floor `b.call(f)` (fn, *args, **kw)", h.FLOOR, "b.call(f)",
                             {"b": fl}, lib="floor"))
    cands.append(h.Candidate("floor `b.call0(f)` (fn() only)", h.INFO, "b.call0(f)",
                             {"b": FloorBreaker()}, lib="floor"))
    cands.append(h.Candidate("floor decorator `g()`", h.FLOOR, "g()",
                             {"g": FloorBreaker().decorate(f)}, lib="floor"))

    cb = fournines.CircuitBreaker("bench")
    cands.append(h.Candidate("fournines `cb.call(f)`", h.OURS, "cb.call(f)", {"cb": cb},
                             lib="fournines", floor="floor `b.call(f)` (fn, *args, **kw)"))
    cands.append(h.Candidate("fournines decorator `g()`", h.OURS, "g()",
                             {"g": fournines.CircuitBreaker("bench-dec")(f)},
                             lib="fournines", floor="floor decorator `g()`"))
    cands.append(h.Candidate("fournines `cb.try_acquire()` + `permit.success()`", h.INFO,
                             "p = cb.try_acquire()\nf()\np.success()",
                             {"cb": fournines.CircuitBreaker("bench-2step")}, lib="fournines",
                             note="the two-step sans-I/O core, for reference"))

    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    cands.append(h.Candidate("pybreaker `cb.call(f)`", h.PEER, "cb.call(f)", {"cb": pb},
                             lib="pybreaker"))
    cands.append(h.Candidate("pybreaker decorator", h.PEER, "g()",
                             {"g": pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)(f)},
                             lib="pybreaker"))
    cands.append(h.Candidate("circuitbreaker decorator", h.PEER, "g()",
                             {"g": circuitbreaker.CircuitBreaker(failure_threshold=5,
                                                                 recovery_timeout=60,
                                                                 name="bench-sync")(f)},
                             lib="circuitbreaker"))
    cands.append(h.Candidate("aiobreaker `cb.call(f)` (sync API)", h.PEER, "cb.call(f)",
                             {"cb": AioBreaker(fail_max=5)}, lib="aiobreaker"))
    factory = purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)
    cands.append(h.Candidate("purgatory sync decorator", h.PEER, "g()",
                             {"g": factory("bench")(f)}, lib="purgatory"))
    cands.append(h.Candidate(
        "pyresilience `@resilient(circuit_breaker=…)`", h.PEER, "g()",
        {"g": pyresilience.resilient(
            circuit_breaker=pyresilience.CircuitBreakerConfig(failure_threshold=5))(f)},
        lib="pyresilience"))
    cands.append(h.Candidate("hyx", h.PEER, na="hyx is asyncio-only (no sync breaker)",
                             lib="hyx"))
    return h.Group("Claim 1 — closed breaker, sync", "sync", cands, TARGET, claim=CLAIM)


def async_group(loop: object) -> h.Group:
    import circuitbreaker
    import purgatory
    import pyresilience
    from aiobreaker import CircuitBreaker as AioBreaker
    from hyx.circuitbreaker import consecutive_breaker

    af = h.af
    cands: list[h.Candidate] = []
    cands.append(h.Candidate("floor `await b.acall(af)` (fn, *args, **kw)", h.FLOOR,
                             "await b.acall(af)", {"b": FloorBreaker()}, lib="floor"))
    cands.append(h.Candidate("floor `await b.acall0(af)` (fn() only)", h.INFO,
                             "await b.acall0(af)", {"b": FloorBreaker()}, lib="floor"))
    cands.append(h.Candidate("floor decorator `await g()`", h.FLOOR, "await g()",
                             {"g": FloorBreaker().adecorate(af)}, lib="floor"))

    cands.append(h.Candidate("fournines `await cb.acall(af)`", h.OURS, "await cb.acall(af)",
                             {"cb": fournines.CircuitBreaker("bench-a")}, lib="fournines",
                             floor="floor `await b.acall(af)` (fn, *args, **kw)"))
    cands.append(h.Candidate("fournines decorator `await g()`", h.OURS, "await g()",
                             {"g": fournines.CircuitBreaker("bench-adec")(af)}, lib="fournines",
                             floor="floor decorator `await g()`"))

    cands.append(h.Candidate("aiobreaker `await cb.call_async(af)`", h.PEER,
                             "await cb.call_async(af)", {"cb": AioBreaker(fail_max=5)},
                             lib="aiobreaker"))
    cands.append(h.Candidate("aiobreaker decorator", h.PEER, "await g()",
                             {"g": AioBreaker(fail_max=5)(af)}, lib="aiobreaker"))
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)
    cands.append(h.Candidate("purgatory decorator", h.PEER, "await g()",
                             {"g": factory("bench")(af)}, lib="purgatory"))
    hyx_cm = consecutive_breaker(failure_threshold=5, recovery_time_secs=60)
    cands.append(h.Candidate("hyx `@consecutive_breaker()`", h.PEER, "await g()",
                             {"g": consecutive_breaker(failure_threshold=5,
                                                       recovery_time_secs=60)(af)}, lib="hyx"))
    cands.append(h.Candidate("hyx `async with breaker:`", h.PEER,
                             "async with brk:\n    await af()", {"brk": hyx_cm}, lib="hyx"))
    cands.append(h.Candidate("circuitbreaker decorator (async)", h.PEER, "await g()",
                             {"g": circuitbreaker.CircuitBreaker(failure_threshold=5,
                                                                 recovery_timeout=60,
                                                                 name="bench-async")(af)},
                             lib="circuitbreaker"))
    cands.append(h.Candidate(
        "pyresilience `@resilient(circuit_breaker=…)` (async)", h.PEER, "await g()",
        {"g": pyresilience.resilient(
            circuit_breaker=pyresilience.CircuitBreakerConfig(failure_threshold=5))(af)},
        lib="pyresilience"))
    cands.append(h.Candidate("pybreaker (async)", h.PEER,
                             na="pybreaker's call_async is a Tornado coroutine (needs tornado, "
                                "not asyncio-native)", lib="pybreaker"))
    return h.Group("Claim 1 — closed breaker, async", "async", cands, TARGET, claim=CLAIM)


def groups() -> list[h.Group]:
    warnings.simplefilter("ignore", DeprecationWarning)
    loop = h.new_loop()
    sync = h.run_group(sync_group())
    agroup = h.build_in_loop(loop, lambda: async_group(loop))
    h.run_group(agroup, loop)
    loop.close()
    return [sync, agroup]


if __name__ == "__main__":
    h.main(groups, "Claim 1 — closed breaker")
