"""Claim 3: a retry whose first attempt succeeds costs close to nothing (sync and async).

Targets: fournines ≤ 1/5 of the fastest peer, ≤ 1/40 of tenacity.
Every retry allows 3 attempts on ``Exception`` with exponential backoff; the
protected function always succeeds, so exactly one attempt runs per call.
Run: ``.venv/bin/python bench/retry_success.py``.
"""

from __future__ import annotations

import warnings

import _harness as h
import fournines
from _floors import FloorRetry

CLAIM = "retry, first attempt succeeds: fournines ≤ 1/5 of the fastest peer, ≤ 1/40 of tenacity"
TARGET = h.Target(vs_fastest_peer=0.2, vs_lib={"tenacity": 1 / 40},
                  text="≤ 1/5 of the fastest peer, ≤ 1/40 of tenacity (its fastest form)")


def sync_group() -> h.Group:
    import backoff
    import pyresilience
    import stamina
    import tenacity

    f = h.f
    c: list[h.Candidate] = []
    c.append(h.Candidate("floor `r.call(f)` (fn, *args, **kw)", h.FLOOR, "r.call(f)",
                         {"r": FloorRetry()}, lib="floor"))
    c.append(h.Candidate("floor `r.call0(f)` (fn() only)", h.INFO, "r.call0(f)",
                         {"r": FloorRetry()}, lib="floor"))
    c.append(h.Candidate("floor decorator `g()`", h.FLOOR, "g()",
                         {"g": FloorRetry().decorate(f)}, lib="floor"))

    c.append(h.Candidate("fournines `r.call(f)`", h.OURS, "r.call(f)",
                         {"r": fournines.Retry(attempts=3)}, lib="fournines",
                         floor="floor `r.call(f)` (fn, *args, **kw)"))
    c.append(h.Candidate("fournines decorator `g()`", h.OURS, "g()",
                         {"g": fournines.Retry(attempts=3)(f)}, lib="fournines",
                         floor="floor decorator `g()`"))
    c.append(h.Candidate("fournines `r.call(f)` with a RetryBudget", h.INFO, "r.call(f)",
                         {"r": fournines.Retry(attempts=3, budget=fournines.RetryBudget())},
                         lib="fournines", note="deposits one request into the shared budget "
                         "per call (lock + rolling window)"))

    stop = tenacity.stop_after_attempt(3)
    wait = tenacity.wait_random_exponential(multiplier=0.1, max=10)
    c.append(h.Candidate("tenacity `Retrying(...)(f)`", h.PEER, "r(f)",
                         {"r": tenacity.Retrying(stop=stop, wait=wait, reraise=True)},
                         lib="tenacity"))
    c.append(h.Candidate("tenacity `@retry(...)`", h.PEER, "g()",
                         {"g": tenacity.retry(stop=stop, wait=wait, reraise=True)(f)},
                         lib="tenacity"))
    c.append(h.Candidate("stamina `@retry(on=Exception, attempts=3)`", h.PEER, "g()",
                         {"g": stamina.retry(on=Exception, attempts=3, timeout=None)(f)},
                         lib="stamina"))
    c.append(h.Candidate("stamina `RetryingCaller(attempts=3)(Exception, f)`", h.PEER,
                         "rc(_Exc, f)",
                         {"rc": stamina.RetryingCaller(attempts=3, timeout=None),
                          "_Exc": Exception}, lib="stamina"))
    c.append(h.Candidate("backoff `@on_exception(expo, Exception, max_tries=3)`", h.PEER, "g()",
                         {"g": backoff.on_exception(backoff.expo, Exception, max_tries=3)(f)},
                         lib="backoff"))
    c.append(h.Candidate("pyresilience `@resilient(retry=RetryConfig(max_attempts=3))`", h.PEER,
                         "g()",
                         {"g": pyresilience.resilient(
                             retry=pyresilience.RetryConfig(max_attempts=3))(f)},
                         lib="pyresilience"))
    c.append(h.Candidate("hyx", h.PEER, na="hyx is asyncio-only (no sync retry)", lib="hyx"))
    return h.Group("Claim 3 — retry, first attempt succeeds, sync", "sync", c, TARGET,
                   claim=CLAIM)


def async_group() -> h.Group:
    import backoff
    import pyresilience
    import stamina
    import tenacity
    from hyx.retry import retry as hyx_retry

    af = h.af
    c: list[h.Candidate] = []
    c.append(h.Candidate("floor `await r.acall(af)` (fn, *args, **kw)", h.FLOOR,
                         "await r.acall(af)", {"r": FloorRetry()}, lib="floor"))
    c.append(h.Candidate("floor `await r.acall0(af)` (fn() only)", h.INFO, "await r.acall0(af)",
                         {"r": FloorRetry()}, lib="floor"))
    c.append(h.Candidate("floor decorator `await g()`", h.FLOOR, "await g()",
                         {"g": FloorRetry().adecorate(af)}, lib="floor"))

    c.append(h.Candidate("fournines `await r.acall(af)`", h.OURS, "await r.acall(af)",
                         {"r": fournines.Retry(attempts=3)}, lib="fournines",
                         floor="floor `await r.acall(af)` (fn, *args, **kw)"))
    c.append(h.Candidate("fournines decorator `await g()`", h.OURS, "await g()",
                         {"g": fournines.Retry(attempts=3)(af)}, lib="fournines",
                         floor="floor decorator `await g()`"))

    stop = tenacity.stop_after_attempt(3)
    wait = tenacity.wait_random_exponential(multiplier=0.1, max=10)
    c.append(h.Candidate("tenacity `await AsyncRetrying(...)(af)`", h.PEER, "await r(af)",
                         {"r": tenacity.AsyncRetrying(stop=stop, wait=wait, reraise=True)},
                         lib="tenacity"))
    c.append(h.Candidate("tenacity `@retry(...)` (async)", h.PEER, "await g()",
                         {"g": tenacity.retry(stop=stop, wait=wait, reraise=True)(af)},
                         lib="tenacity"))
    c.append(h.Candidate("stamina `@retry(on=Exception, attempts=3)` (async)", h.PEER,
                         "await g()",
                         {"g": stamina.retry(on=Exception, attempts=3, timeout=None)(af)},
                         lib="stamina"))
    c.append(h.Candidate("stamina `AsyncRetryingCaller(attempts=3)(Exception, af)`", h.PEER,
                         "await rc(_Exc, af)",
                         {"rc": stamina.AsyncRetryingCaller(attempts=3, timeout=None),
                          "_Exc": Exception}, lib="stamina"))
    c.append(h.Candidate("backoff `@on_exception(expo, Exception, max_tries=3)` (async)",
                         h.PEER, "await g()",
                         {"g": backoff.on_exception(backoff.expo, Exception, max_tries=3)(af)},
                         lib="backoff"))
    c.append(h.Candidate("pyresilience `@resilient(retry=RetryConfig(max_attempts=3))` (async)",
                         h.PEER, "await g()",
                         {"g": pyresilience.resilient(
                             retry=pyresilience.RetryConfig(max_attempts=3))(af)},
                         lib="pyresilience"))
    c.append(h.Candidate("hyx `@retry(attempts=3)`", h.PEER, "await g()",
                         {"g": hyx_retry(attempts=3)(af)}, lib="hyx"))
    return h.Group("Claim 3 — retry, first attempt succeeds, async", "async", c, TARGET,
                   claim=CLAIM)


def groups() -> list[h.Group]:
    warnings.simplefilter("ignore", DeprecationWarning)
    loop = h.new_loop()
    sync = h.run_group(sync_group())
    agroup = h.build_in_loop(loop, async_group)
    h.run_group(agroup, loop)
    loop.close()
    return [sync, agroup]


if __name__ == "__main__":
    h.main(groups, "Claim 3 — retry whose first attempt succeeds")
