"""Both transport shells behind one async test interface, so one spec runs against each.

``shell.client(**kwargs)`` builds an ``httpx.AsyncClient`` over
``AsyncResilientTransport`` or an ``httpx.Client`` over ``ResilientTransport``
with the same keyword arguments; the sync client's calls run in a worker thread
(``asyncio.to_thread`` copies the context, so the current deadline goes along).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from fournines.client import (
    AsyncBalancingTransport,
    AsyncResilientTransport,
    BalancingTransport,
    ResilientTransport,
)

SHELLS = ["async", "sync"]


class ShellClient:
    """One client of either shell, called the same way from an async test."""

    def __init__(self, client: httpx.AsyncClient | httpx.Client) -> None:
        self.raw = client

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if isinstance(self.raw, httpx.AsyncClient):
            return await self.raw.request(method, url, **kwargs)
        return await asyncio.to_thread(self.raw.request, method, url, **kwargs)

    async def send(self, request: httpx.Request) -> httpx.Response:
        if isinstance(self.raw, httpx.AsyncClient):
            return await self.raw.send(request)
        return await asyncio.to_thread(self.raw.send, request)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", url, **kwargs)

    async def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PUT", url, **kwargs)

    async def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PATCH", url, **kwargs)

    @asynccontextmanager
    async def held(self, url: str) -> AsyncIterator[httpx.Response]:
        """A streamed GET whose body is read and closed when the block ends."""
        if isinstance(self.raw, httpx.AsyncClient):
            async with self.raw.stream("GET", url) as response:
                yield response
                await response.aread()
            return
        manager = self.raw.stream("GET", url)
        response = await asyncio.to_thread(manager.__enter__)
        try:
            yield response
            await asyncio.to_thread(response.read)
        finally:
            await asyncio.to_thread(manager.__exit__, None, None, None)

    async def aclose(self) -> None:
        if isinstance(self.raw, httpx.AsyncClient):
            await self.raw.aclose()
        else:
            self.raw.close()


class Shell:
    """Builds clients of one shell (``"async"`` or ``"sync"``) and closes them at the end."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.is_async = kind == "async"
        self.clients: list[ShellClient] = []

    def transport(self, inner: Any = None, **kwargs: Any) -> Any:
        cls = AsyncResilientTransport if self.is_async else ResilientTransport
        return cls(inner, **kwargs)

    def balancing(self, endpoints: Any, **kwargs: Any) -> Any:
        cls = AsyncBalancingTransport if self.is_async else BalancingTransport
        return cls(endpoints, **kwargs)

    def wrap(self, transport: Any) -> ShellClient:
        raw: httpx.AsyncClient | httpx.Client = (
            httpx.AsyncClient(transport=transport, timeout=10.0) if self.is_async
            else httpx.Client(transport=transport, timeout=10.0))
        client = ShellClient(raw)
        self.clients.append(client)
        return client

    def client(self, inner: Any = None, **kwargs: Any) -> tuple[ShellClient, Any]:
        transport = self.transport(inner, **kwargs)
        return self.wrap(transport), transport

    def one_shot_body(self, *chunks: bytes) -> Any:
        """A request body from a generator: it can be read once."""
        if self.is_async:
            async def agen() -> AsyncIterator[bytes]:
                for chunk in chunks:
                    yield chunk
            return agen()

        def gen() -> Iterator[bytes]:
            yield from chunks
        return gen()

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()
