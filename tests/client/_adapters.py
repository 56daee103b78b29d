"""The requests adapter and the aiohttp middleware behind one async test interface.

``Adapter(kind).client(**kwargs)`` builds a ``requests.Session`` with a mounted
``ResilientAdapter``, or an ``aiohttp.ClientSession`` with a ``ResilientMiddleware``,
from the same keyword arguments; requests' calls run in a worker thread
(``asyncio.to_thread`` copies the context, so the current deadline goes along).
Each call answers ``Answer(status, text, headers)`` or raises the client's own error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import requests

from fournines.client import ResilientAdapter, ResilientMiddleware

KINDS = ["requests", "aiohttp"]


@dataclass
class Answer:
    status: int
    text: str
    headers: dict[str, str]


class AdapterClient:
    """One client of either kind, called the same way from an async test."""

    def __init__(self, kind: str, **kwargs: Any) -> None:
        self.kind = kind
        self.session: requests.Session | aiohttp.ClientSession
        if kind == "requests":
            self.adapter: Any = ResilientAdapter(**kwargs)
            session = requests.Session()
            session.mount("http://", self.adapter)
            self.session = session
        else:
            self.adapter = ResilientMiddleware(**kwargs)
            self.session = aiohttp.ClientSession(middlewares=[self.adapter])
        self.transport = self.adapter.transport

    async def request(self, method: str, url: str, **kwargs: Any) -> Answer:
        session = self.session
        if isinstance(session, requests.Session):
            def call() -> Answer:
                response = session.request(method, url, timeout=10.0, **kwargs)
                return Answer(response.status_code, response.text, dict(response.headers))
            return await asyncio.to_thread(call)
        async with session.request(method, url, **kwargs) as response:
            return Answer(response.status, await response.text(), dict(response.headers))

    @asynccontextmanager
    async def held(self, url: str) -> AsyncIterator[int]:
        """A GET whose answer is held open (body unread) until the block ends; its status."""
        session = self.session
        if isinstance(session, requests.Session):
            response = await asyncio.to_thread(session.get, url, stream=True, timeout=10.0)
            try:
                yield response.status_code
                await asyncio.to_thread(lambda: response.content)
            finally:
                response.close()
            return
        async with session.get(url) as answer:
            yield answer.status
            await answer.read()

    async def get(self, url: str, **kwargs: Any) -> Answer:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> Answer:
        return await self.request("POST", url, **kwargs)

    async def close(self) -> None:
        if isinstance(self.session, requests.Session):
            self.session.close()
        else:
            await self.session.close()


class Adapter:
    """Builds clients of one kind (``"requests"`` or ``"aiohttp"``); closes them at the end."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.clients: list[AdapterClient] = []
        if kind == "requests":
            self.base_error: type[Exception] = requests.RequestException
            self.connection_error: type[Exception] = requests.ConnectionError
            self.timeout_error: type[Exception] = requests.Timeout
            self.payload_error: type[Exception] = requests.exceptions.ChunkedEncodingError
        else:
            self.base_error = aiohttp.ClientError
            self.connection_error = aiohttp.ClientConnectionError
            self.timeout_error = aiohttp.ServerTimeoutError
            self.payload_error = aiohttp.ClientPayloadError

    def client(self, **kwargs: Any) -> AdapterClient:
        made = AdapterClient(self.kind, **kwargs)
        self.clients.append(made)
        return made

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


def fallback_hook(kind: str, text: str, errors: list[BaseException]) -> Any:
    """A fallback hook of the kind's own shape, answering 200 ``text``, keeping each error."""
    if kind == "requests":
        def answer_requests(request: requests.PreparedRequest,
                            error: BaseException) -> requests.Response:
            errors.append(error)
            response = requests.Response()
            response.status_code = 200
            response._content = text.encode()
            response.encoding = "utf-8"
            return response
        return answer_requests

    import httpx

    def answer_aiohttp(request: Any, error: BaseException) -> httpx.Response:
        errors.append(error)
        return httpx.Response(200, text=text)
    return answer_aiohttp
