"""Helpers of the discovery tests: waiting for a condition, a raw etcd client, a TCP relay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aetcd

from fournines.discovery import Instance, RegistrationChanged
from fournines.testing import RecordingListener

from .._servers import require_binary


async def eventually(condition: Callable[[], object], timeout: float = 20.0,
                     what: str = "the condition") -> None:
    """Wait until ``condition()`` is true (generous timeout: never a timing assertion)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not become true within {timeout}s")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def etcd_client(url: str) -> AsyncIterator[Any]:
    """A plain aetcd client on ``url`` (what an operator's etcdctl would do)."""
    host, port = url.removeprefix("http://").split(":")
    client = aetcd.Client(host=host, port=int(port), timeout=5)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


class Relay:
    """A TCP relay to ``port`` on loopback that can cut every connection (a network outage)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.port = 0
        self.cut_off = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """Drop every connection and refuse new ones until :meth:`restore`."""
        self.cut_off = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.cut_off = False

    async def aclose(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


def payment(n: int, **kwargs: Any) -> Instance:
    """Instance ``p<n>`` of service ``payment`` at ``http://127.0.0.1:<8000 + n>``."""
    return Instance(service="payment", id=f"p{n}", address=f"http://127.0.0.1:{8000 + n}",
                    **kwargs)


def kinds(recorder: RecordingListener) -> list[str]:
    """The kinds of the ``RegistrationChanged`` events recorded, in order."""
    return [e.kind for e in recorder.of(RegistrationChanged)]


def etcdctl(url: str, *args: str) -> str:
    """Run the real ``etcdctl`` (v3 API, Debian ``etcd-client``) on ``url``; its output."""
    binary = require_binary("etcdctl", "etcd-client")
    done = subprocess.run([binary, "--endpoints", url, *args], capture_output=True, text=True,
                          env={**os.environ, "ETCDCTL_API": "3"}, timeout=30, check=True)
    return done.stdout


def etcdctl_revision(url: str) -> int:
    """The store's current revision, as ``etcdctl endpoint status`` reports it."""
    status = json.loads(etcdctl(url, "endpoint", "status", "-w", "json"))
    return int(status[0]["Status"]["header"]["revision"])
