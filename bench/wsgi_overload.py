"""Claim: under 3x open-loop overload, protect_wsgi keeps a Flask app's goodput under gunicorn.

The handler (``bench/wsgi_apps.py`` ``/work``) holds a thread for about 1 ms of CPU
and 5 ms of blocking I/O; gunicorn runs 1 gthread worker with 4 threads on core 0
(bare: gunicorn's gthread worker; protected: fournines' ThreadWorker and hooks,
``protect_wsgi`` with its defaults). Capacity is measured first (wrk, 16
connections, bare). Then ``bench/_open_loop.py`` (its own process, core 1) sends,
per variant: 2 s at half the capacity, ``--seconds`` at ``--load`` x capacity,
3 s at half again. Reported for the overload phase: goodput (200s within 200 ms)
per second and as a share of capacity, p99 of the 200s and of the 503s, timeouts,
connection errors and arrivals dropped for lack of connections.

Usage: .venv/bin/python bench/wsgi_overload.py [--seconds 10] [--load 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._servers import taskset, wrk
from bench.wsgi_overhead import Gunicorn

ROOT = Path(__file__).resolve().parents[1]
GOOD_WITHIN = 0.2


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run(variant: str, capacity: float, load: float, seconds: float) -> dict[str, float]:
    with Gunicorn(variant) as server, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        half = capacity / 2
        phases = f"{half:.0f}:2,{capacity * load:.0f}:{seconds},{half:.0f}:3"
        subprocess.run([*taskset(1), sys.executable, str(ROOT / "bench/_open_loop.py"),
                        "--port", str(server.port), "--path", "/work", "--phases", phases,
                        "--max-connections", "900", "--out", str(out)],
                       check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        records = json.loads(out.read_text())["records"]
    overload = [r for r in records if r[0] == 1]
    good = [r for r in overload if r[2] == 200 and r[3] <= GOOD_WITHIN]
    return {
        "sent/s": len(overload) / seconds,
        "goodput/s": len(good) / seconds,
        "share": len(good) / seconds / capacity,
        "p99_200_ms": p99([r[3] for r in overload if r[2] == 200]) * 1000,
        "p99_503_ms": p99([r[3] for r in overload if r[2] == 503]) * 1000,
        "503": sum(1 for r in overload if r[2] == 503),
        "timeouts": sum(1 for r in overload if r[2] == 0),
        "errors": sum(1 for r in overload if r[2] == -1),
        "dropped": sum(1 for r in overload if r[2] == -2),
        "send_lag_p99_ms": p99([r[4] for r in overload]) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=3.0)
    args = parser.parse_args()
    with Gunicorn("flask") as server:
        wrk(server.port, "/work", seconds=1, connections=16)
        capacity = statistics.median(wrk(server.port, "/work", seconds=3, connections=16)
                                     for _ in range(2))
    print(f"capacity (bare, closed loop): {capacity:.0f} req/s; load {args.load:g}x",
          flush=True)
    rows = {variant: run(variant, capacity, args.load, args.seconds)
            for variant in ("flask", "fournines_flask")}
    keys = list(next(iter(rows.values())))
    print("\n| variant | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for variant, row in rows.items():
        print(f"| {variant} | " + " | ".join(
            f"{row[k]:.2f}" if k == "share" else f"{row[k]:.0f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
