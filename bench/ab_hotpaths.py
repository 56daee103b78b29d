"""Before/after check of fournines' own hot paths: two source trees, interleaved, ratios.

The claim scripts compare fournines with its peers; this one compares fournines with
itself, for a change that touches every policy (issue 12: read-only settings, the retry
planner, decorators that keep their signature, cancellations that count as failures).
Each round runs one child process per tree, in alternating order, and every child times
the same happy paths with ``timeit`` (best of 5 repeats); the table gives the median of
the per-round ratios ``after / before`` (1.00: no change; above 1: slower).

    .venv/bin/python bench/ab_hotpaths.py BEFORE_SRC AFTER_SRC [--rounds 5]

``BEFORE_SRC`` and ``AFTER_SRC`` are ``src`` folders, e.g. of a ``git worktree`` at the
old commit. The children import fournines from there (``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r'''
import asyncio, json, timeit
import fournines as f

def fn():
    return 1

async def afn():
    return 1

N = 20_000
cases = {}
breaker = f.CircuitBreaker("b")
retry = f.Retry(attempts=3)
bucket = f.TokenBucket(rate=10**9, capacity=10**9)
bulkhead = f.Bulkhead(max_concurrent=10)
pipe = f.Pipeline(f.Retry(attempts=3), f.CircuitBreaker("p"),
                  f.TokenBucket(rate=10**9, capacity=10**9), f.Bulkhead(max_concurrent=10))
apipe = f.Pipeline(f.Timeout(10.0), f.Retry(attempts=3), f.CircuitBreaker("a"),
                   f.TokenBucket(rate=10**9, capacity=10**9), f.Bulkhead(max_concurrent=10))
dec = pipe(fn)
adec = apipe(afn)

def t(stmt):
    return min(timeit.repeat(stmt, number=N, repeat=5)) / N * 1e9

cases["bare f()"] = t(fn)
cases["breaker.call(f)"] = t(lambda: breaker.call(fn))
cases["retry.call(f)"] = t(lambda: retry.call(fn))
cases["bucket.call(f)"] = t(lambda: bucket.call(fn))
cases["bulkhead.call(f)"] = t(lambda: bulkhead.call(fn))
cases["sync pipeline.call(f)"] = t(lambda: pipe.call(fn))
cases["sync pipeline decorator"] = t(dec)

async def amain():
    loop_n = N
    async def run(coro_fn):
        best = float("inf")
        for _ in range(5):
            start = asyncio.get_running_loop().time()
            for _ in range(loop_n):
                await coro_fn()
            best = min(best, asyncio.get_running_loop().time() - start)
        return best / loop_n * 1e9
    cases["bare await af()"] = await run(afn)
    cases["await breaker.acall(af)"] = await run(lambda: breaker.acall(afn))
    cases["await retry.acall(af)"] = await run(lambda: retry.acall(afn))
    cases["await async pipeline.acall(af)"] = await run(lambda: apipe.acall(afn))
    cases["await async pipeline decorator"] = await run(adec)

asyncio.run(amain())
print(json.dumps(cases))
'''


def run_child(src: str) -> dict[str, float]:
    """Time every case with fournines imported from ``src``."""
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True,
                         capture_output=True, text=True).stdout
    return dict(json.loads(out))


def main() -> None:
    """Interleave the two trees, round by round, and print per-case ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    ratios: dict[str, list[float]] = {}
    ns: dict[str, tuple[list[float], list[float]]] = {}
    for r in range(options.rounds):
        order = [options.before, options.after] if r % 2 == 0 else [options.after, options.before]
        results = {src: run_child(src) for src in order}
        before, after = results[options.before], results[options.after]
        for case in before:
            ratios.setdefault(case, []).append(after[case] / before[case])
            ns.setdefault(case, ([], []))
            ns[case][0].append(before[case])
            ns[case][1].append(after[case])
    print(f"{'case':34} {'before ns':>10} {'after ns':>10} {'after/before':>13}  (median of "
          f"{options.rounds} paired rounds; min-max of ratios)")
    for case, values in ratios.items():
        b, a = statistics.median(ns[case][0]), statistics.median(ns[case][1])
        print(f"{case:34} {b:10.0f} {a:10.0f} {statistics.median(values):13.2f}  "
              f"({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()
