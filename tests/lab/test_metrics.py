"""Specification of the lab's scraper: reading the protected fleet's ``/metrics`` while it runs.

The services here are real asyncio HTTP servers on loopback ports, started by each test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from fournines.lab.metrics import Scraper

GOOD = b'fournines_retries_total{name="x"} 4.0\n'


@asynccontextmanager
async def metrics_server(answers: list[tuple[int, bytes]]) -> AsyncIterator[str]:
    """Answers the n-th request with ``answers[n]`` (status, body), then the last one."""
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                status, body = answers[min(served, len(answers) - 1)]
                served += 1
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n\r\n"
                             .encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def test_an_answer_that_is_not_metrics_is_a_missed_scrape_not_the_end_of_scraping() -> None:
    # A half-started or draining service can answer /metrics with an error page; the
    # scraper must count it as missed and go on, not die and lose the rest of the run.
    answers = [(503, b'{"error": "draining"}'), (200, GOOD)]
    async with metrics_server(answers) as url, httpx.AsyncClient(timeout=2) as client:
        scraper = Scraper({"order": url})
        missed = await scraper.scrape(client, 0.0)
        read = await scraper.scrape(client, 1.0)
    assert scraper.errors == 1
    assert missed.services == {} and missed.retries == 0
    assert read.services == {"order": {"retries": 4.0, "sheds": 0.0, "openings": 0.0,
                                       "fallbacks": 0.0}}
