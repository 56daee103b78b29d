"""The seed's fleet beyond HTTP, as scenario steps: deploys, the database, the message queue.

Four fault kinds (:data:`~fournines.lab.scenario.STEP_KINDS`), each usable alone
in a scenario file (``examples/lab/rolling-deploy.yaml``, ``db-storm.yaml``,
``db-restart.yaml``, ``consumer-kill.yaml``):

- ``rolling_deploy``: ``service`` is deployed again during the load. The protected
  fleet runs it under ``fournines serve`` (2 workers, one socket) and reloads it
  through the supervisor's control socket (what SIGHUP does: new workers first,
  old ones drained); the unprotected fleet stops its one uvicorn process and
  starts it again, as a deploy without a supervisor does. The report counts the
  pages of the deploy's window (from its start to the reload's end, or the fault's
  end if later).
- ``db_storm`` / ``db_restart``: with any of these in the scenario the payment
  service gets its write path on PostgreSQL (:mod:`fournines.lab._payments`) and the
  lab sends it payments all along the load (:data:`WRITE_RATE` a second between
  :data:`ACCOUNTS` accounts; a payment not acknowledged is sent again with the same
  id, as a client would). A storm adds ``concurrency`` clients sending transfers
  between :data:`HOT_ACCOUNTS` accounts in both directions (serialization failures
  and deadlocks); a restart stops the lab's private PostgreSQL (``pg_ctl -m fast``)
  and starts it again when the fault ends. The report counts the transaction
  retries the payment service made, the payments sent again, and checks the
  ledger at the end: no acknowledged payment lost, none applied twice, the money
  conserved.
- ``consumer_kill``: each payment also asks for a confirmation, from the outbox to
  RabbitMQ to a consumer process (:mod:`fournines.lab._confirm`), which is
  SIGKILLed mid-stream and started again when the fault ends. At the end the lab
  waits for the queue to drain and counts the confirmations of every applied
  payment: exactly once, missing, or more than once.

The servers: a private PostgreSQL cluster in a temporary directory (``initdb`` /
``pg_ctl`` of the Debian package ``postgresql``), else, for the steps that need no
restart, databases of the lab's own on ``FOURNINES_LAB_POSTGRES_URL`` (default the
machine's ``postgresql://postgres@127.0.0.1:5432/postgres``), dropped afterwards;
RabbitMQ at ``FOURNINES_LAB_AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/``),
in a vhost of the lab's own when ``rabbitmqctl`` can make one, else on unique queue
names that are deleted afterwards. Each variant has its own database and queue.
A step whose server is missing is refused before any process starts
(:func:`check_servers`), naming what is missing; none is played as something else.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .fleet import DIE_WITH_PARENT, LabError, free_port
from .scenario import STEP_KINDS, Fault, Scenario

if TYPE_CHECKING:
    from .fleet import Fleet
    from .load import Outcome

__all__ = [
    "ACCOUNTS",
    "HOT_ACCOUNTS",
    "INITIAL_BALANCE",
    "WRITE_RATE",
    "StepRun",
    "VariantSteps",
    "check_servers",
    "step_lines",
]

WRITE_RATE = 20.0
"""Payments a second the lab sends during the load of a scenario with database steps."""
ACCOUNTS = 50
"""Accounts the steady payments move money between (few conflicts)."""
HOT_ACCOUNTS = 3
"""Accounts a storm's clients fight over (many conflicts)."""
STORM_PAUSE = 0.02
"""Seconds a storm client waits between its transfers: the storm is conflicts, not a
flood of requests that would load the lab's own process (and its load generator)."""
INITIAL_BALANCE = 1_000_000
"""Every account's balance before the load."""
DRAIN_TIMEOUT = 20.0
"""Seconds the lab waits after the load for resent payments and confirmations."""

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def _postgres_binaries() -> tuple[str, str] | None:
    found = {}
    for name in ("initdb", "pg_ctl"):
        paths = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
        path = paths[-1] if paths else shutil.which(name)
        if path is None:
            return None
        found[name] = path
    return found["initdb"], found["pg_ctl"]


def _kinds(scenario: Scenario) -> set[str]:
    return {f.kind for f in scenario.faults if f.kind in STEP_KINDS}


def _needs_database(kinds: set[str]) -> bool:
    return bool(kinds & {"db_storm", "db_restart", "consumer_kill"})


async def _postgres_answers(dsn: str) -> str | None:
    """``None`` when PostgreSQL answers at ``dsn``, else why not."""
    try:
        import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        return "the asyncpg package is missing: pip install 'fournines[data]'"
    try:
        conn = await asyncpg.connect(dsn, timeout=3.0)
    except Exception as exc:
        return f"no PostgreSQL answers at {_safe(dsn)} ({type(exc).__name__}: {exc})"
    await conn.close()
    return None


async def _rabbit_answers(url: str) -> str | None:
    try:
        import aio_pika  # noqa: PLC0415
    except ImportError:
        return "the aio-pika package is missing: pip install 'fournines[messages]'"
    try:
        connection = await asyncio.wait_for(aio_pika.connect(url), 5.0)
    except Exception as exc:
        return f"no RabbitMQ answers at {_safe(url)} ({type(exc).__name__}: {exc})"
    await connection.close()
    return None


def _safe(url: str) -> str:
    """``url`` without its password (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_servers(scenario: Scenario) -> None:
    """Refuse the steps whose servers this machine lacks, naming what is missing.

    Raises :class:`~fournines.lab.LabError` (``fournines lab`` exits 2 with it) before
    any process starts.
    """
    kinds = _kinds(scenario)
    if not kinds:
        return
    missing: list[str] = []
    if "rolling_deploy" in kinds:
        try:
            import uvicorn  # noqa: F401, PLC0415
        except ImportError:
            missing.append("rolling_deploy runs `fournines serve`, which needs uvicorn: "
                           "pip install 'fournines[serve]'")
    if _needs_database(kinds):
        binaries = _postgres_binaries()
        if "db_restart" in kinds and binaries is None:
            missing.append("db_restart stops and starts a private PostgreSQL, but initdb and "
                           "pg_ctl are not installed (Debian package 'postgresql')")
        elif binaries is None:
            dsn = os.environ.get("FOURNINES_LAB_POSTGRES_URL", DEFAULT_POSTGRES)
            why = asyncio.run(_postgres_answers(dsn))
            if why is not None:
                users = ", ".join(sorted(kinds - {"rolling_deploy"}))
                missing.append(f"{users} need PostgreSQL: initdb and pg_ctl are not "
                               f"installed (Debian package 'postgresql') and {why} (set "
                               "FOURNINES_LAB_POSTGRES_URL)")
        else:
            try:
                import asyncpg  # noqa: F401, PLC0415
            except ImportError:
                missing.append("the database steps need asyncpg: pip install "
                               "'fournines[data]'")
    if "consumer_kill" in kinds:
        url = os.environ.get("FOURNINES_LAB_AMQP_URL", DEFAULT_AMQP)
        why = asyncio.run(_rabbit_answers(url))
        if why is not None:
            missing.append(f"consumer_kill needs RabbitMQ: {why} (set FOURNINES_LAB_AMQP_URL "
                           "or start rabbitmq-server)")
    if missing:
        raise LabError(f"{scenario.source}: cannot play these steps here: "
                       + "; ".join(missing))


class _PrivatePostgres:
    """A PostgreSQL cluster of the lab's own (initdb in a temporary directory).

    initdb refuses to run as root: as root, the cluster runs as the ``postgres`` user.
    """

    def __init__(self, initdb: str, pg_ctl: str) -> None:
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fournines-lab-pg-")
        self.data = os.path.join(self.dir, "data")
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as, *command], capture_output=True, timeout=120,
                              check=False)
        if done.returncode != 0:
            raise LabError(f"{Path(command[0]).name} failed ({done.returncode}): "
                           f"{done.stderr.decode(errors='replace')[-500:]}")

    def create(self) -> None:
        self._run(self.initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c deadlock_timeout=50ms -c max_connections=200")
        self._run(self.pg_ctl, "-D", self.data, "-o", options, "-l",
                  os.path.join(self.dir, "log"), "-w", "start")

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop")

    def cleanup(self) -> None:
        with contextlib.suppress(LabError, subprocess.SubprocessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _rabbitmqctl(*args: str) -> bool:
    if shutil.which("rabbitmqctl") is None:
        return False
    try:
        done = subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=60,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def _with_vhost(url: str, vhost: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{vhost}"))


class StepRun:
    """The servers of a run's steps, shared by its variants (see the module docs)."""

    def __init__(self, scenario: Scenario, workdir: Path) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.kinds = _kinds(scenario)
        self.run_id = secrets.token_hex(4)
        self.private: _PrivatePostgres | None = None
        self.admin_dsn = ""
        self.amqp_url: str | None = None
        self.vhost: str | None = None
        self.databases: list[str] = []
        self.queues: list[str] = []
        self.info: dict[str, Any] = {}
        """Where the steps' servers were (for the report)."""

    async def start(self) -> None:
        """Start (or reach) the servers the steps need."""
        if _needs_database(self.kinds):
            binaries = _postgres_binaries()
            if binaries is not None:
                self.private = _PrivatePostgres(*binaries)
                await asyncio.to_thread(self.private.create)
                await asyncio.to_thread(self.private.start)
                self.admin_dsn = self.private.dsn
                self.info["postgres"] = f"a private cluster the lab started on port " \
                                        f"{self.private.port}"
            else:
                self.admin_dsn = os.environ.get("FOURNINES_LAB_POSTGRES_URL",
                                                DEFAULT_POSTGRES)
                self.info["postgres"] = f"lab-owned databases on {_safe(self.admin_dsn)}"
        if "consumer_kill" in self.kinds:
            base = os.environ.get("FOURNINES_LAB_AMQP_URL", DEFAULT_AMQP)
            vhost = f"fournines_lab_{self.run_id}"
            made = await asyncio.to_thread(_rabbitmqctl, "add_vhost", vhost)
            if made and await asyncio.to_thread(_rabbitmqctl, "set_permissions", "-p", vhost,
                                                urlsplit(base).username or "guest",
                                                ".*", ".*", ".*"):
                self.vhost = vhost
                self.amqp_url = _with_vhost(base, vhost)
                self.info["rabbitmq"] = f"vhost {vhost} at {_safe(base)}"
            else:
                if made:
                    await asyncio.to_thread(_rabbitmqctl, "delete_vhost", vhost)
                self.amqp_url = base
                self.info["rabbitmq"] = f"queues fournines-lab-{self.run_id}-* at {_safe(base)}"

    def variant(self, variant: str) -> VariantSteps:
        """The steps of one variant (its own database and queue)."""
        return VariantSteps(self, variant)

    async def stop(self) -> None:
        """Stop what the lab started, drop what it made."""
        if self.private is not None:
            await asyncio.to_thread(self.private.cleanup)
        elif self.databases:
            import asyncpg  # noqa: PLC0415

            with contextlib.suppress(Exception):
                conn = await asyncpg.connect(self.admin_dsn, timeout=3.0)
                try:
                    for name in self.databases:
                        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                finally:
                    await conn.close()
        if self.vhost is not None:
            await asyncio.to_thread(_rabbitmqctl, "delete_vhost", self.vhost)
        elif self.queues and self.amqp_url:
            import aio_pika  # noqa: PLC0415

            with contextlib.suppress(Exception):
                connection = await aio_pika.connect(self.amqp_url)
                async with connection:
                    channel = await connection.channel()
                    for queue in self.queues:
                        for name in (queue, f"{queue}.retry.1", f"{queue}.dead"):
                            with contextlib.suppress(Exception):
                                await channel.queue_delete(name)


@dataclass(slots=True)
class _Payment:
    id: str
    src: str
    dst: str
    amount: int
    started: float
    storm: bool
    attempts: int = 0
    acked: bool = False
    result: str = ""
    failures: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Attempt:
    at: float
    ok: bool
    retries: int


class _Consumer:
    """The confirmation consumer process (``python -m fournines.lab._confirm``)."""

    def __init__(self, variant: str, env: dict[str, str], workdir: Path) -> None:
        self.variant = variant
        self.env = env
        self.log = workdir / f"{variant}-consumer.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        from ._confirm import READY  # noqa: PLC0415

        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*DIE_WITH_PARENT, sys.executable, "-m", "fournines.lab._confirm"],
                env={**os.environ, **self.env, "FOURNINES_LAB_VARIANT": self.variant},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if READY.encode() in self.log.read_bytes()[offset:]:
                return
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        tail = self.log.read_bytes()[offset:][-1500:].decode(errors="replace")
        raise LabError(f"the {self.variant} confirmation consumer did not start:\n{tail}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.kill()


class VariantSteps:
    """One variant's side of the steps: its database, consumer, writes and checks."""

    def __init__(self, run: StepRun, variant: str) -> None:
        self.run = run
        self.variant = variant
        self.kinds = run.kinds
        self.scenario = run.scenario
        self.dsn = ""
        self.queue = f"fournines-lab-{run.run_id}-{variant}-confirm"
        self.consumer: _Consumer | None = None
        self.fleet: Fleet | None = None
        self.payments: list[_Payment] = []
        self.attempts: list[_Attempt] = []
        self.deploys: list[dict[str, Any]] = []
        self.kills: list[dict[str, Any]] = []
        """Per consumer kill: when, and how many applied payments were not yet confirmed
        (the stream the kill cut into)."""
        self.start_at = 0.0
        self.until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: Any = None
        self._rng = random.Random(f"{variant}-steps")

    @property
    def writes(self) -> bool:
        """Whether payment has its write path in this run."""
        return _needs_database(self.kinds)

    @property
    def served(self) -> frozenset[str]:
        """The services this variant runs under ``fournines serve`` (protected deploys)."""
        if self.variant != "protected":
            return frozenset()
        return frozenset(f.service for f in self.scenario.faults if f.kind == "rolling_deploy")

    def payment_env(self) -> dict[str, str]:
        """What the payment service needs for its write path (empty without one)."""
        if not self.writes:
            return {}
        env = {"FOURNINES_LAB_DATABASE_URL": self.dsn, "FOURNINES_LAB_QUEUE": self.queue}
        if "consumer_kill" in self.kinds and self.run.amqp_url:
            env["FOURNINES_LAB_AMQP_URL"] = self.run.amqp_url
        return env

    async def prepare(self) -> None:
        """Make the variant's database (schema, accounts), start its consumer."""
        if not self.writes:
            return
        import asyncpg  # noqa: PLC0415

        from ..data import SCHEMA  # noqa: PLC0415
        from ._payments import LEDGER_SCHEMA  # noqa: PLC0415

        name = f"fournines_lab_{self.run.run_id}_{self.variant}"
        admin = await asyncpg.connect(self.run.admin_dsn, timeout=5.0)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        self.run.databases.append(name)
        self.dsn = _with_database(self.run.admin_dsn, name)
        conn = await asyncpg.connect(self.dsn, timeout=5.0)
        try:
            await conn.execute(LEDGER_SCHEMA + SCHEMA)
            await conn.executemany("INSERT INTO lab_accounts (id, balance) VALUES ($1, $2)",
                                   [(a, INITIAL_BALANCE) for a in self._accounts()])
        finally:
            await conn.close()
        if "consumer_kill" in self.kinds:
            assert self.run.amqp_url is not None
            self.run.queues.append(self.queue)
            self.consumer = _Consumer(self.variant, {
                "FOURNINES_LAB_DATABASE_URL": self.dsn, "FOURNINES_LAB_AMQP_URL":
                self.run.amqp_url, "FOURNINES_LAB_QUEUE": self.queue}, self.run.workdir)
            await self.consumer.start()

    @staticmethod
    def _accounts() -> list[str]:
        return ([f"acct-{i}" for i in range(ACCOUNTS)]
                + [f"hot-{i}" for i in range(HOT_ACCOUNTS)])

    def attach(self, fleet: Fleet) -> None:
        """The fleet is up: writes go to its payment service."""
        self.fleet = fleet

    # -- during the load ------------------------------------------------------------

    async def run_writes(self, start: float) -> None:
        """Send the steady payments from ``start`` for the scenario's duration."""
        self.start_at = start
        if not self.writes:
            return
        import httpx  # noqa: PLC0415

        self.until = start + self.scenario.duration + DRAIN_TIMEOUT / 2
        self._client = httpx.AsyncClient(timeout=5.0, limits=httpx.Limits(
            max_connections=100, max_keepalive_connections=100))
        count = int(self.scenario.duration * WRITE_RATE)
        for n in range(count):
            await asyncio.sleep(max(start + n / WRITE_RATE - time.perf_counter(), 0.0))
            src, dst = self._rng.sample(range(ACCOUNTS), 2)
            self._spawn(_Payment(id=f"{self.variant}-w{n}", src=f"acct-{src}",
                                 dst=f"acct-{dst}", amount=self._rng.randint(1, 100),
                                 started=time.perf_counter() - start, storm=False))

    def _spawn(self, payment: _Payment) -> asyncio.Task[None]:
        self.payments.append(payment)
        task = asyncio.create_task(self._send(payment))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(self, payment: _Payment) -> None:
        assert self.fleet is not None
        url = (f"{self.fleet.services['payment'].url}/pay/{payment.id}?from={payment.src}"
               f"&to={payment.dst}&amount={payment.amount}")
        while True:
            payment.attempts += 1
            at = time.perf_counter() - self.start_at
            try:
                response = await self._client.post(url)
                body = response.json()
                ok = response.status_code == 200
                self.attempts.append(_Attempt(at=at, ok=ok, retries=int(body.get("retries", 0))))
                if ok:
                    payment.acked, payment.result = True, str(body.get("result"))
                    return
                why = str(body.get("error", response.status_code)).partition(":")[0]
            except Exception as exc:  # no answer: sent again, like any client would
                self.attempts.append(_Attempt(at=at, ok=False, retries=0))
                why = type(exc).__name__
            payment.failures[why] = payment.failures.get(why, 0) + 1
            if time.perf_counter() > self.until:
                return
            await asyncio.sleep(0.1 + 0.1 * self._rng.random())

    async def _storm(self, fault: Fault, index: int) -> None:
        end = self.start_at + fault.end
        serial = [0]

        async def client(c: int) -> None:
            while time.perf_counter() < end:
                a, b = self._rng.sample(range(HOT_ACCOUNTS), 2)
                serial[0] += 1
                await self._spawn(_Payment(
                    id=f"{self.variant}-s{index}-{serial[0]}", src=f"hot-{a}", dst=f"hot-{b}",
                    amount=self._rng.randint(1, 100), started=time.perf_counter() - self.start_at,
                    storm=True))
                await asyncio.sleep(STORM_PAUSE)

        await asyncio.gather(*(client(c) for c in range(fault.concurrency)))

    async def begin(self, fault: Fault, index: int) -> None:
        """Start a step's fault."""
        if fault.kind == "db_storm":
            task = asyncio.create_task(self._storm(fault, index))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif fault.kind == "db_restart":
            assert self.run.private is not None
            await asyncio.to_thread(self.run.private.stop)
        elif fault.kind == "consumer_kill":
            assert self.consumer is not None
            self.consumer.kill()
            self.kills.append({"at": round(time.perf_counter() - self.start_at, 3),
                               "unconfirmed": await self._unconfirmed()})
        elif fault.kind == "rolling_deploy":
            await self._deploy(fault)

    async def end(self, fault: Fault, index: int) -> None:
        """End a step's fault (a storm ends by itself at its window's end)."""
        if fault.kind == "db_restart":
            assert self.run.private is not None
            await asyncio.to_thread(self.run.private.start)
        elif fault.kind == "consumer_kill":
            assert self.consumer is not None
            await self.consumer.start()

    async def _deploy(self, fault: Fault) -> None:
        assert self.fleet is not None
        service = self.fleet.services[fault.service]
        began = time.perf_counter()
        record: dict[str, Any] = {"service": fault.service, "at": fault.at,
                                  "planned_end": fault.end,
                                  "began": round(began - self.start_at, 3)}
        try:
            if service.control is not None:
                from ..serve import control  # noqa: PLC0415

                record["how"] = ("fournines serve: rolling reload, new workers first "
                                 "(the control socket's reload, as SIGHUP)")
                answer = await asyncio.to_thread(control.reload, str(service.control),
                                                 timeout=120.0)
                record["ok"] = bool(answer.get("ok"))
                record["message"] = str(answer.get("message", ""))
            else:
                record["how"] = "stop (SIGTERM) and start the one uvicorn process"
                # Waiting for the old process to exit must not stall the load generator.
                await asyncio.to_thread(service.stop)
                service.spawn()
                await service.ready()
                record["ok"] = True
        finally:
            record["done"] = round(time.perf_counter() - self.start_at, 3)
            self.deploys.append(record)
        if not record["ok"]:
            raise LabError(f"the rolling deploy of {fault.service} failed: "
                           f"{record.get('message')}")

    # -- after the load -------------------------------------------------------------

    async def finish(self, outcomes: list[Outcome]) -> dict[str, Any]:
        """Wait for the writes and confirmations to settle, check them, stop; the summary."""
        out: dict[str, Any] = {}
        try:
            if self.deploys:
                out["rolling_deploy"] = [self._deploy_summary(d, outcomes)
                                         for d in self.deploys]
            if self.writes:
                if self._tasks:
                    await asyncio.wait(set(self._tasks), timeout=DRAIN_TIMEOUT)
                for task in set(self._tasks):
                    task.cancel()
                out["database"] = await self._check_ledger()
        finally:
            if self._client is not None:
                await self._client.aclose()
            if self.consumer is not None:
                self.consumer.stop()
        return out

    def _deploy_summary(self, record: dict[str, Any], outcomes: list[Outcome]) -> dict[str, Any]:
        start, end = record["began"], max(record["done"], record["planned_end"])
        window = [o for o in outcomes if start <= o.at < end]
        ok = [o for o in window if o.ok]
        return {**record, "window": [start, end], "pages": len(window), "served": len(ok),
                "full": sum(not o.degraded for o in ok), "failed": len(window) - len(ok),
                "seconds": round(record["done"] - record["began"], 3)}

    def _window_counts(self) -> list[dict[str, Any]]:
        rows = []
        for fault in self.scenario.faults:
            if fault.kind not in ("db_storm", "db_restart", "consumer_kill"):
                continue
            inside = [a for a in self.attempts if fault.at <= a.at < fault.end]
            rows.append({"fault": fault.label(), "at": fault.at, "end": fault.end,
                         "attempts": len(inside), "failed": sum(not a.ok for a in inside),
                         "transaction_retries": sum(a.retries for a in inside)})
        return rows

    async def _check_ledger(self) -> dict[str, Any]:
        import asyncpg  # noqa: PLC0415

        acked = {p.id for p in self.payments if p.acked}
        failures: dict[str, int] = {}
        for p in self.payments:
            for why, n in p.failures.items():
                failures[why] = failures.get(why, 0) + n
        summary: dict[str, Any] = {
            "payments": len(self.payments),
            "storm_payments": sum(p.storm for p in self.payments),
            "acknowledged": len(acked),
            "never_acknowledged": len(self.payments) - len(acked),
            "attempts": len(self.attempts),
            "failed_attempts": sum(not a.ok for a in self.attempts),
            "failures": failures,
            "resent": sum(p.attempts - 1 for p in self.payments),
            "transaction_retries": sum(a.retries for a in self.attempts),
            "duplicates_recognised": sum(p.result == "duplicate" for p in self.payments),
            "windows": self._window_counts(),
        }
        if self.consumer is not None:
            await self._drain_confirmations()
        conn = await asyncpg.connect(self.dsn, timeout=10.0)
        try:
            applied = {r[0] for r in await conn.fetch("SELECT id FROM lab_payments")}
            twice = await conn.fetchval(
                "SELECT count(*) FROM (SELECT payment_id FROM lab_entries GROUP BY payment_id "
                "HAVING count(*) <> 2 OR sum(delta) <> 0) AS t")
            orphans = await conn.fetchval(
                "SELECT count(DISTINCT payment_id) FROM lab_entries e WHERE NOT EXISTS "
                "(SELECT 1 FROM lab_payments p WHERE p.id = e.payment_id)")
            total = await conn.fetchval("SELECT sum(balance) FROM lab_accounts")
            off = await conn.fetchval(
                "SELECT count(*) FROM lab_accounts a WHERE a.balance <> $1 + coalesce("
                "(SELECT sum(delta) FROM lab_entries e WHERE e.account = a.id), 0)",
                INITIAL_BALANCE)
            sent = {p.id for p in self.payments}
            summary.update({
                "applied": len(applied),
                "applied_unacknowledged": len(applied - acked),
                "lost": len(acked - applied),
                "unknown_payments": len(applied - sent),
                "applied_twice": int(twice) + int(orphans),
                "money_conserved": int(total) == INITIAL_BALANCE * len(self._accounts()),
                "balances_off": int(off),
            })
            if self.consumer is not None:
                rows = await conn.fetch(
                    "SELECT p.id, count(c.payment_id) FROM lab_payments p LEFT JOIN "
                    "lab_confirmations c ON c.payment_id = p.id GROUP BY p.id")
                counts = [int(r[1]) for r in rows]
                extra = await conn.fetchval(
                    "SELECT count(*) FROM lab_confirmations c WHERE NOT EXISTS "
                    "(SELECT 1 FROM lab_payments p WHERE p.id = c.payment_id)")
                summary["confirmations"] = {
                    "payments": len(counts), "exactly_once": sum(c == 1 for c in counts),
                    "missing": sum(c == 0 for c in counts),
                    "more_than_once": sum(c > 1 for c in counts),
                    "extra_rows": sum(c - 1 for c in counts if c > 1) + int(extra),
                    "dead_letters": await self._dead_letters(),
                    "kills": self.kills}
        finally:
            await conn.close()
        checks = [summary["lost"] == 0, summary["applied_twice"] == 0,
                  summary["unknown_payments"] == 0, summary["money_conserved"],
                  summary["balances_off"] == 0]
        summary["no_payment_applied_twice"] = summary["applied_twice"] == 0
        summary["ledger_ok"] = all(checks)
        if "confirmations" in summary:
            c = summary["confirmations"]
            summary["exactly_once"] = c["missing"] == 0 and c["more_than_once"] == 0 \
                and c["extra_rows"] == 0
        return summary

    async def _dead_letters(self) -> int | None:
        """Messages in the protected consumer's dead letters (``None``: no such queue)."""
        if self.variant != "protected" or self.run.amqp_url is None:
            return None
        import aio_pika  # noqa: PLC0415

        from ..data import dead_queue  # noqa: PLC0415

        try:
            connection = await aio_pika.connect(self.run.amqp_url)
        except Exception:
            return None
        async with connection:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(dead_queue(self.queue), passive=True)
            except Exception:
                return None
            return int(queue.declaration_result.message_count or 0)

    async def _unconfirmed(self) -> int | None:
        import asyncpg  # noqa: PLC0415

        try:
            conn = await asyncpg.connect(self.dsn, timeout=2.0)
        except (OSError, asyncpg.PostgresError):
            return None
        try:
            return int(await conn.fetchval(
                "SELECT count(*) FROM lab_payments p WHERE NOT EXISTS (SELECT 1 FROM "
                "lab_confirmations c WHERE c.payment_id = p.id)"))
        finally:
            await conn.close()

    async def _drain_confirmations(self) -> None:
        """Until every applied payment is confirmed and nothing more arrives (or a timeout)."""
        import asyncpg  # noqa: PLC0415

        end = time.monotonic() + DRAIN_TIMEOUT
        last = (-1, -1)
        stable = 0
        while time.monotonic() < end:
            try:
                conn = await asyncpg.connect(self.dsn, timeout=3.0)
                try:
                    now = (int(await conn.fetchval(
                        "SELECT count(*) FROM lab_payments p WHERE NOT EXISTS (SELECT 1 FROM "
                        "lab_confirmations c WHERE c.payment_id = p.id)")),
                        int(await conn.fetchval("SELECT count(*) FROM lab_confirmations")))
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError):
                now = (-1, -1)
            stable = stable + 1 if now == last and now[0] == 0 else 0
            if stable >= 4:  # nothing missing, and nothing more for a second
                return
            last = now
            await asyncio.sleep(0.25)


def step_lines(steps: dict[str, dict[str, Any]]) -> list[str]:
    """The steps' results, one line each, per variant (for the terminal and the HTML)."""
    lines: list[str] = []
    for variant, out in steps.items():
        for d in out.get("rolling_deploy", []):
            lines.append(
                f"{variant}: rolling deploy of {d['service']} ({d['how']}) took "
                f"{d['seconds']:.1f} s: {d['served']} of {d['pages']} pages served during "
                f"it ({d['full']} in full), {d['failed']} failed")
        db = out.get("database")
        if db:
            lines.append(
                f"{variant}: payments: {db['acknowledged']} of {db['payments']} acknowledged "
                f"({db['storm_payments']} from storms), {db['failed_attempts']} failed "
                f"attempts of {db['attempts']}, {db['resent']} sent again, "
                f"{db['transaction_retries']} transaction retries by the payment service, "
                f"{db['duplicates_recognised']} resends recognised as already applied")
            for w in db["windows"]:
                lines.append(f"{variant}:   {w['fault']} {w['at']:g}-{w['end']:g} s: "
                             f"{w['attempts']} attempts, {w['failed']} failed, "
                             f"{w['transaction_retries']} transaction retries")
            verdict = "OK" if db["ledger_ok"] else "BROKEN"
            lines.append(
                f"{variant}: ledger {verdict}: {db['applied']} payments applied, "
                f"{db['applied_twice']} applied twice, {db['lost']} acknowledged but lost, "
                f"money {'conserved' if db['money_conserved'] else 'NOT conserved'}, "
                f"{db['balances_off']} balances off their entries")
            c = db.get("confirmations")
            if c:
                lines.append(
                    f"{variant}: confirmations (outbox -> RabbitMQ -> consumer): "
                    f"{'exactly once' if db['exactly_once'] else 'NOT exactly once'}: "
                    f"{c['exactly_once']} of {c['payments']} payments confirmed once, "
                    f"{c['missing']} missing, {c['more_than_once']} more than once "
                    f"({c['extra_rows']} extra effects)"
                    + (f", {c['dead_letters']} in the dead letters"
                       if c.get("dead_letters") is not None else ""))
                for k in c["kills"]:
                    lines.append(f"{variant}:   consumer SIGKILLed at {k['at']:.1f} s with "
                                 f"{k['unconfirmed']} applied payments not yet confirmed")
    return lines

