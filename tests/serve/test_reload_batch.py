"""``--reload-batch N``: N replacements start together, each old worker drains after its own."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from ._supervisor import Load, Served, wait_for


def test_a_reload_batch_of_two_starts_two_new_workers_before_any_old_one_stops(
        tmp_path: Path) -> None:
    with Served(tmp_path, workers=4, drain_delay=0.2, args=("--reload-batch", "2")) as served:
        served.wait_ready(timeout=60)
        old = {int(pid) for pid in re.findall(r"Worker (\d+) started \(generation 0\)",
                                               served.log())}
        with Load(served.url) as load:
            wait_for(lambda: load.served() > 50, what="load running")
            served.version_file.write_text("v2")
            served.signal(signal.SIGHUP)
            wait_for(lambda: "Reload complete" in served.log(), timeout=120,
                     what="reload complete")
            seen = load.served()
            wait_for(lambda: load.served() > seen + 50, what="load after the reload")
        log = served.log()
    assert load.failures == []
    assert load.versions[0] == "v1"
    assert load.versions[-1] == "v2"  # both serve during the reload; only v2 after it
    reload = log[log.index("rolling reload to generation 1"):]
    events = re.findall(r"Worker (\d+) (started \(generation 1\)|ready|stopped)", reload)
    first_stop = next(i for i, (_, what) in enumerate(events) if what == "stopped")
    started_before = [pid for pid, what in events[:first_stop] if what.startswith("started")]
    assert len(started_before) >= 2  # the batch: two replacements at once
    started = [int(pid) for pid, what in events if what.startswith("started")]
    assert len(started) == 4
    assert {int(pid) for pid, what in events if what == "stopped"} == old
    # Never more than the batch starting at once: each start waits for a ready one.
    starting = 0
    for _, what in events:
        starting += 1 if what.startswith("started") else -1 if what == "ready" else 0
        assert starting <= 2
