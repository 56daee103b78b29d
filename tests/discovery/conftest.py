"""Fixtures of the discovery tests: ``etcd`` is shared by a module unless it overrides it.

The etcd servers themselves are tests/conftest.py's fixtures (``shared_etcd``, ``etcd_server``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from fournines.discovery import EtcdEndpoints, EtcdRegistry
from fournines.testing import RecordingListener

from .._servers import EtcdServer

TTL = 2.0


@pytest.fixture
def etcd(shared_etcd: EtcdServer) -> EtcdServer:
    """The etcd a test uses: the module's ``shared_etcd`` (tests/conftest.py); modules that
    kill or pause it override this with the private ``etcd_server``."""
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
