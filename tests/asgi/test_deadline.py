"""DeadlineMiddleware: the request runs under the budget its caller sent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest

from fournines import ConfigurationError, DeadlineExceeded, current_deadline
from fournines._deadline import deadline_after
from fournines.asgi._types import Receive, Scope, Send, respond
from fournines.asgi.deadline import DeadlineMiddleware
from fournines.testing import FakeClock, RecordingListener

App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Recorder:
    """An app that notes the budget it was given (None: no deadline) and answers 200."""

    def __init__(self) -> None:
        self.calls = 0
        self.remaining: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        deadline = current_deadline()
        self.remaining = None if deadline is None else deadline.remaining()
        if scope["type"] == "http":
            await respond(send, 200, b"ok")


async def get(app: App, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/", headers=headers)


@pytest.fixture
def inner() -> Recorder:
    return Recorder()


async def test_timeout_ms_header_sets_the_remaining_budget(
    inner: Recorder, clock: FakeClock
) -> None:
    await get(DeadlineMiddleware(inner, clock=clock), {"x-request-timeout-ms": "1500"})
    assert inner.remaining == 1.5


async def test_fractional_milliseconds_are_accepted(inner: Recorder, clock: FakeClock) -> None:
    await get(DeadlineMiddleware(inner, clock=clock), {"x-request-timeout-ms": "2.5"})
    assert inner.remaining == 0.0025


async def test_budget_is_capped_by_max_timeout(inner: Recorder, clock: FakeClock) -> None:
    app = DeadlineMiddleware(inner, max_timeout=2.0, clock=clock)
    await get(app, {"x-request-timeout-ms": "600000"})
    assert inner.remaining == 2.0


async def test_grpc_timeout_header_is_accepted(inner: Recorder, clock: FakeClock) -> None:
    await get(DeadlineMiddleware(inner, clock=clock), {"grpc-timeout": "250m"})
    assert inner.remaining == 0.25


async def test_timeout_ms_header_wins_over_grpc_timeout(
    inner: Recorder, clock: FakeClock
) -> None:
    app = DeadlineMiddleware(inner, clock=clock)
    await get(app, {"x-request-timeout-ms": "100", "grpc-timeout": "5S"})
    assert inner.remaining == 0.1


async def test_default_timeout_applies_without_a_header(
    inner: Recorder, clock: FakeClock
) -> None:
    await get(DeadlineMiddleware(inner, default_timeout=3.0, clock=clock))
    assert inner.remaining == 3.0


async def test_default_timeout_is_capped_by_max_timeout(
    inner: Recorder, clock: FakeClock
) -> None:
    await get(DeadlineMiddleware(inner, max_timeout=1.0, default_timeout=3.0, clock=clock))
    assert inner.remaining == 1.0


async def test_no_header_and_no_default_means_no_deadline(inner: Recorder) -> None:
    response = await get(DeadlineMiddleware(inner))
    assert (response.status_code, inner.calls, inner.remaining) == (200, 1, None)


async def test_deadline_is_reset_after_the_request(inner: Recorder, clock: FakeClock) -> None:
    await get(DeadlineMiddleware(inner, clock=clock), {"x-request-timeout-ms": "1500"})
    assert current_deadline() is None


async def test_an_enclosing_earlier_deadline_is_kept(inner: Recorder, clock: FakeClock) -> None:
    with deadline_after(0.5, clock=clock):
        await get(DeadlineMiddleware(inner, clock=clock), {"x-request-timeout-ms": "1500"})
    assert inner.remaining == 0.5


@pytest.mark.parametrize(
    "headers",
    [
        {"x-request-timeout-ms": "0"},
        {"x-request-timeout-ms": "-0"},
        {"x-request-timeout-ms": "-5"},
        {"x-request-timeout-ms": "-0.5"},
        {"grpc-timeout": "0S"},
    ],
)
async def test_a_spent_budget_gets_504_without_calling_the_app(
    inner: Recorder, headers: dict[str, str]
) -> None:
    app = DeadlineMiddleware(inner)
    response = await get(app, headers)
    assert (response.status_code, inner.calls, app.expired) == (504, 0, 1)


async def test_an_enclosing_expired_deadline_gets_504(inner: Recorder, clock: FakeClock) -> None:
    with deadline_after(1.0, clock=clock):
        clock.advance(2.0)
        response = await get(DeadlineMiddleware(inner, clock=clock),
                             {"x-request-timeout-ms": "1500"})
    assert (response.status_code, inner.calls) == (504, 0)


async def test_a_negative_budget_is_spent_not_malformed(inner: Recorder) -> None:
    app = DeadlineMiddleware(inner)
    await get(app, {"x-request-timeout-ms": "-5"})
    assert (app.expired, app.malformed) == (1, 0)


async def test_a_spent_budget_sends_a_deadline_exceeded_event(
    inner: Recorder, recorder: RecordingListener
) -> None:
    app = DeadlineMiddleware(inner, listeners=[recorder], name="orders")
    await get(app, {"x-request-timeout-ms": "0"})
    assert recorder.of(DeadlineExceeded) == [
        DeadlineExceeded(policy="deadline", name="orders", timeout=0.0)
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-request-timeout-ms", "abc"),
        ("x-request-timeout-ms", "+5"),
        ("x-request-timeout-ms", "1e3"),
        ("x-request-timeout-ms", "0x10"),
        ("x-request-timeout-ms", "1_000"),
        ("x-request-timeout-ms", "-abc"),
        ("x-request-timeout-ms", "9" * 40),
        ("x-request-timeout-ms", "1e309"),
        ("x-request-timeout-ms", "nan"),
        ("x-request-timeout-ms", ""),
        ("grpc-timeout", "5x"),
        ("grpc-timeout", "123456789S"),
        ("grpc-timeout", "-1S"),
    ],
)
async def test_a_malformed_header_is_ignored_and_counted(
    inner: Recorder, name: str, value: str
) -> None:
    seen: list[tuple[str, bytes]] = []
    app = DeadlineMiddleware(inner, on_malformed=lambda n, v: seen.append((n, v)))
    response = await get(app, {name: value})
    assert (response.status_code, inner.remaining, app.malformed) == (200, None, 1)
    assert seen == [(name, value.encode())]


async def test_a_malformed_timeout_ms_falls_back_to_grpc_timeout(
    inner: Recorder, clock: FakeClock
) -> None:
    app = DeadlineMiddleware(inner, clock=clock)
    await get(app, {"x-request-timeout-ms": "soon", "grpc-timeout": "2S"})
    assert (inner.remaining, app.malformed) == (2.0, 1)


async def test_a_malformed_header_falls_back_to_the_default_timeout(
    inner: Recorder, clock: FakeClock
) -> None:
    await get(DeadlineMiddleware(inner, default_timeout=4.0, clock=clock),
              {"x-request-timeout-ms": "abc"})
    assert inner.remaining == 4.0


async def test_a_failing_on_malformed_callback_does_not_fail_the_request(
    inner: Recorder,
) -> None:
    def explode(name: str, value: bytes) -> None:
        raise RuntimeError("boom")

    response = await get(DeadlineMiddleware(inner, on_malformed=explode),
                         {"x-request-timeout-ms": "abc"})
    assert response.status_code == 200


async def test_non_http_scopes_pass_through_without_a_deadline(inner: Recorder) -> None:
    app = DeadlineMiddleware(inner, default_timeout=1.0)

    async def receive() -> dict[str, str]:
        return {"type": "lifespan.startup"}

    async def send(message: object) -> None:
        pass

    await app({"type": "lifespan"}, receive, send)
    assert (inner.calls, inner.remaining) == (1, None)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_timeout": 0}, "max_timeout"),
        ({"max_timeout": -1.0}, "max_timeout"),
        ({"default_timeout": 0}, "default_timeout"),
        ({"on_malformed": "log"}, "on_malformed"),
    ],
)
def test_bad_settings_raise_configuration_error_naming_the_field(
    inner: Recorder, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigurationError, match=rf"DeadlineMiddleware\.{field} "):
        DeadlineMiddleware(inner, **kwargs)  # type: ignore[arg-type]


async def _answer(status: int, exhausted: bool) -> httpx.Response:
    from fournines._propagation import mark_retries_exhausted

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if exhausted:
            mark_retries_exhausted()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    transport = httpx.ASGITransport(app=DeadlineMiddleware(app))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get("/")


async def test_failure_after_exhausted_retries_carries_retry_pushback() -> None:
    assert (await _answer(503, exhausted=True)).headers["x-no-retry"] == "1"


async def test_failure_without_exhausted_retries_has_no_pushback() -> None:
    assert "x-no-retry" not in (await _answer(503, exhausted=False)).headers


async def test_success_never_carries_pushback() -> None:
    assert "x-no-retry" not in (await _answer(200, exhausted=True)).headers
