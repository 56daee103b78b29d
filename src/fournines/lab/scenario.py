"""Lab scenarios: the fleet's modelled capacity, the load, and the fault schedule, from YAML.

A scenario file looks like the one shipped with the package
(``fournines/lab/scenarios/default.yaml``)::

    name: default
    duration: 60            # seconds of load per variant
    rate: auto              # requests per second, or auto: sized from the measured capacity
    orders: 40              # distinct order ids (and users) the load cycles through
    timeout: 3.0            # the load generator's hard timeout per request, seconds
    payment: {concurrency: 2, service_time: 0.03}   # modelled capacity: 2 / 0.03 = 66/s
    faults:
      - {kind: payment_errors, at: 8, duration: 10, rate: 0.2, status: 500}

Fault times are seconds from the start of the load. When the lab runs for a
different ``--duration`` than the file's, every time is scaled by the same
factor, so a shortened run keeps the shape of the schedule.

Errors raise :class:`~fournines.ConfigurationError` naming the file and the
path inside it (``default.yaml: faults[2].duration must be ...``).
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .._errors import ConfigurationError
from .._files import read_text, yaml_documents

__all__ = [
    "FAULT_KINDS",
    "LEAK_SERVICES",
    "MAX_RATE",
    "NEEDS_ETCD",
    "NOT_BUILT",
    "ROLLABLE",
    "STEP_KINDS",
    "Fault",
    "LoopSettings",
    "PaymentModel",
    "Scenario",
    "check_etcd",
    "check_load",
    "default_scenario",
    "load_scenario",
    "parse_scenario",
]

FAULT_KINDS: dict[str, str] = {
    "payment_errors": "payment answers `rate` of its calls with `status` (in-process chaos API)",
    "payment_latency": "order -> payment gets `latency` seconds slower (fault proxy toxic)",
    "partition": "order cannot reach payment (`mode`: timeout = packets dropped, refuse)",
    "profile_kill": "the profile service is SIGKILLed, and restarted when the fault ends",
    "overload": "arrivals rise to `factor` x the fleet's measured capacity (more users)",
    "capacity_loss": "payment serves 1/`factor` of its modelled capacity (each request holds "
                     "its worker `factor` x longer): an overload at the same arrival rate",
    "instance_kill": "one payment instance is SIGKILLed, and restarted when the fault ends "
                     "(needs --etcd: the protected fleet runs 2 behind the registry; the "
                     "unprotected fleet loses its only one)",
    "registry_outage": "the lab's etcd is SIGKILLed, and restarted on its data when the fault "
                       "ends (needs --etcd without a URL); clients keep the endpoints they knew",
    "rolling_deploy": "`service` is deployed again during the load: the protected fleet runs "
                      "it under `fournines serve` (2 workers) and reloads it new-first "
                      "(SIGHUP); the unprotected fleet stops and starts its one process",
    "db_storm": "`concurrency` clients send conflicting transfers between a few hot accounts "
                "(serialization failures and deadlocks) on payment's PostgreSQL write path",
    "db_restart": "the lab's private PostgreSQL is stopped (fast shutdown) and started "
                  "again when the fault ends, under payment's writes",
    "consumer_kill": "the payment confirmation consumer (outbox -> RabbitMQ -> consumer) is "
                     "SIGKILLed mid-stream, and restarted when the fault ends",
    "leak": "`service` (order by default) gets `growth` seconds slower per second until its "
            "process is restarted: by the closed loop (a scenario's `loop:`), else by hand "
            "at the fault's end",
}
"""Every fault kind a scenario may use, with what it does."""

NEEDS_ETCD: dict[str, str] = {
    "instance_kill": "payment runs several instances only behind the registry",
    "registry_outage": "without a registry there is nothing to take down",
}
"""Fault kinds that need ``fournines lab --etcd``, and why (see :func:`check_etcd`)."""

STEP_KINDS: dict[str, tuple[str, ...]] = {
    "rolling_deploy": (),
    "db_storm": ("PostgreSQL",),
    "db_restart": ("PostgreSQL (a private cluster: initdb and pg_ctl)",),
    "consumer_kill": ("PostgreSQL", "RabbitMQ"),
}
"""The steps that play the seed's fleet beyond HTTP, and the servers each needs
(:mod:`fournines.lab.steps` checks them before any process starts)."""

ROLLABLE = ("gateway", "order", "payment", "profile")
"""The services a ``rolling_deploy`` may deploy again."""


_DEFAULT_DURATION = 60.0

MAX_RATE = 2000.0
"""The most requests per second the lab offers, overload bursts included.

The load generator is one Python process on the machine it measures; where every
request needs a new connection (an overloaded fleet keeps them all busy) it falls behind
its schedule at about 2000 per second on the 2-core development machine, and a lagging
generator measures itself, not the fleet."""

FD_RESERVE = 256
"""File descriptors kept for the lab process itself (logs, pipes, scrapes, the chaos API)."""

# Kinds whose windows cannot overlap another of the same kind, and why.
_EXCLUSIVE = {
    "profile_kill": "the profile service is killed and restarted once at a time; the second "
                    "restart would find its port taken",
    "payment_errors": "ending one clears every chaos fault of the payment service, so the "
                      "other would end early",
    "instance_kill": "the payment instance is killed and restarted once at a time; the second "
                     "restart would find its port taken",
    "registry_outage": "ending one restarts etcd, so the other would end early",
    "rolling_deploy": "a service is deployed once at a time; a second reload would be refused "
                      "while the first one runs",
    "db_restart": "ending one starts PostgreSQL, so the other would end early",
    "consumer_kill": "the consumer is killed and restarted once at a time",
    "leak": "the restart that ends one cures the other too",
}

LEAK_SERVICES = ("gateway", "order", "payment", "profile")
"""The services a ``leak`` may hit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One fault window: ``kind`` from ``at`` for ``duration`` seconds of the load."""

    kind: str
    at: float
    duration: float
    rate: float = 0.2
    status: int = 500
    latency: float = 2.0
    jitter: float = 0.0
    mode: str = "timeout"
    factor: float = 3.0
    service: str = "order"
    """What a ``rolling_deploy`` deploys again (one of :data:`ROLLABLE`), or the service a
    ``leak`` hits (one of :data:`LEAK_SERVICES`)."""
    concurrency: int = 16
    """Concurrent clients of a ``db_storm``'s conflicting transfers."""
    growth: float = 0.1
    """A ``leak``'s growth: seconds of delay added per second since it began."""

    @property
    def end(self) -> float:
        """When the fault stops, in seconds from the start of the load."""
        return self.at + self.duration

    def label(self) -> str:
        """A short human label (for tables and plots)."""
        detail = {
            "payment_errors": f"{self.rate:.0%} x {self.status}",
            "payment_latency": f"+{self.latency:g} s",
            "partition": self.mode,
            "profile_kill": "SIGKILL",
            "overload": f"{self.factor:g}x capacity",
            "capacity_loss": f"1/{self.factor:g} capacity",
            "instance_kill": "SIGKILL a payment instance",
            "registry_outage": "etcd killed",
            "rolling_deploy": f"{self.service}",
            "db_storm": f"{self.concurrency} conflicting clients",
            "db_restart": "PostgreSQL stopped",
            "consumer_kill": "SIGKILL the consumer",
            "leak": f"{self.service} +{self.growth:g} s per s",
        }.get(self.kind, "")
        return f"{self.kind} ({detail})" if detail else self.kind

    def scaled(self, factor: float) -> Fault:
        """The same fault with its times multiplied by ``factor``."""
        return dataclasses.replace(self, at=self.at * factor, duration=self.duration * factor)


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentModel:
    """The payment service's modelled capacity: ``concurrency`` workers, ``service_time`` each.

    Its capacity is ``concurrency / service_time`` requests per second; the lab
    measures it with a short probe rather than trusting this arithmetic.
    """

    concurrency: int = 2
    service_time: float = 0.03


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopSettings:
    """A scenario's closed loop (its ``loop:`` section; see :mod:`fournines.lab.loop`).

    :param time_scale: seconds of operation one lab second stands for: Prometheus'
        scrape and evaluation intervals, the SLO rules' windows and ``for:`` durations
        and Alertmanager's timers are divided by it (60: a minute of load is an hour).
    :param cooldown: lab seconds between two restarts of one service (remediate's
        per-target cooldown).
    :param max_actions: restarts the loop may do in one run (remediate's
        ``max_actions_per_hour``: a run is shorter than an hour).
    """

    time_scale: float = 60.0
    cooldown: float = 10.0
    max_actions: int = 6


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A whole lab run: load, modelled capacity and fault schedule (see the module docs)."""

    name: str = "default"
    duration: float = _DEFAULT_DURATION
    rate: float | None = None
    orders: int = 40
    timeout: float = 3.0
    payment: PaymentModel = field(default_factory=PaymentModel)
    faults: tuple[Fault, ...] = ()
    source: str = "<default>"
    loop: LoopSettings | None = None
    """The closed loop, when the scenario has one (``fournines lab`` then runs it)."""

    def with_duration(self, duration: float) -> Scenario:
        """The scenario run for ``duration`` seconds, its fault times scaled to match."""
        factor = duration / self.duration
        return dataclasses.replace(
            self, duration=duration, faults=tuple(f.scaled(factor) for f in self.faults)
        )


_FAULT_FIELDS: dict[str, tuple[type, float | None, float | None]] = {
    # field: (type, minimum, maximum); bounds are inclusive
    "at": (float, 0.0, None),
    "duration": (float, 0.0, None),
    "rate": (float, 0.0, 1.0),
    "status": (int, 100, 599),
    "latency": (float, 0.0, 60.0),
    "jitter": (float, 0.0, 60.0),
    "factor": (float, 1.0, 20.0),
    "concurrency": (int, 1, 200),
    "growth": (float, 0.001, 10.0),
}


# Values quoted in messages are cut short: a message stays one readable line whatever
# the file holds (a megabyte string, a list of thousands).
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _show(value: Any) -> str:
    return _REPR.repr(value)


def _number(where: str, value: Any, kind: type, low: float | None, high: float | None,
            positive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    # YAML gives .nan (which passes every comparison) and integers too big for a float
    if ok and not (abs(value) < 1e15 and math.isfinite(value)):
        ok = False
    if ok and kind is int and not float(value).is_integer():
        ok = False
    if ok and ((low is not None and value < low) or (high is not None and value > high)
               or (positive and value <= 0)):
        ok = False
    if not ok:
        what = "an integer" if kind is int else "a number"
        bounds = []
        if positive:
            bounds.append("> 0")
        elif low is not None:
            bounds.append(f">= {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        raise ConfigurationError(
            f"{where} must be {what} {' and '.join(bounds)}, got {_show(value)}")
    return float(value)


def _mapping(where: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where} must be a mapping, got {_show(value)}")
    for key in value:
        if key not in allowed:
            raise ConfigurationError(
                f"{where} has an unknown key {_show(key)} (allowed: {', '.join(sorted(allowed))})"
            )
    return value


NOT_BUILT: dict[str, str] = {}
"""Fault kinds of the seed that the lab cannot play yet, and what is missing for each:
a scenario naming one is refused with that reason, never played as something else.
Empty since the whole seed is built (:data:`STEP_KINDS`); a step whose servers are
missing on this machine is refused by :func:`fournines.lab.steps.check_servers`."""


def _fault(where: str, raw: Any) -> Fault:
    # Before the fields are checked: such a step may carry fields of its own.
    wanted = raw.get("kind") if isinstance(raw, dict) else None
    if isinstance(wanted, str) and wanted in NOT_BUILT:
        raise ConfigurationError(
            f"{where}.kind: {wanted!r} is not built in the lab yet: {NOT_BUILT[wanted]}"
        )
    data = _mapping(where, raw, {"kind", "mode", "service", *_FAULT_FIELDS})
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in FAULT_KINDS:  # a list is not hashable
        raise ConfigurationError(
            f"{where}.kind must be one of {', '.join(FAULT_KINDS)}, got {_show(kind)}"
        )
    for required in ("at", "duration"):
        if required not in data:
            raise ConfigurationError(f"{where}.{required} is missing")
    values: dict[str, Any] = {"kind": kind}
    for name, (typ, low, high) in _FAULT_FIELDS.items():
        if name in data:
            number = _number(f"{where}.{name}", data[name], typ, low, high,
                             positive=name == "duration")
            values[name] = int(number) if typ is int else number
    if "mode" in data:
        if data["mode"] not in ("timeout", "refuse"):
            raise ConfigurationError(
                f"{where}.mode must be 'timeout' or 'refuse', got {_show(data['mode'])}"
            )
        values["mode"] = data["mode"]
    if "service" in data:
        if kind not in ("rolling_deploy", "leak"):
            raise ConfigurationError(
                f"{where}.service is only for rolling_deploy and leak, not {kind}")
        allowed = ROLLABLE if kind == "rolling_deploy" else LEAK_SERVICES
        if not isinstance(data["service"], str) or data["service"] not in allowed:
            raise ConfigurationError(f"{where}.service must be one of {', '.join(allowed)}, "
                                     f"got {_show(data['service'])}")
        values["service"] = data["service"]
    return Fault(**values)


def _loop(where: str, raw: Any) -> LoopSettings:
    data = _mapping(where, raw if raw is not None else {},
                    {"time_scale", "cooldown", "max_actions"})
    values: dict[str, Any] = {}
    if "time_scale" in data:
        # At most 120: the rules' 5m window must still hold ten scrapes (15 s / scale).
        values["time_scale"] = _number(f"{where}.time_scale", data["time_scale"], float,
                                       1.0, 120.0)
    if "cooldown" in data:
        values["cooldown"] = _number(f"{where}.cooldown", data["cooldown"], float, 0.0, 3600.0)
    if "max_actions" in data:
        values["max_actions"] = int(_number(f"{where}.max_actions", data["max_actions"], int,
                                            1, 1000))
    return LoopSettings(**values)


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    """Build a :class:`Scenario` from parsed YAML; errors name ``source`` and the path."""
    top = _mapping(source, data, {"name", "duration", "rate", "orders", "timeout", "payment",
                                  "faults", "description", "loop"})
    values: dict[str, Any] = {"source": source}
    if "name" in top:
        if not isinstance(top["name"], str) or not top["name"]:
            raise ConfigurationError(f"{source}: name must be a non-empty string, "
                                     f"got {_show(top['name'])}")
        values["name"] = top["name"]
    if "duration" in top:
        values["duration"] = _number(f"{source}: duration", top["duration"], float, 1.0, 3600.0)
    if "rate" in top and top["rate"] != "auto":
        values["rate"] = _number(f"{source}: rate (or 'auto')", top["rate"], float, 1.0,
                                 MAX_RATE)
    if "orders" in top:
        values["orders"] = int(_number(f"{source}: orders", top["orders"], int, 1, 100_000))
    if "timeout" in top:
        values["timeout"] = _number(f"{source}: timeout", top["timeout"], float, 0.1, 60.0)
    if "payment" in top:
        pay = _mapping(f"{source}: payment", top["payment"], {"concurrency", "service_time"})
        model: dict[str, Any] = {}
        if "concurrency" in pay:
            model["concurrency"] = int(_number(f"{source}: payment.concurrency",
                                               pay["concurrency"], int, 1, 1000))
        if "service_time" in pay:
            model["service_time"] = _number(f"{source}: payment.service_time",
                                            pay["service_time"], float, 0.001, 10.0)
        values["payment"] = PaymentModel(**model)
    faults: list[Fault] = []
    raw_faults = top.get("faults", [])
    if not isinstance(raw_faults, list):
        raise ConfigurationError(f"{source}: faults must be a list, got {_show(raw_faults)}")
    duration = values.get("duration", _DEFAULT_DURATION)
    for i, raw in enumerate(raw_faults):
        fault = _fault(f"{source}: faults[{i}]", raw)
        if fault.end > duration:
            raise ConfigurationError(
                f"{source}: faults[{i}] ends at {fault.end:g} s, after the load "
                f"(duration {duration:g} s)"
            )
        faults.append(fault)
    _check_overlaps(source, faults)
    if "loop" in top:
        values["loop"] = _loop(f"{source}: loop", top["loop"])
        if not any(f.kind == "leak" for f in faults):
            raise ConfigurationError(f"{source}: loop: the closed loop restarts a leaking "
                                     "service, and faults has no leak to cure")
    values["faults"] = tuple(sorted(faults, key=lambda f: f.at))
    return Scenario(**values)


def _exclusive(fault: Fault) -> str | None:
    if fault.kind == "partition" and fault.mode == "refuse":
        return "ending one turns the proxy back on, so the other would end early"
    return _EXCLUSIVE.get(fault.kind)


def _check_overlaps(source: str, faults: list[Fault]) -> None:
    # Windows that touch count as overlapping: the end (a restart, a DELETE) and the next
    # begin run at the same instant, in no defined order.
    for i, fault in enumerate(faults):
        reason = _exclusive(fault)
        if reason is None:
            continue
        for j, other in enumerate(faults[:i]):
            same = other.kind == fault.kind and (fault.kind != "partition"
                                                 or other.mode == fault.mode)
            if same and fault.at <= other.end and other.at <= fault.end:
                raise ConfigurationError(
                    f"{source}: faults[{i}] ({fault.kind} {fault.at:g}-{fault.end:g} s) "
                    f"overlaps faults[{j}] ({other.kind} {other.at:g}-{other.end:g} s): "
                    f"{reason}")


def _open_files_limit() -> int | None:
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def check_load(scenario: Scenario, *, rate: float, capacity: float, rate_from: str = "rate",
               capacity_from: str = "measured", open_files: int | None = -1) -> None:
    """Refuse a load this machine cannot offer, naming the field that asks for it.

    The peak arrival rate is the larger of ``rate`` and each overload's ``factor x
    capacity``; it must be at most :data:`MAX_RATE`. An open-loop generator keeps every
    request open until it is answered or its ``timeout`` passes, so at the peak up to
    ``peak x timeout`` connections are open at once, each a file descriptor in the lab
    and in the gateway: with :data:`FD_RESERVE` more, they must fit the soft
    ``RLIMIT_NOFILE`` (``open_files``; -1, the default, reads it; ``None``: no limit).
    ``rate_from`` and ``capacity_from`` say where the numbers came from, for the message.
    """
    where = scenario.source
    peak, asked = rate, f"{rate_from} {rate:g}/s"
    for fault in scenario.faults:
        if fault.kind == "overload" and fault.factor * capacity > peak:
            peak = fault.factor * capacity
            asked = (f"faults (overload at {fault.at:g} s): factor {fault.factor:g} x the "
                     f"{capacity_from} capacity {capacity:.0f}/s = {peak:.0f}/s")
    if peak > MAX_RATE:
        raise ConfigurationError(
            f"{where}: {asked} is more than the lab offers ({MAX_RATE:g} requests/s at the "
            "peak, overload bursts included): lower it")
    if open_files == -1:
        open_files = _open_files_limit()
    in_flight = math.ceil(peak * scenario.timeout)
    if open_files is not None and in_flight + FD_RESERVE > open_files:
        raise ConfigurationError(
            f"{where}: {asked} with timeout {scenario.timeout:g} s keeps up to {in_flight} "
            f"requests open at once, a file descriptor each, but this process may open "
            f"{open_files} (RLIMIT_NOFILE; {FD_RESERVE} kept for the lab): lower it or the "
            "timeout, or raise the limit (ulimit -n)")


def check_etcd(scenario: Scenario, etcd: str | None) -> None:
    """Refuse faults that need the registry when the lab runs without it.

    ``etcd`` is what ``--etcd`` gave: ``None`` (not given), ``""`` (the lab starts
    its own etcd) or the URL of an existing one, which the lab may use but not
    take down: ``registry_outage`` needs the lab's own.
    """
    for i, fault in enumerate(scenario.faults):
        if fault.kind in NEEDS_ETCD and etcd is None:
            raise ConfigurationError(
                f"{scenario.source}: faults[{i}] is {fault.kind}, which needs the fleet "
                f"behind the registry ({NEEDS_ETCD[fault.kind]}): run `fournines lab "
                f"--etcd`")
        if fault.kind == "rolling_deploy" and etcd is not None:
            # Two workers behind one port would share one registry record: the draining
            # worker's deregistration would hide the one that still serves.
            raise ConfigurationError(
                f"{scenario.source}: faults[{i}] is rolling_deploy, which the lab plays "
                "without the registry (the workers of `fournines serve` share one "
                "registered address): run it without --etcd")
        if fault.kind == "registry_outage" and etcd:
            raise ConfigurationError(
                f"{scenario.source}: faults[{i}] is registry_outage, which kills and "
                f"restarts the lab's own etcd, not the one at {etcd}: run `fournines lab "
                f"--etcd` without a URL")


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file (errors name the file and the path inside it).

    Files larger than 1 MiB or nested deeper than 64 levels are refused before they are
    parsed (see :mod:`fournines._files`).
    """
    path = Path(path)
    try:
        text = read_text(path)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: cannot read the scenario ({exc})") from None
    try:
        documents = yaml_documents(text)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None
    if len(documents) > 1:
        raise ConfigurationError(f"{path}: {len(documents)} YAML documents; a scenario is one")
    return parse_scenario(documents[0] if documents else None, source=str(path))


def default_scenario() -> Scenario:
    """The scenario shipped with the package (``scenarios/default.yaml``)."""
    text = resources.files(__package__).joinpath("scenarios/default.yaml").read_text("utf-8")
    return parse_scenario(yaml_documents(text)[0], source="default.yaml")
