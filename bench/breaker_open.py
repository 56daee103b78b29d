"""Claim 2: an open breaker rejects cheaply and without leaking (sync and async).

Target: fournines' added ns per rejected call ≤ 1/2 of the fastest peer.
Each candidate calls an open breaker and catches its rejection; the protected
function must never run (checked), and a call that returns instead of raising
fails the run. The baseline is still the bare call ``f()`` / ``await af()``,
so "added ns" is what a rejected call costs over calling the function.

Memory: for each library, 100 000 rejected calls of an open breaker, measured
with tracemalloc (net traced bytes still allocated after ``gc.collect()``) and,
separately without tracemalloc, as RSS growth. Reported per rejection.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
import tracemalloc
import warnings
from datetime import timedelta
from typing import Any

import _harness as h
import fournines
from _floors import FloorBreaker, FloorOpenError

CLAIM = "open breaker rejecting: fournines ≤ 1/2 of the fastest peer's added cost"
TARGET = h.Target(vs_fastest_peer=0.5, text="≤ 1/2 of the fastest peer")
MEM_CALLS = int(os.environ.get("BENCH_MEM_CALLS", "100000"))  # RSS pass
TRACE_CALLS = int(os.environ.get("BENCH_TRACE_CALLS", "20000"))  # tracemalloc pass
HOUR = 3600

REJECT = """
try:
    {call}
except _E:
    pass
else:
    _fail()
"""


def flaky() -> int:
    """Fails while tripping; never called once the breaker is open."""
    raise h.Boom("down")


async def aflaky() -> int:
    raise h.Boom("down")


def _trip(call: Any, times: int = 5) -> None:
    for _ in range(times):
        with contextlib.suppress(Exception):
            call()


async def _atrip(call: Any, times: int = 5) -> None:
    for _ in range(times):
        with contextlib.suppress(Exception):
            await call()


PURGATORY_NOTE = (
    "purgatory re-raises one stored `OpenedState` exception instance (`raise self`), so every "
    "rejection prepends its frames to that instance's `__traceback__` chain: the chain and the "
    "frames it holds grow without bound (see the memory table). Before each measurement the "
    "harness drops that chain (`__traceback__ = None`) to keep this process's memory bounded; "
    "the cost per rejection does not depend on the chain's length."
)


def _purgatory_reset(context: Any) -> Any:
    state = context._state

    def reset() -> None:
        assert state is context._state, "purgatory breaker left the open state"
        state.__traceback__ = None

    return reset


def cand(name: str, role: str, call: str, exc: type[BaseException], env: dict[str, Any],
         lib: str, **kw: Any) -> h.Candidate:
    return h.Candidate(name, role, REJECT.format(call=call), {"_E": exc, **env}, lib=lib,
                       calls_per_iter=0, **kw)


def sync_group() -> h.Group:
    import circuitbreaker
    import purgatory
    import pybreaker
    import pyresilience
    from aiobreaker import CircuitBreaker as AioBreaker
    from aiobreaker import CircuitBreakerError as AioError
    from purgatory.domain.model import OpenedState

    cands: list[h.Candidate] = []
    fl = FloorBreaker(reset_timeout=HOUR)
    _trip(lambda: fl.call(flaky))
    fl_dec = FloorBreaker(reset_timeout=HOUR)
    g_fl = fl_dec.decorate(flaky)
    _trip(g_fl)
    cands.append(cand("floor `b.call(f)`", h.FLOOR, "b.call(f)", FloorOpenError, {"b": fl},
                      "floor"))
    cands.append(cand("floor decorator `g()`", h.FLOOR, "g()", FloorOpenError, {"g": g_fl},
                      "floor"))

    cb = fournines.CircuitBreaker("open", reset_timeout=HOUR)
    _trip(lambda: cb.call(flaky))
    cb_dec = fournines.CircuitBreaker("open-dec", reset_timeout=HOUR)
    g = cb_dec(flaky)
    _trip(g)
    cb2 = fournines.CircuitBreaker("open-2", reset_timeout=HOUR)
    _trip(lambda: cb2.call(flaky))
    assert cb.state is fournines.State.OPEN and cb_dec.state is fournines.State.OPEN
    err = fournines.CircuitOpenError
    cands.append(cand("fournines `cb.call(f)`", h.OURS, "cb.call(f)", err, {"cb": cb},
                      "fournines", floor="floor `b.call(f)`"))
    cands.append(cand("fournines decorator `g()`", h.OURS, "g()", err, {"g": g}, "fournines",
                      floor="floor decorator `g()`"))
    cands.append(cand("fournines `cb.try_acquire()`", h.INFO, "cb.try_acquire()", err,
                      {"cb": cb2}, "fournines"))

    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=HOUR)
    _trip(lambda: pb.call(flaky))
    assert pb.current_state == "open"
    cands.append(cand("pybreaker `cb.call(f)`", h.PEER, "cb.call(f)",
                      pybreaker.CircuitBreakerError, {"cb": pb}, "pybreaker"))
    cands.append(cand("pybreaker decorator", h.PEER, "g()", pybreaker.CircuitBreakerError,
                      {"g": pb(flaky)}, "pybreaker"))

    ck = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=HOUR,
                                       name="open-sync")
    g_ck = ck(flaky)
    _trip(g_ck)
    assert ck.opened
    cands.append(cand("circuitbreaker decorator", h.PEER, "g()",
                      circuitbreaker.CircuitBreakerError, {"g": g_ck}, "circuitbreaker"))

    ab = AioBreaker(fail_max=5, timeout_duration=timedelta(hours=1))
    _trip(lambda: ab.call(flaky))
    cands.append(cand("aiobreaker `cb.call(f)` (sync API)", h.PEER, "cb.call(f)", AioError,
                      {"cb": ab}, "aiobreaker"))

    pf = purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=HOUR)
    g_pg = pf("open-sync")(flaky)
    _trip(g_pg)
    cands.append(cand("purgatory sync decorator", h.PEER, "g()", OpenedState, {"g": g_pg},
                      "purgatory", before=_purgatory_reset(pf.uow.contexts.get("open-sync")),
                      note=PURGATORY_NOTE))

    g_pr = pyresilience.resilient(circuit_breaker=pyresilience.CircuitBreakerConfig(
        failure_threshold=5, recovery_timeout=HOUR))(flaky)
    _trip(g_pr)
    cands.append(cand("pyresilience `@resilient(circuit_breaker=…)`", h.PEER, "g()",
                      pyresilience.CircuitOpenError, {"g": g_pr}, "pyresilience"))
    cands.append(h.Candidate("hyx", h.PEER, na="hyx is asyncio-only (no sync breaker)",
                             lib="hyx"))
    return h.Group("Claim 2 — open breaker rejecting, sync", "sync", cands, TARGET, claim=CLAIM)


async def async_group() -> h.Group:
    import circuitbreaker
    import purgatory
    import pyresilience
    from aiobreaker import CircuitBreaker as AioBreaker
    from aiobreaker import CircuitBreakerError as AioError
    from hyx.circuitbreaker import consecutive_breaker
    from hyx.circuitbreaker.exceptions import BreakerFailing
    from purgatory.domain.model import OpenedState

    cands: list[h.Candidate] = []
    fl = FloorBreaker(reset_timeout=HOUR)
    await _atrip(lambda: fl.acall(aflaky))
    fl_dec = FloorBreaker(reset_timeout=HOUR)
    g_fl = fl_dec.adecorate(aflaky)
    await _atrip(g_fl)
    cands.append(cand("floor `await b.acall(af)`", h.FLOOR, "await b.acall(af)",
                      FloorOpenError, {"b": fl}, "floor"))
    cands.append(cand("floor decorator `await g()`", h.FLOOR, "await g()", FloorOpenError,
                      {"g": g_fl}, "floor"))

    cb = fournines.CircuitBreaker("aopen", reset_timeout=HOUR)
    await _atrip(lambda: cb.acall(aflaky))
    cb_dec = fournines.CircuitBreaker("aopen-dec", reset_timeout=HOUR)
    g = cb_dec(aflaky)
    await _atrip(g)
    assert cb.state is fournines.State.OPEN and cb_dec.state is fournines.State.OPEN
    err = fournines.CircuitOpenError
    cands.append(cand("fournines `await cb.acall(af)`", h.OURS, "await cb.acall(af)", err,
                      {"cb": cb}, "fournines", floor="floor `await b.acall(af)`"))
    cands.append(cand("fournines decorator `await g()`", h.OURS, "await g()", err, {"g": g},
                      "fournines", floor="floor decorator `await g()`"))

    ab = AioBreaker(fail_max=5, timeout_duration=timedelta(hours=1))
    await _atrip(lambda: ab.call_async(aflaky))
    cands.append(cand("aiobreaker `await cb.call_async(af)`", h.PEER, "await cb.call_async(af)",
                      AioError, {"cb": ab}, "aiobreaker"))

    pf = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=HOUR)
    g_pg = pf("open-async")(aflaky)
    await _atrip(g_pg)
    cands.append(cand("purgatory decorator", h.PEER, "await g()", OpenedState, {"g": g_pg},
                      "purgatory", before=_purgatory_reset(await pf.uow.contexts.get("open-async")),
                      note=PURGATORY_NOTE))

    hb = consecutive_breaker(failure_threshold=5, recovery_time_secs=HOUR)
    g_hx = hb(aflaky)
    await _atrip(g_hx)
    cands.append(cand("hyx `@consecutive_breaker()`", h.PEER, "await g()", BreakerFailing,
                      {"g": g_hx}, "hyx"))
    cands.append(cand("hyx `async with breaker:`", h.PEER,
                      "async with brk:\n        await af()", BreakerFailing, {"brk": hb}, "hyx"))

    ck = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=HOUR,
                                       name="open-async")
    g_ck = ck(aflaky)
    await _atrip(g_ck)
    cands.append(cand("circuitbreaker decorator (async)", h.PEER, "await g()",
                      circuitbreaker.CircuitBreakerError, {"g": g_ck}, "circuitbreaker"))

    g_pr = pyresilience.resilient(circuit_breaker=pyresilience.CircuitBreakerConfig(
        failure_threshold=5, recovery_timeout=HOUR))(aflaky)
    await _atrip(g_pr)
    cands.append(cand("pyresilience `@resilient(circuit_breaker=…)` (async)", h.PEER,
                      "await g()", pyresilience.CircuitOpenError, {"g": g_pr}, "pyresilience"))
    cands.append(h.Candidate("pybreaker (async)", h.PEER,
                             na="pybreaker's call_async is a Tornado coroutine", lib="pybreaker"))
    return h.Group("Claim 2 — open breaker rejecting, async", "async", cands, TARGET, claim=CLAIM)


# --- memory ---------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _run(inner: Any, n: int, kind: str, loop: Any) -> None:
    if kind == "sync":
        inner(n, time.perf_counter_ns)
    else:
        loop.run_until_complete(inner(n, time.perf_counter_ns))


def _b(x: float) -> str:
    return "0" if abs(x) < 0.05 else f"{x:,.1f}"


def memory(groups: list[h.Group], loop: Any) -> str:
    rows = [f"| library / form | kind | RSS bytes / rejection ({MEM_CALLS:,} calls) | "
            f"tracemalloc bytes / rejection ({TRACE_CALLS:,} calls) | "
            "largest growth site (tracemalloc) |", "|---|---|---:|---:|---|"]
    leaks: list[str] = []
    for g in groups:
        for c in g.candidates:
            if c.na is not None or c.role in (h.INFO, h.FLOOR):
                continue
            inner = h._compile(c, g.kind)
            if c.before is not None:
                c.before()
            _run(inner, 1000, g.kind, loop)  # warm up: lazily built state is not a leak
            gc.collect()
            rss0 = _rss()
            _run(inner, MEM_CALLS, g.kind, loop)
            gc.collect()
            rss_per = (_rss() - rss0) / MEM_CALLS
            if c.before is not None:
                c.before()
            gc.collect()
            tracemalloc.start(1)
            gc.collect()
            snap0 = tracemalloc.take_snapshot()
            cur0 = tracemalloc.get_traced_memory()[0]
            _run(inner, TRACE_CALLS, g.kind, loop)
            gc.collect()
            cur1 = tracemalloc.get_traced_memory()[0]
            snap1 = tracemalloc.take_snapshot()
            tracemalloc.stop()
            per = (cur1 - cur0) / TRACE_CALLS
            site = ""
            if per > 8:
                stats = snap1.compare_to(snap0, "lineno")
                top = stats[0]
                frame = top.traceback[0]
                path = frame.filename.split("site-packages/")[-1]
                site = f"`{path}:{frame.lineno}` (+{top.size_diff / TRACE_CALLS:,.0f} B/rejection)"
                leaks.append(f"{c.name}: {max(per, rss_per):,.0f} B/rejection")
            if c.before is not None:
                c.before()
            rows.append(f"| {c.name} | {g.kind} | {_b(rss_per)} | {_b(per)} | {site} |")
            print(f"  [memory {c.name}: {per:.1f} B/rejection]", file=sys.stderr)
    text = [f"### Claim 2 — memory of {MEM_CALLS:,} rejected calls per library", "",
            f"RSS growth over {MEM_CALLS:,} rejections of an open breaker (gc enabled, "
            f"`gc.collect()` before reading), then net bytes still allocated after "
            f"{TRACE_CALLS:,} more rejections and a `gc.collect()` under tracemalloc (a smaller "
            "count because tracemalloc slows every allocation ~5x); both divided by the "
            "number of rejections. A warm-up of 1 000 rejections runs first; floors are "
            "left out.", "", *rows]
    if leaks:
        text += ["", "Growing: " + "; ".join(leaks) + "."]
    return "\n".join(text) + "\n"


def groups() -> list[h.Group]:
    warnings.simplefilter("ignore", DeprecationWarning)
    loop = h.new_loop()
    sync = h.run_group(sync_group())
    agroup = loop.run_until_complete(async_group())
    h.run_group(agroup, loop)
    groups = [sync, agroup]
    mem = memory(groups, loop)
    h.register_extra(mem)
    loop.close()
    return groups


if __name__ == "__main__":
    h.main(groups, "Claim 2 — open breaker")
