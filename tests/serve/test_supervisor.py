"""``fournines serve``: real supervisor and worker processes on loopback.

No timing assertions: every wait is for a condition, with a generous timeout.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import httpx

from ._supervisor import Load, Served, wait_for


def test_every_worker_serves_on_the_one_socket(tmp_path: Path) -> None:
    with Served(tmp_path, workers=2) as served:
        served.wait_ready()
        wait_for(lambda: len(served.pids_serving()) == 2, what="both workers answering")


def test_sighup_reloads_new_first_with_no_failed_request(tmp_path: Path) -> None:
    with Served(tmp_path, workers=2) as served:
        served.wait_ready()
        old = served.pids_serving()
        with Load(served.url) as load:
            wait_for(lambda: load.served() > 50, what="load running")
            served.version_file.write_text("v2")
            served.signal(signal.SIGHUP)
            wait_for(lambda: "Reload complete" in served.log(), what="reload complete")
            seen = load.served()
            wait_for(lambda: load.served() > seen + 50, what="load after the reload")
        assert load.failures == []
        assert load.versions[0] == "v1"
        assert load.versions[-1] == "v2"
        assert served.pids_serving().isdisjoint(old)


def test_reload_to_a_broken_version_is_aborted_and_the_old_workers_keep_serving(
        tmp_path: Path) -> None:
    with Served(tmp_path, workers=2) as served:
        served.wait_ready()
        old = served.pids_serving()
        with Load(served.url) as load:
            wait_for(lambda: load.served() > 50, what="load running")
            served.version_file.write_text("broken")
            served.signal(signal.SIGHUP)
            wait_for(lambda: "Reload aborted" in served.log(), what="reload aborted")
            seen = load.served()
            wait_for(lambda: load.served() > seen + 50, what="load after the aborted reload")
        assert load.failures == []
        assert load.versions == ["v1"]
        assert "this version is broken at import" in served.log()
        assert served.pids_serving() == old


def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    with Served(tmp_path, workers=2) as served:
        served.wait_ready()
        wait_for(lambda: len(served.pids_serving()) == 2, what="both workers answering")
        victim = next(iter(served.pids_serving()))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: "restarting in" in served.log(), what="the crash noticed")
        wait_for(lambda: len(served.pids_serving() - {victim}) == 2,
                 what="two workers answering again, none of them the killed one")


def test_a_worker_with_a_blocked_event_loop_is_replaced(tmp_path: Path) -> None:
    with Served(tmp_path, workers=1, args=("--heartbeat-timeout", "2")) as served:
        served.wait_ready()
        hung = served.pids_serving(1)

        def block() -> None:
            try:
                httpx.get(served.url + "/block", timeout=60)
            except httpx.HTTPError:
                pass  # the hung worker is killed under this request

        threading.Thread(target=block, daemon=True).start()
        wait_for(lambda: "sent no heartbeat" in served.log(), what="the missed heartbeat")
        wait_for(lambda: served.pids_serving(1) - hung != set(), what="a new worker answering")


def test_sigterm_lets_in_flight_requests_finish_and_exits_0(tmp_path: Path) -> None:
    started = tmp_path / "slow-started"
    with Served(tmp_path, workers=2, env={"SLOW_STARTED_FILE": str(started)}) as served:
        served.wait_ready()
        results: list[int | str] = []

        def slow() -> None:
            try:
                results.append(httpx.get(served.url + "/slow?seconds=2", timeout=60).status_code)
            except httpx.HTTPError as exc:
                results.append(repr(exc))

        threads = [threading.Thread(target=slow) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: started.exists() and len(started.read_text().split()) == 4,
                 what="slow requests in flight")
        served.signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        assert served.wait() == 0
        assert results == [200, 200, 200, 200]


def test_a_crash_loop_makes_the_supervisor_give_up_with_a_non_zero_exit(tmp_path: Path) -> None:
    served = Served(tmp_path, workers=1, env={"CRASH_AFTER": "0.3"})
    with served:
        code = served.wait(90)
    assert code == 1
    assert "crash loop: 5 worker crashes" in served.log()


def test_an_app_that_cannot_be_imported_fails_the_start_with_one_line(tmp_path: Path) -> None:
    served = Served(tmp_path, workers=2, version="broken")
    with served:
        code = served.wait(60)
    assert code == 1
    assert "fournines serve: error: worker failed to start: cannot load" in served.log()
