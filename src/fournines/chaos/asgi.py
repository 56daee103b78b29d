"""Runtime fault control for a running service: ASGI middleware with an admin API.

:class:`ChaosMiddleware` wraps any ASGI app. On every HTTP request it rolls
its faults (given in code, or added at run time) and delays, fails (with the
fault's HTTP status) or crashes accordingly; it also makes the request's path
and headers visible to faults used as policies inside the app, so their
``route``/``header`` targets work there too.

The admin API is off unless ``admin_token`` is given. When on, requests under
``admin_prefix`` (``/chaos/faults``) are answered by the middleware itself:

- from a client address outside ``allow_from`` (loopback by default):
  ``403``; the direct peer address is used, never forwarding headers, and a
  request carrying ``X-Forwarded-For``, ``Forwarded`` or ``X-Real-IP`` (relayed, or
  spoofing an address the server may take from them) gets ``403`` too;
- without ``Authorization: Bearer <admin_token>`` (compared in constant time):
  ``401``; nothing changes;
- ``POST {prefix}`` with a JSON fault (``kind``: ``error``, ``latency`` or
  ``crash``; ``duration`` required, at most ``max_duration`` seconds; optional
  ``rate``, ``status``, ``latency``, ``jitter``, ``correlation``, ``route``,
  ``header``, ``instances``, ``name``, ``exit_code``): ``201`` with the fault and its
  ``id``; a bad body: ``400`` naming the field;
- ``GET {prefix}``: ``200 {"faults": [...]}`` with the ``remaining`` seconds of each;
- ``DELETE {prefix}/{id}``: ``204`` (``404`` for an unknown id);
  ``DELETE {prefix}``: ``204``, every fault removed.

Faults added through the API always have a duration and remove themselves
when it has passed, so a lost client cannot leave a service broken. Requests
to the admin prefix are never hit by faults themselves. Each worker process
has its own faults: run one worker per instance you want to control.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import random
import uuid
from collections.abc import Sequence
from typing import Any

from .._clock import Clock, system_clock
from .._errors import ConfigurationError, check_number
from .._events import Listener
from ..asgi._types import ASGIApp, Receive, Scope, Send, header, respond, respond_json
from .faults import (
    CrashFault,
    ErrorFault,
    Fault,
    LatencyFault,
    reset_current_request,
    set_current_request,
)

__all__ = ["ChaosMiddleware"]

_MAX_BODY = 64 * 1024
_MAX_FLOAT = 1e300
_KINDS: dict[str, type[Fault]] = {"error": ErrorFault, "latency": LatencyFault,
                                  "crash": CrashFault}
_FIELDS = frozenset({"kind", "rate", "duration", "status", "latency", "jitter", "correlation",
                     "route", "header", "instances", "name", "exit_code"})
_FORWARDING = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip"})
_NetworkList = list[ipaddress.IPv4Network | ipaddress.IPv6Network]


class _BadField(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _networks(allow_from: Sequence[str]) -> _NetworkList:
    if isinstance(allow_from, str):
        raise ConfigurationError(
            f"ChaosMiddleware.allow_from must be a sequence of networks, got {allow_from!r}"
        )
    networks: _NetworkList = []
    for entry in allow_from:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"ChaosMiddleware.allow_from has an invalid network {entry!r}: {exc}"
            ) from None
    return networks


class ChaosMiddleware:
    """ASGI middleware injecting faults into requests, with an optional admin API.

    See the module documentation for the admin API. Parameters:

    - ``faults``: faults active from the start (listed and removable by the API);
    - ``admin_token``: turns the admin API on (``None``: off, requests under the
      prefix reach the app untouched); ``admin_prefix``; ``allow_from``: client
      networks allowed to use it;
    - ``max_duration``: the longest ``duration`` the API accepts (seconds);
    - ``seed``: seeds the RNG of faults added through the API (reproducible runs);
    - ``clock``: expiry and injected sleeps of API faults; ``listeners`` get their
      :class:`~fournines.FaultInjected` events.
    """

    __slots__ = ("_faults", "_list", "_listeners", "_networks", "_next_expiry", "_rng", "_token",
                 "admin_prefix", "app", "clock", "max_duration")

    def __init__(
        self,
        app: ASGIApp,
        *,
        admin_token: str | None = None,
        admin_prefix: str = "/chaos/faults",
        allow_from: Sequence[str] = ("127.0.0.0/8", "::1/128"),
        faults: Sequence[Fault] = (),
        seed: int | None = None,
        clock: Clock | None = None,
        max_duration: float = 3600.0,
        listeners: Sequence[Listener] = (),
    ) -> None:
        owner = "ChaosMiddleware"
        if admin_token is not None and (not isinstance(admin_token, str) or not admin_token):
            raise ConfigurationError(f"{owner}.admin_token must be a non-empty str or None")
        if (not isinstance(admin_prefix, str) or not admin_prefix.startswith("/")
                or admin_prefix.endswith("/")):
            raise ConfigurationError(
                f"{owner}.admin_prefix must start with '/' and not end with it, "
                f"got {admin_prefix!r}"
            )
        check_number(owner, "max_duration", max_duration, minimum=0, exclusive_minimum=True)
        for i, fault in enumerate(faults):
            if not isinstance(fault, Fault):
                raise ConfigurationError(f"{owner}.faults[{i}] must be a Fault, got {fault!r}")
        self.app = app
        self.admin_prefix = admin_prefix
        self.max_duration = float(max_duration)
        self.clock = clock or system_clock
        self._token = None if admin_token is None else admin_token.encode()
        self._networks = _networks(allow_from)
        self._rng = random.Random(seed)
        self._listeners = tuple(listeners)
        self._faults: dict[str, Fault] = {}
        self._list: tuple[Fault, ...] = ()
        self._next_expiry = math.inf
        for fault in faults:
            self.add(fault)

    # -- programmatic control -------------------------------------------------------------

    def add(self, fault: Fault) -> str:
        """Add ``fault``; returns its id."""
        fault_id = uuid.uuid4().hex[:12]
        self._faults[fault_id] = fault
        self._changed()
        return fault_id

    def remove(self, fault_id: str) -> bool:
        """Remove a fault by id; whether it was there."""
        found = self._faults.pop(fault_id, None) is not None
        self._changed()
        return found

    def clear(self) -> None:
        """Remove every fault."""
        self._faults.clear()
        self._changed()

    def faults(self) -> dict[str, Fault]:
        """The live faults by id (expired ones are dropped first)."""
        self._prune()
        return dict(self._faults)

    def _changed(self) -> None:
        # Requests iterate over a tuple snapshot, rebuilt only when the set changes,
        # and look at the clock only once the earliest expiry may have passed.
        self._list = tuple(self._faults.values())
        self._next_expiry = min((f.created_at + f.duration for f in self._list
                                 if f.duration is not None), default=math.inf)

    def _prune(self) -> None:
        expired = [i for i, f in self._faults.items() if f.expired]
        for fault_id in expired:
            del self._faults[fault_id]
        self._changed()

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if self._token is not None and (
            path == self.admin_prefix or path.startswith(self.admin_prefix + "/")
        ):
            await self._admin(scope, receive, send, path)
            return
        headers = scope.get("headers", ())
        faults = self._list
        if faults:
            if self.clock.monotonic() >= self._next_expiry:
                self._prune()
            for fault in faults:
                if not fault.roll(path, headers):
                    continue
                if isinstance(fault, ErrorFault):
                    fault.notify()
                    await respond(send, fault.status, b"injected fault\n",
                                  headers=((b"x-chaos-fault", _header_value(fault.name)),))
                    return
                await fault.ainject()
        token = set_current_request(path, headers)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_current_request(token)

    # -- admin API ------------------------------------------------------------------------

    def _allowed(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client:
            return False
        # Servers may rewrite scope["client"] from these headers (uvicorn does, for peers
        # on 127.0.0.1, by default), so a relayed request's address is whatever the
        # sender wrote: such requests are refused, whatever address they claim.
        if any(key in _FORWARDING for key, _ in scope.get("headers", ())):
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def _authorized(self, scope: Scope) -> bool:
        assert self._token is not None
        value = header(scope, b"authorization") or b""
        scheme, _, credentials = value.partition(b" ")
        # compare_digest on every request, even a malformed one, so the answer time
        # does not tell how much of a guess was right.
        ok = hmac.compare_digest(credentials.strip(), self._token)
        return ok and scheme.lower() == b"bearer"

    async def _admin(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if not self._allowed(scope):
            await respond_json(send, 403, {"error": "client address not allowed"})
            return
        if not self._authorized(scope):
            await respond_json(send, 401, {"error": "missing or wrong bearer token"},
                               headers=((b"www-authenticate", b"Bearer"),))
            return
        method: str = scope.get("method", "GET")
        rest = path[len(self.admin_prefix):].strip("/")
        if not rest:
            if method == "GET":
                self._prune()
                await respond_json(send, 200, {"faults": [
                    {"id": fault_id, **fault.describe()} for fault_id, fault in
                    self._faults.items()
                ]})
            elif method == "POST":
                await self._create(receive, send)
            elif method == "DELETE":
                self.clear()
                await respond(send, 204)
            else:
                await respond_json(send, 405, {"error": f"method {method} not allowed"},
                                   headers=((b"allow", b"GET, POST, DELETE"),))
            return
        if "/" in rest:
            await respond_json(send, 404, {"error": "not found"})
        elif method == "DELETE":
            if self.remove(rest):
                await respond(send, 204)
            else:
                await respond_json(send, 404, {"error": f"no fault with id {rest!r}"})
        elif method == "GET":
            self._prune()
            fault = self._faults.get(rest)
            if fault is None:
                await respond_json(send, 404, {"error": f"no fault with id {rest!r}"})
            else:
                await respond_json(send, 200, {"id": rest, **fault.describe()})
        else:
            await respond_json(send, 405, {"error": f"method {method} not allowed"},
                               headers=((b"allow", b"GET, DELETE"),))

    async def _create(self, receive: Receive, send: Send) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > _MAX_BODY:
                await respond_json(send, 413, {"error": f"body larger than {_MAX_BODY} bytes"})
                return
            if not message.get("more_body", False):
                break
        try:
            data = json.loads(body or b"null")
        except (ValueError, RecursionError) as exc:  # RecursionError: a nesting bomb
            await respond_json(send, 400, {"error": f"body is not JSON: {exc}", "field": None})
            return
        try:
            fault = self._build(data)
        except _BadField as exc:
            await respond_json(send, 400, {"error": str(exc), "field": exc.field})
            return
        fault_id = self.add(fault)
        await respond_json(send, 201, {"id": fault_id, **fault.describe()})

    def _build(self, data: object) -> Fault:
        if not isinstance(data, dict):
            raise _BadField("body", "must be a JSON object")
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise _BadField(unknown[0], f"unknown field (allowed: {', '.join(sorted(_FIELDS))})")
        kind = data.get("kind")
        cls = _KINDS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise _BadField("kind", f"must be one of {sorted(_KINDS)}, got {kind!r}")
        if "duration" not in data:
            raise _BadField("duration", "required (seconds after which the fault removes itself)")
        duration = _number(data, "duration", 0, self.max_duration, exclusive=True)
        options: dict[str, Any] = {
            "duration": duration,
            "rate": _number(data, "rate", 0, 1, default=1.0),
            "correlation": _number(data, "correlation", 0, 1, default=0.0),
            "instances": _number(data, "instances", 0, 1, default=1.0),
            "clock": self.clock,
            "seed": self._rng.getrandbits(64),
            "listeners": self._listeners,
        }
        for field in ("route", "header", "name"):
            value = data.get(field)
            if value is not None and not isinstance(value, str):
                raise _BadField(field, f"must be a string, got {value!r}")
            # Lone surrogates cannot be encoded in the JSON answer, and control characters
            # have no place in a path or a header: either would break later responses.
            if value is not None and (not value.isprintable() or _has_surrogate(value)):
                raise _BadField(field, f"must be printable text, got {value!r}")
            if field == "route" and value is not None and not value.startswith("/"):
                raise _BadField(field, f"must start with '/', got {value!r}")
            if field == "header" and value is not None and (
                not value or not value.isascii() or any(c in value for c in " :\t")
            ):
                raise _BadField(field, f"must be an HTTP header name, got {value!r}")
            options[field] = value
        if cls is ErrorFault:
            status = data.get("status", 500)
            if isinstance(status, bool) or not isinstance(status, int) or not (
                400 <= status <= 599
            ):
                raise _BadField("status", f"must be an integer 400..599, got {status!r}")
            options["status"] = status
        elif cls is LatencyFault:
            if "latency" not in data and "jitter" not in data:
                raise _BadField("latency", "required for kind 'latency' (seconds)")
            # A delay longer than any fault may live would hold requests past its expiry.
            options["latency"] = _number(data, "latency", 0, self.max_duration, default=0.0)
            options["jitter"] = _number(data, "jitter", 0, self.max_duration, default=0.0)
        else:
            code = data.get("exit_code")
            if code is not None and (isinstance(code, bool) or not isinstance(code, int)
                                     or not 0 <= code <= 255):
                raise _BadField("exit_code", f"must be an integer 0..255 or null, got {code!r}")
            options["exit_code"] = code
        try:
            return cls(**options)
        except ConfigurationError as exc:  # pragma: no cover - fields are checked above
            raise _BadField("body", str(exc)) from None


def _number(data: dict[str, Any], field: str, low: float, high: float | None, *,
            default: float | None = None, exclusive: bool = False) -> float:
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise _BadField(field, f"must be a number, got {value!r}")
    too_low = value <= low if exclusive else value < low
    # JSON ints are unbounded: one past any float would overflow float() into a 500.
    too_high = (high is not None and value > high) or value > _MAX_FLOAT
    if too_low or too_high:
        bound = f"{'>' if exclusive else '>='} {low:g}"
        if high is not None:
            bound += f" and <= {high:g}"
        shown = repr(value) if isinstance(value, float) or abs(value) < 10**20 else "a huge int"
        raise _BadField(field, f"must be {bound}, got {shown}")
    return float(value)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _header_value(text: str) -> bytes:
    # Fault names come from code or the API; only printable ASCII is safe in a header.
    return "".join(c if " " <= c <= "~" else "?" for c in text).encode("ascii")
