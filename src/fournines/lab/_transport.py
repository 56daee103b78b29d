"""A lean HTTP/1.1 keep-alive transport for httpx, used by both variants of the lab's fleet.

httpx's default transport (httpcore + h11 + anyio) costs about 2.4 ms of CPU per
request (``bench/RESULTS.md``, "Outgoing calls"); the gateway makes two calls per
page, so on a 2-core machine the fleet would be bound by its HTTP client, not by
the capacity the lab models. This transport speaks just the HTTP/1.1 the lab's
services need (requests with small bodies; responses with ``content-length`` or
chunked bodies) on asyncio streams, and maps failures to httpx's exceptions so
that :class:`~fournines.client.AsyncResilientTransport` classifies them as usual:
a refused connection is ``ConnectError``, an expired ``read`` timeout is
``ReadTimeout``, a connection that breaks mid-answer is ``RemoteProtocolError``.
"""

from __future__ import annotations

import asyncio

import httpx

__all__ = ["HostRouter", "LeanTransport"]


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class _Stale(Exception):
    """A reused keep-alive connection was closed by the server before answering."""


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over asyncio streams with per-origin keep-alive pools (see the module docs).

    :param max_idle: idle connections kept per origin.
    """

    def __init__(self, max_idle: int = 256) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._max_idle = max_idle

    async def _connect(self, host: str, port: int, timeout: float | None) -> _Connection:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"connect to {host}:{port}: {exc}") from exc
        return _Connection(reader, writer)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read the whole response."""
        url = request.url
        host = url.host
        port = url.port or 80
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        key = (host, port)
        idle = self._idle.setdefault(key, [])
        body = await request.aread()
        target = url.raw_path.decode("ascii")
        lines = [f"{request.method} {target} HTTP/1.1"]
        for name, value in request.headers.raw:
            lines.append(f"{name.decode('latin-1')}: {value.decode('latin-1')}")
        if body and "content-length" not in request.headers:
            lines.append(f"content-length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        for _ in range(2):
            conn = None
            while idle and conn is None:
                candidate = idle.pop()
                if candidate.usable():
                    conn = candidate
                else:
                    candidate.close()
            reused = conn is not None
            if conn is None:
                conn = await self._connect(host, port, timeouts.get("connect"))
            try:
                async with asyncio.timeout(read_timeout):
                    status, headers, content, keep = await self._exchange(conn, head, reused)
            except _Stale:
                conn.close()
                continue  # the server closed an idle connection: once more, on a new one
            except TimeoutError as exc:
                conn.close()
                raise httpx.ReadTimeout(f"no answer from {host}:{port} in time",
                                        request=request) from exc
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError, IndexError) as exc:
                conn.close()
                raise httpx.RemoteProtocolError(f"{host}:{port}: {type(exc).__name__}: {exc}",
                                                request=request) from exc
            except BaseException:
                conn.close()
                raise
            if keep and len(idle) < self._max_idle:
                idle.append(conn)
            else:
                conn.close()
            return httpx.Response(status, headers=headers, content=content,
                                  request=request, extensions={"http_version": b"HTTP/1.1"})
        raise httpx.RemoteProtocolError(f"{host}:{port} closed the connection", request=request)

    @staticmethod
    async def _exchange(conn: _Connection, head: bytes, reused: bool) -> tuple[
            int, list[tuple[str, str]], bytes, bool]:
        conn.writer.write(head)
        reader = conn.reader
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            if reused and (not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial):
                raise _Stale from exc
            raise
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: list[tuple[str, str]] = []
        length: int | None = None
        chunked = False
        keep = True
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            value = value.strip()
            lower = name.strip().lower()
            if lower == "content-length":
                length = int(value)
            elif lower == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
                continue  # the body is handed to httpx decoded
            elif lower == "connection" and value.lower() == "close":
                keep = False
            headers.append((name.strip(), value))
        if chunked:
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            content = b"".join(parts)
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            headers.append(("content-length", str(len(content))))
        elif length is not None:
            content = await reader.readexactly(length) if length else b""
        else:
            content = await reader.read()  # HTTP/1.1 without a length: until close
            keep = False
        return status, headers, content, keep

    async def aclose(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class HostRouter(httpx.AsyncBaseTransport):
    """Sends each request to the transport of its host name (``http://order/...``).

    The gateway calls two services found through the registry: one balancer each,
    under one resilient transport whose breakers stay per service.
    """

    def __init__(self, routes: dict[str, httpx.AsyncBaseTransport]) -> None:
        self._routes = routes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Hand ``request`` to its host's transport."""
        try:
            transport = self._routes[request.url.host]
        except KeyError:
            raise httpx.ConnectError(f"no route to {request.url.host}",
                                     request=request) from None
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        """Close every route."""
        for transport in self._routes.values():
            await transport.aclose()
