"""Starting, faulting and stopping the lab's real processes.

- :class:`ServiceProcess`: one uvicorn process (one worker, uvloop, httptools) on a
  free loopback port, running :func:`fournines.lab.services.create_app`.
- :class:`FaultProxy`: the fault proxy process (``python -m fournines chaos proxy``)
  and a client of its Toxiproxy-compatible HTTP API.
- :class:`Fleet`: the four services of one variant, order -> payment through the
  proxy, and the fault actions of a scenario.

With etcd (``fournines lab --etcd``) the protected fleet finds its dependencies
through the registry: every protected service registers itself once it serves
and deregisters when it stops, order follows payment's instances and the
gateway order's and profile's through :class:`~fournines.discovery.EtcdEndpoints`
feeding the client balancer. Payment then runs :data:`PAYMENT_INSTANCES`
instances, each behind a fault-proxy route of its own, which share the modelled
capacity of the one unprotected instance (so both fleets have the same capacity).
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .._errors import FourNinesError
from .scenario import Fault, PaymentModel

if TYPE_CHECKING:
    from .registry import LabEtcd

__all__ = [
    "DIE_WITH_PARENT",
    "PAYMENT_INSTANCES",
    "FaultProxy",
    "Fleet",
    "LabError",
    "ServiceProcess",
    "free_port",
    "process_cpu_seconds",
]


class LabError(FourNinesError, RuntimeError):
    """The lab could not run (a process did not start, a fault could not be applied).

    A :class:`~fournines.FourNinesError`, and still a ``RuntimeError`` as it always was.
    """


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> list[str]:
    """A command prefix asking Linux to SIGKILL the child when the lab dies.

    The lab stops its processes in ``finally`` blocks, on Ctrl-C and SIGTERM; a
    SIGKILL of the lab (an OOM kill, a CI timeout) runs none of them, and the
    children, in sessions of their own, would keep running and holding ports.
    ``setpriv --pdeathsig`` (util-linux) sets ``PR_SET_PDEATHSIG`` and execs the
    command, so the child keeps its pid; a ``preexec_fn`` would do the same but
    is unsafe in a process with threads. The signal follows the thread that
    started the child: the lab starts every process from its event loop's thread.
    Where ``setpriv`` is missing, nothing is added.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


DIE_WITH_PARENT = _die_with_parent()
"""Prefix for the command of every process the lab starts (empty where unsupported)."""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, what: str,
                     timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=0.5) as client:
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise LabError(f"{what} exited with status {proc.returncode}:\n{_tail(log)}")
            try:
                await client.get(url)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    raise LabError(f"{what} did not answer {url} within {timeout:g} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 3.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux ``/proc``; empty where unknown)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` from ``/proc``; NaN where unknown."""
    if pid is None:
        return math.nan
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        # after the command name: state is field 3, utime 14 and stime 15 (proc(5))
        ticks = int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


class ServiceProcess:
    """One lab service in its own uvicorn process.

    With ``control`` (a socket path) it runs under ``fournines serve`` instead, one
    worker, the supervisor holding the port: :meth:`restart` is then a new-first
    reload through that control socket (``fournines serve --reload``), as a
    deploy or ``kubectl rollout restart`` replaces a pod; without it a restart stops
    the process and starts it again.
    """

    def __init__(self, role: str, variant: str, env: dict[str, str], workdir: Path,
                 port: int | None = None, name: str | None = None,
                 control: Path | None = None, workers: int = 1) -> None:
        self.role = role
        self.control = control
        """With a path: the service runs under ``fournines serve`` (``workers`` workers),
        whose control socket is there (a ``rolling_deploy`` or a leak's restart reloads it)."""
        self.workers = workers
        self.name = name or role
        self.variant = variant
        self.port = port or free_port()
        self.env = env
        self.log = workdir / f"{variant}-{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        """Start the process (does not wait for it to answer)."""
        env = {**os.environ, **self.env, "FOURNINES_LAB_ROLE": self.role,
               "FOURNINES_LAB_VARIANT": self.variant, "FOURNINES_LAB_PORT": str(self.port)}
        if self.control is not None:
            # Drains short enough for the lab's compressed time: a worker being replaced
            # fails readiness for 0.5 s, then has 3 s for the requests in flight.
            command = [*DIE_WITH_PARENT, sys.executable, "-m", "fournines", "serve",
                       "fournines.lab.services:create_app", "--factory",
                       "--workers", str(self.workers),
                       "--bind", f"127.0.0.1:{self.port}", "--control", str(self.control),
                       "--drain-delay", "0.5", "--drain-timeout", "3", "--grace-period", "10",
                       "--log-level", "warning", "--no-access-log"]
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(command, env=env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            return
        command = [*DIE_WITH_PARENT, sys.executable, "-m", "uvicorn",
                   "fournines.lab.services:create_app",
                   "--factory", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1", "--no-access-log", "--log-level", "warning",
                   "--loop", "uvloop", "--http", "httptools", "--backlog", "4096",
                   # idle keep-alive connections outlive the pauses between fault phases
                   "--timeout-keep-alive", "30",
                   # the gateway limits by client address: no peer may forge it (issue 13)
                   "--no-proxy-headers"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    async def ready(self, timeout: float = 20.0) -> None:
        """Wait until the service answers ``/livez``."""
        assert self.proc is not None
        await _wait_http(self.url + "/livez", self.proc, self.log,
                         f"the {self.variant} {self.name} service", timeout)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the process has used so far; NaN where unknown.

        Read from ``/proc/PID/stat`` (Linux): the lab reports each service's share of
        the machine, to show that the modelled capacity, not the CPU, is the bottleneck.
        Under ``fournines serve`` the workers' time is added to the supervisor's (the
        workers alive now: a replaced worker's time is gone, so it is a lower bound).
        """
        pid = self.proc.pid if self.proc is not None else None
        total = process_cpu_seconds(pid)
        if pid is not None and self.control is not None:
            for child in _children(pid):
                used = process_cpu_seconds(child)
                if math.isfinite(used):
                    total += used
        return total

    async def restart(self) -> None:
        """Replace the process's code and state: a serve reload (new first), or stop + start."""
        if self.control is None:
            # Off the event loop: a graceful stop waits for slow requests, and the load
            # generator shares this loop.
            await asyncio.to_thread(self.stop)
            self.spawn()
            await self.ready()
            return
        from ..serve import ControlError, reload  # noqa: PLC0415

        try:
            answer = await asyncio.to_thread(reload, str(self.control), timeout=60.0)
        except ControlError as exc:
            raise LabError(f"the {self.variant} {self.name} service: {exc}") from exc
        if not answer.get("ok"):
            raise LabError(f"the {self.variant} {self.name} service did not reload: "
                           f"{answer.get('message')}")

    def kill(self) -> None:
        """SIGKILL: no draining, no goodbye (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        _stop(self.proc)


class FaultProxy:
    """The fault proxy process and its Toxiproxy-compatible HTTP API."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "fault-proxy.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = f"http://127.0.0.1:{self.port}"
        # The proxy's API can reroute and cut every service: even on loopback it answers
        # only the lab, which holds this run's token.
        self._token = secrets.token_urlsafe(24)
        self._client = httpx.AsyncClient(base_url=self.api, timeout=5.0,
                                         headers={"Authorization": f"Bearer {self._token}"})

    async def start(self) -> None:
        """Start ``python -m fournines chaos proxy`` and wait until its API answers."""
        command = [*DIE_WITH_PARENT, sys.executable, "-m", "fournines", "chaos", "proxy",
                   "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True,
                                         env={**os.environ,
                                              "FOURNINES_CHAOS_PROXY_TOKEN": self._token})
        await _wait_http(self.api + "/version", self.proc, self.log, "the fault proxy")

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        response = await self._client.request(method, path, json=body)
        if response.status_code >= 300:
            raise LabError(f"fault proxy: {method} {path} answered {response.status_code}: "
                           f"{response.text[:200]}")

    async def create(self, name: str, upstream_port: int) -> int:
        """A proxy ``name`` to ``127.0.0.1:upstream_port``; returns its listening port."""
        port = free_port()
        await self._call("POST", "/proxies", {
            "name": name, "listen": f"127.0.0.1:{port}",
            "upstream": f"127.0.0.1:{upstream_port}", "enabled": True,
        })
        return port

    async def add_toxic(self, proxy: str, name: str, kind: str, stream: str,
                        attributes: dict[str, Any]) -> None:
        """Add a toxic (Toxiproxy's ``POST /proxies/{proxy}/toxics``)."""
        await self._call("POST", f"/proxies/{proxy}/toxics", {
            "name": name, "type": kind, "stream": stream, "toxicity": 1.0,
            "attributes": attributes,
        })

    async def remove_toxic(self, proxy: str, name: str) -> None:
        """Remove a toxic."""
        await self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    async def enable(self, proxy: str, enabled: bool) -> None:
        """Open or close the proxy's listener (closed: connections are refused)."""
        await self._call("POST", f"/proxies/{proxy}", {"enabled": enabled})

    async def reset(self) -> None:
        """Remove every toxic and enable every proxy."""
        await self._call("POST", "/reset")

    async def stop(self) -> None:
        """Stop the process."""
        await self._client.aclose()
        _stop(self.proc)


PAYMENT_INSTANCES = 2
"""Payment instances of the protected fleet behind the registry (``--etcd``)."""


def _split(concurrency: int, parts: int) -> list[int]:
    """``concurrency`` workers over ``parts`` instances (at least one each)."""
    return [max(1, concurrency // parts + (i < concurrency % parts)) for i in range(parts)]


class Fleet:
    """The four services of one variant, and the faults that can be done to them.

    With ``etcd_url`` (the protected variant under ``--etcd``) the services find
    each other through etcd under ``etcd_prefix``, and payment runs
    :data:`PAYMENT_INSTANCES` instances; ``etcd`` is the lab's own etcd, which
    ``registry_outage`` kills and restarts.
    """

    def __init__(self, variant: str, workdir: Path, proxy: FaultProxy, payment: PaymentModel,
                 seed: int, redis_url: str | None = None, etcd_url: str | None = None,
                 etcd_prefix: str = "", etcd: LabEtcd | None = None,
                 payment_env: dict[str, str] | None = None,
                 served: frozenset[str] = frozenset(), serve_workers: int = 1) -> None:
        self.variant = variant
        self.payment_env = payment_env or {}
        """Extra environment of the payment service (its write path, for the steps)."""
        self.served = served
        """Services run under ``fournines serve`` (restarted by a reload, new first; see
        :mod:`fournines.lab.steps` and :mod:`fournines.lab.loop`)."""
        self.serve_workers = serve_workers
        """Workers per served service (a leak's state lives in one worker: the loop uses 1)."""
        self._sockets: Path | None = None
        self.hand_restarts: list[str] = []
        """Services restarted at a ``leak``'s end because they still leaked (by hand)."""
        self.proxy = proxy
        self.proxy_name = f"payment-{variant}"
        self.proxy_names = [self.proxy_name]
        self.token = secrets.token_hex(16)
        self.workdir = workdir
        self.payment_model = payment
        self.seed = seed
        self.redis_url = redis_url
        self.etcd_url = etcd_url
        self.etcd_prefix = etcd_prefix
        self.etcd = etcd
        self.services: dict[str, ServiceProcess] = {}
        self.extra: dict[str, ServiceProcess] = {}
        """Payment instances beyond the first (``payment-2``...), behind the registry."""
        self.payment_via_proxy = ""
        self._http = httpx.AsyncClient(timeout=5.0)

    @property
    def payments(self) -> list[ServiceProcess]:
        """Every payment instance (one, or :data:`PAYMENT_INSTANCES` behind the registry)."""
        return [self.services["payment"], *self.extra.values()]

    @property
    def processes(self) -> dict[str, ServiceProcess]:
        """Every service process by name (``payment-2`` and on included)."""
        return {**self.services, **self.extra}

    def _registered(self, name: str, address: str) -> dict[str, str]:
        if not self.etcd_url:
            return {}
        return {"FOURNINES_LAB_ETCD_URL": self.etcd_url,
                "FOURNINES_LAB_ETCD_PREFIX": self.etcd_prefix,
                "FOURNINES_INSTANCE_ID": f"{self.variant}-{name}",
                "FOURNINES_LAB_ADVERTISE_URL": address}

    async def start(self) -> None:
        """Start every service (in parallel) and the proxy route order -> payment."""
        common = {"FOURNINES_LAB_SEED": str(self.seed),
                  "FOURNINES_LAB_CHAOS_TOKEN": self.token}
        if self.redis_url:
            common["FOURNINES_LAB_REDIS_URL"] = self.redis_url
        count = PAYMENT_INSTANCES if self.etcd_url else 1
        payments: list[ServiceProcess] = []
        routes: list[str] = []
        for i, workers in enumerate(_split(self.payment_model.concurrency, count)):
            name = "payment" if i == 0 else f"payment-{i + 1}"
            process = ServiceProcess("payment", self.variant, {
                **common,
                "FOURNINES_LAB_PAYMENT_CONCURRENCY": str(
                    workers if self.etcd_url else self.payment_model.concurrency),
                "FOURNINES_LAB_PAYMENT_SERVICE_TIME": str(self.payment_model.service_time),
                **self.payment_env,
            }, self.workdir, name=name,
                control=None if i or self.etcd_url else self.control_path("payment"),
                workers=self.serve_workers)
            route = self.proxy_name if i == 0 else f"{self.proxy_name}-{i + 1}"
            if i:
                self.proxy_names.append(route)
            proxy_port = await self.proxy.create(route, process.port)
            routes.append(f"http://127.0.0.1:{proxy_port}")
            # Clients reach payment through the proxy: that is the address it registers.
            process.env.update(self._registered(name, routes[-1]))
            payments.append(process)
        self.payment_via_proxy = routes[0]
        profile = ServiceProcess("profile", self.variant, common, self.workdir,
                                 control=self.control_path("profile"),
                                 workers=self.serve_workers)
        order = ServiceProcess("order", self.variant, {
            **common, "FOURNINES_LAB_PAYMENT_URL": self.payment_via_proxy,
        }, self.workdir, control=self.control_path("order"), workers=self.serve_workers)
        gateway = ServiceProcess("gateway", self.variant, {
            **common, "FOURNINES_LAB_ORDER_URL": order.url,
            "FOURNINES_LAB_PROFILE_URL": profile.url,
        }, self.workdir, control=self.control_path("gateway"), workers=self.serve_workers)
        for process in (profile, order, gateway):
            process.env.update(self._registered(process.role, process.url))
        self.services = {"gateway": gateway, "order": order, "payment": payments[0],
                         "profile": profile}
        self.extra = {p.name: p for p in payments[1:]}
        for service in self.processes.values():
            service.spawn()
        await asyncio.gather(*(s.ready() for s in self.processes.values()))
        if self.etcd_url:
            await self._wait_registered({"gateway": 1, "order": 1, "payment": count,
                                         "profile": 1})

    async def _wait_registered(self, expected: dict[str, int], timeout: float = 20.0) -> None:
        """Until etcd lists every instance: the load must not start on a half-found fleet."""
        from ..discovery import EtcdEndpoints  # noqa: PLC0415 - the etcd extra

        assert self.etcd_url is not None
        sources = {service: EtcdEndpoints(self.etcd_url, service, prefix=self.etcd_prefix)
                   for service in expected}
        try:
            await asyncio.gather(*(s.start() for s in sources.values()))
            end = time.monotonic() + timeout
            while True:
                missing = {name: f"{len(s.instances)} of {expected[name]}"
                           for name, s in sources.items()
                           if len(s.instances) < expected[name]}
                if not missing:
                    return
                if time.monotonic() > end:
                    raise LabError(f"the {self.variant} fleet did not register in etcd at "
                                   f"{self.etcd_url} within {timeout:g} s (registered: "
                                   f"{missing}); see the logs in {self.workdir}")
                await asyncio.sleep(0.05)
        finally:
            await asyncio.gather(*(s.aclose() for s in sources.values()))

    def control_path(self, service: str) -> Path | None:
        """The ``fournines serve`` control socket of ``service``, if it runs under serve."""
        if service not in self.served:
            return None
        if self._sockets is None:
            # AF_UNIX paths are short (108 bytes): not in the workdir, which may be deep.
            import tempfile  # noqa: PLC0415

            self._sockets = Path(tempfile.mkdtemp(prefix="fournines-lab-serve-"))
        return self._sockets / f"{self.variant}-{service}.sock"

    @property
    def gateway_url(self) -> str:
        """Where the load goes."""
        return self.services["gateway"].url

    async def stop(self) -> None:
        """Stop every service."""
        await self._http.aclose()
        for service in self.processes.values():
            service.stop()
        if self._sockets is not None:
            shutil.rmtree(self._sockets, ignore_errors=True)

    # -- faults ---------------------------------------------------------------------

    async def begin(self, fault: Fault, index: int) -> None:
        """Start ``fault``."""
        toxic = f"lab-{index}"
        if fault.kind == "payment_errors":
            for payment in self.payments:
                response = await self._http.post(
                    payment.url + "/chaos/faults",
                    json={"kind": "error", "rate": fault.rate, "status": fault.status,
                          "duration": fault.duration + 1.0},
                    headers={"authorization": f"Bearer {self.token}"},
                )
                if response.status_code != 201:
                    raise LabError(f"chaos API: POST /chaos/faults answered "
                                   f"{response.status_code}: {response.text[:200]}")
        elif fault.kind == "payment_latency":
            for route in self.proxy_names:
                await self.proxy.add_toxic(route, toxic, "latency", "downstream", {
                    "latency": int(fault.latency * 1000), "jitter": int(fault.jitter * 1000)})
        elif fault.kind == "partition":
            for route in self.proxy_names:
                if fault.mode == "refuse":
                    await self.proxy.enable(route, False)
                else:
                    await self.proxy.add_toxic(route, toxic, "timeout", "upstream",
                                               {"timeout": 0})
        elif fault.kind == "profile_kill":
            self.services["profile"].kill()
        elif fault.kind == "capacity_loss":
            await self._slowdown(fault.factor)
        elif fault.kind == "instance_kill":
            self.payments[-1].kill()
        elif fault.kind == "registry_outage" and self.etcd is not None:
            self.etcd.kill()
        elif fault.kind == "leak":
            from .services import LEAK_PATH  # noqa: PLC0415

            response = await self._http.put(
                self.processes[fault.service].url + LEAK_PATH, params={"growth": fault.growth},
                headers={"authorization": f"Bearer {self.token}"})
            if response.status_code != 200:
                raise LabError(f"{fault.service}: PUT {LEAK_PATH} answered "
                               f"{response.status_code}: {response.text[:200]}")
        # overload is in the arrival schedule itself; a fleet without a registry has no
        # registry to lose

    async def _slowdown(self, factor: float) -> None:
        from .services import CAPACITY_PATH  # noqa: PLC0415

        for payment in self.payments:
            response = await self._http.put(
                payment.url + CAPACITY_PATH, params={"slowdown": factor},
                headers={"authorization": f"Bearer {self.token}"})
            if response.status_code != 200:
                raise LabError(f"payment: PUT {CAPACITY_PATH} answered "
                               f"{response.status_code}: {response.text[:200]}")

    async def end(self, fault: Fault, index: int) -> None:
        """Stop ``fault`` (a killed service is started again and awaited)."""
        toxic = f"lab-{index}"
        if fault.kind == "payment_errors":
            for payment in self.payments:
                response = await self._http.delete(
                    payment.url + "/chaos/faults",
                    headers={"authorization": f"Bearer {self.token}"},
                )
                if response.status_code >= 300:
                    raise LabError(f"chaos API: DELETE /chaos/faults answered "
                                   f"{response.status_code}: {response.text[:200]}")
        elif fault.kind == "payment_latency" or (fault.kind == "partition"
                                                 and fault.mode != "refuse"):
            for route in self.proxy_names:
                await self.proxy.remove_toxic(route, toxic)
        elif fault.kind == "partition":
            for route in self.proxy_names:
                await self.proxy.enable(route, True)
        elif fault.kind == "profile_kill":
            profile = self.services["profile"]
            profile.spawn()
            await profile.ready()
        elif fault.kind == "capacity_loss":
            await self._slowdown(1.0)
        elif fault.kind == "instance_kill":
            # It registers itself again once it serves, like any new instance.
            payment = self.payments[-1]
            payment.spawn()
            await payment.ready()
        elif fault.kind == "registry_outage" and self.etcd is not None:
            await self.etcd.start()
        elif fault.kind == "leak" and await self.leaking(fault.service):
            # The on-call's restart by hand, when nothing restarted it before.
            await self.processes[fault.service].restart()
            self.hand_restarts.append(fault.service)

    async def leaking(self, service: str) -> bool:
        """Whether ``service`` still leaks (no restart since a ``leak`` began)."""
        from .services import LEAK_PATH  # noqa: PLC0415

        response = await self._http.get(self.processes[service].url + LEAK_PATH,
                                        headers={"authorization": f"Bearer {self.token}"})
        if response.status_code != 200:
            raise LabError(f"{service}: GET {LEAK_PATH} answered {response.status_code}: "
                           f"{response.text[:200]}")
        return bool(response.json()["leaking"])
