"""Every ```python block of README.md runs as written, each in a fresh interpreter.

A block runs on its own: its imports included, ``asyncio.run`` where it awaits,
no name it does not define. A marker comment on the line right before a fence
says what a block needs:

- ``<!-- readme: skip REASON -->``: not run (rare; the reason is required);
- ``<!-- readme: server -->``: it serves until stopped: it must answer ``/livez``
  on ``$PORT`` and exit 0 on SIGTERM;
- ``<!-- readme: needs FEATURE ... -->``: network-fault features
  (:func:`fournines.chaos.network.capabilities`); skipped where they are missing.

Blocks that call servers read their addresses from the environment with a
default a reader would use; here they point at servers this module starts on
loopback (``PAYMENTS_URL``, ``ORDERS_ENDPOINTS``, ``REDIS_URL``, ``TOXIPROXY_PORT``,
``ETCD_URL``, ``KAFKA_BOOTSTRAP``).

``python -m tests.test_readme --write DIR`` writes the blocks that run to DIR, one
module each, for ``mypy --strict`` (the Makefile's ``lint`` target).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*readme:\s*(.*?)\s*-->$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """One fenced code block of the README."""

    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str | None
    heading: str

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"L{self.line}-{slug}"


def blocks(path: Path = README) -> list[Block]:
    """The fenced blocks of ``path``, with the marker comment right before each."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    heading, i = "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = _FENCE.match(line)
        if fence:
            start, body = i, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            marker = _MARKER.match(lines[start - 1].strip()) if start else None
            found.append(Block(line=start + 1, lang=fence.group(1), code="\n".join(body) + "\n",
                               marker=marker.group(1) if marker else None, heading=heading))
        i += 1
    return found


def python_blocks() -> list[Block]:
    """The blocks that are Python."""
    return [b for b in blocks() if b.lang == "python"]


def runnable(block: Block) -> bool:
    """Whether ``block`` is run (and type-checked): everything but explicit skips."""
    return not (block.marker or "").startswith("skip")


def write(directory: Path) -> list[Path]:
    """Write every runnable Python block to ``directory`` as its own module."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for block in python_blocks():
        if runnable(block):
            path = directory / f"readme_L{block.line}.py"
            path.write_text(block.code, encoding="utf-8")
            written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--write":
        sys.exit("usage: python -m tests.test_readme --write DIR")
    write(Path(sys.argv[2]))
    sys.exit(0)


import pytest  # noqa: E402  (the --write mode above runs without pytest)

from fournines.chaos.network import capabilities  # noqa: E402

from ._servers import EtcdServer, RedisServer, free_port  # noqa: E402
from .data._tansu import Tansu  # noqa: E402


class _Answer(BaseHTTPRequestHandler):
    """A dependency that always answers: a payment status, an order, for any path."""

    def do_GET(self) -> None:
        body = json.dumps({"status": "paid", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_servers() -> Iterator[list[str]]:
    """Two plain HTTP servers on loopback, as the README's payments and orders services."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Answer) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def chaos_proxy() -> Iterator[int]:
    """``fournines chaos proxy`` on a free port (the README's Toxiproxy client talks to it)."""
    proc = subprocess.Popen([sys.executable, "-m", "fournines", "chaos", "proxy", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"API on http://[\d.]+:(\d+)", line)
        assert found, f"fournines chaos proxy printed {line!r}"
        yield int(found.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def readme_etcd() -> Iterator[EtcdServer]:
    """A private etcd for the README's discovery block."""
    server = EtcdServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def readme_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """A private Tansu (Kafka's protocol) for the README's Kafka block."""
    broker = Tansu(tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def env(http_servers: list[str], redis_server: RedisServer, chaos_proxy: int,
        readme_etcd: EtcdServer, readme_kafka: Tansu) -> dict[str, str]:
    return {
        **os.environ,
        "PAYMENTS_URL": http_servers[0],
        "ORDERS_ENDPOINTS": ",".join(http_servers),
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
        "TOXIPROXY_PORT": str(chaos_proxy),
        "ETCD_URL": readme_etcd.url,
        "KAFKA_BOOTSTRAP": readme_kafka.bootstrap,
        "CHAOS_TOKEN": "readme-token-0123456789",
        "PYTHONUNBUFFERED": "1",
    }


def _run(path: Path, env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-W", "always::ResourceWarning", str(path)],
                          check=False, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    # add_delay's shim outlives its Popen on purpose (heal() stops it by pid), which
    # Python reports as "subprocess N is still running": not a leak of the block's.
    leaks = [line for line in done.stderr.splitlines()
             if "ResourceWarning" in line and "is still running" not in line
             and "Enable tracemalloc" not in line]
    assert not leaks, f"left something open:\n{done.stderr}"


def _serve(path: Path, env: dict[str, str], cwd: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(path)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**env, "PORT": str(port), "HOST": "127.0.0.1"})
    try:
        end = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            proc.kill()
            output = proc.communicate()[0]
            pytest.fail(f"never answered /livez on port {port}\n{output}")
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, f"exit {proc.returncode} after SIGTERM\n{output}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: b.id)
def test_readme_block_runs_as_written(block: Block, env: dict[str, str], tmp_path: Path) -> None:
    marker = block.marker or ""
    if marker.startswith("skip"):
        pytest.skip(marker[4:].strip())
    path = tmp_path / f"readme_L{block.line}.py"
    path.write_text(block.code, encoding="utf-8")
    if marker == "server":
        _serve(path, env, tmp_path)
        return
    if marker.startswith("needs "):
        reason = capabilities().missing(*marker.split()[1:])
        if reason:
            pytest.skip(reason)
    _run(path, env, tmp_path)


def test_every_marker_is_known_and_every_skip_has_a_reason() -> None:
    for block in blocks():
        marker = block.marker
        if marker is None or marker == "server" or marker.startswith("needs "):
            continue
        assert marker.startswith("skip ") and marker[5:].strip(), (
            f"README.md:{block.line}: unknown marker or skip without a reason: {marker!r}")
        assert block.lang == "python", f"README.md:{block.line}: a marker on a {block.lang} block"


def test_the_readme_has_python_blocks() -> None:
    assert len(python_blocks()) >= 15
