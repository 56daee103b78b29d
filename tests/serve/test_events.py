"""The supervisor's events: reloads, worker exits by cause (``fournines.serve.run``)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from ._supervisor import ROOT, Served, wait_for

SCRIPT = ROOT / "tests" / "serve" / "apps" / "run_with_events.py"


def _events(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reloads_and_worker_exits_are_events_with_their_cause(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    with Served(tmp_path, workers=2, script=SCRIPT,
                env={"EVENTS_FILE": str(events_file)}) as served:
        served.wait_ready()
        served.version_file.write_text("v2")
        served.signal(signal.SIGHUP)
        wait_for(lambda: any(e["type"] == "WorkersReloaded" for e in _events(events_file)),
                 what="the reload event")
        victim = int(str(served.get()["pid"]))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: any(e.get("cause") == "crashed" for e in _events(events_file)),
                 what="the crash event")
        served.signal(signal.SIGTERM)
        assert served.wait() == 0
    events = _events(events_file)
    reloaded = [e for e in events if e["type"] == "WorkersReloaded"]
    assert [(e["ok"], e["generation"]) for e in reloaded] == [(True, 1)]
    exits = [(e["pid"], e["generation"], e["cause"]) for e in events
             if e["type"] == "WorkerExited"]
    assert [cause for _, generation, cause in exits if generation == 0] == ["stopped"] * 2
    assert (victim, 1, "crashed") in exits
    crash = next(e for e in events if e.get("cause") == "crashed")
    assert crash["reason"] == "signal SIGKILL"
    assert all(e["policy"] == "serve" and e["name"] == "tests.serve.apps.versioned:app"
               for e in events)
