"""The supervisor's own HTTP endpoint (``--metrics-bind``): ``/metrics``, ``/livez``, ``/readyz``.

Served from the supervisor's one-threaded loop, so an answer proves the loop runs:
``/livez`` is 200 for as long as the supervisor loop is turning (also while it
restarts crashed workers or drains), and only a blocked or dead supervisor fails
it. ``/readyz`` is 200 while at least one worker is ready and the supervisor is
not stopping. ``/metrics`` is the Prometheus text format of the supervisor's
counters and gauges (see :func:`render`).

Untrusted clients: a request is read up to 8 KiB within a few seconds, anything
else is closed; only ``GET`` (and ``HEAD``) of the three paths are answered.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterable

_MAX_REQUEST = 8192
# A client that sends no complete request head within this many seconds is dropped.
REQUEST_TIMEOUT = 5.0
# More open probe connections than this and new ones are closed at once (the loop
# serves the workers first; a flood of scrapers must not take its descriptors).
MAX_CONNECTIONS = 64

Sample = tuple[str, dict[str, str], float]


class ProbeConnection:
    """One client connection to the supervisor's endpoint: read one request, answer, close."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.buffer = b""
        self.deadline = time.monotonic() + REQUEST_TIMEOUT

    def read(self) -> tuple[str, str] | None:
        """``(method, path)`` once the request head is in; ``("", "")`` for a bad one."""
        try:
            data = self.sock.recv(_MAX_REQUEST)
        except BlockingIOError:
            return None
        except OSError:
            return ("", "")
        if not data:
            return ("", "")
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer and b"\n\n" not in self.buffer:
            return ("", "") if len(self.buffer) >= _MAX_REQUEST else None
        line = self.buffer.split(b"\n", 1)[0].decode("latin-1").strip()
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return ("", "")
        return parts[0], parts[1].split("?", 1)[0]

    def reply(self, status: int, body: str, content_type: str, *, head: bool = False) -> None:
        """Send the whole answer (it is small) and close."""
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
                  405: "Method Not Allowed", 503: "Service Unavailable"}[status]
        payload = body.encode()
        head_bytes = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
                      f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n").encode()
        with contextlib.suppress(OSError):
            self.sock.send(head_bytes if head else head_bytes + payload)
        self.close()

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(OSError):
            self.sock.close()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(families: Iterable[tuple[str, str, str, list[Sample]]]) -> str:
    """Prometheus text format (0.0.4) of ``(name, type, help, samples)`` families."""
    lines: list[str] = []
    for name, kind, help_text, samples in families:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for sample, labels, value in samples:
            label_text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
            number = str(int(value)) if float(value).is_integer() else repr(float(value))
            lines.append(f"{sample}{{{label_text}}} {number}" if label_text
                         else f"{sample} {number}")
    return "\n".join(lines) + "\n"
