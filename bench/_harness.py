"""Shared timing harness for the fournines benchmarks.

How a group is measured (one process, interleaved):

* every candidate is one *statement* run ``n`` times in a loop compiled from the
  same template (``timeit``-style), so loop overhead is identical for all;
* the sync baseline is the bare call ``f()``, the async baseline the bare
  ``await af()`` inside one coroutine; ``f``/``af`` only bump a call counter and
  ``return 1``, and the same ``f``/``af`` is what every candidate protects, so
  the counter's cost cancels out in the subtraction;
* ``n`` is calibrated per candidate so one measurement takes ~``BENCH_TARGET_MS``
  (60 ms by default), clamped to [2 000, 2 000 000] calls (fast candidates run
  ~10^5-10^6 calls; the slowest peers, at 20-40 µs a call, ~2 000-3 000, which
  keeps every script under a minute);
* each of ``BENCH_ROUNDS`` rounds (7 by default) measures the baseline, then every
  candidate once in a freshly shuffled order, then the baseline again; a
  candidate's *added ns* in that round is its ns/call minus the mean of the two
  baselines of the same round;
* the reported figure is the median over rounds; ratios are medians of the
  per-round (paired) ratios;
* timing uses ``time.perf_counter_ns`` with the garbage collector disabled
  (``gc.collect()`` runs before each measurement, outside the timing);
* after every measurement the harness checks (outside the timing) that the
  protected function ran exactly ``calls_per_iter * n`` times.
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import random
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
TARGET_NS = int(float(os.environ.get("BENCH_TARGET_MS", "60")) * 1_000_000)
MIN_N = int(os.environ.get("BENCH_MIN_N", "2000"))
MAX_N = int(os.environ.get("BENCH_MAX_N", "2000000"))
SEED = int(os.environ.get("BENCH_SEED", "20240917"))

# --- the protected functions ---------------------------------------------------------

calls = 0


def f() -> int:
    """The bare sync function: counts itself, returns 1."""
    global calls
    calls += 1
    return 1


async def af() -> int:
    """The bare async function: counts itself, returns 1."""
    global calls
    calls += 1
    return 1


class Boom(Exception):
    """Raised by the failing functions used to trip breakers."""


def failing() -> int:
    raise Boom("down")


async def afailing() -> int:
    raise Boom("down")


def fail_unexpected() -> None:
    """Put in ``else:`` branches of candidates that must raise."""
    raise AssertionError("a call that had to be rejected returned normally")


# --- candidates and groups ------------------------------------------------------------

BASELINE = "baseline"
FLOOR = "floor"
OURS = "ours"
PEER = "peer"
INFO = "info"


@dataclass
class Candidate:
    """One row of a table: a statement measured in a loop."""

    name: str
    role: str  # baseline | floor | ours | peer | info
    stmt: str = ""
    env: dict[str, Any] = field(default_factory=dict)
    lib: str = ""
    calls_per_iter: int = 1
    floor: str | None = None  # ours: the floor row it is judged against
    before: Callable[[], None] | None = None  # outside timing, before each measurement
    after: Callable[[], None] | None = None  # outside timing, after each measurement
    na: str | None = None  # not applicable: the reason
    note: str = ""
    # filled by the harness
    n: int = 0
    per_call: list[float] = field(default_factory=list)  # ns per iteration, per round
    added: list[float] = field(default_factory=list)  # ns over the baseline, per round


@dataclass
class Target:
    """The targets a group's ``ours`` rows are judged against."""

    vs_floor: float | None = None  # ours <= x * its floor
    vs_fastest_peer: float | None = None  # ours <= x * fastest peer
    vs_lib: dict[str, float] = field(default_factory=dict)  # ours <= x * fastest row of lib
    text: str = ""


@dataclass
class Group:
    """A table: candidates measured interleaved against one baseline."""

    title: str
    kind: str  # "sync" | "async"
    candidates: list[Candidate]
    target: Target = field(default_factory=Target)
    notes: list[str] = field(default_factory=list)
    claim: str = ""
    baseline: Candidate | None = None


@dataclass
class Verdict:
    """One target checked for one ``ours`` row."""

    group: str
    candidate: str
    target: str
    ratio: float
    limit: float
    met: bool
    detail: str


_SYNC_TEMPLATE = """
def _inner(_n, _timer):
    _t0 = _timer()
    for _i in _range(_n):
{body}
    return _timer() - _t0
"""

_ASYNC_TEMPLATE = """
async def _inner(_n, _timer):
    _t0 = _timer()
    for _i in _range(_n):
{body}
    return _timer() - _t0
"""


def _compile(c: Candidate, kind: str) -> Callable[..., Any]:
    body = textwrap.indent(textwrap.dedent(c.stmt).strip("\n"), " " * 8)
    src = (_SYNC_TEMPLATE if kind == "sync" else _ASYNC_TEMPLATE).format(body=body)
    ns: dict[str, Any] = {
        "_range": range,
        "f": f,
        "af": af,
        "_fail": fail_unexpected,
        **c.env,
    }
    exec(compile(src, f"<bench {c.name}>", "exec"), ns)
    return ns["_inner"]  # type: ignore[no-any-return]


class _Runner:
    def __init__(self, kind: str, loop: asyncio.AbstractEventLoop | None) -> None:
        self.kind = kind
        self.loop = loop

    def measure(self, c: Candidate, inner: Callable[..., Any], n: int) -> float:
        """Run ``n`` iterations; return ns per iteration (checks the call count)."""
        global calls
        if c.before is not None:
            c.before()
        calls = 0
        gc.collect()
        gc.disable()
        try:
            if self.kind == "sync":
                dt = inner(n, time.perf_counter_ns)
            else:
                assert self.loop is not None
                dt = self.loop.run_until_complete(inner(n, time.perf_counter_ns))
        finally:
            gc.enable()
        expected = c.calls_per_iter * n
        if calls != expected:
            raise AssertionError(
                f"{c.name}: the protected function ran {calls} times, expected {expected}"
            )
        if c.after is not None:
            c.after()
        return float(dt) / n

    def calibrate(self, c: Candidate, inner: Callable[..., Any]) -> int:
        n = 2000
        while True:
            per = self.measure(c, inner, n)
            if per * n >= 5_000_000 or n >= MAX_N:
                break
            n *= 4
        return max(MIN_N, min(MAX_N, int(TARGET_NS / max(per, 1.0))))


def _baseline(kind: str) -> Candidate:
    if kind == "sync":
        return Candidate("bare call `f()`", BASELINE, "f()", lib="-")
    return Candidate("bare `await af()`", BASELINE, "await af()", lib="-")


def run_group(group: Group, loop: asyncio.AbstractEventLoop | None = None) -> Group:
    """Measure every applicable candidate of ``group`` over ``ROUNDS`` rounds."""
    runner = _Runner(group.kind, loop)
    base = _baseline(group.kind)
    group.baseline = base
    live = [c for c in group.candidates if c.na is None]
    inners = {id(c): _compile(c, group.kind) for c in [base, *live]}
    t_start = time.perf_counter()
    for c in [base, *live]:
        c.n = runner.calibrate(c, inners[id(c)])
    rng = random.Random(SEED + sum(map(ord, group.title)))
    order = list(live)
    for _ in range(ROUNDS):
        rng.shuffle(order)
        b0 = runner.measure(base, inners[id(base)], base.n)
        results = [(c, runner.measure(c, inners[id(c)], c.n)) for c in order]
        b1 = runner.measure(base, inners[id(base)], base.n)
        b = (b0 + b1) / 2
        base.per_call.append(b)
        base.added.append(0.0)
        for c, per in results:
            c.per_call.append(per)
            c.added.append(per - b)
    print(f"  [{group.title}: {time.perf_counter() - t_start:.1f} s]", file=sys.stderr)
    return group


# --- statistics and verdicts -------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def paired_ratio(a: Candidate, b: Candidate) -> float:
    """Median over rounds of a.added / b.added (same-round pairs)."""
    ratios = [x / y for x, y in zip(a.added, b.added, strict=True) if y > 0]
    if not ratios:
        return float("nan")
    return statistics.median(ratios)


def _by_name(group: Group, name: str) -> Candidate:
    for c in group.candidates:
        if c.name == name:
            return c
    raise KeyError(f"{group.title}: no candidate named {name!r}")


def fastest(cands: Sequence[Candidate]) -> Candidate | None:
    live = [c for c in cands if c.na is None and c.added]
    return min(live, key=lambda c: median(c.added)) if live else None


def fastest_peer(group: Group) -> Candidate | None:
    return fastest([c for c in group.candidates if c.role == PEER])


def verdicts(group: Group) -> list[Verdict]:
    out: list[Verdict] = []
    t = group.target
    peer = fastest_peer(group)
    for c in group.candidates:
        if c.role != OURS or c.na is not None:
            continue
        if t.vs_floor is not None and c.floor:
            fl = _by_name(group, c.floor)
            r = paired_ratio(c, fl)
            out.append(Verdict(group.title, c.name, f"≤ {t.vs_floor:g}x floor", r, t.vs_floor,
                               r <= t.vs_floor,
                               f"{median(c.added):.0f} ns vs floor {median(fl.added):.0f} ns"))
        if t.vs_fastest_peer is not None and peer is not None:
            r = paired_ratio(c, peer)
            out.append(Verdict(group.title, c.name, f"≤ {_frac(t.vs_fastest_peer)} of fastest peer",
                               r, t.vs_fastest_peer, r <= t.vs_fastest_peer,
                               f"{median(c.added):.0f} ns vs {peer.name} {median(peer.added):.0f} ns"))
        for lib, limit in t.vs_lib.items():
            ref = fastest([p for p in group.candidates if p.role == PEER and p.lib == lib])
            if ref is None:
                continue
            r = paired_ratio(c, ref)
            out.append(Verdict(group.title, c.name, f"≤ {_frac(limit)} of {lib}", r, limit,
                               r <= limit,
                               f"{median(c.added):.0f} ns vs {ref.name} {median(ref.added):.0f} ns"))
    return out


def _frac(x: float) -> str:
    if x >= 1:
        return f"{x:g}x"
    inv = 1 / x
    return f"1/{inv:.0f}" if abs(inv - round(inv)) < 1e-9 else f"{x:g}x"


# --- rendering ------------------------------------------------------------------------------


def _fmt_ns(x: float) -> str:
    if abs(x) >= 10_000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}"


def _fmt_ratio(x: float) -> str:
    if x != x:
        return "-"
    if x >= 100:
        return f"{x:.0f}x"
    if x >= 10:
        return f"{x:.1f}x"
    if x >= 0.1:
        return f"{x:.2f}x"
    return f"{x:.3f}x"


def render(group: Group) -> str:
    """The group as a markdown section."""
    base = group.baseline
    assert base is not None
    peer = fastest_peer(group)
    lines = [f"### {group.title}", ""]
    if group.claim:
        lines += [f"Claim: {group.claim}", ""]
    lines.append(
        f"Baseline {base.name}: {median(base.per_call):.1f} ns/call (median of "
        f"{len(base.per_call)} rounds, n = {base.n:,}). Added ns = candidate ns/call - baseline "
        f"of the same round; median over rounds. x columns are medians of per-round ratios."
    )
    lines += ["", "| candidate | role | added ns/call | min … max | x its floor | x fastest peer | loop n |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for c in group.candidates:
        if c.na is not None:
            lines.append(f"| {c.name} | {c.role} | n/a | | | | | ")
            continue
        fl = _by_name(group, c.floor) if c.floor else None
        x_floor = _fmt_ratio(paired_ratio(c, fl)) if fl is not None else ""
        x_peer = _fmt_ratio(paired_ratio(c, peer)) if peer is not None and c is not peer else (
            "1 (fastest)" if c is peer else "")
        lines.append(
            f"| {c.name} | {c.role} | {_fmt_ns(median(c.added))} | "
            f"{_fmt_ns(min(c.added))} … {_fmt_ns(max(c.added))} | {x_floor} | {x_peer} | {c.n:,} |"
        )
    na = [c for c in group.candidates if c.na is not None]
    notes = [f"{c.name}: n/a — {c.na}" for c in na]
    notes += [f"{c.name}: {c.note}" for c in group.candidates if c.note]
    notes += group.notes
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    vs = verdicts(group)
    if vs:
        lines += ["", f"Targets ({group.target.text}):" if group.target.text else "Targets:", ""]
        for v in vs:
            lines.append(f"- {v.candidate}: {v.target} → {_fmt_ratio(v.ratio)} ({v.detail}): "
                         f"**{'MET' if v.met else 'MISSED'}**")
    lines.append("")
    return "\n".join(lines)


def summary_rows(groups: Sequence[Group]) -> list[str]:
    """Markdown rows ``| group | candidate | target | ratio | verdict |``."""
    rows = []
    for g in groups:
        for v in verdicts(g):
            rows.append(f"| {g.title} | {v.candidate} | {v.target} | {_fmt_ratio(v.ratio)} | "
                        f"{'MET' if v.met else '**MISSED**'} |")
    return rows


def render_summary(groups: Sequence[Group]) -> str:
    head = ["| group | candidate | target | ratio | verdict |", "|---|---|---|---:|---|"]
    return "\n".join(head + summary_rows(groups)) + "\n"


def header() -> str:
    return (f"Python {platform.python_version()} ({platform.python_implementation()}), "
            f"{ROUNDS} rounds, ~{TARGET_NS / 1e6:.0f} ms per measurement, "
            f"n in [{MIN_N:,}, {MAX_N:,}]")


def new_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def build_in_loop(loop: asyncio.AbstractEventLoop, builder: Callable[[], Any]) -> Any:
    """Call ``builder()`` from inside a running coroutine (some peers need a running loop)."""

    async def _build() -> Any:
        return builder()

    return loop.run_until_complete(_build())


_extras: list[str] = []


def register_extra(markdown: str) -> None:
    """Markdown printed after a claim's tables (e.g. the memory table)."""
    _extras.append(markdown)


def main(groups_fn: Callable[[], list[Group]], title: str) -> list[Group]:
    """Run a claim's groups and print them as markdown.

    With ``BENCH_SUMMARY_FILE`` set, the verdict rows are appended to that file
    (``run_all.py`` uses it to print one summary table at the end).
    """
    print(f"## {title}\n")
    print(header() + "\n")
    sys.stdout.flush()
    groups = groups_fn()
    for g in groups:
        print(render(g))
    for extra in _extras:
        print(extra)
    sys.stdout.flush()
    path = os.environ.get("BENCH_SUMMARY_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            for row in summary_rows(groups):
                fh.write(row + "\n")
    return groups
