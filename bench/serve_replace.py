"""Claim: after SIGKILL of a worker, `fournines serve` has a replacement serving within 1 s.

One supervisor (``--workers 2``, bare Starlette ``bench.asgi_apps:app``) with a
control socket. Each round SIGKILLs one worker and polls ``--status`` (every
5 ms) for the replacement: when it appears (the supervisor's reaction: reaping
the dead worker and starting a new interpreter) and when it reports ready
(uvicorn started on the shared socket: it accepts from then on). Rounds are
spaced by 1.5 s and the supervisor runs with ``crash_window=1.0`` (from
Python: the CLI keeps 60 s), so every kill is the first crash of its window,
restarted at once: the backoff of a crash loop is not what is measured.

Two supervisors run side by side, one starting each worker as a fresh
interpreter (the default) and one with ``fork=True`` (``--fork``: workers forked
from the supervisor, which imported fournines and uvicorn once); the rounds
alternate between them.

Also prints what a fresh worker interpreter costs before it can report ready:
``python -c "import fournines.serve._worker, bench.asgi_apps"`` timed alone, the
part a pre-importing fork server could save.

Usage: .venv/bin/python bench/serve_replace.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._servers import ROOT, free_port

from fournines.serve import status

PATH = "/orders/42"


def _workers(control: str) -> dict[int, bool]:
    return {w["pid"]: w["ready"] for w in status(control)["workers"] if not w["stopping"]}


def _import_cost(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import fournines.serve._worker, bench.asgi_apps"],
                   env=env, cwd=ROOT, check=True)
    return time.perf_counter() - started


def _start(port: int, control: str, *, fork: bool,
           env: dict[str, str]) -> subprocess.Popen[bytes]:
    script = ("from fournines.asgi import GracefulShutdown\n"
              "from fournines.serve import run\n"
              f"run('bench.asgi_apps:app', workers=2, bind='127.0.0.1:{port}', "
              f"control={control!r}, crash_window=1.0, max_crashes=1000, access_log=False, "
              f"fork={fork}, log_level='warning', shutdown=GracefulShutdown(drain_delay=0, "
              "drain_timeout=5))\n")
    return subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_ready(control: str) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if len([r for r in _workers(control).values() if r]) == 2:
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.05)
    raise RuntimeError("the supervisor did not start")


def _round(control: str, port: int) -> tuple[float, float]:
    """SIGKILL one worker: (seconds to its replacement started, to it ready)."""
    before = _workers(control)
    victim = min(before)
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    spawned = None
    new_pid = None
    while True:
        now_workers = _workers(control)
        fresh = [pid for pid in now_workers if pid not in before]
        now = time.monotonic()
        if fresh and spawned is None:
            spawned, new_pid = now, fresh[0]
        if new_pid is not None and now_workers.get(new_pid):
            break
        if now - killed > 30:
            raise RuntimeError("no replacement within 30 s")
        time.sleep(0.005)
    assert spawned is not None
    assert httpx.get(f"http://127.0.0.1:{port}{PATH}", timeout=5).status_code == 200
    return spawned - killed, now - killed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10, help="kills per supervisor")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    kinds = {"interpreter": False, "fork": True}
    servers = {}
    for kind, fork in kinds.items():
        port = free_port()
        control = os.path.join(tempfile.mkdtemp(prefix="fn-replace-"), "c.sock")
        servers[kind] = (_start(port, control, fork=fork, env=env), port, control)
    reaction: dict[str, list[float]] = {k: [] for k in kinds}
    ready: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for _, _, control in servers.values():
            _wait_ready(control)
        for round_no in range(args.rounds):
            for kind in kinds if round_no % 2 == 0 else list(kinds)[::-1]:
                _, port, control = servers[kind]
                started, readied = _round(control, port)
                reaction[kind].append(started)
                ready[kind].append(readied)
                print(f"round {round_no + 1} {kind:<11}: started after {1000 * started:.0f} "
                      f"ms, ready after {1000 * readied:.0f} ms", flush=True)
                time.sleep(1.5)
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    imports = [_import_cost(env) for _ in range(5)]
    print("\n| SIGKILL of one worker of 2 | workers started as | median | max | ready <= 1 s |")
    print("|---|---|---:|---:|---:|")
    for kind in kinds:
        for name, values in (("replacement started (supervisor reaction)", reaction[kind]),
                             ("replacement ready (accepting)", ready[kind])):
            within = sum(v <= 1.0 for v in values)
            print(f"| {name} | {kind} | {1000 * statistics.median(values):.0f} ms | "
                  f"{1000 * max(values):.0f} ms | {within} of {len(values)} |")
    print(f"| a fresh interpreter importing the worker and the app, alone | - | "
          f"{1000 * statistics.median(imports):.0f} ms | {1000 * max(imports):.0f} ms | - |")


if __name__ == "__main__":
    main()
