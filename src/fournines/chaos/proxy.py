"""A TCP fault proxy that speaks Toxiproxy's HTTP API (``fournines chaos proxy``).

Existing Toxiproxy clients work against it unchanged: the same endpoints, JSON shapes,
status codes and error bodies (``{"error": ..., "status": ...}``) as Toxiproxy 2.x, and
the same toxics (see :mod:`fournines.chaos._toxics`). Everything runs on one asyncio loop.

::

    async with FaultProxy(port=0) as chaos:          # API on 127.0.0.1, ephemeral port
        httpx.post(f"{chaos.api_url}/proxies", json={
            "name": "redis", "listen": "127.0.0.1:26379", "upstream": "127.0.0.1:6379"})

Deliberate differences, each for safety: the API listens on 127.0.0.1 unless told
otherwise; proxies listen on loopback addresses only unless ``allow_listen`` names more
(a proxy created without ``listen`` gets ``127.0.0.1:0``; Toxiproxy: all interfaces);
``allow_upstream`` limits where proxies may connect; ``token`` makes the API answer only
requests with ``Authorization: Bearer <token>``; request bodies are capped at 10 MiB.
Refusals are Toxiproxy-shaped errors: 403 naming ``listen`` or ``upstream``, 401 for the
token. Ends of stream are passed on as half-closes, so a client may shut down its sending
side and still read the answer.

Upstream patterns (``allow_upstream``, ``--allow-upstream``) are ``HOST:PORT``: HOST is an
IP address, a CIDR (``10.0.0.0/8``), a host name (matched by name, case-insensitively) or
``*``; PORT is a number, a range (``8000-8999``) or ``*``; IPv6 goes in brackets
(``[fd00::/8]:5432``). An upstream given by name that no name pattern matches is resolved,
when the proxy is created and again at each connection, and the proxy connects only to a
resolved address that an address pattern allows, so a name cannot smuggle in an address.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import random
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from .. import __version__
from .._errors import ConfigurationError
from ._toxics import (
    ApiError,
    LinkToxic,
    Piece,
    Toxic,
    ToxicClose,
    parse_new_toxic,
    parse_toxic_update,
    run_stage,
)

__all__ = ["DEFAULT_API_PORT", "FaultProxy"]

DEFAULT_API_PORT = 8474
"""The port of the HTTP API when none is given: Toxiproxy's default, so its clients find it."""
_READ_SIZE = 32 * 1024
_QUEUE_CHUNKS = 256  # per link: enough to keep latency pipelined, bounded for memory
_MAX_BODY = 10 * 1024 * 1024
_HEADER_TIMEOUT = 15.0  # Toxiproxy's read timeout
_IDLE_TIMEOUT = 60.0
_CONNECT_TIMEOUT = 10.0
_CLOSE_GRACE = 2.0
_DISCARD_MAX = 64 * 1024  # an unauthorised body up to this is read, so the 401 is not reset away
_MIN_TOKEN = 16

_log = logging.getLogger(__name__)


def _split_hostport(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ApiError(f"{what} {address!r} is not host:port", 400)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _resolve(host: str, port: int) -> str:
    """``host:port`` with the host resolved to an address (IPv4 first, as Go resolves)."""
    if not host:
        return _join_hostport("0.0.0.0", port)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        loop = asyncio.get_running_loop()
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                infos = await loop.getaddrinfo(host, port, family=family,
                                               type=socket.SOCK_STREAM)
            except OSError:
                continue
            if infos:
                return _join_hostport(str(infos[0][4][0]), port)
        raise ApiError(f"listen tcp {_join_hostport(host, port)}: cannot resolve {host!r}",
                       500) from None
    return _join_hostport(host, port)


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")


@dataclass(frozen=True, slots=True)
class _UpstreamRule:
    name: str | None  # a host name, lower case; None for an address pattern; "*": any host
    network: _Network | None
    low: int
    high: int

    def ports(self, port: int) -> bool:
        return self.low <= port <= self.high


def _listen_rule(text: object, where: str) -> _Network:
    try:
        if not isinstance(text, str):
            raise ValueError(text)
        return ipaddress.ip_network(text.strip().strip("[]"), strict=False)
    except ValueError:
        raise ConfigurationError(f"{where} must be an IP address or CIDR (0.0.0.0, "
                                 f"10.0.0.0/8, ::), got {text!r}") from None


def _upstream_rule(text: object, where: str) -> _UpstreamRule:
    problem = (f"{where} must be HOST:PORT with HOST an IP address, CIDR, host name or * "
               f"(IPv6 in brackets) and PORT a number, LOW-HIGH or *, got {text!r}")
    if not isinstance(text, str):
        raise ConfigurationError(problem)
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ConfigurationError(problem)
    low_text, dash, high_text = port.partition("-")
    if port == "*":
        low, high = 0, 65535
    elif (low_text.isascii() and low_text.isdigit() and len(low_text) <= 5
          and (not dash or (high_text.isascii() and high_text.isdigit()
                            and len(high_text) <= 5))):
        low, high = int(low_text), int(high_text if dash else low_text)
        if high > 65535 or low > high:
            raise ConfigurationError(problem)
    else:
        raise ConfigurationError(problem)
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    elif ":" in host:
        raise ConfigurationError(problem)  # bare IPv6: where does the port start?
    if host == "*":
        return _UpstreamRule("*", None, low, high)
    try:
        return _UpstreamRule(None, ipaddress.ip_network(host, strict=False), low, high)
    except ValueError:
        if bracketed or not _HOSTNAME.fullmatch(host):
            raise ConfigurationError(problem) from None
    return _UpstreamRule(host.lower().rstrip("."), None, low, high)


def _patterns(value: object, where: str) -> list[object]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigurationError(f"{where} must be a list of patterns, got {value!r}")
    return list(value)


class _Guard:
    """Where proxies may listen and where they may connect (see the module docstring)."""

    def __init__(self, allow_listen: Sequence[str],
                 allow_upstream: Sequence[str] | None) -> None:
        self.listen = [_listen_rule(item, f"FaultProxy.allow_listen[{i}]")
                       for i, item in enumerate(_patterns(allow_listen,
                                                          "FaultProxy.allow_listen"))]
        self.upstream: list[_UpstreamRule] | None = None
        if allow_upstream is not None:
            items = _patterns(allow_upstream, "FaultProxy.allow_upstream")
            if not items:
                raise ConfigurationError("FaultProxy.allow_upstream must list at least one "
                                         "pattern, or be None to allow any upstream")
            self.upstream = [_upstream_rule(item, f"FaultProxy.allow_upstream[{i}]")
                             for i, item in enumerate(items)]

    def check_listen(self, address: str) -> None:
        """Refuse (403) a resolved listen address that is neither loopback nor allowed."""
        host, _ = _split_hostport(address, "listen")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and (ip.is_loopback or any(ip in net for net in self.listen)):
            return
        hint = "an address --allow-listen / allow_listen does not name" if self.listen else \
            "proxies listen on loopback only unless the fault proxy is started with " \
            "--allow-listen (FaultProxy(allow_listen=...))"
        raise ApiError(f"listen {address}: not allowed: {hint}", 403)

    async def connect_to(self, upstream: str) -> tuple[str, int]:
        """The address to connect to for ``upstream``; 403 when the allow-list refuses it."""
        host, port = _split_hostport(upstream, "upstream")
        rules = self.upstream
        if rules is None:
            return host, port
        rules = [rule for rule in rules if rule.ports(port)]
        try:
            literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = \
                ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if any(rule.name == "*" for rule in rules):
            return host, port
        if not host:
            # Toxiproxy dials ":6379" as the local host; no pattern but * names that
            raise ApiError(f"upstream {upstream}: not allowed: give the upstream's host", 403)
        name = host.lower().rstrip(".")
        if literal is None and any(rule.name == name for rule in rules):
            return host, port
        networks = [rule.network for rule in rules if rule.network is not None]
        if literal is not None:
            if any(literal in net for net in networks):
                return host, port
            raise ApiError(f"upstream {upstream}: not allowed: not in the fault proxy's "
                           "upstream allow-list (--allow-upstream)", 403)
        if networks:
            with contextlib.suppress(OSError, UnicodeError):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM)
                for info in infos:
                    address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                    if any(address in net for net in networks):
                        return str(address), port
        raise ApiError(f"upstream {upstream}: not allowed: not in the fault proxy's upstream "
                       "allow-list (--allow-upstream), by name or by any address it resolves "
                       "to", 403)


class _Link:
    """One direction of one connection: read, pass through the toxics, write."""

    def __init__(self, connection: _Connection, stream: str, source: asyncio.StreamReader,
                 dest: asyncio.StreamWriter) -> None:
        self.connection = connection
        self.stream = stream
        self.source = source
        self.dest = dest
        self.states: dict[str, LinkToxic] = {}
        self.queue: asyncio.Queue[Piece | None] = asyncio.Queue(_QUEUE_CHUNKS)

    # -- toxics come and go -------------------------------------------------------------
    def attach(self, toxic: Toxic) -> None:
        state = LinkToxic(toxic, self.connection.rng)
        self.states[toxic.name] = state
        self._arm(state)

    def update(self, toxic: Toxic) -> None:
        state = self.states.get(toxic.name)
        if state is None:
            self.attach(toxic)
            return
        state.update(toxic, self.connection.rng)
        self._arm(state)

    def detach(self, name: str) -> None:
        state = self.states.pop(name, None)
        if state is None:
            return
        state.removed = True
        state.interrupt()
        if state.timer is not None:
            state.timer.cancel()
        if state.toxic.type == "timeout" and state.active:
            # Toxiproxy closes a timeout toxic's links when it is removed (its Cleanup).
            self.connection.close(reset=False)

    def _arm(self, state: LinkToxic) -> None:
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        timeout = state.toxic.attr("timeout")
        if state.toxic.type == "timeout" and state.active and timeout > 0:
            state.deadline = asyncio.get_running_loop().time() + timeout / 1000.0
            state.timer = asyncio.create_task(self._expire(state))

    async def _expire(self, state: LinkToxic) -> None:
        loop = asyncio.get_running_loop()
        while (left := state.deadline - loop.time()) > 0:
            await asyncio.sleep(left)
        self.connection.close(reset=False)

    # -- bytes ------------------------------------------------------------------------------
    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await self.source.read(_READ_SIZE):
                await self.queue.put((loop.time(), data))
        except OSError:
            pass  # a reset from the peer ends this direction like an end of stream
        await self.queue.put(None)

    async def pump(self) -> None:
        try:
            while (piece := await self.queue.get()) is not None:
                await self._send(piece)
            await self._end()
        except ToxicClose as close:
            self.connection.close(reset=close.reset)
        except OSError:
            self.connection.close(reset=False)
        except Exception:
            # A dead pump would leave both sockets open with nobody moving their bytes.
            _log.exception("proxy %s: %s link failed", self.connection.proxy.name, self.stream)
            self.connection.close(reset=True)

    async def _send(self, piece: Piece) -> None:
        async def source() -> AsyncIterator[Piece]:
            yield piece

        pieces: AsyncIterator[Piece] = source()
        for state in list(self.states.values()):
            pieces = run_stage(state, pieces, self.connection.rng)
        async for _, data in pieces:
            self.dest.write(data)
            await self.dest.drain()

    async def _end(self) -> None:
        loop = asyncio.get_running_loop()
        for state in list(self.states.values()):
            if not state.acting:
                continue
            if state.toxic.type == "slow_close":
                await state.sleep_until(loop.time() + state.toxic.attr("delay") / 1000.0)
            elif state.toxic.type == "reset_peer":
                await asyncio.sleep(max(state.toxic.attr("timeout"), 0) / 1000.0)
                raise ToxicClose(reset=True)
        if self.dest.can_write_eof():
            self.dest.write_eof()
        self.connection.finished(self)


class _Connection:
    """A client connection and its upstream connection, joined by two links."""

    def __init__(self, proxy: _Proxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.rng = proxy.rng
        self.writers = (client[1], upstream[1])
        self.links = {
            "upstream": _Link(self, "upstream", client[0], upstream[1]),
            "downstream": _Link(self, "downstream", upstream[0], client[1]),
        }
        self.done: set[str] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False
        for stream, link in self.links.items():
            for toxic in proxy.toxics[stream]:
                link.attach(toxic)

    def start(self) -> None:
        for link in self.links.values():
            self.tasks.append(asyncio.create_task(link.read()))
            self.tasks.append(asyncio.create_task(link.pump()))

    def finished(self, link: _Link) -> None:
        self.done.add(link.stream)
        if len(self.done) == 2:
            self.close(reset=False)

    def close(self, *, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.connections.discard(self)
        for writer in self.writers:
            sock = writer.get_extra_info("socket")
            if reset and sock is not None:
                with contextlib.suppress(OSError):
                    # linger on, timeout 0: close() sends RST and drops unsent data
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            if reset:
                writer.transport.abort()
            else:
                writer.close()
                if writer.transport.get_write_buffer_size():
                    # close() waits for the buffer to drain, forever if the peer stopped
                    # reading; give it a moment, then let go (abort on a closed one: no-op).
                    asyncio.get_running_loop().call_later(_CLOSE_GRACE,
                                                          writer.transport.abort)
        for link in self.links.values():
            for state in link.states.values():
                if state.timer is not None:
                    state.timer.cancel()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class _Proxy:
    """One named proxy: a listener, its connections and its toxics."""

    def __init__(self, name: str, listen: str, upstream: str, rng: random.Random,
                 guard: _Guard) -> None:
        self.name = name
        self.guard = guard
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.rng = rng
        self.toxics: dict[str, list[Toxic]] = {"upstream": [], "downstream": []}
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "listen": self.listen, "upstream": self.upstream,
                "enabled": self.enabled, "toxics": self.toxic_list()}

    def toxic_list(self) -> list[dict[str, Any]]:
        return [t.to_json() for stream in ("upstream", "downstream")
                for t in self.toxics[stream]]

    def find(self, name: str) -> Toxic | None:
        for stream in ("upstream", "downstream"):
            for toxic in self.toxics[stream]:
                if toxic.name == name:
                    return toxic
        return None

    async def start(self) -> None:
        if self.enabled:
            return
        host, port = _split_hostport(self.listen, "listen")
        address = await _resolve(host, port)
        self.guard.check_listen(address)  # resolved again: what is bound is what is checked
        bind_host, _ = _split_hostport(address, "listen")
        try:
            self._server = await asyncio.start_server(self._accept, bind_host, port)
        except OSError as exc:
            raise ApiError(f"listen tcp {address}: {exc.strerror or exc}", 500) from exc
        bound = self._server.sockets[0].getsockname()
        self.listen = _join_hostport(bound[0], bound[1])
        self.enabled = True
        _log.info("proxy %s listens on %s for %s", self.name, self.listen, self.upstream)

    async def stop(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in list(self.connections):
            connection.close(reset=False)
        if server is not None:
            await server.wait_closed()
        _log.info("proxy %s stopped", self.name)

    async def differs(self, listen: str, upstream: str) -> bool:
        host, port = _split_hostport(listen, "listen")
        return await _resolve(host, port) != self.listen or upstream != self.upstream

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      ) -> None:
        try:
            # checked at each connection: a name may resolve elsewhere than at creation
            host, port = await self.guard.connect_to(self.upstream)
            upstream = await asyncio.wait_for(asyncio.open_connection(host, port),
                                              _CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ApiError, ValueError) as exc:
            # ValueError: UnicodeError from the IDNA codec for a host no resolver takes
            _log.warning("proxy %s: cannot connect to upstream %s: %s", self.name,
                         self.upstream, exc)
            writer.close()
            return
        if not self.enabled:  # disabled while we were connecting
            writer.close()
            upstream[1].close()
            return
        for w in (writer, upstream[1]):
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(self, (reader, writer), upstream)
        self.connections.add(connection)
        connection.start()

    def add_toxic(self, toxic: Toxic) -> None:
        self.toxics[toxic.stream].append(toxic)
        for connection in self.connections:
            connection.links[toxic.stream].attach(toxic)

    def update_toxic(self, old: Toxic, new: Toxic) -> None:
        chain = self.toxics[old.stream]
        chain[chain.index(old)] = new
        for connection in list(self.connections):
            connection.links[new.stream].update(new)

    def remove_toxic(self, toxic: Toxic) -> None:
        self.toxics[toxic.stream].remove(toxic)
        for connection in list(self.connections):
            connection.links[toxic.stream].detach(toxic.name)

    def reset_toxics(self) -> None:
        for stream in ("upstream", "downstream"):
            for toxic in list(self.toxics[stream]):
                self.remove_toxic(toxic)


# -- HTTP --------------------------------------------------------------------------------

class _Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, status: int, body: bytes = b"",
                 content_type: str = "application/json",
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


def _json(value: object, status: int = 200) -> _Response:
    return _Response(status, json.dumps(value, separators=(",", ":")).encode())


def _error(error: ApiError) -> _Response:
    return _Response(error.status, json.dumps(error.to_json()).encode() + b"\n")


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 413: "Payload Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented"}


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _load(body: bytes) -> object:
    if not body.strip():
        raise ApiError("bad request body: EOF", 400)
    try:
        return json.loads(body, parse_constant=_no_constant)
    except ValueError as exc:
        raise ApiError(f"bad request body: {exc}", 400) from None
    except RecursionError:  # a nesting bomb is a bad body, not an internal error
        raise ApiError("bad request body: JSON nested too deeply", 400) from None


def _no_constant(name: str) -> object:
    # NaN and Infinity are not JSON (Go refuses them); echoing them back would make
    # answers no strict client can parse.
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _get_str(body: Mapping[str, Any], key: str, default: str) -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ApiError(f"bad request body: {key} must be a string, got {value!r}", 400)
    return value


def _get_bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(f"bad request body: {key} must be true or false, got {value!r}", 400)
    return value


_Handler = Callable[[dict[str, str], bytes], Awaitable[_Response]]


class FaultProxy:
    """The fault proxy: an HTTP API on ``host:port`` managing named TCP proxies.

    ``seed`` makes jitter, slicing and toxicity draws repeatable. ``config`` is a list of
    proxies in ``POST /populate`` form, created on start (as ``toxiproxy-server -config``).
    Use it as ``async with FaultProxy(port=0) as chaos: ... chaos.api_url``.

    :param allow_listen: IP addresses or CIDRs proxies may listen on besides loopback
        (``["0.0.0.0"]`` for every IPv4 interface); default: loopback only.
    :param allow_upstream: ``HOST:PORT`` patterns proxies may connect to (see the module
        docstring); ``None`` (default): any upstream, as Toxiproxy.
    :param token: when set (16 characters or more), the API answers only requests with
        ``Authorization: Bearer <token>`` (Toxiproxy clients cannot send it: opt-in).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = DEFAULT_API_PORT,
                 seed: int | None = None,
                 config: Sequence[Mapping[str, Any]] | None = None,
                 allow_listen: Sequence[str] = (),
                 allow_upstream: Sequence[str] | None = None,
                 token: str | None = None) -> None:
        if token is not None and (not isinstance(token, str) or len(token) < _MIN_TOKEN):
            raise ConfigurationError(f"FaultProxy.token must be a string of at least "
                                     f"{_MIN_TOKEN} characters (or None for no token)")
        self._guard = _Guard(allow_listen, allow_upstream)
        self._token = token.encode() if token is not None else None
        self.host = host
        self.port = port
        self._rng = random.Random(seed)
        self._config = list(config or [])
        self._proxies: dict[str, _Proxy] = {}
        self._lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.StreamWriter, asyncio.Task[Any] | None] = {}
        self._routes: list[tuple[tuple[str, ...], dict[str, _Handler]]] = [
            (("reset",), {"POST": self._reset}),
            (("version",), {"GET": self._version}),
            (("populate",), {"POST": self._populate}),
            (("proxies",), {"GET": self._proxy_index, "POST": self._proxy_create}),
            (("proxies", "{proxy}"), {"GET": self._proxy_show, "POST": self._proxy_update,
                                      "PATCH": self._proxy_update,
                                      "DELETE": self._proxy_delete}),
            (("proxies", "{proxy}", "toxics"), {"GET": self._toxic_index,
                                                "POST": self._toxic_create}),
            (("proxies", "{proxy}", "toxics", "{toxic}"), {
                "GET": self._toxic_show, "POST": self._toxic_update,
                "PATCH": self._toxic_update, "DELETE": self._toxic_delete}),
        ]

    @property
    def api_url(self) -> str:
        """Base URL of the HTTP API, e.g. ``http://127.0.0.1:8474`` (the real port once started)."""
        return f"http://{_join_hostport(self.host, self.port)}"

    async def start(self) -> None:
        """Listen for the API and create the configured proxies."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._session, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        if not _is_loopback(self.host):
            _log.warning("the fault proxy API listens on %s: anyone who can reach it can "
                         "open proxies and break traffic", self.api_url)
        if self._config:
            async with self._lock:
                _, error = await self._populate_list(self._config)
            if error is not None:
                await self.aclose()
                raise error

    async def aclose(self) -> None:
        """Stop the API, every proxy and every proxied connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._sessions):
            # closing ends the session's read; cancelling a connection callback's task
            # would make asyncio log the cancellation as an error
            writer.close()
        sessions = [task for task in self._sessions.values() if task is not None]
        if sessions:
            await asyncio.wait(sessions, timeout=5.0)
        for proxy in list(self._proxies.values()):
            await proxy.stop()
        self._proxies.clear()
        if server is not None:
            await server.wait_closed()

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until cancelled."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.aclose()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    # -- HTTP plumbing -------------------------------------------------------------------
    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       ) -> None:
        self._sessions[writer] = asyncio.current_task()
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), _IDLE_TIMEOUT)
                    if not line:
                        return
                    if not line.strip():
                        continue  # tolerated between requests (RFC 9112 2.2)
                    response, keep = await asyncio.wait_for(
                        self._request(line, reader, writer), _HEADER_TIMEOUT)
                except _HttpError as exc:
                    response, keep = _Response(exc.status, f"{exc}\n".encode(),
                                               "text/plain; charset=utf-8"), False
                reason = _REASONS.get(response.status, "Unknown")
                head = [f"HTTP/1.1 {response.status} {reason}"]
                if response.status != 204:
                    head.append(f"Content-Type: {response.content_type}")
                    head.append(f"Content-Length: {len(response.body)}")
                head.extend(f"{name}: {value}" for name, value in response.headers)
                if not keep:
                    head.append("Connection: close")
                writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + response.body)
                await writer.drain()
                if not keep:
                    return
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._sessions.pop(writer, None)
            writer.close()

    async def _request(self, line: bytes, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> tuple[_Response, bool]:
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _HttpError(400, "malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for _ in range(100):
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise _HttpError(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
        else:
            raise _HttpError(431, "too many headers")
        keep = (headers.get("connection", "").lower() != "close"
                if version == "HTTP/1.1" else
                headers.get("connection", "").lower() == "keep-alive")
        if self._token is not None and not self._authorized(headers.get("authorization")):
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) <= _DISCARD_MAX \
                    and "transfer-encoding" not in headers:
                # read, or closing with it unread resets the connection before the 401 lands
                await reader.readexactly(int(length))
            error = ApiError("unauthorized: this fault proxy's API needs "
                             "Authorization: Bearer <token>", 401)
            return _Response(401, json.dumps(error.to_json()).encode() + b"\n",
                             headers=(("WWW-Authenticate", 'Bearer realm="fault proxy"'),)
                             ), False
        body = await self._body(headers, reader, writer)
        if headers.get("user-agent", "").startswith("Mozilla/"):
            # as Toxiproxy: browsers are turned away, so a web page cannot drive the API
            return _Response(403, b"User agent not allowed\n", "text/plain; charset=utf-8"), keep
        return await self._dispatch(method, target, body), keep

    async def _body(self, headers: Mapping[str, str], reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bytes:
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length_text = headers.get("content-length", "0" if not chunked else "")
        if not chunked and not length_text.isdigit():
            raise _HttpError(400, "bad Content-Length")
        if not chunked and int(length_text) > _MAX_BODY:
            raise _HttpError(413, "request body too large")
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for it on big bodies
            await writer.drain()
        if not chunked:
            return await reader.readexactly(int(length_text))
        body = bytearray()
        while True:
            size_line = (await reader.readline()).split(b";")[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _HttpError(400, "bad chunk size") from None
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            if len(body) + size > _MAX_BODY:
                raise _HttpError(413, "request body too large")
            body += await reader.readexactly(size)
            await reader.readline()

    def _authorized(self, authorization: str | None) -> bool:
        scheme, _, credentials = (authorization or "").partition(" ")
        return (self._token is not None and scheme.lower() == "bearer"
                and hmac.compare_digest(credentials.strip().encode(), self._token))

    async def _admit(self, listen: str, upstream: str) -> None:
        """Refuse (403) a proxy whose listen address or upstream the allow-lists refuse."""
        await self._guard.connect_to(upstream)
        host, port = _split_hostport(listen, "listen")
        try:
            address = await _resolve(host, port)
        except ApiError:
            return  # unresolvable: start() answers that, and checks again, if it is enabled
        self._guard.check_listen(address)

    async def _dispatch(self, method: str, target: str, body: bytes) -> _Response:
        path = target.split("?", 1)[0]
        segments = tuple(unquote(s) for s in path.split("/")[1:])
        for pattern, methods in self._routes:
            if len(pattern) != len(segments):
                continue
            params: dict[str, str] = {}
            for want, got in zip(pattern, segments, strict=True):
                if want.startswith("{"):
                    if not got:
                        break
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                handler = methods.get(method)
                if handler is None:
                    return _Response(405, b"", "text/plain; charset=utf-8")
                try:
                    async with self._lock:
                        return await handler(params, body)
                except ApiError as error:
                    return _error(error)
                except Exception as exc:  # a bug here must not take the API down
                    _log.exception("fault proxy API: %s %s failed", method, path)
                    return _error(ApiError(f"internal error: {exc!r}", 500))
        return _Response(404, b"404 page not found\n", "text/plain; charset=utf-8")

    def _get(self, name: str) -> _Proxy:
        proxy = self._proxies.get(name)
        if proxy is None:
            raise ApiError("proxy not found", 404)
        return proxy

    # -- handlers (Toxiproxy's api.go, endpoint by endpoint) -------------------------------
    async def _version(self, params: dict[str, str], body: bytes) -> _Response:
        text = json.dumps({"version": f"fournines-{__version__}"}) + "\n"
        return _Response(200, text.encode(), "application/json;charset=utf-8")

    async def _reset(self, params: dict[str, str], body: bytes) -> _Response:
        for proxy in self._proxies.values():
            await proxy.start()
            proxy.reset_toxics()
        return _Response(204)

    async def _proxy_index(self, params: dict[str, str], body: bytes) -> _Response:
        return _json({name: proxy.to_json() for name, proxy in self._proxies.items()})

    async def _proxy_create(self, params: dict[str, str], body: bytes) -> _Response:
        data = _load(body)
        if not isinstance(data, dict):
            raise ApiError("bad request body: expected a JSON object", 400)
        name = _get_str(data, "name", "")
        upstream = _get_str(data, "upstream", "")
        listen = _get_str(data, "listen", "") or "127.0.0.1:0"
        enabled = _get_bool(data, "enabled", True)
        if not name:
            raise ApiError("missing required field: name", 400)
        if not upstream:
            raise ApiError("missing required field: upstream", 400)
        if name in self._proxies:
            raise ApiError("proxy already exists", 409)
        _split_hostport(upstream, "upstream")
        await self._admit(listen, upstream)
        proxy = _Proxy(name, listen, upstream, self._rng, self._guard)
        if enabled:
            await proxy.start()
        self._proxies[name] = proxy
        return _json(proxy.to_json(), 201)

    async def _populate(self, params: dict[str, str], body: bytes) -> _Response:
        try:
            data = _load(body)
            if not isinstance(data, list):
                raise ApiError("bad request body: expected a JSON array of proxies", 400)
        except ApiError as bad:
            return _json({**bad.to_json(), "proxies": None}, bad.status)
        proxies, error = await self._populate_list(data)
        listed = [p.to_json() for p in proxies] or None  # Go marshals an empty slice as null
        if error is not None:
            return _json({**error.to_json(), "proxies": listed}, error.status)
        return _json({"proxies": listed}, 201)

    async def _populate_list(self, data: Sequence[object],
                             ) -> tuple[list[_Proxy], ApiError | None]:
        wanted: list[tuple[str, str, str, bool]] = []
        try:
            for number, item in enumerate(data, 1):
                if not isinstance(item, dict):
                    raise ApiError(f"bad request body: proxy {number} is not an object", 400)
                name = _get_str(item, "name", "")
                upstream = _get_str(item, "upstream", "")
                if not name:
                    raise ApiError(f"missing required field: name at proxy {number}", 400)
                if not upstream:
                    raise ApiError(f"missing required field: upstream at proxy {number}", 400)
                listen = _get_str(item, "listen", "") or "127.0.0.1:0"
                wanted.append((name, listen, upstream, _get_bool(item, "enabled", True)))
            for number, (_, listen, upstream, _) in enumerate(wanted, 1):
                try:
                    await self._admit(listen, upstream)
                except ApiError as refused:
                    raise ApiError(f"{refused.message} at proxy {number}",
                                   refused.status) from None
        except ApiError as error:
            return [], error
        done: list[_Proxy] = []
        for name, listen, upstream, enabled in wanted:
            try:
                existing = self._proxies.get(name)
                if existing is not None:
                    if not await existing.differs(listen, upstream):
                        done.append(existing)
                        continue
                    await existing.stop()
                    del self._proxies[name]
                proxy = _Proxy(name, listen, upstream, self._rng, self._guard)
                if enabled:
                    await proxy.start()
                self._proxies[name] = proxy
                done.append(proxy)
            except ApiError as error:
                return done, error
        return done, None

    async def _proxy_show(self, params: dict[str, str], body: bytes) -> _Response:
        return _json(self._get(params["proxy"]).to_json())

    async def _proxy_update(self, params: dict[str, str], body: bytes) -> _Response:
        proxy = self._get(params["proxy"])
        data = _load(body)
        if not isinstance(data, dict):
            raise ApiError("bad request body: expected a JSON object", 400)
        listen = _get_str(data, "listen", proxy.listen) or proxy.listen
        upstream = _get_str(data, "upstream", proxy.upstream) or proxy.upstream
        enabled = _get_bool(data, "enabled", proxy.enabled)
        if await proxy.differs(listen, upstream):
            await self._admit(listen, upstream)
            # a new address drops the old connections (Toxiproxy README, "Proxy fields")
            await proxy.stop()
            proxy.listen, proxy.upstream = listen, upstream
        if enabled:
            await proxy.start()
        else:
            await proxy.stop()
        return _json(proxy.to_json())

    async def _proxy_delete(self, params: dict[str, str], body: bytes) -> _Response:
        proxy = self._get(params["proxy"])
        await proxy.stop()
        del self._proxies[proxy.name]
        return _Response(204)

    async def _toxic_index(self, params: dict[str, str], body: bytes) -> _Response:
        return _json(self._get(params["proxy"]).toxic_list())

    async def _toxic_create(self, params: dict[str, str], body: bytes) -> _Response:
        proxy = self._get(params["proxy"])
        toxic = parse_new_toxic(_load(body))
        if proxy.find(toxic.name) is not None:
            raise ApiError("toxic already exists", 409)
        proxy.add_toxic(toxic)
        return _json(toxic.to_json())

    async def _toxic_show(self, params: dict[str, str], body: bytes) -> _Response:
        toxic = self._get(params["proxy"]).find(params["toxic"])
        if toxic is None:
            raise ApiError("toxic not found", 404)
        return _json(toxic.to_json())

    async def _toxic_update(self, params: dict[str, str], body: bytes) -> _Response:
        proxy = self._get(params["proxy"])
        toxic = proxy.find(params["toxic"])
        if toxic is None:
            raise ApiError("toxic not found", 404)
        updated = parse_toxic_update(toxic, _load(body))
        proxy.update_toxic(toxic, updated)
        return _json(updated.to_json())

    async def _toxic_delete(self, params: dict[str, str], body: bytes) -> _Response:
        proxy = self._get(params["proxy"])
        toxic = proxy.find(params["toxic"])
        if toxic is None:
            raise ApiError("toxic not found", 404)
        proxy.remove_toxic(toxic)
        return _Response(204)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
