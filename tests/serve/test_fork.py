"""``--fork``: workers forked from the supervisor still re-import the app on every reload."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from ._supervisor import Load, Served, wait_for


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def test_forked_workers_serve_reload_new_code_and_replace_a_killed_one(tmp_path: Path) -> None:
    with Served(tmp_path, workers=2, drain_delay=0.2, args=("--fork",)) as served:
        served.wait_ready()
        assert served.proc is not None
        pids = served.pids_serving()
        assert len(pids) == 2
        # Forked, not started: a worker's command line is the supervisor's.
        assert {_cmdline(pid) for pid in pids} == {_cmdline(served.proc.pid)}
        with Load(served.url) as load:
            wait_for(lambda: load.served() > 50, what="load running")
            served.version_file.write_text("v2")
            served.signal(signal.SIGHUP)
            wait_for(lambda: "Reload complete" in served.log(), timeout=60, what="reload")
            seen = load.served()
            wait_for(lambda: load.served() > seen + 50, what="load after the reload")
        assert load.failures == []
        assert load.versions[-1] == "v2"  # the forked replacements imported the new code
        victim = min(served.pids_serving())
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: re.search(rf"Worker {victim} died \(signal SIGKILL\); restarting",
                                   served.log()) is not None, what="the death noticed")
        wait_for(lambda: victim not in served.pids_serving() and
                 len(served.pids_serving()) == 2, what="a replacement serving")
        assert {w for w in served.pids_serving()} != pids
        served.signal(signal.SIGTERM)
        assert served.wait() == 0
    assert "Not forking" not in served.log()
