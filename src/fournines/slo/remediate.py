"""Alert-driven remediation: an Alertmanager webhook receiver that runs allowlisted commands.

``fournines remediate --config remediate.yaml`` listens (on loopback unless
told otherwise) for Alertmanager's webhook notifications and maps each firing
alert to actions by its labels, e.g. a burn-rate page for ``payment-svc`` to
``kubectl rollout restart deployment/payment-svc``. An unattended robot that
restarts production needs guardrails more than features, so every one of these
is on by default and none can be turned off:

- **authentication**: each request must carry ``Authorization: Bearer <token>``
  (Alertmanager's ``http_config.authorization``); the token comes from a file or
  an environment variable, never from the config itself;
- **allowlist**: commands are argv lists run without a shell, and every rendered
  command must start with one of the ``allow`` prefixes, checked when the config
  loads and again before each run;
- **label templating is inert**: ``{label}`` placeholders take only values made of
  ``A-Za-z0-9._:/-`` that do not start with ``-`` (no option injection);
- **cooldown per target**: one action per target (``deployment/payment-svc``)
  per cooldown, however often Alertmanager repeats the notification;
- **max actions per hour**, over all targets;
- **dry run**: decide and log, run nothing (``dry_run: true`` or ``--dry-run``);
  dry runs count against cooldowns and the hourly limit, so they show exactly
  what a real run would have done;
- **audit log**: one JSON line per decision: ``executed`` (with the exit
  status), ``failed``, ``dry-run``, ``refused`` (with the reason) or ``ignored``.

Config (YAML; JSON works too)::

    listen: 127.0.0.1:9095
    path: /alerts
    token_file: /etc/fournines/remediate.token     # or token_env: REMEDIATE_TOKEN
    dry_run: false
    max_actions_per_hour: 6
    command_timeout: 2m
    audit_log: /var/log/fournines/remediate.jsonl   # "-" (default): standard output
    allow:
      - [kubectl, rollout, restart]
    actions:
      - name: restart-payment
        match: {alertname: ErrorBudgetBurn, service: payment-svc}
        command: [kubectl, rollout, restart, "deployment/{service}", -n, "{namespace}"]
        target: "deployment/{service}"             # default: the whole command
        cooldown: 15m
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from .._clock import Clock, system_clock
from .._errors import ConfigurationError
from .budget import parse_duration

__all__ = [
    "Action",
    "Decision",
    "RemediateConfig",
    "Remediator",
    "WebhookServer",
    "load_config",
    "parse_config",
]

_log = logging.getLogger("fournines.remediate")

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SAFE_VALUE = re.compile(r"[A-Za-z0-9._:/][A-Za-z0-9._:/-]*")
_MAX_BODY = 1 << 20
_SAMPLE_SECONDS = 10.0  # at most one line per this long for refusals anyone can cause


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """One mapping from alerts to a command.

    :param name: shown in the audit log.
    :param match: label values an alert must all have (``alertname`` among them, usually).
    :param command: the argv to run; ``{label}`` placeholders take the alert's label values.
    :param target: what the cooldown is kept per (a template too); default: the command.
    :param cooldown: seconds between two actions on one target.
    """

    name: str
    match: Mapping[str, str]
    command: tuple[str, ...]
    target: str = ""
    cooldown: float = 900.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RemediateConfig:
    """The receiver's settings (see the module docstring for the file format).

    :param token: the bearer token requests must carry (read from a file or the environment).
    """

    token: str = field(repr=False)
    actions: tuple[Action, ...]
    allow: tuple[tuple[str, ...], ...]
    host: str = "127.0.0.1"
    port: int = 9095
    path: str = "/alerts"
    dry_run: bool = False
    max_actions_per_hour: int = 6
    command_timeout: float = 120.0
    audit_log: str = "-"
    source: str = "<config>"


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What the receiver did about one alert and one action (one audit line)."""

    decision: str
    reason: str = ""
    action: str = ""
    target: str = ""
    command: tuple[str, ...] = ()
    alertname: str = ""
    fingerprint: str = ""
    returncode: int | None = None

    def as_dict(self) -> dict[str, object]:
        """The audit line's fields (empty ones left out)."""
        out: dict[str, object] = {"decision": self.decision}
        for key in ("reason", "action", "target", "alertname", "fingerprint"):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.command:
            out["command"] = list(self.command)
        if self.returncode is not None:
            out["returncode"] = self.returncode
        return out


def _fail(source: str, path: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"{source}: {path}: {problem}")


def _argv(source: str, path: str, value: object) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(part, str) and part and "\0" not in part for part in value)):
        raise _fail(source, path, f"must be a non-empty list of non-empty strings without NUL "
                                  f"(an argv, no shell), got {value!r}")
    return tuple(value)


def _seconds(source: str, path: str, value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        try:
            return parse_duration(value, field_name=path)
        except ConfigurationError as exc:
            raise _fail(source, path, str(exc)) from None
    raise _fail(source, path, f"must be a duration like '15m' or seconds, got {value!r}")


def _allowed(command: Sequence[str], allow: Sequence[tuple[str, ...]]) -> bool:
    return any(tuple(command[: len(prefix)]) == prefix for prefix in allow)


def _read_token(source: str, data: Mapping[str, Any], base: Path) -> str:
    if "token" in data:
        raise _fail(source, "token", "secrets do not belong in the config: use token_file or "
                                     "token_env")
    if "token_file" in data:
        token_path = base / str(data["token_file"])
        try:
            token = token_path.read_text().strip()
        except OSError as exc:
            raise _fail(source, "token_file", f"cannot read {token_path}: {exc}") from None
    elif "token_env" in data:
        token = os.environ.get(str(data["token_env"]), "").strip()
        if not token:
            raise _fail(source, "token_env", f"the environment variable {data['token_env']!r} "
                                             "is not set or empty")
    else:
        raise _fail(source, "token_file", "a token is required: set token_file or token_env")
    if len(token) < 16:
        raise _fail(source, "token_file" if "token_file" in data else "token_env",
                    "the token must have at least 16 characters")
    return token


_KEYS = {"listen", "path", "token", "token_file", "token_env", "dry_run", "max_actions_per_hour",
         "command_timeout", "audit_log", "allow", "actions"}
_ACTION_KEYS = {"name", "match", "command", "target", "cooldown"}


def parse_config(data: object, *, source: str = "<config>", base: Path | None = None
                 ) -> RemediateConfig:
    """Validate a config mapping; errors name the file, the path inside it and the problem."""
    if not isinstance(data, dict):
        raise _fail(source, "(top)", f"must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise _fail(source, unknown[0], f"unknown key (known: {', '.join(sorted(_KEYS))})")
    token = _read_token(source, data, base or Path.cwd())
    listen = str(data.get("listen", "127.0.0.1:9095"))
    host, _, port_text = listen.rpartition(":")
    if (not host or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5
            or not 0 <= int(port_text) <= 65535):
        raise _fail(source, "listen", f"must be HOST:PORT, got {listen!r}")
    path = data.get("path", "/alerts")
    if not isinstance(path, str) or not path.startswith("/"):
        raise _fail(source, "path", f"must start with '/', got {path!r}")
    dry_run = data.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise _fail(source, "dry_run", f"must be true or false, got {dry_run!r}")
    max_actions = data.get("max_actions_per_hour", 6)
    if isinstance(max_actions, bool) or not isinstance(max_actions, int) or max_actions < 1:
        raise _fail(source, "max_actions_per_hour", f"must be an int >= 1, got {max_actions!r}")
    timeout = _seconds(source, "command_timeout", data.get("command_timeout", 120.0))
    if timeout <= 0:
        raise _fail(source, "command_timeout", f"must be > 0 seconds, got {timeout:g}")
    audit_log = data.get("audit_log", "-")
    if not isinstance(audit_log, str) or not audit_log:
        raise _fail(source, "audit_log", f"must be a file path or '-', got {audit_log!r}")
    raw_allow = data.get("allow")
    if not isinstance(raw_allow, list) or not raw_allow:
        raise _fail(source, "allow", "must list the allowed command prefixes (argv lists)")
    allow = tuple(_argv(source, f"allow[{i}]", item) for i, item in enumerate(raw_allow))
    for i, prefix in enumerate(allow):
        if any(_PLACEHOLDER.search(part) for part in prefix):
            raise _fail(source, f"allow[{i}]", "must not contain {label} placeholders")
    raw_actions = data.get("actions")
    if not isinstance(raw_actions, list) or not raw_actions:
        raise _fail(source, "actions", "must be a non-empty list")
    actions = []
    for i, raw in enumerate(raw_actions):
        where = f"actions[{i}]"
        if not isinstance(raw, dict):
            raise _fail(source, where, f"must be a mapping, got {raw!r}")
        extra = sorted(set(raw) - _ACTION_KEYS)
        if extra:
            raise _fail(source, f"{where}.{extra[0]}", "unknown key")
        name = raw.get("name", f"action-{i}")
        match = raw.get("match")
        if (not isinstance(match, dict) or not match
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in match.items())):
            raise _fail(source, f"{where}.match", "must map label names to values, e.g. "
                                                  "{alertname: ErrorBudgetBurn}")
        command = _argv(source, f"{where}.command", raw.get("command"))
        if not _allowed(command, allow):
            raise _fail(source, f"{where}.command",
                        f"{list(command)} does not start with an allowed prefix "
                        f"({[list(p) for p in allow]})")
        target = raw.get("target", "")
        if not isinstance(target, str):
            raise _fail(source, f"{where}.target", f"must be a string, got {target!r}")
        cooldown = _seconds(source, f"{where}.cooldown", raw.get("cooldown", 900.0))
        actions.append(Action(name=str(name), match=dict(match), command=command,
                              target=target, cooldown=cooldown))
    return RemediateConfig(
        token=token, actions=tuple(actions), allow=allow, host=host.strip("[]"),
        port=int(port_text), path=path, dry_run=dry_run, max_actions_per_hour=max_actions,
        command_timeout=timeout, audit_log=audit_log, source=source)


def load_config(path: str | os.PathLike[str]) -> RemediateConfig:
    """Read and validate a YAML (or JSON) config file; token files are relative to it.

    Files larger than 1 MiB or nested deeper than 64 levels are refused before they are
    parsed (see :mod:`fournines._files`).
    """
    from .._files import json_document, read_text, yaml_documents  # noqa: PLC0415

    file = Path(path)
    try:
        text = read_text(file)
        try:
            documents = yaml_documents(text)
        except ImportError:  # pragma: no cover - depends on the environment
            documents = [json_document(text)]
    except ConfigurationError as exc:
        raise ConfigurationError(f"{file}: {exc}") from None
    if len(documents) > 1:
        raise ConfigurationError(f"{file}: {len(documents)} YAML documents; a config is one")
    return parse_config(documents[0] if documents else None, source=str(file),
                        base=file.parent)


def _render(template: str, labels: Mapping[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in labels:
            raise LookupError(f"the alert has no label {name!r}")
        value = labels[name]
        if not _SAFE_VALUE.fullmatch(value):
            raise LookupError(f"label {name}={value!r} is not safe to put in a command")
        return value

    return _PLACEHOLDER.sub(fill, template)


Runner = Callable[[Sequence[str], float], int]


def _run(command: Sequence[str], timeout: float) -> int:
    completed = subprocess.run(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=timeout, check=False)
    return completed.returncode


class _Sampler:
    """At most one report per ``interval`` seconds; the ones in between are only counted."""

    __slots__ = ("_clock", "_interval", "_next", "suppressed")

    def __init__(self, clock: Clock, interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._next = -math.inf
        self.suppressed = 0

    def take(self) -> int | None:
        """``None``: count this one, report nothing; else report it, with the count before it."""
        now = self._clock.monotonic()
        if now < self._next:
            self.suppressed += 1
            return None
        self._next = now + self._interval
        count, self.suppressed = self.suppressed, 0
        return count

    def drain(self, *, force: bool = False) -> int:
        """The count not yet reported, once the interval has passed (or ``force``), else 0."""
        if not self.suppressed or (not force and self._clock.monotonic() < self._next):
            return 0
        self._next = self._clock.monotonic() + self._interval
        count, self.suppressed = self.suppressed, 0
        return count


class Remediator:
    """The decisions, without HTTP: which alerts run which commands, under the guardrails.

    :param clock: time for cooldowns, the hourly limit and audit timestamps.
    :param audit: where audit lines go (default: the config's ``audit_log``).
    :param background: run commands on a worker thread (the server does, so that
        Alertmanager gets its answer at once); otherwise :meth:`handle` waits for them.
    """

    def __init__(
        self,
        config: RemediateConfig,
        *,
        clock: Clock = system_clock,
        audit: Callable[[dict[str, object]], None] | None = None,
        runner: Runner = _run,
        background: bool = False,
    ) -> None:
        self.config = config
        self._clock = clock
        self._runner = runner
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._recent: deque[float] = deque()
        self._stream: TextIO | None = None
        self._audit = audit if audit is not None else self._write_audit
        if audit is None and config.audit_log != "-":
            # Opened now: a receiver that could not audit must not start, let alone act.
            try:
                self._stream = open(config.audit_log, "a", buffering=1)  # noqa: SIM115
            except OSError as exc:
                raise _fail(config.source, "audit_log", f"cannot open {config.audit_log}: "
                                                        f"{exc}") from None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="remediate") if background else None
        self._unauthorized = _Sampler(clock, _SAMPLE_SECONDS)
        self._suppressed_remotes: dict[str, None] = {}

    @property
    def clock(self) -> Clock:
        """The clock of cooldowns, the hourly limit, sampling and audit timestamps."""
        return self._clock

    def _write_audit(self, line: dict[str, object]) -> None:
        if self._stream is None:
            self._stream = sys.stdout
        self._stream.write(json.dumps(line, sort_keys=True) + "\n")
        self._stream.flush()

    def audit(self, decision: Decision, **extra: object) -> None:
        """Write one audit line for ``decision`` (never raises)."""
        stamp = datetime.fromtimestamp(self._clock.time(), UTC)
        line: dict[str, object] = {"ts": stamp.isoformat(timespec="milliseconds"),
                                   "dry_run": self.config.dry_run, **decision.as_dict(), **extra}
        try:
            with self._lock:
                self._audit(line)
        except Exception:
            _log.exception("cannot write the audit line %r", line)

    def authorized(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries the configured bearer token."""
        if not authorization:
            return False
        scheme, _, credentials = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self.config.token.encode())

    def unauthorized(self, remote: str = "") -> None:
        """Audit a request refused for its token, sampled: anyone can send those.

        At most one ``refused``/``unauthorized`` line per 10 s (by the clock); the ones in
        between are counted, and the next line (or :meth:`flush`) carries the count as
        ``suppressed`` and their addresses (the first 16) as ``suppressed_remotes``.
        """
        with self._lock:
            suppressed = self._unauthorized.take()
            if suppressed is None:
                if len(self._suppressed_remotes) < 16:
                    self._suppressed_remotes[remote] = None
                return
            remotes, self._suppressed_remotes = list(self._suppressed_remotes), {}
        extra: dict[str, object] = {"remote": remote} if remote else {}
        if suppressed:
            extra.update(suppressed=suppressed, suppressed_remotes=remotes)
        self.audit(Decision(decision="refused", reason="unauthorized"), **extra)

    def flush(self, force: bool = False) -> None:
        """Write the count of unaudited refusals, if the sampling interval passed (or ``force``)."""
        with self._lock:
            suppressed = self._unauthorized.drain(force=force)
            if not suppressed:
                return
            remotes, self._suppressed_remotes = list(self._suppressed_remotes), {}
        self.audit(Decision(decision="refused", reason="unauthorized"),
                   suppressed=suppressed, suppressed_remotes=remotes)

    def handle(self, payload: Mapping[str, Any]) -> list[Decision]:
        """Decide about every alert of one webhook notification (and run what is decided)."""
        alerts = payload.get("alerts")
        if not isinstance(alerts, list):
            decision = Decision(decision="refused", reason="not an Alertmanager notification")
            self.audit(decision)
            return [decision]
        decisions = []
        for alert in alerts:
            decisions.extend(self._alert(alert if isinstance(alert, dict) else {}))
        return decisions

    def _alert(self, alert: Mapping[str, Any]) -> list[Decision]:
        raw_labels = alert.get("labels")
        labels = {str(k): str(v) for k, v in raw_labels.items()} if isinstance(
            raw_labels, dict) else {}
        common = Decision(decision="", alertname=labels.get("alertname", ""),
                          fingerprint=str(alert.get("fingerprint", "")))
        if alert.get("status") != "firing":
            decision = replace(common, decision="ignored",
                               reason=f"status {alert.get('status')!r}")
            self.audit(decision)
            return [decision]
        matching = [a for a in self.config.actions
                    if all(labels.get(k) == v for k, v in a.match.items())]
        if not matching:
            decision = replace(common, decision="ignored", reason="no action matches")
            self.audit(decision)
            return [decision]
        return [self._decide(action, labels, common) for action in matching]

    def _decide(self, action: Action, labels: Mapping[str, str],
                common: Decision) -> Decision:
        try:
            command = tuple(_render(part, labels) for part in action.command)
            target = _render(action.target, labels) if action.target else " ".join(command)
        except LookupError as exc:
            decision = replace(common, decision="refused", reason=str(exc), action=action.name)
            self.audit(decision)
            return decision
        base = replace(common, action=action.name, target=target, command=command)
        with self._lock:
            now = self._clock.monotonic()
            refusal = ""
            if not _allowed(command, self.config.allow):
                refusal = "command not in the allowlist"
            elif target in self._last and now - self._last[target] < action.cooldown:
                left = action.cooldown - (now - self._last[target])
                refusal = f"cooldown: {target} was acted on {now - self._last[target]:.0f}s " \
                          f"ago ({left:.0f}s left)"
            else:
                while self._recent and now - self._recent[0] >= 3600.0:
                    self._recent.popleft()
                if len(self._recent) >= self.config.max_actions_per_hour:
                    refusal = (f"max_actions_per_hour: {self.config.max_actions_per_hour} "
                               "actions in the last hour")
                else:
                    self._last[target] = now
                    self._recent.append(now)
        if refusal:
            decision = replace(base, decision="refused", reason=refusal)
            self.audit(decision)
            return decision
        if self.config.dry_run:
            decision = replace(base, decision="dry-run", reason="dry run: not executed")
            self.audit(decision)
            return decision
        decision = replace(base, decision="executed")
        if self._pool is not None:
            self._pool.submit(self._execute, decision)
        else:
            decision = self._execute(decision)
        return decision

    def _execute(self, decision: Decision) -> Decision:
        try:
            code = self._runner(decision.command, self.config.command_timeout)
        except subprocess.TimeoutExpired:
            done = replace(decision, decision="failed",
                           reason=f"timed out after {self.config.command_timeout:g}s")
        except OSError as exc:
            done = replace(decision, decision="failed", reason=f"cannot run: {exc}")
        else:
            done = replace(decision, returncode=code,
                           decision="executed" if code == 0 else "failed",
                           reason="" if code == 0 else f"exit status {code}")
        self.audit(done)
        return done

    def close(self) -> None:
        """Wait for running commands, write the count of unaudited refusals, close the audit."""
        self.flush(force=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._stream is not None and self._stream is not sys.stdout:
            self._stream.close()
        self._stream = None


# -- HTTP ----------------------------------------------------------------------------------
#
# One asyncio loop serves every connection, so a connection costs a coroutine and a socket,
# never a thread: stalled or hostile clients cannot pile up threads. Each connection carries
# one request (answers say ``Connection: close``; Alertmanager sends one notification per
# group interval, so keep-alive would buy nothing and cost an idle timeout).

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 411: "Length Required", 413: "Content Too Large",
            431: "Request Header Fields Too Large"}
_MAX_LINE = 16 * 1024
_MAX_HEAD = 32 * 1024
_MAX_HEADERS = 100
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 256 * 1024
# What a client can do to a connection from its side: go away, reset it, stall, or send
# less than it announced. None of these is the receiver's fault or worth a traceback.
_NETWORK_ERRORS = (OSError, EOFError)


class _Refusal(Exception):
    """A request answered with an error and the connection closed."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class _Request:
    __slots__ = ("headers", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.headers = headers


async def _readline(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readline()
    except ValueError:  # longer than the reader's limit
        raise _Refusal(431, "request line or header line too long") from None


async def _read_head(reader: asyncio.StreamReader) -> _Request | None:
    """The request line and headers; ``None`` when the client closed before sending any."""
    line = await _readline(reader)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refusal(400, "malformed request line")
    headers: dict[str, str] = {}
    size = len(line)
    for _ in range(_MAX_HEADERS):
        raw = await _readline(reader)
        size += len(raw)
        if size > _MAX_HEAD:
            raise _Refusal(431, "request head too large")
        if raw in (b"\r\n", b"\n"):
            return _Request(parts[0], parts[1].split("?", 1)[0], headers)
        if not raw.endswith(b"\n"):
            raise EOFError("the client closed mid-request")
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name.strip():
            raise _Refusal(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    raise _Refusal(431, "too many headers")


class WebhookServer:
    """The HTTP side: ``POST <path>`` with Alertmanager's JSON, ``GET /healthz``.

    Bound on construction; :meth:`serve_forever` serves on the calling thread until
    :meth:`shutdown` (from another thread). Connections are served by one asyncio loop
    (plus one worker thread that runs :meth:`Remediator.handle`), so the threads stay the
    same however many clients connect.

    :param request_timeout: seconds a client has, from connecting, to send its whole
        request (head and body); a connection that stalls is closed when they run out.
    :param max_connections: connections open at once; at the limit a new connection
        closes the oldest one still sending its request (a stalled client, likely), or is
        closed itself when every open one is being answered.
    """

    def __init__(self, remediator: Remediator, *, host: str | None = None,
                 port: int | None = None, request_timeout: float = 10.0,
                 max_connections: int = 128) -> None:
        if not request_timeout > 0:
            raise ConfigurationError(f"WebhookServer.request_timeout must be > 0 seconds, "
                                     f"got {request_timeout!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) \
                or max_connections < 1:
            raise ConfigurationError(f"WebhookServer.max_connections must be an int >= 1, "
                                     f"got {max_connections!r}")
        self.remediator = remediator
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        config = remediator.config
        address = (host or config.host, config.port if port is None else port)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.create_server(address, family=family, backlog=128)
        self.server_address: tuple[Any, ...] = self.socket.getsockname()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopped = threading.Event()
        self._shutdown = False
        # insertion-ordered: the oldest connection still reading its request comes first
        self._reading: dict[asyncio.StreamWriter, None] = {}
        self._open: set[asyncio.StreamWriter] = set()
        self._errors = _Sampler(remediator.clock, _SAMPLE_SECONDS)
        # One thread for the decisions (threads start lazily): audit writes, and commands
        # when the remediator does not run them in the background, stay off the loop.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="remediate-http")

    @property
    def url(self) -> str:
        """The webhook URL to give Alertmanager."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host!s}:{port}{self.remediator.config.path}"

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until :meth:`shutdown`; ``poll_interval`` is accepted for compatibility."""
        try:
            asyncio.run(self._serve())
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait for it to return (call it from another thread)."""
        self._shutdown = True
        loop, stop = self._loop, self._stop
        if loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(stop.set)
        self._stopped.wait()

    def server_close(self) -> None:
        """Close the listening socket."""
        self.socket.close()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._shutdown:
            return
        executor = self._executor
        server = await asyncio.start_server(self._connection, sock=self.socket,
                                            limit=_MAX_LINE)
        flusher = asyncio.create_task(self._flush_refusals())
        try:
            await self._stop.wait()
        finally:
            flusher.cancel()
            server.close()
            for writer in list(self._open):
                writer.transport.abort()
            await server.wait_closed()
            await asyncio.get_running_loop().run_in_executor(executor, self.remediator.flush,
                                                             True)
            executor.shutdown(wait=True)

    async def _flush_refusals(self) -> None:
        # A flood that stops still gets its count written, at most _SAMPLE_SECONDS late.
        while True:
            await asyncio.sleep(_SAMPLE_SECONDS)
            self.remediator.flush()

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        if len(self._open) >= self.max_connections:
            if not self._reading:
                return False
            oldest = next(iter(self._reading))
            self._reading.pop(oldest)
            self._open.discard(oldest)
            oldest.transport.abort()
        self._open.add(writer)
        self._reading[writer] = None
        return True

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        if not self._admit(writer):
            writer.transport.abort()
            return
        try:
            await self._exchange(reader, writer)
        except _NETWORK_ERRORS:
            pass
        except Exception as exc:  # a bug here must not take the receiver down, nor flood
            suppressed = self._errors.take()
            if suppressed is not None:
                _log.error("remediate: a request failed (%d more failures not logged): %r",
                           suppressed, exc, exc_info=exc)
        finally:
            self._reading.pop(writer, None)
            self._open.discard(writer)
            writer.transport.abort()

    async def _exchange(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        try:
            async with asyncio.timeout(self.request_timeout):
                body = await self._read(reader, remote)
        except TimeoutError:
            return  # stalled: drop it, as said in the docstring; not worth a line
        except _Refusal as refusal:
            await self._answer(reader, writer, refusal.status, {"error": refusal.error})
            return
        if isinstance(body, tuple):
            await self._answer(reader, writer, *body)
            return
        # An authorised notification is being decided: no newcomer may close this one.
        self._reading.pop(writer, None)
        loop = asyncio.get_running_loop()
        status, answer = await loop.run_in_executor(self._executor, self._decide, body)
        await self._answer(reader, writer, status, answer)

    async def _read(self, reader: asyncio.StreamReader, remote: str,
                    ) -> bytes | tuple[int, dict[str, object]]:
        """An authorised notification's body, or the answer to give instead."""
        request = await _read_head(reader)
        if request is None:
            raise EOFError("the client closed without a request")
        remediator = self.remediator
        if request.method == "GET":
            if request.path == "/healthz":
                return 200, {"status": "ok"}
            return 404, {"error": "not found"}
        if request.method != "POST":
            return 405, {"error": "method not allowed"}
        if request.path != remediator.config.path:
            return 404, {"error": "not found"}
        # The token first, before the body is read: a request without it costs a header
        # parse, and a flood of them a sampled audit line.
        if not remediator.authorized(request.headers.get("authorization")):
            remediator.unauthorized(remote)
            return 401, {"error": "unauthorized"}
        if "transfer-encoding" in request.headers:
            remediator.audit(Decision(decision="refused", reason="no Content-Length"),
                             remote=remote)
            return 411, {"error": "Content-Length required"}
        text = request.headers.get("content-length", "0")
        if not text.isascii() or not text.isdigit():
            remediator.audit(Decision(decision="refused", reason="bad Content-Length"),
                             remote=remote)
            return 400, {"error": "bad Content-Length"}
        length = int(text)
        if length > _MAX_BODY:
            remediator.audit(Decision(decision="refused", reason="body too large"),
                             remote=remote)
            return 413, {"error": "body too large"}
        return await reader.readexactly(length)

    def _decide(self, body: bytes) -> tuple[int, dict[str, object]]:
        remediator = self.remediator
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            remediator.audit(Decision(decision="refused", reason="body is not JSON"))
            return 400, {"error": "body is not JSON"}
        decisions = remediator.handle(payload if isinstance(payload, dict) else {})
        return 200, {"decisions": [d.as_dict() for d in decisions]}

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      status: int, body: Mapping[str, object]) -> None:
        data = json.dumps(body).encode()
        writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + data)
        with contextlib.suppress(*_NETWORK_ERRORS):
            async with asyncio.timeout(_LINGER_SECONDS):
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                # Closing with unread bytes in the receive buffer resets the connection,
                # and the reset can overtake the answer (a 401 sent before the body was
                # read): drop what the client still sends, briefly (RFC 9112 9.6).
                dropped = 0
                while dropped < _LINGER_BYTES and (chunk := await reader.read(65536)):
                    dropped += len(chunk)
