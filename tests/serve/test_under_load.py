"""What the issue asks ``fournines serve`` to show, under steady real HTTP load.

The load (``Load``) keeps kept-alive connections and new connections busy from
threads; it is well under the capacity of two workers. Every wait is for a
condition; no time bound is asserted (a killed worker's replacement time is
printed, see ``-s``).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ._supervisor import Load, Served, wait_for

RELOADS = 20
CLIENT_SKEW = 0.5


def test_twenty_sighup_reloads_under_load_fail_no_request(tmp_path: Path) -> None:
    with Served(tmp_path, workers=2, drain_delay=0.2) as served:
        served.wait_ready()
        with Load(served.url) as load:
            wait_for(lambda: load.served() > 50, what="load running")
            for number in range(1, RELOADS + 1):
                served.version_file.write_text(f"v{number + 1}")
                served.signal(signal.SIGHUP)
                wait_for(lambda n=number: served.log().count("Reload complete") == n,
                         what=f"reload {number} complete")
            seen = load.served()
            wait_for(lambda: load.served() > seen + 50, what="load after the last reload")
    assert load.failures == []  # failed requests and connection resets alike
    assert served.log().count("Reload complete") == RELOADS
    assert load.versions[0] == "v1"
    assert load.versions[-1] == f"v{RELOADS + 1}"


def test_a_reload_to_code_that_raises_at_import_keeps_serving_and_says_why(
        tmp_path: Path) -> None:
    with Served(tmp_path, workers=2, drain_delay=0.2) as served:
        served.wait_ready()
        with Load(served.url) as load:
            wait_for(lambda: load.served() > 50, what="load running")
            served.version_file.write_text("broken")
            served.signal(signal.SIGHUP)
            wait_for(lambda: "Reload aborted" in served.log(), what="reload aborted")
            seen = load.served()
            wait_for(lambda: load.served() > seen + 50, what="load after the refusal")
        log = served.log()
    assert load.failures == []
    assert load.versions == ["v1"]
    assert ("failed to start (cannot load tests.serve.apps.versioned:app: RuntimeError: "
            "this version is broken at import); the old workers keep serving") in log


def test_sigkill_of_a_worker_fails_only_its_in_flight_requests(tmp_path: Path) -> None:
    with Served(tmp_path, workers=2) as served:
        served.wait_ready()
        with Load(served.url, keepalive_threads=2, fresh_threads=2) as load:
            wait_for(lambda: len(load.first_seen) == 2, what="both workers answering")
            victim = min(load.first_seen)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len(load.first_seen) == 3, what="a replacement answering")
            noticed = time.monotonic()
            seen = load.served()
            wait_for(lambda: load.served() > seen + 50, what="load after the replacement")
    replacement = max(load.first_seen, key=load.first_seen.__getitem__)
    # Only requests already sent when the worker died may fail: at most one per load
    # thread, all begun before the kill took effect.
    assert len(load.failures) <= 4, load.failures
    assert all(started < noticed for started in load.failed_started)
    assert load.first_seen[replacement] > killed_at
    # The "a replacement serves within 1 s" is a latency, not asserted here
    # (never a timing assertion in tests; it varies with the machine's load): -s shows it.
    print(f"replacement serving {load.first_seen[replacement] - killed_at:.2f}s after the kill")


def test_sigterm_under_load_fails_nothing_that_arrived_before_the_drain_ended(
        tmp_path: Path) -> None:
    with Served(tmp_path, workers=2, drain_delay=2.0) as served:
        served.wait_ready()
        with Load(served.url) as load:
            wait_for(lambda: load.served() > 50, what="load running")
            signalled = time.monotonic()
            served.signal(signal.SIGTERM)
            code = served.wait()
    assert code == 0
    # "started" is read in a client thread before it connects; on a crowded machine the
    # connect itself can come a little later, so the last CLIENT_SKEW seconds of the
    # drain delay are not counted.
    before = [f for f, started in zip(load.failures, load.failed_started, strict=True)
              if started < signalled + served.drain_delay - CLIENT_SKEW]
    assert before == []
