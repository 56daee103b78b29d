"""Run every benchmark claim and print all tables as markdown, then one summary.

Each claim runs in its own process (so one library's background threads or
leaks cannot disturb another claim), one after the other, with the same
interpreter and CPU affinity as this script. Usage::

    taskset -c 1 .venv/bin/python bench/run_all.py            # all claims
    .venv/bin/python bench/run_all.py breaker_closed retry_success   # some

Environment knobs (see ``_harness.py``): ``BENCH_ROUNDS`` (7),
``BENCH_TARGET_MS`` (60), ``BENCH_MIN_N``, ``BENCH_MAX_N``, ``BENCH_SEED``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["breaker_closed", "breaker_open", "retry_success", "token_bucket", "pipeline"]
LIBS = ["fournines", "pybreaker", "circuitbreaker", "aiobreaker", "purgatory", "tenacity",
        "stamina", "backoff", "limits", "aiolimiter", "pyrate-limiter", "hyx", "pyresilience"]


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "unknown").strip()
    cpus = fields.get("CPU(s)", "?").strip()
    hyper = fields.get("Hypervisor vendor", "").strip()
    return f"{model}, {cpus} CPUs" + (f" ({hyper} guest)" if hyper else "")


def _source() -> str:
    """The commit measured and whether src/ differs from it (read-only git calls)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(["git", "-C", str(HERE.parent), "log", "-1", "--format=%h %ci %s"],
                              capture_output=True, text=True, check=True, env=env).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--",
                                "src"], capture_output=True, text=True, check=True,
                               env=env).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return head + (" (src/ has uncommitted changes)" if dirty else " (src/ clean)")


def machine() -> str:
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        affinity = []
    versions = []
    for lib in LIBS:
        try:
            versions.append(f"{lib} {importlib.metadata.version(lib)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{lib} (not installed)")
    return "\n".join([
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {_cpu_model()}; kernel {platform.release()}; CPU affinity {affinity}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}, "
        f"{sys.executable})",
        f"- libraries: {', '.join(versions)}",
        f"- fournines source: {_source()}",
        f"- command: {' '.join([Path(sys.executable).name, *sys.argv])}",
    ])


def main(argv: list[str]) -> int:
    names = argv or SCRIPTS
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        print(f"unknown claims {unknown}; choose from {SCRIPTS}", file=sys.stderr)
        return 2
    print("# fournines benchmarks\n")
    print(machine() + "\n")
    sys.stdout.flush()
    failed = []
    with tempfile.NamedTemporaryFile("w+", suffix=".md", delete=False) as tmp:
        summary_path = tmp.name
    env = {**os.environ, "BENCH_SUMMARY_FILE": summary_path}
    try:
        for name in names:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, str(HERE / f"{name}.py")], env=env,
                                  check=False)
            took = time.perf_counter() - t0
            print(f"\n_{name}.py: {took:.0f} s, exit {proc.returncode}_\n")
            sys.stdout.flush()
            if proc.returncode:
                failed.append(name)
        rows = Path(summary_path).read_text(encoding="utf-8").splitlines()
    finally:
        os.unlink(summary_path)
    print("## Summary of targets\n")
    print("| group | candidate | target | ratio | verdict |")
    print("|---|---|---|---:|---|")
    for row in rows:
        print(row)
    met = sum(1 for r in rows if r.rstrip().endswith("| MET |"))
    print(f"\n{met} of {len(rows)} targets met.")
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
