"""A lab run that could not do what it was asked exits non-zero and says so (issue 13).

Real processes: the lab runs as ``python -m fournines lab`` with its fleet, and the test
pauses the lab process itself (SIGSTOP, then SIGCONT 2.5 s later) while its load runs, as
a starved CPU or a swapping machine would: the load generator falls behind its schedule,
and what it would report measures the pause, not the fleet.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_a_lab_run_whose_generator_fell_behind_exits_1_without_a_table(tmp_path: Path) -> None:
    scenario = tmp_path / "steady.yaml"
    scenario.write_text("name: steady\nduration: 4\nrate: 40\n")
    out = tmp_path / "out"
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)
    lab = subprocess.Popen(
        [sys.executable, "-m", "fournines", "lab", "--scenario", str(scenario), "--out",
         str(out), "--json", str(tmp_path / "lab.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": path, "COLUMNS": "200"})
    assert lab.stdout is not None and lab.stderr is not None
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(lab.stderr or ()), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        for line in lab.stdout:
            seen.append(line)
            if "probing the payment service's capacity" in line:
                break
        # The probe takes 1 s and the load starts 0.2 s after it: pause 0.6 s into it.
        time.sleep(1.8)
        lab.send_signal(signal.SIGSTOP)
        time.sleep(2.5)
        lab.send_signal(signal.SIGCONT)
        seen.extend(lab.stdout)
        status = lab.wait(timeout=60)
    finally:
        if lab.poll() is None:
            lab.send_signal(signal.SIGCONT)
            lab.kill()
            lab.wait()
    reader.join(timeout=5)
    stdout, err = "".join(seen), "".join(stderr)
    assert status == 1, stdout + err
    assert "Traceback" not in stdout + err
    assert "the load generator fell behind its schedule" in err
    assert len(err.strip().splitlines()) == 1, err
    assert "availability (full)" not in stdout  # no table of what was not measured
    assert not (out / "report.html").exists()
    report = json.loads((tmp_path / "lab.json").read_text())
    assert report["problems"][0].startswith("unprotected: the load generator fell behind")
    assert list(report["variants"]) == ["unprotected"]  # the void comparison stopped at once
