"""Claim: protect_wsgi keeps at least 0.8x of the bare app's throughput under gunicorn.

Each framework (Flask, Django, a plain WSGI callable) is served bare and protected
(health, metrics, deadlines, shedding, a never-reached rate limit; the protected one
runs fournines' gthread worker and hooks, the bare one gunicorn's own gthread worker),
1 worker with 4 threads pinned to core 0, wrk (1 thread, 16 connections) on core 1.
Variants are interleaved over rounds; ratios are medians of per-round ratios.

Usage: .venv/bin/python bench/wsgi_overhead.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._servers import free_port, taskset

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ["wsgi", "flask", "django"]
VARIANTS = [v for f in FRAMEWORKS for v in (f, f"fournines_{f}")]


def wrk(port: int, path: str, *, seconds: float, connections: int = 16) -> tuple[float, int]:
    """(2xx responses per second, non-2xx responses) that wrk measured on core 1.

    Non-2xx are counted, not fatal: on a loaded machine the protected variant's shedder
    may see a standing queue for threads and shed (the run then says how many).
    """
    out = subprocess.run(
        [*taskset(1), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
         f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)s", out)
    if total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    return (int(total.group(1)) - errors) / float(total.group(2)), errors


class Gunicorn:
    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.port = free_port()

    def __enter__(self) -> Gunicorn:
        protected = self.variant.startswith("fournines_")
        worker = "fournines.wsgi.gunicorn.ThreadWorker" if protected else "gthread"
        hooks = (["-c", str(ROOT / "tests/wsgi/apps/gunicorn_conf.py")] if protected else [])
        env = {**os.environ, "BENCH_VARIANT": self.variant,
               "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
        self.proc = subprocess.Popen(
            [*taskset(0), sys.executable, "-m", "gunicorn", "bench.wsgi_apps:app", *hooks,
             "-b", f"127.0.0.1:{self.port}", "-k", worker, "-w", "1", "--threads", "4",
             "--keep-alive", "30", "--graceful-timeout", "30", "--worker-connections", "1000", "--log-level", "warning"],
            env=env, cwd=ROOT)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/orders/1", timeout=1)
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.variant} did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    rps: dict[str, list[float]] = {v: [] for v in VARIANTS}
    non2xx: dict[str, int] = dict.fromkeys(VARIANTS, 0)
    for round_no in range(args.rounds):
        order = VARIANTS if round_no % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            with Gunicorn(variant) as server:
                wrk(server.port, "/orders/42", seconds=1, connections=16)  # warm up
                ok, bad = wrk(server.port, "/orders/42", seconds=args.seconds)
                rps[variant].append(ok)
                non2xx[variant] += bad
            print(f"round {round_no + 1}: {variant:<17} {ok:>8.0f} 2xx/s  {bad} non-2xx",
                  flush=True)

    print("\n| app | bare 2xx/s | protected 2xx/s | protected / bare | non-2xx (bare, protected) |")
    print("|---|---:|---:|---:|---:|")
    for framework in FRAMEWORKS:
        bare, protected = rps[framework], rps[f"fournines_{framework}"]
        ratio = statistics.median(p / b for p, b in zip(protected, bare, strict=True))
        print(f"| {framework} | {statistics.median(bare):.0f} | "
              f"{statistics.median(protected):.0f} | {ratio:.2f}x | "
              f"{non2xx[framework]}, {non2xx['fournines_' + framework]} |")


if __name__ == "__main__":
    main()
