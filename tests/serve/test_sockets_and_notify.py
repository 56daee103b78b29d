"""Where the listening sockets come from, and what systemd is told."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from ._supervisor import APP, ROOT, Served, serve_env, wait_for


def _short_dir(tmp_path: Path) -> Path:
    # unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    directory = Path("/tmp") / f"fn-sock-{os.getpid()}-{tmp_path.name}"
    directory.mkdir(exist_ok=True)
    return directory


def _start(tmp_path: Path, command: list[str], *, env: dict[str, str] | None = None,
           pass_fds: tuple[int, ...] = ()) -> tuple[subprocess.Popen[bytes], Path]:
    version_file = tmp_path / "version"
    version_file.write_text("v1")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env={**serve_env(version_file), **(env or {})},
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                pass_fds=pass_fds)
    return proc, log


def _serve_args(*binds: str) -> list[str]:
    args = [sys.executable, "-m", "fournines", "serve", APP, "--workers", "2",
            "--app-dir", str(ROOT), "--drain-delay", "0", "--no-access-log"]
    for bind in binds:
        args += ["--bind", bind]
    return args


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    return proc.wait(30)


def test_a_unix_socket_bind_serves_and_replaces_a_stale_socket_file(tmp_path: Path) -> None:
    path = _short_dir(tmp_path) / "http.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    proc, log = _start(tmp_path, _serve_args(f"unix:{path}"))
    try:
        wait_for(lambda: "worker(s) ready" in log.read_text(), what=f"ready:\n{log}")

        def pid() -> int:  # a new connection each time, so either worker may accept it
            transport = httpx.HTTPTransport(uds=str(path))
            with httpx.Client(transport=transport, base_url="http://serve") as client:
                return int(client.get("/").json()["pid"])

        wait_for(lambda: len({pid() for _ in range(40)}) == 2, what="both workers answering")
    finally:
        assert _stop(proc) == 0


def test_systemd_socket_activation_is_used_without_a_bind(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    # systemd puts the sockets at fd 3 and names the PID that owns them: a tiny
    # launcher does the same before exec'ing the supervisor (same PID after exec).
    launcher = (f"import os, sys; os.dup2({listener.fileno()}, 3); "
                "os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1'; "
                "os.execv(sys.executable, sys.argv[1:])")
    proc, log = _start(tmp_path, [sys.executable, "-c", launcher, *_serve_args()],
                       pass_fds=(listener.fileno(),))
    listener.close()
    try:
        wait_for(lambda: "worker(s) ready" in log.read_text(), what="ready")
        assert f"Listening on http://127.0.0.1:{port}" in log.read_text()
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=30).json()
        assert answer["version"] == "v1"
    finally:
        assert _stop(proc) == 0


def test_an_fd_bind_serves_on_the_inherited_socket(tmp_path: Path) -> None:
    with Served(tmp_path, workers=1) as served:  # Served always binds with fd://N
        served.wait_ready()
        assert served.get()["version"] == "v1"
        assert f"Listening on http://127.0.0.1:{served.port}" in served.log()


def test_systemd_is_told_ready_reloading_and_stopping(tmp_path: Path) -> None:
    notify_path = _short_dir(tmp_path) / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(60)
    with notify, Served(tmp_path, workers=2,
                        env={"NOTIFY_SOCKET": str(notify_path)}) as served:
        assert notify.recv(4096) == b"READY=1"
        served.version_file.write_text("v2")
        served.signal(__import__("signal").SIGHUP)
        reloading = notify.recv(4096).decode().splitlines()
        assert reloading[0] == "RELOADING=1"
        assert reloading[1].startswith("MONOTONIC_USEC=")
        assert notify.recv(4096) == b"READY=1"
        served.signal(__import__("signal").SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
        assert served.wait() == 0
