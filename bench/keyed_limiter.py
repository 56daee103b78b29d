"""Issue 14: KeyedLimiter at 1e4, 1e5, 1e6 keys: bytes per key and ns per call.

Targets: at most 150 bytes per key and at most 1 us per ``try_acquire(key)`` at
1,000,000 keys.

Bytes per key: ``tracemalloc`` while the limiter gains ``n`` keys (each key a new
string ``"client-<i>"``, counted: a server builds it per request and only the
limiter keeps it), divided by ``n``. ns per call: ``try_acquire(key)`` over all the
kept keys in a shuffled order (so the table is read as a server would, mostly out
of cache; each key a new equal string, built in that order), admitted every time (``Gcra(rate=100, burst=10_000)``: generations of
100 s, longer than the run), the loop included. ``generic`` is the per-key-limiter
path every KeyedLimiter took before (a TokenBucket subclass, so not a table),
at 1e4 and 1e5 only (at 1e6 it needs about 376 MB).

``dict`` is the floor: a plain dict's get and store in the same order; ``Gcra``
one unkeyed ``Gcra.try_acquire()``: together, what this machine charges for any
keyed limiter in Python.

Run: ``.venv/bin/python bench/keyed_limiter.py`` (about 40 s).
"""

from __future__ import annotations

import gc
import os
import random
import time
import tracemalloc

import fournines

TARGET_BYTES = 150
TARGET_NS = 1000


class _PlainBucket(fournines.TokenBucket):
    """A TokenBucket KeyedLimiter cannot table: it keeps one limiter object per key."""

    __slots__ = ()


def _table() -> fournines.KeyedLimiter:
    return fournines.KeyedLimiter(lambda: fournines.Gcra(rate=100, burst=10_000),
                                  max_keys=10**7)


def _generic() -> fournines.KeyedLimiter:
    return fournines.KeyedLimiter(lambda: _PlainBucket(rate=100, capacity=10_000),
                                  max_keys=10**7)


def measure(make: object, n: int) -> tuple[float, float]:
    """(bytes per key, ns per call) for a fresh limiter given ``n`` keys."""
    assert callable(make)
    keyed = make()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        keyed.try_acquire(f"client-{i}")
    per_key = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    assert len(keyed) == n
    order = list(range(n))
    random.Random(14).shuffle(order)
    # New strings built in the shuffled order: like a request's key, built just before
    # the call (hot in cache), equal to but not the object the table holds.
    keys = [f"client-{i}" for i in order]
    del order
    take = keyed.try_acquire
    rounds = max(1, 1_000_000 // n)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter_ns()
        for _ in range(rounds):
            for key in keys:
                take(key)
        best = min(best, (time.perf_counter_ns() - start) / (rounds * n))
    del keyed, keys
    gc.collect()
    return per_key, best


def dict_floor(n: int) -> float:
    """ns of one ``get`` and one store in a plain dict of ``n`` str keys, same access order.

    No keyed limiter can read and write a per-key state for less in Python: the
    machine's floor, printed so the limiter's own cost can be told from it.
    """
    table = {f"client-{i}": 1.0 for i in range(n)}
    order = list(range(n))
    random.Random(14).shuffle(order)
    keys = [f"client-{i}" for i in order]
    del order
    best = float("inf")
    rounds = max(1, 1_000_000 // n)
    for _ in range(3):
        start = time.perf_counter_ns()
        for _ in range(rounds):
            for key in keys:
                table[key] = table.get(key, 0.0) + 1.0
        best = min(best, (time.perf_counter_ns() - start) / (rounds * n))
    return best


def single_gcra() -> float:
    """ns of ``try_acquire()`` on one Gcra: what one limiter costs with no key at all."""
    gcra = fournines.Gcra(rate=1e9, burst=10**9)
    take = gcra.try_acquire
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter_ns()
        for _ in range(1_000_000):
            take()
        best = min(best, (time.perf_counter_ns() - start) / 1_000_000)
    return best


def main() -> None:
    print(f"fournines {fournines.__version__}  load average {os.getloadavg()[0]:.1f} "
          f"(at start), {os.cpu_count()} CPUs")
    print(f"{'keys':>9}  {'path':<8}  {'bytes/key':>9}  {'ns/call':>8}  target")
    print(f"{1:>9,}  {'Gcra':<8}  {'':>9}  {single_gcra():>8.0f}  (one unkeyed Gcra.try_acquire)")
    misses = 0
    for n in (10**4, 10**5, 10**6):
        per_key, ns = measure(_table, n)
        ok = per_key <= TARGET_BYTES and ns <= TARGET_NS
        misses += not ok
        print(f"{n:>9,}  {'table':<8}  {per_key:>9.0f}  {ns:>8.0f}  "
              f"{'met' if ok else 'MISSED'} (<= {TARGET_BYTES} B, <= {TARGET_NS} ns)")
        print(f"{n:>9,}  {'dict':<8}  {'':>9}  {dict_floor(n):>8.0f}  "
              "(floor: a plain dict's get and store)")
        if n <= 10**5:
            per_key, ns = measure(_generic, n)
            print(f"{n:>9,}  {'generic':<8}  {per_key:>9.0f}  {ns:>8.0f}  (before issue 14)")
    print(f"load average {os.getloadavg()[0]:.1f} (at end); "
          f"{'all targets met' if not misses else f'{misses} target(s) missed'}")


if __name__ == "__main__":
    main()
