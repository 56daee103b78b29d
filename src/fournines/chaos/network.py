"""Network faults: test topologies in network namespaces, packet loss, partitions, delay.

Everything here changes the kernel's network state, so it needs root (CAP_NET_ADMIN
and CAP_SYS_ADMIN); :func:`capabilities` says what works on this machine, and why
not, so tests can skip precisely.

- :class:`Topology` builds network namespaces joined by veth pairs on a bridge, and
  removes them (and every process in them) on exit, also after an exception.
- :func:`partition` drops packets to a destination (all of them, or a random share)
  with an nftables table of its own, ``fournines_<name>``; nothing else in the
  ruleset is touched.
- :func:`add_delay` delays packets to a port: an iptables rule (commented with the
  fault's name) queues them to an NFQUEUE shim process that holds each one for its
  delay (this kernel has no ``tc netem``; the rule has ``--queue-bypass``, so if the
  shim dies traffic flows again).
- :func:`heal` removes one fault, :func:`heal_all` every fault (and topology) whose
  name starts with a prefix: for finalizers and crash recovery. Both are idempotent.

Faults act on packets a namespace *sends* (egress, like netem): a partition of
``dst`` in the client's namespace drops its packets to ``dst``; for TCP that alone
cuts both directions, because no handshake completes. ``direction="both"`` also
drops packets arriving from ``dst``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import secrets
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from fournines._errors import ConfigurationError, FourNinesError

__all__ = [
    "NetworkCapabilities",
    "NetworkFaultError",
    "Node",
    "Topology",
    "add_delay",
    "call_in_netns",
    "capabilities",
    "heal",
    "heal_all",
    "partition",
]

PREFIX = "fournines_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_NODE = re.compile(r"[A-Za-z0-9]{1,32}")
_NETNS_DIR = Path("/run/netns")
_SHIM_MODULE = "fournines.chaos._nfqueue"
_CLONE_NEWNET = 0x40000000
_CAP_NET_ADMIN = 12
_CAP_SYS_ADMIN = 21

T = TypeVar("T")
Direction = Literal["egress", "ingress", "both"]


class NetworkFaultError(FourNinesError, RuntimeError):
    """A network command failed; the message holds the command and its stderr."""


# -- running commands ----------------------------------------------------------------


# Root's tools live in sbin, which a user's PATH may lack.
_ENV = {**os.environ, "PATH": os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])}


def _in_ns(argv: Sequence[str], netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def _run(
    argv: Sequence[str], *, netns: str | None = None, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = _in_ns(argv, netns)
    try:
        done = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=30, check=False,
            env=_ENV,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkFaultError(f"{' '.join(command)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetworkFaultError(
            f"{' '.join(command)} failed (exit {done.returncode}): {done.stderr.strip()}"
        )
    return done


def _namespaces() -> list[str]:
    """Named network namespaces (those under /run/netns)."""
    try:
        return sorted(entry.name for entry in _NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def _tables(netns: str | None) -> list[tuple[str, str]]:
    """(family, name) of this module's nftables tables in one namespace."""
    done = _run(["nft", "list", "tables"], netns=netns, check=False)
    if done.returncode != 0:  # the namespace vanished meanwhile, or nft is missing
        return []
    found = []
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and parts[2].startswith(PREFIX):
            found.append((parts[1], parts[2]))
    return found


def _delete_tables(netns: str | None, match: Callable[[str], bool]) -> None:
    """Delete the tables whose name satisfies ``match``; gone already is fine."""
    for family, table in _tables(netns):
        if not match(table):
            continue
        done = _run(["nft", "delete", "table", family, table], netns=netns, check=False)
        if done.returncode != 0 and (family, table) in _tables(netns):
            where = f" in netns {netns}" if netns else ""
            raise NetworkFaultError(
                f"could not delete table {family} {table}{where}: {done.stderr.strip()}"
            )


def _devices(netns: str | None) -> list[str]:
    """Names of the network devices of a namespace (``eth0``, not ``eth0@if12``)."""
    done = _run(["ip", "-o", "link", "show"], netns=netns)
    names = []
    for line in done.stdout.splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3:
            names.append(fields[1].strip().split("@", 1)[0])
    return names


# -- capabilities --------------------------------------------------------------------


_FEATURES = ("admin", "netns", "nft", "iptables", "netem", "nfqueue")


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkCapabilities:
    """What this machine lets :mod:`fournines.chaos.network` do, and why not.

    ``reasons`` maps each missing feature (``"admin"``, ``"netns"``, ``"nft"``,
    ``"iptables"``, ``"netem"``, ``"nfqueue"``) to a sentence saying what is missing.
    ``nfqueue`` means an NFQUEUE rule can be added and the Python package imports:
    what :func:`add_delay` needs.
    """

    admin: bool
    netns: bool
    nft: bool
    iptables: bool
    netem: bool
    nfqueue: bool
    reasons: Mapping[str, str]

    def missing(self, *features: str) -> str | None:
        """Why the given features cannot be used (``None`` when all can): a skip reason."""
        unknown = [f for f in features if f not in _FEATURES]
        if unknown:
            raise ConfigurationError(
                f"NetworkCapabilities.missing: unknown feature(s) {', '.join(map(repr, unknown))}"
                f" (known: {', '.join(_FEATURES)})")
        found = dict.fromkeys(self.reasons[f] for f in features if not getattr(self, f))
        return "; ".join(found) or None


def _effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


@cache
def capabilities() -> NetworkCapabilities:
    """Probe once per process what works here, in a throwaway namespace of its own."""
    reasons: dict[str, str] = {}
    caps = _effective_caps()
    admin = bool(caps >> _CAP_NET_ADMIN & 1) and bool(caps >> _CAP_SYS_ADMIN & 1)
    if not admin:
        reasons["admin"] = "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    tools = {tool: _which(tool) for tool in ("ip", "nft", "iptables", "tc")}
    found = {"netns": False, "nft": False, "iptables": False, "netem": False, "queue": False}
    probe = f"{PREFIX}probe{secrets.token_hex(4)}"
    if not admin:
        for feature in found:
            reasons[feature] = reasons["admin"]
    elif not tools["ip"]:
        for feature in found:
            reasons[feature] = "the `ip` command is missing (Debian package iproute2)"
    else:
        made = _run(["ip", "netns", "add", probe], check=False)
        found["netns"] = made.returncode == 0
        if not found["netns"]:
            reasons["netns"] = f"cannot create a network namespace: {made.stderr.strip()}"
        try:
            for feature, argv, package in (
                ("nft", ["nft", "add", "table", "inet", probe], "nftables"),
                ("iptables", ["iptables", "-w", "-S"], "iptables"),
                ("queue", ["iptables", "-w", "-A", "OUTPUT", "-p", "udp", "--dport", "9",
                           "-j", "NFQUEUE", "--queue-num", "1", "--queue-bypass"],
                 "iptables and a kernel with NFQUEUE"),
                ("netem", ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                 "iproute2 and a kernel with sch_netem"),
            ):
                tool = argv[0]
                if not tools[tool]:
                    reasons[feature] = f"the `{tool}` command is missing (Debian package {package})"
                    continue
                if not found["netns"]:
                    reasons[feature] = reasons["netns"]
                    continue
                done = _run(argv, netns=probe, check=False)
                found[feature] = done.returncode == 0
                if done.returncode != 0:
                    reasons[feature] = f"`{' '.join(argv)}` failed: {done.stderr.strip()}"
            if found["nft"]:
                # partition() drops in the devices' egress hook (Linux 5.16, nft 1.0.1).
                script = (f"table netdev {probe} {{\n chain egress {{\n type filter hook egress "
                          'devices = { "lo" } priority filter; policy accept;\n }\n}\n')
                done = _run(["nft", "-f", "-"], netns=probe, stdin=script, check=False)
                if done.returncode != 0:
                    found["nft"] = False
                    reasons["nft"] = ("nftables cannot hook device egress (needs Linux >= 5.16 "
                                      f"and nft >= 1.0.1): {done.stderr.strip()}")
        finally:
            if found["netns"]:
                _run(["ip", "netns", "del", probe], check=False)
    nfqueue = found.pop("queue")
    queue_reason = reasons.pop("queue", "")
    if not nfqueue:
        reasons["nfqueue"] = queue_reason
    else:
        try:
            import netfilterqueue  # noqa: F401, PLC0415
        except ImportError as exc:
            nfqueue = False
            reasons["nfqueue"] = (
                f"the Python package netfilterqueue does not import ({exc}); "
                "pip install netfilterqueue (needs Debian's libnetfilter-queue-dev)"
            )
    return NetworkCapabilities(
        admin=admin, nfqueue=nfqueue, reasons=reasons, **found
    )


def _which(tool: str) -> bool:
    for directory in (*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/sbin"):
        if directory and os.access(os.path.join(directory, tool), os.X_OK):
            return True
    return False


# -- validation ----------------------------------------------------------------------


def _table_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"fault name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )
    return PREFIX + name


def _check_netns(netns: str | None) -> None:
    if netns is not None and not (_NETNS_DIR / netns).exists():
        raise ConfigurationError(f"netns {netns!r}: no such network namespace in {_NETNS_DIR}")


def _check_port(field: str, port: int | None) -> None:
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 1 <= port <= 65535):
        raise ConfigurationError(f"{field} {port!r}: a port is 1..65535")


def _is_number(value: object) -> bool:
    # Experiment files hand over whatever JSON holds; a string must be a clear error,
    # not a TypeError from a comparison (or a rule nft refuses after the shim started).
    return not isinstance(value, bool) and isinstance(value, int | float)


def _address(field: str, value: str) -> tuple[str, str]:
    """(nft family keyword, normalised address or network) of an address or CIDR."""
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ConfigurationError(f"{field} {value!r}: not an IP address or network") from exc
    text = str(network.network_address) if network.num_addresses == 1 else str(network)
    return ("ip" if network.version == 4 else "ip6"), text


# -- faults --------------------------------------------------------------------------


def _apply(table: str, chains: Sequence[tuple[str, str, str, str]], netns: str | None) -> None:
    """Create ``table`` in each family of ``chains`` in one nft transaction.

    ``chains`` holds (family, chain, hook, rule). ``create table`` fails when the
    table exists, so a fault name in use is an error rather than a silent merge of
    rules into another fault.
    """
    lines = [f"create table {family} {table}" for family in dict.fromkeys(c[0] for c in chains)]
    for family, chain, hook, rule in chains:
        lines += [
            f"table {family} {table} {{",
            f"  chain {chain} {{",
            f"    type filter hook {hook} priority filter; policy accept;",
            f"    {rule}",
            "  }",
            "}",
        ]
    done = _run(["nft", "-f", "-"], netns=netns, stdin="\n".join(lines) + "\n", check=False)
    if done.returncode != 0:
        if "File exists" in done.stderr:
            raise ConfigurationError(
                f"fault {table.removeprefix(PREFIX)!r} exists already"
                + (f" in netns {netns!r}" if netns else "")
                + "; heal() it first or pick another name"
            )
        raise NetworkFaultError(f"nft -f failed for table {table}: {done.stderr.strip()}")


def partition(
    name: str,
    *,
    dst: str,
    dport: int | None = None,
    src: str | None = None,
    netns: str | None = None,
    loss: float = 100.0,
    direction: Direction = "egress",
) -> None:
    """Drop packets to ``dst`` (an address or CIDR): all of them, or ``loss`` percent.

    ``dport`` limits the fault to TCP and UDP packets to that port; ``src`` to
    packets from that local address. ``netns`` applies the fault inside a named
    network namespace; without it the host's own traffic is hit, so give a
    ``dport`` there to leave other programs alone. With ``loss`` below 100 each
    matching packet is dropped independently with that probability (to 0.01 %).
    ``direction`` is ``"egress"`` (packets sent to ``dst``), ``"ingress"`` (packets
    received from ``dst``) or ``"both"``. The fault lives in nftables tables named
    ``fournines_<name>`` until :func:`heal`: egress drops hook the egress of the
    devices the namespace has now (silent for the sender, like a lossy link),
    ingress drops hook input.
    """
    table = _table_name(name)
    family, dst_text = _address("dst", dst)
    src_text = None
    if src is not None:
        src_family, src_text = _address("src", src)
        if src_family != family:
            raise ConfigurationError(f"src {src!r} and dst {dst!r} are of different IP versions")
    _check_port("dport", dport)
    if not _is_number(loss) or not 0.0 < loss <= 100.0:
        raise ConfigurationError(f"loss {loss!r}: a percentage in (0, 100]")
    if direction not in ("egress", "ingress", "both"):
        raise ConfigurationError(f"direction {direction!r}: 'egress', 'ingress' or 'both'")
    _check_netns(netns)
    chance = "" if loss >= 100.0 else f" numgen random mod 10000 < {round(loss * 100)}"
    ports = " meta l4proto { tcp, udp }"
    chains: list[tuple[str, str, str, str]] = []
    if direction in ("egress", "both"):
        match = f"{family} daddr {dst_text}"
        match += f" {family} saddr {src_text}" if src_text else ""
        match += f"{ports} th dport {dport}" if dport else ""
        # The devices' egress hook, not the output hook: a drop there is silent for the
        # sender, as on a real network, where output drops fail sendto() with EPERM.
        devices = ", ".join(f'"{device}"' for device in _devices(netns))
        chains.append(("netdev", "egress", f"egress devices = {{ {devices} }}",
                       f"{match}{chance} counter drop"))
    if direction in ("ingress", "both"):
        match = f"{family} saddr {dst_text}"
        match += f" {family} daddr {src_text}" if src_text else ""
        match += f"{ports} th sport {dport}" if dport else ""
        chains.append(("inet", "ingress", "input", f"{match}{chance} counter drop"))
    _apply(table, chains, netns)


def add_delay(
    name: str,
    *,
    dport: int,
    delay: float,
    jitter: float = 0.0,
    correlation: float = 0.0,
    netns: str | None = None,
    seed: int | None = None,
) -> None:
    """Delay TCP and UDP packets sent to port ``dport`` by ``delay`` seconds.

    Each packet waits ``delay`` plus a uniform share of ``jitter`` (in seconds, either
    way); ``correlation`` (0..1) makes consecutive packets' jitter alike, as netem's
    correlation is documented: see :class:`fournines.chaos._nfqueue.DelayModel`.
    With jitter, packets may overtake each other, as with netem. Only packets sent
    from this namespace (``netns``, or the host's) are delayed; replies are not, so
    a round trip grows by ``delay``.

    The delay is done by an NFQUEUE shim process (``python -m
    fournines.chaos._nfqueue``) started here and stopped by :func:`heal`, fed by
    iptables rules in OUTPUT whose comment is ``fournines_<name>``; they have
    ``--queue-bypass``, so if the shim dies packets flow undelayed. ``tc netem`` is
    not used even where the kernel has it (:func:`capabilities` reports it): one
    mechanism everywhere, and per-port netem needs a classful qdisc that would take
    over the whole device. ``seed`` makes the jitter sequence repeatable.
    """
    table = _table_name(name)
    _check_port("dport", dport)
    if dport is None:
        raise ConfigurationError("dport: add_delay needs a port")
    for field, value in (("delay", delay), ("jitter", jitter)):
        if not _is_number(value) or not 0.0 <= value <= 3600.0:
            raise ConfigurationError(f"{field} {value!r}: seconds in [0, 3600]")
    if not _is_number(correlation) or not 0.0 <= correlation <= 1.0:
        raise ConfigurationError(f"correlation {correlation!r}: a fraction in [0, 1]")
    _check_netns(netns)
    in_use = any(found == table for _, found in _tables(netns))
    if in_use or _queue_rules(netns, lambda comment: comment == table):
        raise ConfigurationError(f"fault {name!r} exists already; heal() it first")
    shim = _start_shim(table, delay, jitter, correlation, seed, netns)
    try:
        queue = _read_queue_number(shim, table)
        for tool in _IPTABLES:
            for proto in ("tcp", "udp"):
                # -I: first in OUTPUT, so an earlier ACCEPT cannot let packets skip the queue.
                _run([tool, "-w", "-I", "OUTPUT", "-p", proto, "--dport", str(dport),
                      "-m", "comment", "--comment", table, "-j", "NFQUEUE",
                      "--queue-num", str(queue), "--queue-bypass"], netns=netns)
    except BaseException:
        _delete_queue_rules(netns, lambda comment: comment == table)
        _stop(shim.pid)
        shim.wait(5)
        raise


# This kernel's nftables lacks the native ``queue`` expression (nft_queue), while
# iptables-nft reaches NFQUEUE through xtables compatibility; so delay rules are
# iptables rules in OUTPUT, marked with the fault's name as their comment.
_IPTABLES = ("iptables", "ip6tables")


def _queue_rules(netns: str | None, match: Callable[[str], bool]) -> list[tuple[str, str]]:
    """(tool, ``-S`` line) of the delay rules whose comment satisfies ``match``."""
    found = []
    for tool in _IPTABLES:
        done = _run([tool, "-w", "-S", "OUTPUT"], netns=netns, check=False)
        if done.returncode != 0:
            continue
        for line in done.stdout.splitlines():
            args = shlex.split(line)
            if "--comment" not in args:
                continue
            comment = args[args.index("--comment") + 1]
            if comment.startswith(PREFIX) and match(comment):
                found.append((tool, line))
    return found


def _delete_queue_rules(netns: str | None, match: Callable[[str], bool]) -> None:
    for tool, line in _queue_rules(netns, match):
        args = shlex.split(line)
        # ``-S`` prints each rule as the ``-A`` command that made it.
        _run([tool, "-w", "-D", *args[1:]], netns=netns, check=False)


def _start_shim(
    table: str, delay: float, jitter: float, correlation: float, seed: int | None,
    netns: str | None,
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", _SHIM_MODULE, "--fault", table, "--delay", repr(delay),
            "--jitter", repr(jitter), "--correlation", repr(correlation)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    env = dict(os.environ)
    # The shim must import this very package, installed or not.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    # Its own session: the fault outlives a Ctrl-C of the caller until heal(), like a table.
    return subprocess.Popen(
        _in_ns(argv, netns), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        start_new_session=True,
    )


def _read_queue_number(shim: subprocess.Popen[bytes], table: str) -> int:
    assert shim.stdout is not None
    deadline = time.monotonic() + 20.0
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        readable, _, _ = select.select([shim.stdout], [], [], max(0.0, left))
        if not readable:
            raise NetworkFaultError(f"the NFQUEUE shim of {table} did not start within 20 s")
        chunk = os.read(shim.stdout.fileno(), 64)
        if not chunk:
            err = shim.stderr.read().decode(errors="replace") if shim.stderr else ""
            raise NetworkFaultError(f"the NFQUEUE shim of {table} exited: {err.strip()}")
        line += chunk
    shim.stdout.close()
    if shim.stderr is not None:
        # Nobody reads it from here on; a full pipe must not block the shim.
        shim.stderr.close()
    return int(line)


def _shim_pids(match: Callable[[str], bool]) -> list[int]:
    """Pids of shim processes whose ``--fault`` table name satisfies ``match``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if _SHIM_MODULE.encode() not in args or b"--fault" not in args:
            continue
        at = args.index(b"--fault") + 1
        if at < len(args) and match(args[at].decode(errors="replace")):
            pids.append(int(entry.name))
    return pids


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _stop_and_reap(pids: Sequence[int], timeout: float = 3.0) -> None:
    for pid in pids:
        _stop(pid)
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        if alive:
            time.sleep(0.02)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    # A child of ours stays a zombie until reaped; reap it if it is one.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def heal(name: str) -> None:
    """Remove the fault ``name`` wherever it is (host or any namespace); idempotent."""
    table = _table_name(name)
    for netns in (None, *_namespaces()):
        _delete_tables(netns, lambda found: found == table)
        _delete_queue_rules(netns, lambda comment: comment == table)
    _stop_and_reap(_shim_pids(lambda fault: fault == table))


def heal_all(prefix: str = "") -> None:
    """Remove every fault and :class:`Topology` whose name starts with ``prefix``.

    With the default empty prefix that is everything this module ever made on the
    machine (``fournines_*`` tables, shim processes and namespaces): crash recovery.
    Tests pass a prefix unique to themselves, so tests running side by side keep
    their faults. Idempotent.
    """
    start = PREFIX + prefix
    for netns in (None, *_namespaces()):
        _delete_tables(netns, lambda found: found.startswith(start))
        _delete_queue_rules(netns, lambda comment: comment.startswith(start))
    _stop_and_reap(_shim_pids(lambda fault: fault.startswith(start)))
    for netns in _namespaces():
        if netns.startswith(start):
            _delete_namespace(netns)


# -- topologies ----------------------------------------------------------------------


def _delete_namespace(netns: str) -> None:
    """Stop every process inside ``netns``, then delete it (no error if it is gone)."""
    done = _run(["ip", "netns", "pids", netns], check=False)
    pids = [int(pid) for pid in done.stdout.split() if pid.isdigit()]
    if pids:
        _stop_and_reap(pids, timeout=2.0)
    _run(["ip", "netns", "del", netns], check=False)


def _libc_setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def call_in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a short-lived thread inside ``netns`` and return its result.

    Sockets keep the namespace they were created in, so ``fn`` may create sockets
    the caller then uses from any thread. The calling thread never switches.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(_NETNS_DIR / netns, os.O_RDONLY)
            try:
                _libc_setns(fd)
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


class Node:
    """One host of a :class:`Topology`: its namespace, address, and ways to run things in it."""

    __slots__ = ("_processes", "address", "interface", "name", "netns")

    def __init__(
        self, *, name: str, netns: str, address: str, processes: list[subprocess.Popen[Any]]
    ) -> None:
        self.name = name
        self.netns = netns
        self.address = address
        self.interface = "eth0"
        self._processes = processes

    def __repr__(self) -> str:
        return f"Node({self.name!r}, netns={self.netns!r}, address={self.address!r})"

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside this node (``ip netns exec <netns> ...``)."""
        return _in_ns(argv, self.netns)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process in this node; the topology stops it on exit."""
        kwargs["start_new_session"] = True  # so close() can kill its whole group
        process: subprocess.Popen[Any] = subprocess.Popen(self.command(argv), **kwargs)
        self._processes.append(process)
        return process

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command in this node to completion (``subprocess.run`` arguments)."""
        check = bool(kwargs.pop("check", False))
        return subprocess.run(self.command(argv), check=check, **kwargs)

    def socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
    ) -> socket.socket:
        """A socket living in this node's namespace, usable from this process."""
        return call_in_netns(self.netns, lambda: socket.socket(family, type, proto))


class Topology:
    """Network namespaces joined on one bridge, removed on exit even after errors.

    ``Topology(["client", "server"])`` makes namespaces ``fournines_<id>_client`` and
    ``fournines_<id>_server`` (``<id>`` random unless ``name`` is given), each with
    loopback and an ``eth0`` whose veth peer sits on a bridge in a third namespace,
    ``fournines_<id>-hub``; nodes get addresses of ``subnet`` in order (.1, .2, ...).
    Nothing is added to the host's namespace. ``topo["server"].address`` is where
    to reach a node; ``topo["client"].popen([...])`` runs a program in one.
    """

    def __init__(
        self, nodes: Sequence[str], *, name: str | None = None, subnet: str = "10.77.0.0/24"
    ) -> None:
        if isinstance(nodes, str) or not nodes:
            raise ConfigurationError(f"nodes {nodes!r}: a non-empty list of node names")
        for node in nodes:
            if not isinstance(node, str) or not _NODE.fullmatch(node):
                raise ConfigurationError(f"node name {node!r}: 1-32 letters or digits")
        if len(set(nodes)) != len(nodes):
            raise ConfigurationError(f"nodes {list(nodes)!r}: names repeat")
        name = name if name is not None else secrets.token_hex(3)
        if not _NAME.fullmatch(name):
            raise ConfigurationError(f"topology name {name!r}: letters, digits, '_' or '-'")
        try:
            network = ipaddress.IPv4Network(subnet)
        except ValueError as exc:
            raise ConfigurationError(f"subnet {subnet!r}: not an IPv4 network") from exc
        if network.num_addresses - 2 < len(nodes):
            raise ConfigurationError(f"subnet {subnet!r}: too small for {len(nodes)} nodes")
        self.name = name
        self.hub = f"{PREFIX}{name}-hub"
        self._prefixlen = network.prefixlen
        self._processes: list[subprocess.Popen[Any]] = []
        hosts = network.hosts()
        self.nodes: dict[str, Node] = {
            node: Node(name=node, netns=f"{PREFIX}{name}_{node}", address=str(next(hosts)),
                       processes=self._processes)
            for node in nodes
        }
        self._made: list[str] = []

    def __getitem__(self, node: str) -> Node:
        """The node named ``node``."""
        return self.nodes[node]

    def __enter__(self) -> Topology:
        """Build the namespaces; on any failure remove what was built and re-raise."""
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Remove everything, whether the block raised or not."""
        self.close()

    def _add_namespace(self, netns: str) -> None:
        if (_NETNS_DIR / netns).exists():
            raise ConfigurationError(f"netns {netns!r} exists already: pick another name")
        _run(["ip", "netns", "add", netns])
        self._made.append(netns)
        _run(["ip", "-n", netns, "link", "set", "lo", "up"])

    def _build(self) -> None:
        self._add_namespace(self.hub)
        _run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        for index, node in enumerate(self.nodes.values()):
            self._add_namespace(node.netns)
            port = f"port{index}"
            # Both ends are born in their namespaces: no name is ever taken on the host.
            _run(["ip", "link", "add", "eth0", "netns", node.netns, "type", "veth",
                  "peer", "name", port, "netns", self.hub])
            _run(["ip", "-n", self.hub, "link", "set", port, "master", "br0", "up"])
            _run(["ip", "-n", node.netns, "addr", "add", f"{node.address}/{self._prefixlen}",
                  "dev", "eth0"])
            _run(["ip", "-n", node.netns, "link", "set", "eth0", "up"])

    def close(self) -> None:
        """Stop the processes started in the nodes, then delete the namespaces (idempotent)."""
        for process in self._processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        self._processes.clear()
        for netns in reversed(self._made):
            _delete_namespace(netns)
        self._made.clear()

    def namespaces(self) -> Iterator[str]:
        """Every namespace of this topology, hub included."""
        yield self.hub
        for node in self.nodes.values():
            yield node.netns
