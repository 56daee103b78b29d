"""Specification of Bulkhead (sync and async)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from fournines import Bulkhead, BulkheadFullError, CallRejected, ConfigurationError, deadline_after
from fournines.testing import RecordingListener


def test_admits_up_to_max_concurrent() -> None:
    bulkhead = Bulkhead(max_concurrent=2)
    first, second = bulkhead.try_acquire(), bulkhead.try_acquire()
    with pytest.raises(BulkheadFullError):
        bulkhead.try_acquire()
    first.release()
    bulkhead.try_acquire()
    second.release()
    assert bulkhead.active == 1


def test_permit_release_is_idempotent() -> None:
    bulkhead = Bulkhead(max_concurrent=1)
    permit = bulkhead.try_acquire()
    permit.release()
    permit.release()
    assert bulkhead.active == 0


def test_permit_is_a_context_manager() -> None:
    bulkhead = Bulkhead(max_concurrent=1)
    with bulkhead.try_acquire():
        assert bulkhead.active == 1
    assert bulkhead.active == 0


def test_call_releases_its_slot_on_error() -> None:
    bulkhead = Bulkhead(max_concurrent=1)
    with pytest.raises(KeyError):
        bulkhead.call(lambda: {}["x"])
    assert bulkhead.active == 0


def test_full_bulkhead_without_queue_rejects(recorder: RecordingListener) -> None:
    bulkhead = Bulkhead(max_concurrent=1, name="db", listeners=[recorder])
    with bulkhead.try_acquire(), pytest.raises(BulkheadFullError) as info:
        bulkhead.call(lambda: None)
    assert info.value.name == "db"
    assert recorder.of(CallRejected)[0].reason == "full"


def test_queued_thread_gets_the_released_slot() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1)
    permit = bulkhead.try_acquire()
    entered = threading.Event()
    worker = threading.Thread(target=lambda: bulkhead.call(entered.set))
    worker.start()
    assert not entered.wait(0.05)
    assert bulkhead.queued == 1
    permit.release()
    worker.join(5)
    assert entered.is_set()
    assert bulkhead.active == 0


def test_queue_wait_is_bounded_by_max_wait() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1, max_wait=0.01)
    with bulkhead.try_acquire(), pytest.raises(BulkheadFullError):
        bulkhead.acquire()
    assert bulkhead.queued == 0


def test_queue_wait_is_bounded_by_the_deadline() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1)
    with bulkhead.try_acquire(), deadline_after(0.01), pytest.raises(BulkheadFullError):
        bulkhead.acquire()
    assert bulkhead.queued == 0


async def test_queue_beyond_max_queue_rejects_at_once() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1, max_wait=60)
    with bulkhead.try_acquire():
        queued = asyncio.create_task(bulkhead.aacquire())
        await asyncio.sleep(0)
        assert bulkhead.queued == 1
        with pytest.raises(BulkheadFullError):
            await bulkhead.aacquire()
    (await queued).release()


async def test_queued_task_gets_the_released_slot() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=5)
    order: list[int] = []
    gate = asyncio.Event()

    async def work(i: int) -> None:
        order.append(i)
        await gate.wait()

    tasks = [asyncio.create_task(bulkhead.acall(work, i)) for i in range(4)]
    await asyncio.sleep(0.01)
    assert (bulkhead.active, bulkhead.queued) == (1, 3)
    gate.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


async def test_async_wait_times_out_without_leaking() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1, max_wait=0.01)
    permit = bulkhead.try_acquire()
    with pytest.raises(BulkheadFullError):
        await bulkhead.aacquire()
    permit.release()
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


async def test_cancelled_waiter_leaves_the_queue() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1)
    permit = bulkhead.try_acquire()
    waiter = asyncio.create_task(bulkhead.aacquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    permit.release()
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_concurrent": 0}, "Bulkhead.max_concurrent"),
    ({"max_queue": -1}, "Bulkhead.max_queue"),
    ({"max_wait": -1}, "Bulkhead.max_wait"),
])
def test_bad_configuration_names_the_field(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")):
        Bulkhead(**kwargs)
