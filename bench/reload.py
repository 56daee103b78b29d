"""Claim: `fournines serve` reloads under load without failing a request; its peers do not.

The same app (``bench.asgi_apps:app``, bare Starlette), the same load and the same
number of reloads against three servers with 2 workers each, one after another:

- ``uvicorn --workers 2``, reloaded with SIGHUP (uvicorn restarts each worker, old first);
- ``gunicorn -k uvicorn.workers.UvicornWorker -w 2``, reloaded with HUP;
- ``fournines serve --workers 2``, reloaded with SIGHUP (new first, drained).

The load is paced (``--rate`` requests/s, well under the capacity of two workers):
``--keepalive`` kept-alive connections plus one task that opens a new connection for
every request, a quarter of the rate. A kept-alive connection the server closed while
idle is reopened before the next request (as httpx/httpcore do), not counted as a
failure; any other error, a timeout or a non-200 answer is a failed request.

Prints, per server: requests, failed requests (errors / timeouts / non-200), p99
latency of the successful requests during the reloads, and the reloads completed
where the server says so. The machine may be shared: compare the rows of one run.

Usage: .venv/bin/python bench/reload.py [--reloads 20] [--interval 3] [--rate 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._http_load import _read_response
from bench._servers import ROOT, free_port

PATH = "/orders/42"


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    non_200: int = 0
    latencies: list[float] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.errors + self.timeouts + self.non_200

    def fail(self, kind: str, what: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 3:
            self.examples.append(what)

    def p99(self) -> float:
        values = sorted(self.latencies)
        return values[min(len(values) - 1, int(len(values) * 0.99))] if values else float("nan")


def _command(server: str, port: int) -> list[str]:
    app = "bench.asgi_apps:app"
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", app, "--workers", "2", "--host", "127.0.0.1",
                "--port", str(port), "--no-access-log", "--log-level", "warning"]
    if server == "gunicorn":
        return [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker",
                "-w", "2", "-b", f"127.0.0.1:{port}", "--log-level", "warning", app]
    return [sys.executable, "-m", "fournines", "serve", app, "--workers", "2", "--bind",
            f"127.0.0.1:{port}", "--no-access-log", "--log-level", "warning",
            "--drain-delay", "0.5", "--drain-timeout", "10"]


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   request: bytes, tally: Tally, timing: bool) -> bool:
    """One request; True when the connection may be kept."""
    sent = time.monotonic()
    writer.write(request)
    try:
        status, close = await asyncio.wait_for(_read_response(reader), 10.0)
    except TimeoutError:
        tally.fail("timeouts", "timeout")
        return False
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        tally.fail("errors", repr(exc))
        return False
    if status != 200:
        tally.fail("non_200", f"status {status}")
    else:
        tally.ok += 1
        if timing:
            tally.latencies.append(time.monotonic() - sent)
    return not close


async def _paced(port: int, period: float, end: float, tally: Tally, keep: bool,
                 window: list[float]) -> None:
    request = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    at = time.monotonic()
    while at < end:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        at += period
        if conn is not None and (conn[0].at_eof() or conn[1].is_closing()):
            conn[1].close()  # closed by the server while idle: reopen, as httpcore does
            conn = None
        if conn is None:
            try:
                conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10.0)
            except TimeoutError:
                tally.fail("timeouts", "connect timeout")
                continue
            except OSError as exc:
                tally.fail("errors", f"connect: {exc!r}")
                continue
        timing = window[0] <= time.monotonic() <= window[1]
        kept = await _request(*conn, request, tally, timing)
        if not kept or not keep:
            conn[1].close()
            conn = None
    if conn is not None:
        conn[1].close()


async def _load(port: int, *, rate: float, keepalive: int, seconds: float,
                window: list[float]) -> Tally:
    tally = Tally()
    end = time.monotonic() + seconds
    fresh_rate = rate / 4
    per_conn = (rate - fresh_rate) / keepalive
    tasks = [_paced(port, 1 / per_conn, end, tally, True, window) for _ in range(keepalive)]
    tasks.append(_paced(port, 1 / fresh_rate, end, tally, False, window))
    await asyncio.gather(*tasks)
    return tally


def _wait_serving(port: int, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{PATH}", timeout=1).status_code == 200:
                time.sleep(1.0)  # every worker up, not just the first
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def run(server: str, *, reloads: int, interval: float, rate: float, keepalive: int) -> dict[str, object]:
    port = free_port()
    env = {**os.environ, "BENCH_VARIANT": "bare",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(_command(server, port), env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            _wait_serving(port, proc)
            lead, tail = 2.0, 3.0
            seconds = lead + reloads * interval + tail
            start = time.monotonic()
            window = [start + lead, start + lead + reloads * interval + tail]

            async def drive() -> Tally:
                load = asyncio.create_task(_load(port, rate=rate, keepalive=keepalive,
                                                 seconds=seconds, window=window))
                await asyncio.sleep(lead)
                for _ in range(reloads):
                    proc.send_signal(signal.SIGHUP)
                    await asyncio.sleep(interval)
                return await load

            tally = asyncio.run(drive())
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.seek(0)
        text = log.read().decode(errors="replace")
    completed = str(text.count("Reload complete")) if server == "fournines" else "?"
    return {"server": server, "tally": tally, "completed": completed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--keepalive", type=int, default=8)
    parser.add_argument("--servers", default="uvicorn,gunicorn,fournines")
    args = parser.parse_args()
    rows = []
    for server in args.servers.split(","):
        row = run(server, reloads=args.reloads, interval=args.interval, rate=args.rate,
                  keepalive=args.keepalive)
        tally = row["tally"]
        assert isinstance(tally, Tally)
        print(f"{server}: {tally.ok + tally.failed} requests, {tally.failed} failed "
              f"{tally.examples}", flush=True)
        rows.append(row)
    print(f"\n{args.reloads} reloads, one every {args.interval:g}s, at {args.rate:g} req/s "
          f"({args.keepalive} kept-alive connections + a new connection per request for "
          "a quarter of them), 2 workers each\n")
    print("| server | requests | failed | errors | timeouts | non-200 | p99 during reloads | "
          "reloads completed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        tally = row["tally"]
        assert isinstance(tally, Tally)
        print(f"| {row['server']} | {tally.ok + tally.failed} | **{tally.failed}** | "
              f"{tally.errors} | {tally.timeouts} | {tally.non_200} | "
              f"{tally.p99() * 1000:.1f} ms | {row['completed']} |")


if __name__ == "__main__":
    main()
