"""Where the time goes on the paths that missed their targets (evidence for RESULTS.md).

Not a claim: it decomposes fournines hot paths into their parts with the same
interleaved harness (so the parts are comparable with the claim tables), and
prints a cProfile of the pipelines. Run: ``.venv/bin/python bench/profile_misses.py``.

Sections:

1. open breaker, sync and async: building the rejection (Python ``__init__`` vs
   ``new_rejection``), raising it in place or through frames / a coroutine,
   ``try_acquire`` alone, ``call``/``acall`` and the decorators, next to the floors
   and the fastest peer (circuitbreaker);
2. forwarding layers: a bare ``*args, **kwargs`` wrapper, a pipeline layer
   (``functools.partial`` hop + ``call(fn, *args, **kwargs)`` frame), the decorators;
3. the sync token bucket: a lock acquire+release alone, next to the floors,
   fournines and the fastest sync peer (pyresilience);
4. pipelines: every policy of the pipeline alone, through its ``call``/``acall``
   shell, next to the whole pipeline (their sum vs the pipeline) and the peer;
5. cProfile of ``Pipeline.call``, ``Pipeline.acall`` and an open ``call``.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import pstats
import threading
import warnings

import _harness as h
import fournines
from _floors import FloorBreaker, FloorBucket, FloorBucketNoLock, FloorOpenError, FloorPipeline
from fournines import CircuitOpenError
from fournines._deadline import push_deadline, reset_deadline
from fournines._errors import new_rejection

RATE = 10**9


def _open_breaker() -> fournines.CircuitBreaker:
    cb = fournines.CircuitBreaker("open", reset_timeout=3600)
    for _ in range(5):
        with contextlib.suppress(h.Boom):
            cb.call(h.failing)
    assert cb.state is fournines.State.OPEN
    return cb


def _raise_1(e: type[BaseException]) -> None:
    raise e("x", 1.0)


def _raise_3(e: type[BaseException]) -> None:
    _raise_2(e)


def _raise_2(e: type[BaseException]) -> None:
    _raise_1(e)


def _raise_new_1(e: type[BaseException]) -> None:
    raise new_rejection(e, "x", 1.0)


async def _afailing() -> int:
    raise h.Boom("down")


async def _araise_floor() -> None:
    raise FloorOpenError(1.0)


async def _araise_new() -> None:
    raise new_rejection(CircuitOpenError, "x", 1.0)


async def _araise_new_args(*args: object, **kwargs: object) -> None:
    raise new_rejection(CircuitOpenError, "x", 1.0)


def open_group() -> h.Group:
    import circuitbreaker

    catch = "try:\n    {}\nexcept _E:\n    pass\nelse:\n    _fail()"
    fl = FloorBreaker(reset_timeout=3600)
    g_fl = FloorBreaker(reset_timeout=3600).decorate(h.failing)
    g_cb = fournines.CircuitBreaker("open-dec", reset_timeout=3600)(h.failing)
    g_ck = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=3600,
                                         name="profile-open")(h.failing)
    for call in (lambda: fl.call(h.failing), g_fl, g_cb, g_ck):
        for _ in range(5):
            with contextlib.suppress(h.Boom):
                call()
    c = [
        h.Candidate("build `FloorOpenError(x, 1.0)` (C-level __init__)", h.INFO,
                    "FloorOpenError('x', 1.0)\nf()", {"FloorOpenError": FloorOpenError}),
        h.Candidate("build `CircuitOpenError(x, 1.0)` (Python __init__)", h.INFO,
                    "CircuitOpenError('x', 1.0)\nf()", {"CircuitOpenError": CircuitOpenError}),
        h.Candidate("build `new_rejection(CircuitOpenError, x, 1.0)` (no __init__)", h.INFO,
                    "nr(CircuitOpenError, 'x', 1.0)\nf()",
                    {"CircuitOpenError": CircuitOpenError, "nr": new_rejection}),
        h.Candidate("raise+catch FloorOpenError in place", h.INFO,
                    catch.format("raise _E('x', 1.0)"), {"_E": FloorOpenError},
                    calls_per_iter=0),
        h.Candidate("raise+catch CircuitOpenError in place", h.INFO,
                    catch.format("raise _E('x', 1.0)"), {"_E": CircuitOpenError},
                    calls_per_iter=0),
        h.Candidate("raise+catch `new_rejection(CircuitOpenError, …)` in place", h.INFO,
                    catch.format("raise nr(_E, 'x', 1.0)"),
                    {"_E": CircuitOpenError, "nr": new_rejection}, calls_per_iter=0),
        h.Candidate("`new_rejection(CircuitOpenError, …)` raised 1 frame down", h.INFO,
                    catch.format("r1(_E)"), {"_E": CircuitOpenError, "r1": _raise_new_1},
                    calls_per_iter=0),
        h.Candidate("CircuitOpenError raised 1 frame down", h.INFO,
                    catch.format("r1(_E)"), {"_E": CircuitOpenError, "r1": _raise_1},
                    calls_per_iter=0),
        h.Candidate("CircuitOpenError raised 3 frames down", h.INFO,
                    catch.format("r3(_E)"), {"_E": CircuitOpenError, "r3": _raise_3},
                    calls_per_iter=0),
        h.Candidate("floor `b.call(f)` (open)", h.FLOOR, catch.format("b.call(f)"),
                    {"_E": FloorOpenError, "b": fl}, calls_per_iter=0),
        h.Candidate("floor decorator `g()` (open)", h.FLOOR, catch.format("g()"),
                    {"_E": FloorOpenError, "g": g_fl}, calls_per_iter=0),
        h.Candidate("fournines `cb._reject('open', 1.0)` (build only)", h.INFO,
                    "cb._reject('open', 1.0)\nf()", {"cb": _open_breaker()}),
        h.Candidate("fournines `cb.try_acquire()` (open)", h.INFO,
                    catch.format("cb.try_acquire()"),
                    {"_E": CircuitOpenError, "cb": _open_breaker()}, calls_per_iter=0),
        h.Candidate("fournines `cb.call(f)` (open)", h.INFO, catch.format("cb.call(f)"),
                    {"_E": CircuitOpenError, "cb": _open_breaker()}, calls_per_iter=0),
        h.Candidate("fournines decorator `g()` (open)", h.INFO, catch.format("g()"),
                    {"_E": CircuitOpenError, "g": g_cb}, calls_per_iter=0),
        h.Candidate("circuitbreaker decorator (open)", h.PEER, catch.format("g()"),
                    {"_E": circuitbreaker.CircuitBreakerError, "g": g_ck}, calls_per_iter=0),
    ]
    return h.Group("Open breaker, decomposed (sync)", "sync", c,
                   notes=["rows that only build an object also call `f()` so the counted "
                          "call matches the baseline"])


async def open_async_group() -> h.Group:
    import circuitbreaker

    catch = "try:\n    {}\nexcept _E:\n    pass\nelse:\n    _fail()"
    fl = FloorBreaker(reset_timeout=3600)
    fl_dec = FloorBreaker(reset_timeout=3600)
    g_fl = fl_dec.adecorate(_afailing)
    cb = fournines.CircuitBreaker("aopen", reset_timeout=3600)
    g_cb = fournines.CircuitBreaker("aopen-dec", reset_timeout=3600)(_afailing)
    ck = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=3600,
                                       name="profile-aopen")
    g_ck = ck(_afailing)
    for call in (lambda: fl.acall(_afailing), g_fl, lambda: cb.acall(_afailing), g_cb, g_ck):
        for _ in range(5):
            with contextlib.suppress(Exception):
                await call()
    assert cb.state is fournines.State.OPEN and ck.opened
    c = [
        h.Candidate("`async def` raising `FloorOpenError(1.0)`", h.INFO, catch.format("await r()"),
                    {"_E": FloorOpenError, "r": _araise_floor}, calls_per_iter=0),
        h.Candidate("`async def` raising `new_rejection(CircuitOpenError, …)`", h.INFO,
                    catch.format("await r()"), {"_E": CircuitOpenError, "r": _araise_new},
                    calls_per_iter=0),
        h.Candidate("`async def (*a, **kw)` raising `new_rejection(…)`", h.INFO,
                    catch.format("await r()"), {"_E": CircuitOpenError, "r": _araise_new_args},
                    calls_per_iter=0),
        h.Candidate("floor `await b.acall(af)` (open)", h.FLOOR, catch.format("await b.acall(af)"),
                    {"_E": FloorOpenError, "b": fl}, calls_per_iter=0),
        h.Candidate("floor decorator `await g()` (open)", h.FLOOR, catch.format("await g()"),
                    {"_E": FloorOpenError, "g": g_fl}, calls_per_iter=0),
        h.Candidate("fournines `await cb.acall(af)` (open)", h.INFO,
                    catch.format("await cb.acall(af)"), {"_E": CircuitOpenError, "cb": cb},
                    calls_per_iter=0),
        h.Candidate("fournines decorator `await g()` (open)", h.INFO, catch.format("await g()"),
                    {"_E": CircuitOpenError, "g": g_cb}, calls_per_iter=0),
        h.Candidate("circuitbreaker decorator (async, open)", h.PEER, catch.format("await g()"),
                    {"_E": circuitbreaker.CircuitBreakerError, "g": g_ck}, calls_per_iter=0),
    ]
    return h.Group("Open breaker, decomposed (async)", "async", c)


def _fwd(fn: object) -> object:
    def wrapper(*args: object, **kwargs: object) -> object:
        return fn(*args, **kwargs)  # type: ignore[operator]

    return wrapper


def shell_group() -> h.Group:
    cb = fournines.CircuitBreaker("closed")
    c = [
        h.Candidate("one forwarding wrapper `w(*a, **kw) -> f(*a, **kw)`", h.INFO, "g()",
                    {"g": _fwd(h.f)}),
        h.Candidate("two forwarding wrappers", h.INFO, "g()", {"g": _fwd(_fwd(h.f))}),
        h.Candidate("four forwarding wrappers (the layering of a 4-policy Pipeline)", h.INFO,
                    "g()", {"g": _fwd(_fwd(_fwd(_fwd(h.f))))}),
        h.Candidate("`Pipeline.call` entry: one `call(fn, *a, **kw)` frame + cache check",
                    h.INFO, "p.call(f)", {"p": fournines.Pipeline()},
                    note="an empty Pipeline: `call` looks up its cached chain (here `f` "
                         "itself) and forwards the arguments"),
        h.Candidate("fournines `cb.call(f)` (closed)", h.INFO, "cb.call(f)", {"cb": cb}),
        h.Candidate("fournines breaker decorator (closed, fast path inlined)", h.INFO, "g()",
                    {"g": fournines.CircuitBreaker("closed-dec")(h.f)}),
        h.Candidate("floor decorator (closed, inlined)", h.INFO, "g()",
                    {"g": FloorBreaker().decorate(h.f)}),
        h.Candidate("fournines Retry decorator", h.INFO, "g()",
                    {"g": fournines.Retry()(h.f)}),
    ]
    return h.Group("Forwarding layers (sync)", "sync", c)


def lock_group() -> h.Group:
    import pyresilience

    lock = threading.Lock()
    c = [
        h.Candidate("`lock.acquire()` + `lock.release()` only", h.INFO,
                    "lock.acquire()\nlock.release()\nf()", {"lock": lock}),
        h.Candidate("`with lock:` only", h.INFO, "with lock:\n    f()", {"lock": lock}),
        h.Candidate("floor without lock", h.INFO, "b.try_acquire()\nf()",
                    {"b": FloorBucketNoLock(RATE, RATE)}),
        h.Candidate("floor `b.try_acquire()` (threading.Lock)", h.FLOOR, "b.try_acquire()\nf()",
                    {"b": FloorBucket(RATE, RATE)}),
        h.Candidate("fournines `tb.try_acquire()`", h.INFO, "tb.try_acquire()\nf()",
                    {"tb": fournines.TokenBucket(rate=RATE, capacity=RATE)}),
        h.Candidate("pyresilience `RateLimiter.acquire()`", h.PEER,
                    "if not rl.acquire():\n    _fail()\nf()",
                    {"rl": pyresilience.RateLimiter(
                        pyresilience.RateLimiterConfig(max_calls=RATE, period=1.0))}),
    ]
    return h.Group("Sync token bucket: the lock", "sync", c)


def pipeline_sync_group() -> h.Group:
    import pyresilience as pr

    c = [
        h.Candidate("Retry().call(f)", h.INFO, "p.call(f)", {"p": fournines.Retry(attempts=3)}),
        h.Candidate("CircuitBreaker().call(f)", h.INFO, "p.call(f)",
                    {"p": fournines.CircuitBreaker("x")}),
        h.Candidate("TokenBucket().call(f)", h.INFO, "p.call(f)",
                    {"p": fournines.TokenBucket(rate=RATE, capacity=RATE)}),
        h.Candidate("Bulkhead().call(f)", h.INFO, "p.call(f)",
                    {"p": fournines.Bulkhead(max_concurrent=10)}),
        h.Candidate("Pipeline(retry, breaker, bucket, bulkhead).call(f)", h.INFO, "p.call(f)",
                    {"p": fournines.Pipeline(fournines.Retry(attempts=3),
                                             fournines.CircuitBreaker("p"),
                                             fournines.TokenBucket(rate=RATE, capacity=RATE),
                                             fournines.Bulkhead(max_concurrent=10))}),
        h.Candidate("Pipeline decorator (same four)", h.INFO, "g()",
                    {"g": fournines.Pipeline(fournines.Retry(attempts=3),
                                             fournines.CircuitBreaker("pd"),
                                             fournines.TokenBucket(rate=RATE, capacity=RATE),
                                             fournines.Bulkhead(max_concurrent=10))(h.f)}),
        h.Candidate("floor: the four inlined in one frame", h.INFO, "p.call(f)",
                    {"p": FloorPipeline()}),
        h.Candidate("pyresilience `@resilient(retry, breaker, limiter, bulkhead)`", h.PEER, "g()",
                    {"g": pr.resilient(
                        retry=pr.RetryConfig(max_attempts=3),
                        circuit_breaker=pr.CircuitBreakerConfig(failure_threshold=5),
                        rate_limiter=pr.RateLimiterConfig(max_calls=RATE, period=1.0),
                        bulkhead=pr.BulkheadConfig(max_concurrent=10))(h.f)}),
    ]
    return h.Group("Sync pipeline, one policy at a time", "sync", c)


def pipeline_async_group() -> h.Group:
    c = [
        h.Candidate("Timeout(10).acall(af)", h.INFO, "await p.acall(af)",
                    {"p": fournines.Timeout(10.0)}),
        h.Candidate("Retry().acall(af)", h.INFO, "await p.acall(af)",
                    {"p": fournines.Retry(attempts=3)}),
        h.Candidate("CircuitBreaker().acall(af)", h.INFO, "await p.acall(af)",
                    {"p": fournines.CircuitBreaker("x")}),
        h.Candidate("TokenBucket().acall(af)", h.INFO, "await p.acall(af)",
                    {"p": fournines.TokenBucket(rate=RATE, capacity=RATE)}),
        h.Candidate("Bulkhead().acall(af)", h.INFO, "await p.acall(af)",
                    {"p": fournines.Bulkhead(max_concurrent=10)}),
        h.Candidate("Pipeline(all five).acall(af)", h.INFO, "await p.acall(af)",
                    {"p": _async_pipeline()}),
        h.Candidate("floor: the five inlined in one coroutine", h.INFO, "await p.acall(af)",
                    {"p": FloorPipeline()}),
        h.Candidate("`push_deadline` + `reset_deadline` only", h.INFO,
                    "_d, _t = push(10.0, clk)\nreset(_t)\nawait af()",
                    {"push": push_deadline, "reset": reset_deadline,
                     "clk": fournines.SystemClock()}),
        h.Candidate("`deadline_after(10)` scope only", h.INFO,
                    "with d(10.0):\n    await af()", {"d": fournines.deadline_after}),
        h.Candidate("`loop.call_later(10, cb)` + `handle.cancel()` only", h.INFO,
                    "hd = _loop().call_later(10.0, _noop)\nawait af()\nhd.cancel()",
                    {"_loop": __import__("asyncio").get_running_loop, "_noop": lambda: None}),
    ]
    return h.Group("Async pipeline, one policy at a time", "async", c)


def _async_pipeline() -> fournines.Pipeline:
    return fournines.Pipeline(fournines.Timeout(10.0), fournines.Retry(attempts=3),
                              fournines.CircuitBreaker("p"),
                              fournines.TokenBucket(rate=RATE, capacity=RATE),
                              fournines.Bulkhead(max_concurrent=10))


def _profile(label: str, run: object, n: int) -> str:
    pr = cProfile.Profile()
    pr.enable()
    run(n)  # type: ignore[operator]
    pr.disable()
    out = io.StringIO()
    stats = pstats.Stats(pr, stream=out)
    stats.sort_stats("tottime").print_stats(14)
    text = out.getvalue()
    body = text[text.find("ncalls"):] if "ncalls" in text else text
    return f"#### cProfile: {label} ({n:,} calls, sorted by tottime)\n\n```\n{body.rstrip()}\n```\n"


def profiles(loop: object) -> str:
    p_sync = fournines.Pipeline(fournines.Retry(attempts=3), fournines.CircuitBreaker("p"),
                                fournines.TokenBucket(rate=RATE, capacity=RATE),
                                fournines.Bulkhead(max_concurrent=10))

    def run_sync(n: int) -> None:
        for _ in range(n):
            p_sync.call(h.f)

    p_async = h.build_in_loop(loop, _async_pipeline)  # type: ignore[arg-type]

    async def arun(n: int) -> None:
        for _ in range(n):
            await p_async.acall(h.af)

    cb = _open_breaker()

    def run_open(n: int) -> None:
        for _ in range(n):
            with contextlib.suppress(CircuitOpenError):
                cb.call(h.f)

    return "\n".join([
        _profile("sync Pipeline.call", run_sync, 50_000),
        _profile("async Pipeline.acall", lambda n: loop.run_until_complete(arun(n)),  # type: ignore[attr-defined]
                 50_000),
        _profile("open CircuitBreaker.call", run_open, 50_000),
    ])


def groups() -> list[h.Group]:
    warnings.simplefilter("ignore", DeprecationWarning)
    loop = h.new_loop()
    out = [h.run_group(open_group())]
    oag = loop.run_until_complete(open_async_group())
    out += [h.run_group(oag, loop), h.run_group(shell_group()), h.run_group(lock_group()),
            h.run_group(pipeline_sync_group())]
    ag = h.build_in_loop(loop, pipeline_async_group)
    out.append(h.run_group(ag, loop))
    h.register_extra(profiles(loop))
    loop.close()
    return out


if __name__ == "__main__":
    h.main(groups, "Where the time goes (fournines paths that missed)")
