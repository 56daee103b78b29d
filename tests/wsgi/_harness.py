"""A plain PEP 3333 harness: call a WSGI app as a server would, no server involved."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any
from wsgiref.util import setup_testing_defaults


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    header_list: list[tuple[str, str]] = field(default_factory=list)


def environ_for(path: str = "/", *, method: str = "GET",
                headers: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path,
                               "QUERY_STRING": query, "REMOTE_ADDR": "127.0.0.1",
                               "REMOTE_PORT": "50000", "wsgi.input": io.BytesIO(b"")}
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        environ[key] = value
    environ.update(extra)
    setup_testing_defaults(environ)
    return environ


def call(app: Any, path: str = "/", *, method: str = "GET",
         headers: dict[str, str] | None = None, **extra: Any) -> Answer:
    """Serve one request: start_response, iterate the body, close it (as servers must)."""
    environ = environ_for(path, method=method, headers=headers, **extra)
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, header_list: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        started.append((status, header_list))
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, header_list = started[-1]
    return Answer(int(status[:3]), {k.lower(): v for k, v in header_list}, body, header_list)


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("content-type", "text/plain"), ("content-length", "5")])
    return [b"hello"]
