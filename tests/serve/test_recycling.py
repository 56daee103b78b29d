"""``--max-requests`` (with jitter) and ``--max-rss``: workers replaced new first, no failure."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from ._supervisor import Load, Served, wait_for

_RECYCLED = re.compile(r"Worker (\d+) served (\d+) requests \(max (\d+)\)")


def _recycles_done(log: str) -> int:
    return sum(f"Worker {old} stopped" in log for old, _, _ in _RECYCLED.findall(log))


def test_max_requests_recycles_each_worker_new_first_under_load(tmp_path: Path) -> None:
    with Served(tmp_path, workers=2, drain_delay=0.2,
                args=("--max-requests", "150", "--max-requests-jitter", "50")) as served:
        served.wait_ready()
        with Load(served.url) as load:
            wait_for(lambda: _recycles_done(served.log()) >= 3, timeout=60,
                     what="three workers recycled")
        log = served.log()
    assert load.failures == []
    recycled = _RECYCLED.findall(log)
    assert all(150 <= int(limit) <= 200 for _, _, limit in recycled)
    # The worker counts its requests itself: the replacement starts at exactly its limit.
    assert all(int(count) == int(limit) for _, count, limit in recycled)
    for old, _, _ in recycled[:3]:
        # New first: the replacement started after the decision was ready before the
        # old worker stopped.
        after = log[log.index(f"Worker {old} served"):]
        new = re.search(r"Worker (\d+) started", after)
        assert new is not None
        assert after.index(f"Worker {new.group(1)} ready") < after.index(f"Worker {old} stopped")


def test_a_worker_above_max_rss_is_replaced_new_first(tmp_path: Path) -> None:
    with Served(tmp_path, workers=2, drain_delay=0.2, args=("--max-rss", "150")) as served:
        served.wait_ready()
        with Load(served.url) as load:
            wait_for(lambda: load.served() > 50, what="load running")
            grown = int(httpx.get(served.url + "/grow?mb=200", timeout=30).json()["pid"])
            wait_for(lambda: f"Worker {grown} stopped" in served.log(), timeout=60,
                     what=f"worker {grown} recycled")
        log = served.log()
    assert load.failures == []
    after = log[log.index(f"Worker {grown} uses "):]
    assert "(max 150.0): replacing it, new first" in after.splitlines()[0]
    new = re.search(r"Worker (\d+) started", after)
    assert new is not None
    assert after.index(f"Worker {new.group(1)} ready") < after.index(f"Worker {grown} stopped")
    # Only the worker that grew: the other stayed under the limit.
    assert log.count(" uses ") == 1
