"""Lifecycle hooks on ServiceState: on_ready after ready, on_drain before readiness fails."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fournines import ConfigurationError
from fournines.asgi import LifecycleHook, Phase, ServiceState, protect
from fournines.asgi._types import Receive, Scope, Send, respond
from fournines.discovery import Instance, RegistrationHook, StaticRegistry


class Recorder:
    """A hook that records which phase the state was in when each of its calls ran."""

    def __init__(self, *, drain_for: float = 0.0, fail: bool = False) -> None:
        self.calls: list[tuple[str, Phase]] = []
        self.drain_for = drain_for
        self.fail = fail

    async def on_ready(self, state: ServiceState) -> None:
        self.calls.append(("ready", state.phase))

    async def on_drain(self, state: ServiceState) -> None:
        self.calls.append(("drain", state.phase))
        await asyncio.sleep(self.drain_for)
        if self.fail:
            raise RuntimeError("the registry is gone")


async def plain_app(scope: Scope, receive: Receive, send: Send) -> None:
    await respond(send, 200, b"ok")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_on_ready_runs_once_the_state_turns_ready_and_not_before() -> None:
    hook = Recorder()
    state = ServiceState()
    state.add_hook(hook)
    await settle()
    assert hook.calls == []

    state.mark_ready()
    state.mark_ready()
    await settle()

    assert hook.calls == [("ready", Phase.READY)]


async def test_drain_runs_on_drain_while_the_service_is_still_ready() -> None:
    hook = Recorder()
    state = ServiceState()
    state.add_hook(hook)
    state.mark_ready()
    await settle()

    await state.drain()

    assert hook.calls == [("ready", Phase.READY), ("drain", Phase.READY)]
    assert state.phase is Phase.DRAINING


async def test_a_hanging_on_drain_holds_readiness_up_for_the_timeout_only() -> None:
    state = ServiceState()
    state.add_hook(Recorder(drain_for=60))
    state.mark_ready()
    await settle()

    await asyncio.wait_for(state.drain(timeout=0.05), 5)

    assert state.phase is Phase.DRAINING


async def test_a_failing_hook_is_logged_and_the_drain_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = ServiceState(service="payment")
    other = Recorder()
    state.add_hook(Recorder(fail=True))
    state.add_hook(other)
    state.mark_ready()
    await settle()

    await state.drain()

    assert state.phase is Phase.DRAINING
    assert ("drain", Phase.READY) in other.calls
    assert any("on_drain" in r.getMessage() and r.levelno == logging.ERROR
               for r in caplog.records)


async def test_mark_draining_alone_still_runs_on_drain_once() -> None:
    hook = Recorder()
    state = ServiceState()
    state.add_hook(hook)
    state.mark_ready()
    await settle()

    state.mark_draining()
    state.mark_draining()
    await settle()
    await state.drain()

    assert hook.calls == [("ready", Phase.READY), ("drain", Phase.DRAINING)]


async def test_a_service_that_never_turned_ready_withdraws_nothing() -> None:
    hook = Recorder()
    state = ServiceState()
    state.add_hook(hook)

    await state.drain()
    state.mark_ready()  # too late: draining already
    await settle()

    assert hook.calls == []


async def test_a_registration_hook_registers_on_ready_and_deregisters_before_readiness_fails(
) -> None:
    registry = StaticRegistry()
    me = Instance(service="payment", id="p1", address="http://127.0.0.1:8001")
    app = protect(plain_app, metrics=False, shedding=False,
                  hooks=[RegistrationHook(registry, me)])
    seen: list[tuple[tuple[Instance, ...], Phase]] = []

    class Watch:
        async def on_ready(self, state: ServiceState) -> None:
            pass

        async def on_drain(self, state: ServiceState) -> None:
            await asyncio.sleep(0.01)  # after the registration hook's deregister
            seen.append((registry.instances("payment"), state.phase))

    app.state.add_hook(Watch())
    app.state.mark_ready()
    await settle()
    assert registry.instances("payment") == (me,)

    await app.state.drain()

    assert seen == [((), Phase.READY)]


def test_protect_refuses_a_hook_that_is_not_one() -> None:
    with pytest.raises(ConfigurationError, match=r"protect\.hooks"):
        protect(plain_app, metrics=False, shedding=False,
                hooks=[object()])  # type: ignore[list-item]


def test_a_registration_hook_is_a_lifecycle_hook() -> None:
    hook = RegistrationHook(StaticRegistry(), Instance(service="s", address="http://h:1"))
    assert isinstance(hook, LifecycleHook)
