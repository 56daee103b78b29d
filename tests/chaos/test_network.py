"""Network faults against real namespaces, veth pairs, nftables, iptables and the NFQUEUE shim.

Every test that changes the network builds its own topology and names its faults
with a prefix unique to the test; a finalizer heals everything with that prefix,
so a failing test leaves nothing behind and tests of other areas running at the
same time are never touched. Timing checks use generous bounds (2 shared cores).
"""

from __future__ import annotations

import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from fournines._errors import ConfigurationError
from fournines.chaos import network
from fournines.chaos._nfqueue import DelayModel
from fournines.chaos.network import (
    NetworkCapabilities,
    Node,
    Topology,
    add_delay,
    capabilities,
    heal,
    heal_all,
    partition,
)

from .._servers import free_port

_SO_RCVBUFFORCE = 33  # Linux; lets root raise the buffer past net.core.rmem_max


def _require(*features: str) -> None:
    reason = capabilities().missing(*features)
    if reason:
        pytest.skip(reason)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A name prefix unique to this test; everything made under it is removed after."""
    name = f"t{random.getrandbits(32):08x}"
    try:
        yield name
    finally:
        heal_all(name)


@pytest.fixture
def topo(prefix: str) -> Iterator[Topology]:
    _require("netns")
    with Topology(["client", "server"], name=prefix) as topology:
        yield topology


# -- helpers -------------------------------------------------------------------------


def _http_server(node: Node, port: int) -> None:
    """``python -m http.server`` in ``node``; returns once it accepts connections."""
    node.popen([sys.executable, "-m", "http.server", "--bind", node.address, str(port)],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _connect(client: Node, address: str, port: int, timeout: float) -> socket.socket:
    sock = client.socket()
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _wait_until_served(client: Node, server: Node, port: int) -> None:
    end = time.monotonic() + 15
    while True:
        try:
            _connect(client, server.address, port, 1.0).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def _http_get(client: Node, server: Node, port: int, timeout: float) -> bytes:
    with _connect(client, server.address, port, timeout) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        return sock.recv(64)


class _UdpPair:
    """A UDP socket in each node; round trips echo by hand, in this one thread."""

    def __init__(self, topo: Topology, port: int) -> None:
        self.server = topo["server"].socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.server.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 16 << 20)
        self.server.bind((topo["server"].address, port))
        self.client = topo["client"].socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.settimeout(5)
        self.server.settimeout(5)
        self.target = (topo["server"].address, port)

    def round_trip(self) -> float:
        start = time.monotonic()
        self.client.sendto(b"ping", self.target)
        data, peer = self.server.recvfrom(64)
        self.server.sendto(data, peer)
        self.client.recvfrom(64)
        return time.monotonic() - start

    def median_rtt(self, count: int) -> float:
        return statistics.median(self.round_trip() for _ in range(count))

    def delivered(self, count: int) -> int:
        """Send ``count`` datagrams one way; how many arrived."""
        for index in range(count):
            self.client.sendto(b"x", self.target)
            if index % 50 == 49:
                time.sleep(0.001)  # let softirqs drain the veth backlog (1000 packets)
        received = 0
        self.server.settimeout(0.5)
        try:
            while True:
                self.server.recvfrom(64)
                received += 1
        except TimeoutError:
            pass
        self.server.settimeout(5)
        return received

    def close(self) -> None:
        self.server.close()
        self.client.close()


@pytest.fixture
def udp(topo: Topology) -> Iterator[_UdpPair]:
    pair = _UdpPair(topo, 9000)
    try:
        yield pair
    finally:
        pair.close()


def _fournines_state(prefix: str) -> dict[str, list[str]]:
    """Everything named after ``prefix`` that is still on the machine."""
    start = network.PREFIX + prefix
    namespaces = [ns for ns in network._namespaces() if ns.startswith(start)]
    tables = [
        f"{ns}:{family}:{table}"
        for ns in (None, *network._namespaces())
        for family, table in network._tables(ns)
        if table.startswith(start)
    ]
    rules = [line for _, line in network._queue_rules(None, lambda c: c.startswith(start))]
    shims = [str(pid) for pid in network._shim_pids(lambda fault: fault.startswith(start))]
    return {"namespaces": namespaces, "tables": tables, "rules": rules, "shims": shims}


_NOTHING: dict[str, list[str]] = {"namespaces": [], "tables": [], "rules": [], "shims": []}


# -- topology ------------------------------------------------------------------------


def test_topology_nodes_reach_each_other_over_tcp(topo: Topology) -> None:
    port = 8080
    _http_server(topo["server"], port)
    _wait_until_served(topo["client"], topo["server"], port)
    assert _http_get(topo["client"], topo["server"], port, 5).startswith(b"HTTP/1.0 200")


def test_topology_nodes_are_not_reachable_from_the_host(topo: Topology) -> None:
    assert topo["server"].address.startswith("10.77.0.")
    result = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True)
    assert topo["server"].address not in result.stdout


def test_topology_removes_namespaces_and_processes_even_when_the_block_raises(
    prefix: str,
) -> None:
    _require("netns", "nfqueue")
    with pytest.raises(RuntimeError, match="boom"):
        with Topology(["a", "b"], name=prefix) as topology:
            sleeper = topology["a"].popen(["sleep", "300"])
            add_delay(f"{prefix}_d", dport=9000, delay=0.1, netns=topology["a"].netns)
            assert _fournines_state(prefix)["shims"]
            raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert _fournines_state(prefix) == _NOTHING


def test_topology_rejects_repeated_and_malformed_node_names() -> None:
    with pytest.raises(ConfigurationError, match="repeat"):
        Topology(["a", "a"])
    with pytest.raises(ConfigurationError, match="node name 'a b'"):
        Topology(["a b"])


# -- partitions and loss -------------------------------------------------------------


def test_partition_makes_connects_time_out_and_heal_restores_them(
    topo: Topology, prefix: str
) -> None:
    _require("nft")
    port = 8080
    _http_server(topo["server"], port)
    _wait_until_served(topo["client"], topo["server"], port)
    partition(f"{prefix}_p", dst=topo["server"].address, dport=port,
              netns=topo["client"].netns)
    with pytest.raises(TimeoutError):
        _connect(topo["client"], topo["server"].address, port, 1.0)
    heal(f"{prefix}_p")
    assert _http_get(topo["client"], topo["server"], port, 5).startswith(b"HTTP/1.0 200")


def test_partition_to_one_port_leaves_other_ports_alone(
    topo: Topology, udp: _UdpPair, prefix: str
) -> None:
    _require("nft")
    partition(f"{prefix}_p", dst=topo["server"].address, dport=8080,
              netns=topo["client"].netns)
    assert udp.round_trip() < 5


def test_ingress_partition_drops_what_arrives_from_the_destination(
    topo: Topology, udp: _UdpPair, prefix: str
) -> None:
    _require("nft")
    partition(f"{prefix}_p", dst=topo["client"].address, netns=topo["server"].netns,
              direction="ingress")
    assert udp.delivered(20) == 0


def test_random_loss_drops_about_the_configured_share(
    topo: Topology, udp: _UdpPair, prefix: str
) -> None:
    _require("nft")
    sent = 2000
    assert udp.delivered(sent) >= sent - 10  # the path itself loses (next to) nothing
    partition(f"{prefix}_loss", dst=topo["server"].address, netns=topo["client"].netns,
              loss=10.0)
    lost = sent - udp.delivered(sent)
    # Binomial(2000, 0.1): mean 200, sd 13.4; the bounds are more than 7 sd away.
    assert 100 <= lost <= 300, lost


def test_partition_on_the_host_loopback_touches_only_its_port(prefix: str) -> None:
    _require("nft")
    blocked = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    open_ = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with blocked, open_, sender:
        blocked.bind(("127.0.0.1", 0))
        open_.bind(("127.0.0.1", 0))
        blocked.settimeout(0.5)
        open_.settimeout(5)
        partition(f"{prefix}_lo", dst="127.0.0.1", dport=blocked.getsockname()[1])
        for _ in range(5):
            sender.sendto(b"x", blocked.getsockname())  # no error: the drop is silent
            sender.sendto(b"x", open_.getsockname())
        assert [open_.recv(8) for _ in range(5)] == [b"x"] * 5
        with pytest.raises(TimeoutError):
            blocked.recv(8)


def test_a_fault_name_in_use_is_refused(topo: Topology, prefix: str) -> None:
    _require("nft")
    partition(f"{prefix}_p", dst=topo["server"].address, netns=topo["client"].netns)
    with pytest.raises(ConfigurationError, match="exists already"):
        partition(f"{prefix}_p", dst=topo["server"].address, netns=topo["client"].netns)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dst": "not-an-ip"}, "dst 'not-an-ip'"),
        ({"dst": "10.0.0.1", "dport": 70000}, "dport 70000"),
        ({"dst": "10.0.0.1", "loss": 0}, "loss 0"),
        ({"dst": "10.0.0.1", "loss": 101}, "loss 101"),
        ({"dst": "10.0.0.1", "src": "::1"}, "different IP versions"),
        ({"dst": "10.0.0.1", "netns": "fournines_no_such_ns"}, "netns 'fournines_no_such_ns'"),
        # values as a Chaos Toolkit experiment may pass them: refused before any rule exists
        ({"dst": "10.0.0.1", "dport": "80"}, "dport '80'"),
        ({"dst": "10.0.0.1", "dport": 80.5}, "dport 80.5"),
        ({"dst": "10.0.0.1", "loss": "50"}, "loss '50'"),
    ],
)
def test_partition_settings_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        partition("bad", **kwargs)  # type: ignore[arg-type]


def test_fault_names_are_restricted_to_what_nft_accepts() -> None:
    with pytest.raises(ConfigurationError, match="fault name 'a b'"):
        heal("a b")


# -- delay ---------------------------------------------------------------------------


def test_delay_adds_the_configured_delay_to_round_trips(
    topo: Topology, udp: _UdpPair, prefix: str
) -> None:
    _require("nfqueue")
    before = udp.median_rtt(10)
    add_delay(f"{prefix}_d", dport=9000, delay=0.1, netns=topo["client"].netns)
    during = udp.median_rtt(10)
    assert during - before >= 0.08, (before, during)
    assert during < 0.5, during


def test_delay_applies_to_tcp_too(topo: Topology, prefix: str) -> None:
    _require("nfqueue")
    port = 8080
    _http_server(topo["server"], port)
    _wait_until_served(topo["client"], topo["server"], port)
    add_delay(f"{prefix}_d", dport=port, delay=0.2, netns=topo["client"].netns)
    start = time.monotonic()
    _connect(topo["client"], topo["server"].address, port, 5).close()
    assert time.monotonic() - start >= 0.16  # the SYN waited


def test_heal_removes_the_delay_and_stops_the_shim(
    topo: Topology, udp: _UdpPair, prefix: str
) -> None:
    _require("nfqueue")
    add_delay(f"{prefix}_d", dport=9000, delay=0.3, netns=topo["client"].netns)
    assert udp.round_trip() >= 0.25
    heal(f"{prefix}_d")
    assert udp.median_rtt(5) < 0.1
    assert _fournines_state(prefix)["shims"] == []


def test_jitter_spreads_round_trips_around_the_delay(
    topo: Topology, udp: _UdpPair, prefix: str
) -> None:
    _require("nfqueue")
    add_delay(f"{prefix}_d", dport=9000, delay=0.1, jitter=0.05, netns=topo["client"].netns,
              seed=7)
    rtts = [udp.round_trip() for _ in range(30)]
    assert min(rtts) >= 0.045, rtts
    assert max(rtts) <= 0.6, rtts
    assert max(rtts) - min(rtts) >= 0.03, rtts  # 30 uniform draws over 100 ms


def test_delay_on_the_host_loopback_touches_only_its_port(prefix: str) -> None:
    _require("nfqueue")
    delayed = free_port()
    add_delay(f"{prefix}_lo", dport=delayed, delay=0.15)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, sender:
        bound = receiver.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as slow:
            slow.bind(("127.0.0.1", delayed))
            slow.settimeout(5)
            start = time.monotonic()
            sender.sendto(b"x", ("127.0.0.1", delayed))
            slow.recvfrom(8)
            assert time.monotonic() - start >= 0.12
        start = time.monotonic()
        sender.sendto(b"x", ("127.0.0.1", bound))
        receiver.recvfrom(8)
        assert time.monotonic() - start < 0.1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dport": 0, "delay": 0.1}, "dport 0"),
        ({"dport": 80, "delay": -1}, "delay -1"),
        ({"dport": 80, "delay": 0.1, "jitter": -0.1}, "jitter -0.1"),
        ({"dport": 80, "delay": 0.1, "correlation": 1.5}, "correlation 1.5"),
        ({"dport": "80", "delay": 0.1}, "dport '80'"),
        ({"dport": 80, "delay": "0.1"}, "delay '0.1'"),
        ({"dport": 80, "delay": 0.1, "correlation": "0.5"}, "correlation '0.5'"),
    ],
)
def test_delay_settings_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        add_delay("bad", **kwargs)  # type: ignore[arg-type]


# -- the delay model (pure, no privileges) -------------------------------------------


def _lag1(values: list[float]) -> float:
    return statistics.correlation(values[:-1], values[1:])


def test_delay_model_without_jitter_is_constant() -> None:
    model = DelayModel(delay=0.1)
    assert {model.next() for _ in range(100)} == {0.1}


def test_delay_model_jitter_is_uniform_around_the_delay() -> None:
    model = DelayModel(delay=0.1, jitter=0.02, rng=random.Random(1))
    samples = [model.next() for _ in range(20000)]
    assert min(samples) >= 0.08
    assert max(samples) <= 0.12
    assert abs(statistics.fmean(samples) - 0.1) < 0.001
    assert abs(_lag1(samples)) < 0.05


def test_delay_model_correlation_is_the_lag_one_correlation_of_delays() -> None:
    model = DelayModel(delay=0.1, jitter=0.02, correlation=0.5, rng=random.Random(2))
    samples = [model.next() for _ in range(20000)]
    assert 0.45 <= _lag1(samples) <= 0.55
    assert abs(statistics.fmean(samples) - 0.1) < 0.001
    # The spread narrows by sqrt((1 - c) / (1 + c)): sd 0.02/sqrt(3) * 0.577.
    assert statistics.stdev(samples) == pytest.approx(0.02 / 3**0.5 * (1 / 3) ** 0.5, rel=0.05)


def test_delay_model_never_goes_below_zero() -> None:
    model = DelayModel(delay=0.01, jitter=0.05, rng=random.Random(3))
    assert min(model.next() for _ in range(1000)) == 0.0


# -- healing and capabilities --------------------------------------------------------


def test_heal_of_an_unknown_fault_does_nothing(prefix: str) -> None:
    _require("nft")
    heal(f"{prefix}_never_made")
    heal(f"{prefix}_never_made")


def test_heal_all_removes_every_fault_and_topology_with_the_prefix(prefix: str) -> None:
    _require("netns", "nft", "nfqueue")
    topology = Topology(["a", "b"], name=prefix).__enter__()  # left open on purpose
    partition(f"{prefix}_p", dst=topology["b"].address, netns=topology["a"].netns)
    add_delay(f"{prefix}_d", dport=9000, delay=0.1, netns=topology["a"].netns)
    port = free_port()
    partition(f"{prefix}_host", dst="127.0.0.1", dport=port)
    add_delay(f"{prefix}_hostd", dport=port, delay=0.1)
    state = _fournines_state(prefix)
    assert len(state["namespaces"]) == 3 and len(state["tables"]) == 2
    assert len(state["rules"]) == 4 and len(state["shims"]) == 2  # tcp, udp; v4, v6
    heal_all(prefix)
    assert _fournines_state(prefix) == _NOTHING
    heal_all(prefix)  # idempotent
    topology.close()  # nothing left to do, and no error either


def test_capabilities_give_a_reason_for_each_missing_feature() -> None:
    caps = NetworkCapabilities(
        admin=True, netns=True, nft=True, iptables=True, netem=False, nfqueue=False,
        reasons={"netem": "no sch_netem", "nfqueue": "no queue"},
    )
    assert caps.missing("netns", "nft") is None
    assert caps.missing("netns", "netem", "nfqueue") == "no sch_netem; no queue"


def test_capabilities_on_this_machine_are_consistent() -> None:
    caps = capabilities()
    for feature in ("admin", "netns", "nft", "iptables", "netem", "nfqueue"):
        assert getattr(caps, feature) == (feature not in caps.reasons), feature


def test_asking_for_an_unknown_capability_names_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown feature.*'delay'.*nfqueue"):
        capabilities().missing("delay")
