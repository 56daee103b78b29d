"""The floor of any HTTP response here: a bare uvloop protocol answering each read with
fixed 503 bytes, no parsing at all. ``bench/asgi_overload.py --reject-cost`` runs it
beside the real servers, so a rejection's cost is read against what one read and one
write cost on this machine.

Usage: python bench/_raw_responder.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

_ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n"
           b"retry-after: 1\r\n\r\n")


class _Responder(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(_ANSWER)


async def _serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Responder, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(_serve(int(sys.argv[1])))
