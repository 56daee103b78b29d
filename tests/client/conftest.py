"""Two downstream apps under real uvicorn, shared by the client tests of the session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from ..asgi._uvicorn import UvicornProcess
from ._helpers import control
from ._shells import SHELLS, Shell


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[UvicornProcess, UvicornProcess]]:
    # Requests left hanging by the specs must not hold the shutdown for their whole delay.
    args = ["--timeout-graceful-shutdown", "1"]
    a = UvicornProcess("tests.client.apps.downstream:app", ready_path="/seen", args=args).start()
    try:
        b = UvicornProcess("tests.client.apps.downstream:app", ready_path="/seen",
                           args=args).start()
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


@pytest.fixture
def host_a(servers: tuple[UvicornProcess, UvicornProcess]) -> str:
    """The first downstream, answering ``ok``, with nothing seen yet."""
    control(servers[0].url, mode="ok")
    return servers[0].url


@pytest.fixture
def host_b(servers: tuple[UvicornProcess, UvicornProcess]) -> str:
    """The second downstream, answering ``ok``, with nothing seen yet."""
    control(servers[1].url, mode="ok")
    return servers[1].url


@pytest.fixture(params=SHELLS)
async def shell(request: pytest.FixtureRequest) -> AsyncIterator[Shell]:
    """Each transport shell in turn: the async one, then the sync one."""
    made = Shell(request.param)
    yield made
    await made.close()
