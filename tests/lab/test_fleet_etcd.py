"""Specification of the lab's fleet behind the registry (``fournines lab --etcd``).

Real uvicorn processes, the real fault proxy and a private etcd the lab starts
itself (:class:`~fournines.lab.registry.LabEtcd`), as the lab runs them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from fournines.discovery import EtcdEndpoints
from fournines.lab.fleet import FaultProxy, Fleet
from fournines.lab.registry import LabEtcd, run_prefix
from fournines.lab.scenario import Fault, PaymentModel

from .._servers import require_binary

KILL = Fault(kind="instance_kill", at=0, duration=1)
OUTAGE = Fault(kind="registry_outage", at=0, duration=1)


@asynccontextmanager
async def behind_etcd(workdir: Path) -> AsyncIterator[tuple[Fleet, httpx.AsyncClient]]:
    require_binary("etcd", "etcd-server")
    etcd = LabEtcd(workdir)
    await etcd.start()
    proxy = FaultProxy(workdir)
    await proxy.start()
    lab = Fleet("protected", workdir, proxy, PaymentModel(concurrency=4), seed=1,
                etcd_url=etcd.url, etcd_prefix=run_prefix(), etcd=etcd)
    try:
        await lab.start()
        async with httpx.AsyncClient(base_url=lab.gateway_url, timeout=10) as client:
            yield lab, client
    finally:
        await lab.stop()
        await proxy.stop()
        etcd.stop()


async def registered(lab: Fleet, service: str) -> list[str]:
    assert lab.etcd_url is not None
    async with EtcdEndpoints(lab.etcd_url, service, prefix=lab.etcd_prefix) as source:
        return sorted(i.address for i in source.instances)


async def full_pages(client: httpx.AsyncClient, count: int = 30) -> int:
    full = 0
    for i in range(count):
        response = await client.get(f"/page/o{i}?user=u{i}")
        full += response.status_code == 200 and not response.json()["degraded"]
    return full


async def test_every_protected_service_registers_and_payment_twice_through_the_proxy(
        tmp_path: Path) -> None:
    async with behind_etcd(tmp_path) as (lab, client):
        assert await registered(lab, "gateway") == [lab.services["gateway"].url]
        assert await registered(lab, "order") == [lab.services["order"].url]
        assert await registered(lab, "profile") == [lab.services["profile"].url]
        # clients reach payment through its fault-proxy routes, one per instance
        assert len(lab.payments) == 2
        payments = await registered(lab, "payment")
        assert len(payments) == 2 and lab.payment_via_proxy in payments
        assert not {p.url for p in lab.payments} & set(payments)
        assert await full_pages(client) == 30


async def test_a_killed_payment_instance_leaves_the_pages_in_full(tmp_path: Path) -> None:
    async with behind_etcd(tmp_path) as (lab, client):
        await lab.begin(KILL, 0)
        assert lab.payments[-1].proc is not None and lab.payments[-1].proc.poll() is not None
        assert await full_pages(client) == 30
        await lab.end(KILL, 0)
        assert await full_pages(client) == 30


async def test_etcd_down_leaves_the_pages_in_full_and_the_fleet_registered_after(
        tmp_path: Path) -> None:
    async with behind_etcd(tmp_path) as (lab, client):
        await lab.begin(OUTAGE, 0)
        assert await full_pages(client) == 30
        await lab.end(OUTAGE, 0)
        assert len(await registered(lab, "payment")) == 2
        assert await full_pages(client) == 30


async def test_stopped_services_deregister(tmp_path: Path) -> None:
    async with behind_etcd(tmp_path) as (lab, _):
        assert len(await registered(lab, "payment")) == 2
        await lab.stop()
        # SIGTERM: each service deregisters in its lifespan's shutdown; no record is left
        # to linger until its lease expires
        for service in ("gateway", "order", "payment", "profile"):
            assert await registered(lab, service) == []
