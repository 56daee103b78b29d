"""Specification of the lab's fleet: what each variant answers when a dependency fails.

Real uvicorn processes and the real fault proxy, started by each test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from fournines.lab.fleet import FaultProxy, Fleet
from fournines.lab.metrics import Sample, parse_metrics
from fournines.lab.scenario import Fault, PaymentModel
from fournines.lab.services import UNKNOWN_STATUS


@asynccontextmanager
async def fleet(variant: str, workdir: Path) -> AsyncIterator[tuple[Fleet, httpx.AsyncClient]]:
    proxy = FaultProxy(workdir)
    await proxy.start()
    lab = Fleet(variant, workdir, proxy, PaymentModel(), seed=1)
    try:
        await lab.start()
        async with httpx.AsyncClient(base_url=lab.gateway_url, timeout=10) as client:
            yield lab, client
    finally:
        await lab.stop()
        await proxy.stop()


async def test_a_healthy_fleet_answers_the_page_in_full(tmp_path: Path) -> None:
    async with fleet("protected", tmp_path) as (_, client):
        response = await client.get("/page/7?user=3")
    assert response.status_code == 200
    assert "x-lab-degraded" not in response.headers
    page = response.json()
    assert page["order"]["payment"] == "paid"
    assert page["profile"]["nickname"] == "user-3"
    assert page["degraded"] == []


async def test_protected_a_dead_profile_service_renders_the_guest_profile(
        tmp_path: Path) -> None:
    async with fleet("protected", tmp_path) as (lab, client):
        await lab.begin(Fault(kind="profile_kill", at=0, duration=1), 0)
        response = await client.get("/page/7?user=3")
    assert response.status_code == 200
    assert response.headers["x-lab-degraded"] == "profile"
    profile = response.json()["profile"]
    assert (profile["nickname"], profile["nickname_zh"]) == ("Guest", "访客")
    assert profile["avatar"] == "/avatars/default.png"


async def test_unprotected_a_dead_profile_service_fails_the_page(tmp_path: Path) -> None:
    async with fleet("unprotected", tmp_path) as (lab, client):
        await lab.begin(Fault(kind="profile_kill", at=0, duration=1), 0)
        response = await client.get("/page/7?user=3")
    assert response.status_code == 502
    assert response.headers["x-lab-error"] == "ConnectError"


async def test_protected_a_partition_serves_the_last_known_payment_status(
        tmp_path: Path) -> None:
    partition = Fault(kind="partition", at=0, duration=1, mode="refuse")
    async with fleet("protected", tmp_path) as (lab, client):
        assert (await client.get("/page/7?user=3")).status_code == 200  # remembered
        await lab.begin(partition, 0)
        stale = await client.get("/page/7?user=3")
        never_seen = await client.get("/page/8?user=3")
        await lab.end(partition, 0)
    assert stale.status_code == 200
    assert stale.headers["x-lab-degraded"] == "payment-status"
    assert stale.json()["order"]["payment"] == "paid"
    # no cached status for an order never fetched: the page says the status is unknown,
    # and says it was degraded; it never invents a status
    assert never_seen.status_code == 200
    assert never_seen.headers["x-lab-degraded"] == "payment-unknown"
    assert never_seen.json()["order"]["payment"] == UNKNOWN_STATUS


async def test_payment_errors_are_injected_through_the_chaos_api_and_removed(
        tmp_path: Path) -> None:
    errors = Fault(kind="payment_errors", at=0, duration=30, rate=1.0, status=500)
    async with fleet("unprotected", tmp_path) as (lab, client):
        await lab.begin(errors, 0)
        failing = await client.get("/page/7?user=3")
        await lab.end(errors, 0)
        healed = await client.get("/page/7?user=3")
    assert failing.status_code == 502
    assert failing.headers["x-lab-error"] == "order 502 payment HTTPStatusError"
    assert healed.status_code == 200


async def test_payment_latency_comes_from_the_fault_proxy(tmp_path: Path) -> None:
    slow = Fault(kind="payment_latency", at=0, duration=5, latency=0.5)
    async with fleet("unprotected", tmp_path) as (lab, client):
        await client.get("/page/7?user=3")
        await lab.begin(slow, 0)
        response = await client.get("/page/7?user=3")
        await lab.end(slow, 0)
    assert response.status_code == 200
    assert response.elapsed.total_seconds() >= 0.5


def test_the_lab_s_processes_die_with_the_lab_even_when_it_is_sigkilled(tmp_path: Path) -> None:
    # A SIGKILL (an OOM kill, a CI timeout) runs no `finally`: the fault proxy and the
    # services must not outlive the lab and hold their ports.
    script = (
        "import asyncio, pathlib, time\n"
        "from fournines.lab.fleet import FaultProxy\n"
        f"proxy = FaultProxy(pathlib.Path({str(tmp_path)!r}))\n"
        "asyncio.run(proxy.start())\n"
        "print(proxy.proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    lab = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert lab.stdout is not None
        child = int(lab.stdout.readline())
        os.kill(child, 0)  # running
    finally:
        lab.kill()
        lab.wait()
    end = time.monotonic() + 10
    while time.monotonic() < end and _alive(child):
        time.sleep(0.05)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


async def test_the_protected_gateway_keeps_its_own_error_budget(tmp_path: Path) -> None:
    async with fleet("protected", tmp_path) as (_, client):
        for _ in range(3):
            assert (await client.get("/page/7?user=3")).status_code == 200
        metrics = (await client.get("/metrics")).text
    sample = Sample(at=0.0)
    parse_metrics(metrics, "gateway", sample)
    assert sample.budget_remaining == {"gateway/page-availability": 1.0}


async def test_the_lab_fault_proxy_api_answers_only_the_lab(tmp_path: Path) -> None:
    proxy = FaultProxy(tmp_path)
    await proxy.start()
    try:
        async with httpx.AsyncClient(base_url=proxy.api, timeout=5) as stranger:
            refused = await stranger.post("/proxies", json={
                "name": "x", "upstream": "127.0.0.1:9", "listen": "127.0.0.1:0"})
        assert refused.status_code == 401
        await proxy.reset()  # the lab's own client carries the token
    finally:
        await proxy.stop()


async def test_capacity_loss_makes_each_payment_hold_its_worker_longer(tmp_path: Path) -> None:
    loss = Fault(kind="capacity_loss", at=0, duration=5, factor=4)
    async with fleet("protected", tmp_path) as (lab, _):
        payment = lab.services["payment"].url
        async with httpx.AsyncClient(base_url=payment, timeout=10) as direct:
            await lab.begin(loss, 0)
            slow = await direct.get("/status/7")
            await lab.end(loss, 0)
            refused = await direct.put("/lab/capacity", params={"slowdown": 2})
    assert slow.status_code == 200
    # the default model's 30 ms, held 4 times as long
    assert slow.elapsed.total_seconds() >= 4 * PaymentModel().service_time * 0.95
    assert refused.status_code == 401  # only the lab, with its token, changes the model
