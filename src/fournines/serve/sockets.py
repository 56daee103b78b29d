"""The listening sockets the supervisor binds once and every worker shares.

A bind is ``HOST:PORT`` (``[::1]:8000`` for IPv6), ``unix:PATH``, or ``fd://N``
(a socket already open as file descriptor N, inherited from whoever started the
supervisor). With no bind at all, sockets passed by systemd socket activation
(``LISTEN_PID`` is this process, ``LISTEN_FDS`` counts them from fd 3) are used,
else ``127.0.0.1:8000``.

Every worker accepts on the same socket, so connections queued in its backlog
survive any one worker's exit: no ``SO_REUSEPORT``, whose per-socket queues lose
their connections when that socket closes (``net.ipv4.tcp_migrate_req`` is 0 by
default).
"""

from __future__ import annotations

import os
import socket
import stat

from .._errors import ConfigurationError

__all__ = ["bind_sockets", "describe", "systemd_sockets"]

_BACKLOG = 2048
_SD_LISTEN_FDS_START = 3


def systemd_sockets() -> list[socket.socket]:
    """The sockets systemd passed to this process (none unless ``LISTEN_PID`` is ours)."""
    pid = os.environ.get("LISTEN_PID", "")
    count = os.environ.get("LISTEN_FDS", "")
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    # Read once: a child must not take our sockets for its own activation.
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return [socket.socket(fileno=fd)
            for fd in range(_SD_LISTEN_FDS_START, _SD_LISTEN_FDS_START + int(count))]


def bind_sockets(binds: list[str]) -> list[socket.socket]:
    """Bind (or adopt) one listening socket per entry of ``binds``.

    Raises :class:`~fournines.ConfigurationError` for a malformed entry and
    ``OSError`` when the address cannot be bound (already in use, say).
    """
    if not binds:
        activated = systemd_sockets()
        return activated or bind_sockets(["127.0.0.1:8000"])
    sockets: list[socket.socket] = []
    try:
        for bind in binds:
            sockets.append(_bind_one(bind))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_one(bind: str) -> socket.socket:
    if bind.startswith("fd://"):
        text = bind[len("fd://"):]
        if not text.isdigit():
            raise ConfigurationError(f"bind {bind!r}: fd://N needs a file descriptor number")
        try:
            sock = socket.socket(fileno=int(text))
        except OSError as exc:
            raise ConfigurationError(f"bind {bind!r}: not an open socket ({exc})") from None
        if sock.type != socket.SOCK_STREAM:
            raise ConfigurationError(f"bind {bind!r}: not a stream socket")
        sock.listen(_BACKLOG)  # harmless if already listening; needed if only bound
        return sock
    if bind.startswith("unix:"):
        path = bind[len("unix:"):]
        if not path:
            raise ConfigurationError(f"bind {bind!r}: unix:PATH needs a path")
        if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket file from an earlier run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(_BACKLOG)
        except BaseException:
            sock.close()
            raise
        return sock
    host, port = _host_port(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR only, to rebind past TIME_WAIT after a restart; never SO_REUSEPORT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _host_port(bind: str) -> tuple[str, int]:
    if bind.startswith("["):
        host, sep, rest = bind[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep:
            port_text = ""
    else:
        host, _, port_text = bind.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigurationError(
            f"bind {bind!r} must be HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N")
    return host, int(port_text)


def describe(sock: socket.socket) -> str:
    """A bound socket's address as a person reads it (``http://127.0.0.1:8000``)."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{address}"
    if sock.family == socket.AF_INET6:
        return f"http://[{address[0]}]:{address[1]}"
    return f"http://{address[0]}:{address[1]}"
