"""The supervisor's control socket: ``fournines serve --reload`` and ``--status``.

With ``run(..., control="/run/myservice.sock")`` the supervisor listens on a unix
socket that only its user may use (mode 0600), so an operator or a deploy script
reloads or inspects it without looking for PIDs. One request per connection, one
JSON line each way:

- ``{"command": "status"}`` answers at once: the supervisor's PID, the workers
  (PID, generation, ready, stopping, requests served) and whether a reload runs;
- ``{"command": "reload"}`` starts a rolling reload (or joins the one that
  follows a running reload) and answers when it has ended:
  ``{"ok": true, ...}`` once every worker runs the new code, ``{"ok": false,
  "message": ...}`` when it was aborted (the old workers keep serving).

A socket file left by a supervisor that died is replaced; one that a running
supervisor answers on is refused (two supervisors would fight over it), and so
is a path that exists but is not a socket (it is never deleted).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from typing import Any

from .._errors import FourNinesError

__all__ = ["ControlError", "reload", "status"]

_MAX_LINE = 65536


class ControlError(FourNinesError, RuntimeError):
    """No supervisor answered on the control socket, or it refused the request."""


def status(path: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """The supervisor's state, as the control socket at ``path`` reports it."""
    return _request(path, "status", timeout)


def reload(path: str, *, timeout: float = 300.0) -> dict[str, Any]:
    """Reload the supervisor at ``path`` and wait for the outcome.

    Returns the answer (``answer["ok"]`` is whether every worker now runs the new
    code; ``answer["message"]`` says what happened).
    """
    return _request(path, "reload", timeout)


def _request(path: str, command: str, timeout: float) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ControlError(f"no supervisor answers on {path}: "
                               f"{exc.strerror or exc}") from None
        sock.sendall(json.dumps({"command": command}).encode() + b"\n")
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise ControlError(f"the supervisor on {path} did not answer within "
                               f"{timeout:g}s") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"the supervisor on {path} gave no answer") from None
    if not isinstance(answer, dict):
        raise ControlError(f"the supervisor on {path} gave no answer")
    return answer


def listen(path: str) -> socket.socket:
    """The control socket at ``path`` (0600), replacing a stale one; raises ControlError."""
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            # Never delete what is not a socket: the path is probably a mistake.
            raise ControlError(f"control socket {path} exists and is not a socket; "
                               "refusing to replace it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # nobody answers: left by a supervisor that died
            else:
                raise ControlError(f"control socket {path} is in use by a running "
                                   "supervisor")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes the socket 0600 from its creation: no window where others may connect.
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot create control socket {path}: {exc.strerror or exc}") \
            from None
    finally:
        os.umask(old)
    sock.listen(16)
    sock.setblocking(False)
    return sock


class Connection:
    """One client of the control socket, read without blocking the supervisor."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        sock.setblocking(False)

    def read(self) -> dict[str, Any] | None:
        """The request once its line is complete (``{}`` for a bad one), else None."""
        try:
            chunk = self.sock.recv(4096)
        except BlockingIOError:
            return None
        except OSError:
            chunk = b""
        self.buffer += chunk
        if not chunk or b"\n" in self.buffer or len(self.buffer) > _MAX_LINE:
            try:
                request = json.loads(self.buffer.partition(b"\n")[0])
            except ValueError:
                return {}
            return request if isinstance(request, dict) else {}
        return None

    def reply(self, answer: dict[str, Any]) -> None:
        """Send ``answer`` and close (a client that left is no error)."""
        with contextlib.suppress(OSError):
            self.sock.setblocking(True)
            self.sock.settimeout(1.0)
            self.sock.sendall(json.dumps(answer).encode() + b"\n")
        self.sock.close()
