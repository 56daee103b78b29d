"""Claim: `fournines serve --workers 1` costs nothing over plain uvicorn serving the same app.

Both serve ``protect(app)`` (``BENCH_VARIANT=fournines``: bare Starlette under
:func:`fournines.asgi.protect`), pinned to core 0, with wrk (1 thread) on core 1;
the ratio is the median of the per-round ratios (target: within 5 %, i.e. >= 0.95x). Plain uvicorn
runs the same HTTP protocol the supervisor's worker runs
(``ShedHttpToolsProtocol``), so the ratio is the supervisor's cost alone.

A closed loop of few connections (4 by default): each waits for its answer, so
requests never queue deep enough for ``protect()``'s shedder to answer 503 (with
32 connections on a loaded machine it shed 38-50 %, and the 2xx rate measured
the shedder). The 503 share of every round is printed: the comparison means
something only when it is near 0 for both.

Both servers run for the whole run and the rounds alternate 1 s windows between
them (the order flips each round): the rest of a shared machine's load changes
by the second, so only neighbouring windows compare. CPU time per response
(``/proc``: the server's process, for fournines serve the supervisor and its
worker together) is printed too: it is less sensitive to stolen time than the
request rate.

Usage: .venv/bin/python bench/serve_throughput.py [--rounds 20] [--seconds 1] [--connections 4]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._servers import ROOT, free_port, taskset

PATH = "/orders/42"


def _start(kind: str, port: int) -> subprocess.Popen[bytes]:
    app = "bench.asgi_apps:app"
    if kind == "uvicorn":
        command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port",
                   str(port), "--loop", "uvloop", "--http",
                   "fournines.asgi.protocol:ShedHttpToolsProtocol", "--no-access-log",
                   "--log-level", "warning"]
    else:
        command = [sys.executable, "-m", "fournines", "serve", app, "--workers", "1",
                   "--bind", f"127.0.0.1:{port}", "--no-access-log", "--log-level",
                   "warning", "--drain-delay", "0"]
    env = {**os.environ, "BENCH_VARIANT": "fournines",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # taskset on the supervisor pins its workers too (the affinity is inherited).
    # Each in a session of its own, as fournines serve's worker is: with the kernel's
    # autogroup scheduling a new session is a new CPU share, and a server left in the
    # bench's session would compete with everything else in it.
    proc = subprocess.Popen([*taskset(0), *command], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{PATH}", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{kind} did not start")


def _wrk(port: int, seconds: float, connections: int) -> tuple[float, float, int]:
    """2xx responses per second, the share of non-2xx (shed) answers, and all responses."""
    out = subprocess.run([*taskset(1), "wrk", "-t1", f"-c{connections}",
                          f"-d{max(1, round(seconds))}s",
                          f"http://127.0.0.1:{port}{PATH}"],
                         capture_output=True, text=True, check=True).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    elapsed = float(total.group(2)) / (1000 if total.group(3) == "ms" else 1)
    requests = int(total.group(1))
    non_2xx = int(bad.group(1)) if bad else 0
    return (requests - non_2xx) / elapsed, non_2xx / max(1, requests), requests


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and its children, from ``/proc``."""
    total = 0.0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, IndexError, ValueError):
            continue
        pids += [int(child) for child in children]
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    kinds = ["uvicorn", "fournines serve"]
    rps: dict[str, list[float]] = {k: [] for k in kinds}
    shed: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}  # CPU microseconds per response
    servers = {}
    try:
        # Both run for the whole run; the rounds alternate short windows between them,
        # so neighbouring windows see about the same load from the rest of the machine.
        for kind in kinds:
            port = free_port()
            servers[kind] = (_start(kind, port), port)
        for _, port in servers.values():
            _wrk(port, 1, args.connections)  # warm up
        for round_no in range(args.rounds):
            for kind in kinds if round_no % 2 == 0 else kinds[::-1]:
                proc, port = servers[kind]
                before = _cpu_seconds(proc.pid)
                ok, shed_share, responses = _wrk(port, args.seconds, args.connections)
                cpu[kind].append(1e6 * (_cpu_seconds(proc.pid) - before) / max(1, responses))
                rps[kind].append(ok)
                shed[kind].append(shed_share)
                print(f"round {round_no + 1}: {kind:<16} {rps[kind][-1]:>9.0f} 2xx/s "
                      f"({100 * shed[kind][-1]:.1f} % non-2xx), {cpu[kind][-1]:.0f} us CPU "
                      "per response", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    rounds = [f / u for f, u in zip(rps["fournines serve"], rps["uvicorn"], strict=True)]
    ratio = statistics.median(rounds)
    cpu_ratio = statistics.median(u / f for f, u in zip(cpu["fournines serve"], cpu["uvicorn"],
                                                        strict=True))
    quartiles = statistics.quantiles(rounds, n=4)
    print(f"\nper-round throughput ratios: {', '.join(f'{r:.2f}' for r in rounds)}")
    print(f"\n| server (serving protect(app), {args.connections} connections) "
          "| 2xx req/s (median) | CPU per response (median) | non-2xx (max of rounds) |")
    print("|---|---:|---:|---:|")
    for kind in kinds:
        print(f"| {kind} | {statistics.median(rps[kind]):.0f} | "
              f"{statistics.median(cpu[kind]):.0f} us | {100 * max(shed[kind]):.1f} % |")
    print(f"\n- throughput, fournines serve --workers 1 / plain uvicorn: {ratio:.3f}x "
          f"(quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}; target >= 0.95x): "
          f"{'MET' if ratio >= 0.95 else 'MISSED'}")
    print(f"- CPU per response, uvicorn / fournines serve (supervisor included): "
          f"{cpu_ratio:.3f}x (1.0 = the same cost)")


if __name__ == "__main__":
    main()
