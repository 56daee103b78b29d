from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from fournines.testing import FakeClock, RecordingListener

from ._servers import EtcdCluster, EtcdServer, RedisServer

settings.register_profile(
    "fournines", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("fournines")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder() -> RecordingListener:
    return RecordingListener()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole session (tests use own key prefixes)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone, which the test may kill and restart."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _running_etcd() -> Iterator[EtcdServer]:
    server = EtcdServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    """A private single-node etcd of this test alone (it may kill, pause and restart it)."""
    yield from _running_etcd()


@pytest.fixture(scope="module")
def shared_etcd() -> Iterator[EtcdServer]:
    """One etcd for the tests of a module that never stop it (each uses its own prefix)."""
    yield from _running_etcd()


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A private three-member etcd cluster on loopback."""
    cluster = EtcdCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.cleanup()
