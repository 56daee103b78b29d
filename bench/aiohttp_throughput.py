"""Claim: ``protect_aiohttp`` keeps most of a bare aiohttp app's throughput.

Two aiohttp servers (one process each) serve ``GET /orders/{id}`` answering a
small JSON body: one bare, one under ``protect_aiohttp`` (health, metrics,
deadline, shedding; the shedder's loop-lag rule off, so the load itself does not
shed). wrk (8 connections) loads each in turn, interleaved over the rounds. Printed
per variant (medians): requests per second, and the server's CPU time per request
(user + system, from ``/proc``), which stays readable on a shared, noisy machine
where requests per second do not; ratios are bare / protected for CPU (the
throughput a CPU-bound server keeps) and protected / bare for requests per second.

Usage: .venv/bin/python bench/aiohttp_throughput.py [--seconds 3] [--rounds 3]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from bench._servers import ROOT, free_port

_APP = """
import sys
from aiohttp import web

async def order(request):
    return web.json_response({"id": request.match_info["id"], "status": "paid"})

app = web.Application()
app.router.add_get("/orders/{id}", order)
if sys.argv[2] == "protected":
    from fournines.aiohttp import protect_aiohttp
    protect_aiohttp(app, max_loop_lag=None)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def start(variant: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    proc = subprocess.Popen([sys.executable, "-c", _APP, str(port), variant],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        try:
            httpx.get(f"http://127.0.0.1:{port}/orders/1", timeout=1).raise_for_status()
            return proc, port
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{variant} did not start: {proc.stderr.read().decode()}")  # type: ignore[union-attr]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(pid: int, port: int, seconds: float) -> tuple[float, float]:
    """(requests per second, server CPU µs per request) of one wrk run."""
    before = cpu_seconds(pid)
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{max(1, round(seconds))}s",
                          f"http://127.0.0.1:{port}/orders/42"],
                         capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pid) - before
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw error responses:\n{out}")
    count = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rps, used / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    servers = {variant: start(variant) for variant in ("bare", "protected")}
    rps: dict[str, list[float]] = {variant: [] for variant in servers}
    cpu: dict[str, list[float]] = {variant: [] for variant in servers}
    try:
        for _ in range(args.rounds):
            for variant, (proc, port) in servers.items():
                made, used = load(proc.pid, port, args.seconds)
                rps[variant].append(made)
                cpu[variant].append(used)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)
    r = {variant: statistics.median(values) for variant, values in rps.items()}
    c = {variant: statistics.median(values) for variant, values in cpu.items()}
    print(f"{'variant':12} {'req/s':>9} {'ratio':>7} {'CPU µs/req':>11} {'ratio':>7}")
    for variant in servers:
        print(f"{variant:12} {r[variant]:9.0f} {r[variant] / r['bare']:7.2f} "
              f"{c[variant]:11.1f} {c['bare'] / c[variant]:7.2f}")


if __name__ == "__main__":
    main()
