"""Graceful shutdown: LifecycleMiddleware, GracefulShutdown, serve() under real signals.

Process tests run ``python -m tests.asgi.apps.shutdown_app`` (serve() on uvicorn)
on a free loopback port and send it real SIGTERM/SIGINT. They assert what must
happen and in which order, never how fast: timeouts only bound the waiting.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from fournines._errors import ConfigurationError
from fournines.asgi._state import Phase, ServiceState
from fournines.asgi._types import Message, Receive, Scope, Send, respond
from fournines.asgi.server import DrainingServer, _bind_host, find_state, serve
from fournines.asgi.shutdown import GracefulShutdown, LifecycleMiddleware

from .._servers import free_port

ROOT = Path(__file__).resolve().parents[2]


# --- a real serve() process ----------------------------------------------------------


class ShutdownApp:
    """``tests.asgi.apps.shutdown_app`` in its own process, ready (``/readyz`` 200)."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        self.env = env
        self.log_path = tmp_path / f"shutdown-app-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ShutdownApp:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}",
               "PORT": str(self.port), **self.env}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.asgi.apps.shutdown_app"],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"app not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def exit_code(self, timeout: float) -> int:
        """Wait (without blocking the event loop) for the process to exit."""
        assert self.proc is not None
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout}s later; log:\n{self.log()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., ShutdownApp]]:
    apps: list[ShutdownApp] = []

    def start(**env: Any) -> ShutdownApp:
        app = ShutdownApp(tmp_path, **{key.upper(): str(value) for key, value in env.items()})
        apps.append(app)
        return app.start()

    yield start
    for app in apps:
        app.kill()


@dataclass
class Outcome:
    kind: str              # "keep-alive" or "new-connection"
    started: float         # time.monotonic() when the request was sent
    got_start: bool = False
    status: int | None = None
    body: bytes = b""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.body == b"done"


async def fetch(client: httpx.AsyncClient, path: str, kind: str = "") -> Outcome:
    outcome = Outcome(kind, time.monotonic())
    try:
        async with client.stream("GET", path) as response:
            outcome.got_start = True
            outcome.status = response.status_code
            outcome.body = await response.aread()
    except httpx.TransportError as exc:
        outcome.error = repr(exc)
    return outcome


async def generate_load(client: httpx.AsyncClient, kind: str, outcomes: list[Outcome],
                        stop: asyncio.Event) -> None:
    """A continuous stream of 50 ms requests, one at a time."""
    while not stop.is_set():
        outcome = await fetch(client, "/work?ms=50", kind)
        outcomes.append(outcome)
        if outcome.error:
            await asyncio.sleep(0.02)   # refused after the drain delay: do not spin


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def no_keep_alive(url: str) -> httpx.AsyncClient:
    """A client that opens a new connection for every request."""
    return httpx.AsyncClient(base_url=url, timeout=30,
                             limits=httpx.Limits(max_keepalive_connections=0))


# --- the drain sequence, end to end --------------------------------------------------


async def test_sigterm_under_load_drains_without_failing_accepted_requests(
    start_app: Callable[..., ShutdownApp],
) -> None:
    drain_delay, drain_timeout = 2.0, 10.0
    app = start_app(drain_delay=drain_delay, drain_timeout=drain_timeout)
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=app.url, timeout=30) as keep_alive, \
            no_keep_alive(app.url) as fresh, no_keep_alive(app.url) as prober:
        workers = [
            *(asyncio.create_task(generate_load(keep_alive, "keep-alive", outcomes, stop))
              for _ in range(4)),
            *(asyncio.create_task(generate_load(fresh, "new-connection", outcomes, stop))
              for _ in range(4)),
        ]
        await wait_for(lambda: sum(o.ok for o in outcomes) >= 40, 20, "load to flow")
        # In flight well past the drain delay: keeps the process alive (draining) while
        # we check that it refuses new connections.
        long_request = asyncio.create_task(
            fetch(fresh, f"/work?ms={int((drain_delay + 3) * 1000)}"))
        await asyncio.sleep(0.1)

        app.signal(signal.SIGTERM)
        flipped_at = None
        while flipped_at is None:   # readiness must fail while connections are accepted
            probe = await prober.get("/readyz")
            if probe.status_code == 503:
                flipped_at = time.monotonic()
            else:
                assert probe.status_code == 200
        served_after_flip = {
            kind: lambda kind=kind: any(o.ok and o.started > flipped_at and o.kind == kind
                                        for o in outcomes)
            for kind in ("keep-alive", "new-connection")
        }
        for kind, predicate in served_after_flip.items():
            await wait_for(predicate, drain_delay, f"a {kind} request served while draining")

        await wait_for_refusal(app, timeout=drain_delay + 10)
        assert app.running(), "connections must be refused while in-flight requests finish"

        assert await app.exit_code(drain_delay + drain_timeout + 10) == 0
        stop.set()
        await asyncio.gather(*workers)
        long_outcome = await long_request

    assert long_outcome.ok, long_outcome
    accepted = [o for o in outcomes if o.got_start or o.started < flipped_at]
    assert accepted and all(o.ok for o in accepted), [o for o in accepted if not o.ok][:5]
    # Whatever failed was sent after readiness turned 503 and never got a response.
    failed = [o for o in outcomes if not o.ok]
    assert all(o.error and not o.got_start and o.started >= flipped_at for o in failed)


async def wait_for_refusal(app: ShutdownApp, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not await refuses_connections(app.port):
        if time.monotonic() > end:
            pytest.fail(f"still accepting {timeout}s after SIGTERM:\n{app.log()}")
        await asyncio.sleep(0.05)


async def test_request_longer_than_drain_timeout_is_cancelled_and_exit_is_clean(
    start_app: Callable[..., ShutdownApp],
) -> None:
    app = start_app(drain_delay=0.5, drain_timeout=1.0)
    async with no_keep_alive(app.url) as client:
        slow = asyncio.create_task(fetch(client, "/work?ms=60000"))
        await asyncio.sleep(0.2)
        app.signal(signal.SIGTERM)
        assert await app.exit_code(0.5 + 1.0 + 10) == 0
        outcome = await slow
    assert not outcome.ok
    assert "work cancelled" in app.log()


async def test_second_sigterm_exits_at_once_without_draining(
    start_app: Callable[..., ShutdownApp],
) -> None:
    app = start_app(drain_delay=20, drain_timeout=5)
    async with no_keep_alive(app.url) as client:
        slow = asyncio.create_task(fetch(client, "/work?ms=60000"))
        await asyncio.sleep(0.2)
        app.signal(signal.SIGTERM)
        await wait_for_503(client)
        app.signal(signal.SIGTERM)
        # Far less than the 20 s drain delay it skips.
        assert await app.exit_code(10) == 128 + signal.SIGTERM
        assert not (await slow).ok


async def wait_for_503(client: httpx.AsyncClient) -> None:
    end = time.monotonic() + 10
    while (await client.get("/readyz")).status_code != 503:
        assert time.monotonic() < end, "readiness never turned 503"
        await asyncio.sleep(0.02)


async def test_sigint_drains_like_sigterm(start_app: Callable[..., ShutdownApp]) -> None:
    app = start_app(drain_delay=0.3, drain_timeout=2)
    async with no_keep_alive(app.url) as client:
        app.signal(signal.SIGINT)
        await wait_for_503(client)
    assert await app.exit_code(0.3 + 2 + 10) == 0


@pytest.mark.parametrize("lifespan", ["on", "ignore", "unsupported"])
async def test_process_is_ready_after_startup(start_app: Callable[..., ShutdownApp],
                                              lifespan: str) -> None:
    app = start_app(shutdown_app_lifespan=lifespan)   # start() waits for /readyz 200
    async with httpx.AsyncClient(base_url=app.url) as client:
        response = await client.get("/readyz")
    assert (response.status_code, response.text) == (200, "ready")


# --- LifecycleMiddleware -------------------------------------------------------------


class Lifespan:
    """Drives the ASGI lifespan protocol of ``app`` by hand."""

    def __init__(self, app: LifecycleMiddleware) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self.task = asyncio.ensure_future(app(scope, self.inbox.get, self.outbox.put))

    async def send(self, kind: str) -> Message:
        await self.inbox.put({"type": kind})
        return await asyncio.wait_for(self.outbox.get(), 5)


def lifespan_app(phases: list[Phase], state: ServiceState, *, fail: bool = False) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        phases.append(state.phase)          # inside startup
        if fail:
            await send({"type": "lifespan.startup.failed", "message": "no database"})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()
        phases.append(state.phase)          # inside shutdown
        await send({"type": "lifespan.shutdown.complete"})

    return app


async def test_ready_only_after_lifespan_startup_completes() -> None:
    state, phases = ServiceState(), list[Phase]()
    lifespan = Lifespan(LifecycleMiddleware(lifespan_app(phases, state), state=state))
    assert await lifespan.send("lifespan.startup") == {"type": "lifespan.startup.complete"}
    assert phases == [Phase.STARTING]
    assert state.phase is Phase.READY


async def test_failed_lifespan_startup_stays_not_ready() -> None:
    state, phases = ServiceState(), list[Phase]()
    lifespan = Lifespan(LifecycleMiddleware(lifespan_app(phases, state, fail=True), state=state))
    assert (await lifespan.send("lifespan.startup"))["type"] == "lifespan.startup.failed"
    await lifespan.task
    assert state.phase is Phase.STARTING


async def test_lifespan_shutdown_marks_draining() -> None:
    state, phases = ServiceState(), list[Phase]()
    lifespan = Lifespan(LifecycleMiddleware(lifespan_app(phases, state), state=state))
    await lifespan.send("lifespan.startup")
    assert await lifespan.send("lifespan.shutdown") == {"type": "lifespan.shutdown.complete"}
    assert phases == [Phase.STARTING, Phase.DRAINING]


async def test_app_that_ignores_lifespan_is_ready_after_startup() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    state = ServiceState()
    await Lifespan(LifecycleMiddleware(app, state=state)).task
    assert state.phase is Phase.READY


async def test_app_that_rejects_lifespan_is_ready_after_startup() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("lifespan not supported")

    state = ServiceState()
    with pytest.raises(RuntimeError):   # propagates: uvicorn decides what it means
        await Lifespan(LifecycleMiddleware(app, state=state)).task
    assert state.phase is Phase.READY


async def http_get(app: LifecycleMiddleware) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
    return sent


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await respond(send, 200, b"ok")


async def test_first_request_marks_ready_when_the_server_sends_no_lifespan() -> None:
    state = ServiceState()
    await http_get(LifecycleMiddleware(ok, state=state))
    assert state.phase is Phase.READY


async def test_in_flight_counts_requests_inside_the_app() -> None:
    state = ServiceState()
    seen: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(state.in_flight)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await http_get(LifecycleMiddleware(app, state=state))
    assert (seen, state.in_flight) == ([1], 0)


async def test_instance_header_only_when_asked() -> None:
    state = ServiceState(instance="pod-7")
    plain = await http_get(LifecycleMiddleware(ok, state=state))
    tagged = await http_get(LifecycleMiddleware(ok, state=state, instance_header=True))
    assert (b"x-instance-id", b"pod-7") not in plain[0]["headers"]
    assert (b"x-instance-id", b"pod-7") in tagged[0]["headers"]


async def test_responses_ask_clients_to_reconnect_while_draining() -> None:
    state = ServiceState()
    app = LifecycleMiddleware(ok, state=state)
    before = await http_get(app)
    state.mark_draining()
    during = await http_get(app)
    assert (b"connection", b"close") not in before[0]["headers"]
    assert (b"connection", b"close") in during[0]["headers"]


# --- DrainingServer's signal handling, without a process -----------------------------


def draining_server(state: ServiceState) -> DrainingServer:
    return DrainingServer(uvicorn.Config(ok), state=state,
                          shutdown=GracefulShutdown(drain_delay=5, drain_timeout=20))


def test_first_signal_fails_readiness_but_keeps_serving() -> None:
    state = ServiceState()
    state.mark_ready()
    server = draining_server(state)
    server.handle_exit(signal.SIGTERM, None)
    assert (state.phase, server.should_exit, server.exit_code) == (Phase.DRAINING, False, 0)


def test_signal_before_ready_skips_the_drain_delay() -> None:
    state = ServiceState()
    server = draining_server(state)
    server.handle_exit(signal.SIGTERM, None)
    assert (state.phase, server.should_exit) == (Phase.DRAINING, True)


def test_second_signal_forces_exit() -> None:
    state = ServiceState()
    state.mark_ready()
    server = draining_server(state)
    server.handle_exit(signal.SIGTERM, None)
    server.handle_exit(signal.SIGINT, None)
    assert (server.should_exit, server.force_exit) == (True, True)
    assert server.exit_code == 128 + signal.SIGTERM


# --- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"drain_delay": -1}, "GracefulShutdown.drain_delay"),
    ({"drain_timeout": -1}, "GracefulShutdown.drain_timeout"),
    ({"drain_timeout": None}, "GracefulShutdown.drain_timeout"),
    ({"grace_period": 0}, "GracefulShutdown.grace_period"),
    ({"exit_code": 256}, "GracefulShutdown.exit_code"),
    ({"drain_delay": 10, "drain_timeout": 20}, "drain_timeout must be < grace_period"),
    ({"drain_delay": 1, "drain_timeout": 5, "grace_period": 6}, "grace_period (6"),
])
def test_invalid_config_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace("(", r"\(")):
        GracefulShutdown(**kwargs)


def test_config_defaults_fit_kubernetes_grace_period() -> None:
    config = GracefulShutdown()
    assert (config.drain_delay, config.drain_timeout, config.exit_code) == (5.0, 20.0, 0)
    assert GracefulShutdown(drain_timeout=None, grace_period=None).drain_timeout is None


@pytest.mark.parametrize("option", ["timeout_graceful_shutdown", "workers", "reload"])
def test_serve_refuses_options_that_bypass_the_drain(option: str) -> None:
    with pytest.raises(ConfigurationError, match=option):
        serve(ok, **{option: 1})  # type: ignore[arg-type]


def test_binds_to_loopback_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOST", raising=False)
    assert _bind_host(None) == "127.0.0.1"
    assert _bind_host("0.0.0.0") == "0.0.0.0"
    monkeypatch.setenv("HOST", "0.0.0.0")
    assert _bind_host(None) == "0.0.0.0"


def test_find_state_looks_through_middleware() -> None:
    state = ServiceState()

    class Outer:
        def __init__(self, app: object) -> None:
            self.app = app

    assert find_state(Outer(Outer(LifecycleMiddleware(ok, state=state)))) is state
    assert find_state(Outer(ok)) is None
