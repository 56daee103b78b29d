"""Hostile ``x-request-timeout-ms`` values against a ``protect()``-ed app under serve() (issue 13).

One rule: ASCII digits with an optional fraction are the budget in milliseconds
(capped by ``max_timeout``, 30 s); a leading ``-`` or a value of 0 is a budget
already spent, answered 504 without running the app; anything else (a ``+``, an
exponent, hex, more than 32 characters, non-ASCII digits) is malformed: ignored
as if absent and counted in ``fournines_malformed_headers_total``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import httpx
import pytest

from ..asgi._uvicorn import ServedModule

APP = "tests.asgi.apps.protected_app"
MALFORMED = re.compile(
    r'^fournines_malformed_headers_total\{header="x-request-timeout-ms",name="deadline"\} '
    r"(\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def server() -> Iterator[ServedModule]:
    with ServedModule(APP) as served:
        yield served


def _malformed_count(server: ServedModule) -> float:
    match = MALFORMED.search(httpx.get(server.url + "/metrics").text)
    return 0.0 if match is None else float(match[1])


def _budget(server: ServedModule, value: bytes) -> httpx.Response:
    return httpx.get(server.url + "/budget", headers=[(b"x-request-timeout-ms", value)])


@pytest.mark.parametrize("value", [b"0", b"-0", b"-5", b"-0.5", b"0.0", b"-" + b"9" * 31])
def test_a_zero_or_negative_budget_is_answered_504_at_once(
    server: ServedModule, value: bytes
) -> None:
    before = _malformed_count(server)
    response = _budget(server, value)
    assert (response.status_code, response.headers["content-type"]) == (
        504, "application/problem+json")
    assert _malformed_count(server) == before


@pytest.mark.parametrize(
    ("value", "budget_ms"),
    [(b"1500", "1500"), (b"2500.5", "2500"), (b"9" * 31, "30000")],
)
def test_a_decimal_budget_is_the_requests_deadline(
    server: ServedModule, value: bytes, budget_ms: str
) -> None:
    response = _budget(server, value)
    assert (response.status_code, response.text) == (200, budget_ms)


def test_whitespace_around_the_budget_is_not_part_of_it(server: ServedModule) -> None:
    # httpx refuses to send it: a raw request, as a hostile client would write it.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /budget HTTP/1.1\r\nhost: test\r\nconnection: close\r\n"
                     b"x-request-timeout-ms: \t 5000 \t\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n5000")


@pytest.mark.parametrize(
    "value",
    [
        b"+5", b"1e3", b"0x10", b"9" * 40, "\u0665".encode(), "\uff15".encode(),
        b"inf", b"nan", b"1_000", b"5.", b".5", b"-", b"--5", b"-abc", b"5 5", b"abc",
    ],
)
def test_a_malformed_budget_is_ignored_and_counted(server: ServedModule, value: bytes) -> None:
    before = _malformed_count(server)
    response = _budget(server, value)
    assert (response.status_code, response.text) == (200, "none")
    assert _malformed_count(server) == before + 1
