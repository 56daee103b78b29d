"""Fixtures of the discovery tests: ``etcd`` is shared by a module unless it overrides it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from fournines.discovery import EtcdEndpoints, EtcdRegistry
from fournines.testing import RecordingListener

from .._servers import EtcdServer

TTL = 2.0


@pytest.fixture(scope="module")
def shared_etcd() -> Iterator[EtcdServer]:
    """One etcd for the tests of a module that never stop it (each has its own prefix)."""
    server = EtcdServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def etcd(shared_etcd: EtcdServer) -> EtcdServer:
    """The etcd a test uses; modules that kill or pause it override this with a private one."""
    return shared_etcd


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test alone, so tests sharing an etcd never see each other."""
    return f"test-{uuid.uuid4().hex[:12]}/services"


@pytest.fixture
async def registry(etcd: EtcdServer, prefix: str,
                   recorder: RecordingListener) -> AsyncIterator[EtcdRegistry]:
    async with EtcdRegistry(etcd.url, ttl=TTL, prefix=prefix, listeners=[recorder]) as reg:
        yield reg


@pytest.fixture
async def discovery(etcd: EtcdServer, prefix: str) -> AsyncIterator[EtcdEndpoints]:
    async with EtcdEndpoints(etcd.url, "payment", prefix=prefix, probe_interval=0.3) as source:
        yield source
