"""The config centre: typed configuration in etcd, validated, hot-reloaded.

:class:`ConfigWatcher` reads one key (a JSON or YAML value), checks it against
the schema the application gives (a dataclass, or a pydantic model; see
:func:`validate_config` for the rules) and keeps following it. Every new value
is validated before it is applied; an invalid one (wrong type, out of range,
unknown field, broken JSON or YAML) is refused: the last good value stays, a
``ConfigRejected`` event is sent and one warning is logged, both naming the
key, the revision and the field::

    payment/limits: field 'rate.per_second': expected float, got str 'fast' (revision 42)

With ``prefix=True`` the configuration is spread over the keys of a prefix, one
key per field (``payment/limits/rate/per_second`` holds ``5``: field
``rate.per_second``; a sub-prefix is a nested dataclass). The keys are put
together and validated as a whole, and applied at one revision: each watch event
makes the watcher read the whole prefix as of that event's revision, so a change
to one key re-validates everything and a transaction that changes several keys
is applied once, never half. ``put_config(..., prefix=True)`` writes a value that
way, in one transaction.

A valid change is a ``ConfigChanged`` event (key, revision, old, new) and a call
of every subscriber, in revision order (one task applies the changes one after
the other; a failing subscriber is logged and never stops the others). Every
value put in force, changed or not, is also a ``ConfigApplied`` event (key,
revision, source): what the ``fournines_config_*`` Prometheus metrics follow.

With ``snapshot=`` each good value is written to a file (atomically: a
temporary file, fsync, rename) and read at start: a process that starts while
etcd is down runs with its last good configuration (``source == "snapshot"``),
then follows etcd once it is back (``source == "etcd"`` from the first listing on,
also when etcd still holds the very value saved). The watch itself is discovery's: a listing,
then a watch from the listing's revision + 1, re-listed after a compaction or a
broken stream, reconnected with a jittered backoff, probed when silent.

:func:`bind` makes a policy follow the configuration: its ``reconfigure`` (a
``TokenBucket``'s rate, a ``Retry``'s attempts, a ``CircuitBreaker``'s trip
strategy, ...) is called with the settings derived from each new value, an
atomic swap of the policy's settings that loses no permit.

:func:`put_config` validates before it writes; :func:`get_config` and
:func:`config_history` read. The same is on the command line:
``fournines config get|set|watch|history KEY --endpoints URL [--schema MODULE:CLASS]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar

from .._clock import Clock, system_clock
from .._errors import ConfigurationError, check_number
from .._events import ConfigApplied, ConfigChanged, ConfigRejected, Listener, dispatch
from .._files import json_document, read_text
from ..policies.backoff import Backoff
from ._schema import ConfigUnavailableError, ConfigValidationError, dump, parse, to_text, validate
from .etcd import (
    _DISCOVERY_BACKOFF,
    _cancel,
    _Connection,
    _keep_following,
    _targets,
    _watch_events,
    _write_atomically,
)

__all__ = [
    "ConfigRevision",
    "ConfigWatcher",
    "Reconfigurable",
    "bind",
    "config_history",
    "get_config",
    "put_config",
    "validate_config",
]

_log = logging.getLogger("fournines.config")

C = TypeVar("C")

Source = Literal["etcd", "snapshot", "default"]

SNAPSHOT_FORMAT = 1

Subscriber = Callable[[ConfigChanged], object]
"""A subscriber: called with each ``ConfigChanged`` (a coroutine function is awaited)."""


def validate_config(schema: type[C], value: str | bytes | object, key: str = "config") -> C:
    """``value`` checked against ``schema`` and built into one; no etcd involved.

    ``value`` is JSON or YAML text, or already parsed data (a dict). The rules:
    the annotations' types are checked strictly (``int`` is not ``bool``; a
    ``float`` field takes an ``int``), through nested dataclasses, ``X | None``,
    ``list``/``tuple``/``set``/``dict``, ``Literal`` and enums (by value);
    unknown fields are refused; missing fields take their defaults; the
    dataclass's ``__post_init__`` runs last. A pydantic model validates itself.

    :raises ConfigValidationError: naming ``key`` and the field path.
    """
    data = parse(value, key) if isinstance(value, str | bytes) else value
    return validate(schema, data, key)


class ConfigWatcher(Generic[C]):
    """One typed configuration, read from an etcd key and kept up to date.

    :param endpoints: etcd client URLs (one string or several members).
    :param key: the etcd key holding the value (JSON or YAML text); with
        ``prefix=True``, the prefix whose keys are the fields.
    :param schema: the configuration's type: a dataclass (frozen, ideally) or a
        pydantic model.
    :param default: the configuration used when etcd has no valid value and
        there is no snapshot (``None``: no default; :meth:`start` then raises).
    :param snapshot: a file holding the last good value (written after each
        change, read at start when etcd gives none).
    :param timeout: seconds each call to etcd may take.
    :param backoff: the wait between reconnection attempts.
    :param probe_interval: seconds without events after which the watch's
        connection is checked with a read.
    :param listeners: receive ``ConfigChanged``, ``ConfigApplied`` and
        ``ConfigRejected`` events.
    :param clock: where time and sleeps come from.
    :param rng: random source of the jitter.
    :param prefix: read every key under ``key`` (a ``/`` is added when missing),
        each one field: ``<key>/rate/per_second`` holds the JSON/YAML value of
        field ``rate.per_second`` (a sub-prefix is a nested dataclass; a key may
        also hold a whole sub-structure). The fields are validated as a whole and
        applied together at one revision: a change to one key re-validates
        everything, and a transaction that changes several keys is applied
        once, never half. A missing key's field takes its default; the prefix
        with no key at all is refused like a deleted key.

    Use it as an async context manager, or :meth:`start` and :meth:`aclose` it.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        key: str,
        schema: type[C],
        *,
        default: C | None = None,
        snapshot: str | os.PathLike[str] | None = None,
        timeout: float = 2.0,
        backoff: Backoff | None = None,
        probe_interval: float = 1.0,
        listeners: Sequence[Listener] = (),
        clock: Clock = system_clock,
        rng: random.Random | None = None,
        prefix: bool = False,
    ) -> None:
        check_number("ConfigWatcher", "timeout", timeout, minimum=0, exclusive_minimum=True)
        check_number("ConfigWatcher", "probe_interval", probe_interval, minimum=0,
                     exclusive_minimum=True)
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"ConfigWatcher.key must be a non-empty string, got {key!r}")
        if not isinstance(schema, type):
            raise ConfigurationError(
                f"ConfigWatcher.schema must be a dataclass or pydantic model, got {schema!r}")
        if default is not None and not isinstance(default, schema):
            raise ConfigurationError(
                f"ConfigWatcher.default must be a {schema.__name__}, got {default!r}")
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ConfigurationError(f"ConfigWatcher.backoff must be a Backoff, got {backoff!r}")
        self._connection = _Connection(_targets(endpoints, "ConfigWatcher"), timeout)
        if prefix and not key.endswith("/"):
            # Or "payment/limits" would also take the keys of "payment/limits-old/".
            key += "/"
        self._key = key
        self._key_bytes = key.encode()
        self._prefix = bool(prefix)
        # The (key, mod revision) pairs of the prefix last looked at: a re-listing
        # that finds them unchanged has nothing new to offer.
        self._versions: dict[bytes, int] | None = None
        self._schema = schema
        self._default = default
        self._snapshot = None if snapshot is None else Path(snapshot)
        self._timeout = timeout
        self._backoff = backoff or _DISCOVERY_BACKOFF
        self._probe_interval = float(probe_interval)
        self._listeners = tuple(listeners)
        self._clock = clock
        self._rng = rng or random.Random()
        self._current: C | None = None
        self._revision = 0
        self._source: Source | None = None
        # The newest etcd revision of the key looked at, applied or refused: a
        # re-listing after a reconnection finds it again and must not re-apply it.
        self._seen = 0
        self._done = 0
        self._start_error: ConfigValidationError | None = None
        self._subscribers: list[Subscriber] = []
        self._checks: list[Callable[[C], object]] = []
        self._in_sync = False
        self._reported = False
        self._listed = False
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    # -- inspection --------------------------------------------------------------------

    @property
    def key(self) -> str:
        """The etcd key followed."""
        return self._key

    @property
    def schema(self) -> type[C]:
        """The configuration's type."""
        return self._schema

    @property
    def current(self) -> C:
        """The configuration in force (the last good value).

        :raises ConfigUnavailableError: before :meth:`start` gave one.
        """
        if self._current is None:
            raise ConfigUnavailableError(f"{self._key}: no configuration yet (call start())")
        return self._current

    @property
    def revision(self) -> int:
        """The etcd revision of :attr:`current` (a snapshot's: the revision saved; 0: default)."""
        return self._revision

    @property
    def source(self) -> Source | None:
        """Where :attr:`current` came from: ``"etcd"``, ``"snapshot"`` or ``"default"``."""
        return self._source

    @property
    def in_sync(self) -> bool:
        """Whether the watch is live (changes in etcd are being followed)."""
        return self._in_sync

    def __repr__(self) -> str:
        return (f"ConfigWatcher({self._key!r}, revision={self._revision}, "
                f"source={self._source!r}, in_sync={self._in_sync})")

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Read the key (or else the snapshot, or else the default) and start following it.

        :raises ConfigValidationError: etcd's value is invalid and there is no
            snapshot or default to fall back on.
        :raises ConfigUnavailableError: etcd cannot be read (or has no value) and
            there is no snapshot or default.
        """
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._run(), name=f"fournines-config-{self._key}")
        await self._first.wait()
        if self._current is not None:
            return
        fallback = self._load_snapshot()
        if fallback is not None:
            value, revision = fallback
            _log.warning("fournines: config %s: etcd gave no valid value; using the last good "
                         "one from %s (revision %d)", self._key, self._snapshot, revision)
            await self._apply(value, revision, "snapshot", None)
        elif self._default is not None:
            await self._apply(self._default, 0, "default", None)
        else:
            await self.aclose()
            if self._start_error is not None:
                raise self._start_error
            raise ConfigUnavailableError(
                f"{self._key}: no configuration: etcd "
                f"{'has no value' if self._listed else 'cannot be reached'}, and there is "
                "no snapshot and no default")

    async def aclose(self) -> None:
        """Stop following etcd (:attr:`current` stays readable)."""
        task, self._task = self._task, None
        if task is not None:
            await _cancel(task)
        self._in_sync = False
        await self._connection.close()

    async def __aenter__(self) -> ConfigWatcher[C]:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    # -- subscribers -------------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` on every change from now on; returns the unsubscriber.

        Changes reach subscribers one at a time, in revision order: the next
        change waits until every subscriber has returned (coroutine functions
        are awaited). A subscriber that raises is logged and skipped; the
        others and the watcher go on.
        """
        if not callable(callback):
            raise ConfigurationError(f"subscribe() needs a callable, got {callback!r}")
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def add_check(self, check: Callable[[C], object]) -> Callable[[], None]:
        """Also refuse a new value when ``check(config)`` raises; returns the remover.

        Checks run after the schema's validation and before anything is applied,
        so a value a bound policy would refuse is refused as a whole (the
        watcher and every policy keep the last good value). A check raising
        ``ValueError`` or ``TypeError`` refuses; anything else is a bug in the
        check, logged, and refuses too.
        """
        if not callable(check):
            raise ConfigurationError(f"add_check() needs a callable, got {check!r}")
        self._checks.append(check)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._checks.remove(check)

        return remove

    async def wait_for_revision(self, revision: int) -> C:
        """Wait until ``revision`` (or a later one) is handled: applied or refused.

        Returns :attr:`current`. "Handled" means subscribers were called and the
        snapshot written. It waits as long as it takes (etcd may be down): wrap
        it in ``asyncio.wait_for`` for a limit.
        """
        async with self._changed:
            await self._changed.wait_for(lambda: self._done >= revision)
        return self.current

    # -- following etcd ----------------------------------------------------------------

    async def _run(self) -> None:
        await _keep_following(
            self._follow, connection=self._connection, backoff=self._backoff, rng=self._rng,
            clock=self._clock, interrupted=self._interrupted, listed=lambda: self._listed,
            first=self._first)

    async def _follow(self) -> None:
        if self._prefix:
            await self._follow_prefix()
            return
        self._listed = False
        client = await self._connection.client()
        key = self._key_bytes
        # A range of exactly one key: unlike get(), it answers with a header (the
        # store's revision) when the key is absent too.
        listing = await asyncio.wait_for(client.get_range(key, key + b"\0"), self._timeout)
        revision = listing.header.revision
        if len(listing):
            kv = listing[0]
            await self._offer(kv.value, kv.mod_revision)
        self._listed = True
        self._synced()
        self._first.set()
        async with contextlib.aclosing(_watch_events(
                client, key, prefix=False, start_revision=revision + 1, timeout=self._timeout,
                probe_interval=self._probe_interval, probed=lambda: None)) as events:
            async for event in events:
                kv = event.kv
                if event.kind == "DELETE":
                    await self._deleted(kv.mod_revision)
                else:
                    await self._offer(kv.value, kv.mod_revision)

    async def _offer(self, raw: bytes, revision: int) -> None:
        if revision <= self._seen:
            return
        try:
            value = validate(self._schema, parse(raw, self._key), self._key, revision)
            self._check(value, revision)
        except ConfigValidationError as exc:
            await self._refuse(exc, revision)
            return
        text = raw.decode("utf-8")
        await self._apply(value, revision, "etcd", text)

    async def _follow_prefix(self) -> None:
        self._listed = False
        client = await self._connection.client()
        prefix = self._key_bytes
        listing = await asyncio.wait_for(client.get_prefix(prefix), self._timeout)
        kvs = [(kv.key, kv.value, kv.mod_revision) for kv in listing]
        # The listing is the prefix as of the store's revision, which may be later
        # than every key's own (a key deleted since leaves no mod revision behind).
        if kvs or self._versions:
            await self._offer_prefix(kvs, listing.header.revision, listed=True)
        else:
            self._versions = {}
        self._listed = True
        self._synced()
        self._first.set()
        async with contextlib.aclosing(_watch_events(
                client, prefix, prefix=True, start_revision=listing.header.revision + 1,
                timeout=self._timeout, probe_interval=self._probe_interval,
                probed=lambda: None)) as events:
            async for event in events:
                revision = event.kv.mod_revision
                if revision <= self._seen:
                    continue  # another key of a transaction already read whole
                # The whole prefix as of this event's revision: every key a
                # transaction changed is in it, so it is applied once, never half.
                await self._offer_prefix(*await self._range_at(client, revision))

    async def _range_at(self, client: Any,
                        revision: int) -> tuple[list[tuple[bytes, bytes, int]], int]:
        prefix = self._key_bytes  # ends with "/": its range's end is the next byte up
        rpc = _rpc()
        try:
            response = await asyncio.wait_for(client.kvstub.Range(
                rpc.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0", revision=revision),
                timeout=self._timeout, metadata=client.metadata), self._timeout)
        except Exception as exc:
            if "compacted" not in str(exc):
                raise
            # Compacted while the events waited (a slow subscriber): the newest
            # state will do; the events up to it are then skipped as seen.
            response = await asyncio.wait_for(client.kvstub.Range(
                rpc.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"),
                timeout=self._timeout, metadata=client.metadata), self._timeout)
            revision = response.header.revision
        return [(kv.key, kv.value, kv.mod_revision) for kv in response.kvs], revision

    async def _offer_prefix(self, kvs: list[tuple[bytes, bytes, int]], revision: int, *,
                            listed: bool = False) -> None:
        versions = {key: mod for key, _, mod in kvs}
        if listed and versions == self._versions:
            return
        self._versions = versions
        if revision <= self._seen:
            return
        try:
            if not kvs:
                raise ConfigValidationError(self._key, "", "every key under the prefix was "
                                            "deleted", revision)
            data = _assemble(self._key, kvs, revision)
            value = validate(self._schema, data, self._key, revision)
            self._check(value, revision)
        except ConfigValidationError as exc:
            await self._refuse(exc, revision)
            return
        await self._apply(value, revision, "etcd", json.dumps(data, ensure_ascii=False))

    def _check(self, value: C, revision: int) -> None:
        for check in list(self._checks):
            try:
                check(value)
            except (ValueError, TypeError) as exc:
                raise ConfigValidationError(self._key, "", f"refused by a check: {exc}",
                                            revision) from None
            except Exception as exc:
                _log.exception("fournines: config %s: check %r failed on revision %d",
                               self._key, check, revision)
                raise ConfigValidationError(self._key, "", f"a check failed: {exc!r}",
                                            revision) from None

    async def _refuse(self, exc: ConfigValidationError, revision: int) -> None:
        exc.revision = revision
        if self._current is None:
            self._start_error = exc
        kept = ("" if self._current is None else
                f", keeping revision {self._revision} ({self._source})")
        _log.warning("fournines: config refused at revision %d%s: %s", revision, kept, exc)
        dispatch(self._listeners, ConfigRejected(
            policy="config", name=self._key, key=self._key, revision=revision,
            field=exc.field, problem=exc.problem, error=exc))
        await self._seen_up_to(revision)

    async def _deleted(self, revision: int) -> None:
        if revision <= self._seen:
            return
        error = ConfigValidationError(self._key, "", "the key was deleted", revision)
        await self._refuse(error, revision)

    async def _apply(self, value: C, revision: int, source: Source, text: str | None) -> None:
        old = self._current
        self._current = value
        self._revision = revision
        self._source = source
        if source == "etcd":
            await self._seen_up_to(revision, notify=False)
        if old is None or value != old:
            event = ConfigChanged(policy="config", name=self._key, key=self._key,
                                  revision=revision, old=old, new=value, source=source)
            _log.info("fournines: config %s now at revision %d (%s)", self._key, revision,
                      source)
            dispatch(self._listeners, event)
            for subscriber in list(self._subscribers):
                try:
                    result = subscriber(event)
                    if inspect.isawaitable(result):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    _log.exception("fournines: config %s: subscriber %r failed on revision %d",
                                   self._key, subscriber, revision)
        dispatch(self._listeners, ConfigApplied(policy="config", name=self._key, key=self._key,
                                                revision=revision, source=source))
        # The snapshot after the subscribers: a change reaches the service first, and
        # a crash in between only leaves the snapshot one value behind.
        if source == "etcd":
            await self._save(text, revision)
            await self._seen_up_to(revision)
        else:
            # Not a revision seen in etcd: the listing that finds it there once etcd
            # answers must apply it again, as etcd's (or source stays "snapshot").
            await self._handled(revision)

    async def _seen_up_to(self, revision: int, *, notify: bool = True) -> None:
        self._seen = max(self._seen, revision)
        if notify:
            await self._handled(revision)

    async def _handled(self, revision: int) -> None:
        # Waiters are told only once the change is wholly handled (subscribers
        # called, snapshot written), not when it is merely claimed.
        self._done = max(self._done, revision)
        async with self._changed:
            self._changed.notify_all()

    def _synced(self) -> None:
        self._in_sync = True
        self._reported = False

    def _interrupted(self, reason: str, exc: BaseException) -> None:
        if self._in_sync or not self._reported:
            self._in_sync = False
            self._reported = True
            _log.warning("fournines: config %s lost its watch (%s: %r); keeping revision %d",
                         self._key, reason, exc, self._revision)

    # -- snapshot ----------------------------------------------------------------------

    async def _save(self, text: str | None, revision: int) -> None:
        if self._snapshot is None or text is None:
            return
        data = json.dumps({"format": SNAPSHOT_FORMAT, "key": self._key, "revision": revision,
                           "saved_at": self._clock.time(), "value": text},
                          indent=1, ensure_ascii=False)
        try:
            await asyncio.to_thread(_write_atomically, self._snapshot, data)
        except OSError as exc:
            _log.warning("fournines: could not write the config snapshot %s: %s",
                         self._snapshot, exc)

    def _load_snapshot(self) -> tuple[C, int] | None:
        path = self._snapshot
        if path is None or not path.exists():
            return None
        try:
            data = json_document(read_text(path))
            if not isinstance(data, dict) or data.get("key") != self._key:
                raise ConfigurationError(f"not a snapshot of key {self._key!r}")
            revision = int(data["revision"])
            value = validate(self._schema, parse(str(data["value"]), self._key), self._key,
                             revision)
        except (ConfigurationError, KeyError, TypeError, ValueError) as exc:
            _log.warning("fournines: ignoring the config snapshot %s: %s", path, exc)
            return None
        return value, revision


def _rpc() -> Any:
    from aetcd import rpc  # type: ignore[import-untyped]  # noqa: PLC0415 - optional dependency

    return rpc


def _assemble(prefix: str, kvs: list[tuple[bytes, bytes, int]], revision: int) -> object:
    """The data of a prefix's keys: ``<prefix>a/b`` holding ``5`` is ``{"a": {"b": 5}}``."""
    data: dict[str, Any] = {}
    made: set[int] = {id(data)}  # the dicts built from sub-prefixes (not parsed values)
    for key, raw, _ in sorted(kvs):
        name = key[len(prefix.encode()):].decode("utf-8", "replace")
        parts = name.split("/")
        path = ".".join(parts)
        if not all(parts):
            raise ConfigValidationError(prefix, path, f"key {key.decode('utf-8', 'replace')!r} "
                                        "is no field path (an empty segment)", revision)
        try:
            value = parse(raw, prefix)
        except ConfigValidationError as exc:
            raise ConfigValidationError(prefix, path, exc.problem, revision) from None
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if id(child) not in made:
                if not isinstance(child, dict) or child:
                    raise ConfigValidationError(
                        prefix, ".".join(parts[:depth + 1]),
                        "has both a value of its own and keys under it", revision)
                made.add(id(child))
            node = child
        if parts[-1] in node:
            raise ConfigValidationError(prefix, path, "has both a value of its own and keys "
                                        "under it", revision)
        node[parts[-1]] = value
    return data


# -- policies following configuration ---------------------------------------------------


class Reconfigurable(Protocol):
    """A policy whose settings can be swapped at run time.

    ``TokenBucket``, ``Gcra``, ``Retry`` and ``CircuitBreaker`` are.
    """

    def reconfigure(self, *args: Any, **settings: Any) -> None:
        """Check ``settings`` and swap them in atomically, or raise and change nothing.

        With ``check_only=True``, only check them.
        """


def bind(watcher: ConfigWatcher[C], policy: Reconfigurable,
         settings: Callable[[C], Mapping[str, Any]]) -> Callable[[], None]:
    """Make ``policy`` follow ``watcher``: ``policy.reconfigure(**settings(config))``.

    Applied at once with the current configuration (an error then is raised:
    the binding is wrong), then after every change. A new value whose settings
    the policy would refuse (``settings`` raises, or ``reconfigure(...,
    check_only=True)`` does) is refused by the watcher as a whole, before
    anything is applied. Returns the unbinder::

        bind(watcher, limiter, lambda cfg: {"rate": cfg.rate.per_second})
        bind(watcher, retry, lambda cfg: {"attempts": cfg.retry_attempts})
        bind(watcher, breaker, lambda cfg: {"trip": ConsecutiveFailures(threshold=cfg.trip)})
    """
    policy.reconfigure(**settings(watcher.current))

    def check(config: C) -> None:
        try:
            policy.reconfigure(**settings(config), check_only=True)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{policy!r}: {exc}") from None

    def follow(event: ConfigChanged) -> None:
        try:
            policy.reconfigure(**settings(event.new))  # type: ignore[arg-type]
        except Exception as exc:  # passed its check: only a policy changed meanwhile
            _log.error("fournines: config %s revision %d: %r refused its new settings: %s",
                       event.key, event.revision, policy, exc)

    remove_check = watcher.add_check(check)
    unsubscribe = watcher.subscribe(follow)

    def unbind() -> None:
        remove_check()
        unsubscribe()

    return unbind


# -- one-shot operations ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigRevision:
    """One past value of a key: its etcd ``revision`` (mod revision) and stored ``value`` text."""

    revision: int
    value: str
    version: int


async def _once(endpoints: str | Sequence[str], timeout: float,
                operation: Callable[[Any], Awaitable[Any]], what: str) -> Any:
    targets = _targets(endpoints, what)
    connection = _Connection(targets, timeout)
    last: BaseException | None = None
    try:
        for _ in targets:
            try:
                return await connection.call(operation)
            except ConfigurationError:
                raise
            except Exception as exc:
                last = exc
                await connection.reset()
    finally:
        await connection.close()
    reason = "timed out" if isinstance(last, TimeoutError) else repr(last)
    raise ConfigUnavailableError(f"etcd cannot be reached at {endpoints!r}: {reason}")


async def put_config(endpoints: str | Sequence[str], key: str, value: object, *,
                     schema: type | None = None, timeout: float = 2.0,
                     prefix: bool = False) -> int:
    """Validate ``value`` and write it to ``key``; returns the etcd revision written.

    ``value`` is a config object (stored as JSON), plain data (a dict), or
    JSON/YAML text (stored as given). With ``schema`` the value must pass
    :func:`validate_config` first; text must parse in any case.

    With ``prefix=True`` the value is written as a ``ConfigWatcher(...,
    prefix=True)`` reads it: one key per field under ``key`` (nested mappings
    become sub-prefixes, every other value is the field's JSON), in one
    transaction that also deletes the prefix's other keys.

    :raises ConfigValidationError: the value is refused (nothing is written).
    :raises ConfigUnavailableError: etcd cannot be reached.
    """
    if isinstance(value, str | bytes):
        text = value.decode("utf-8") if isinstance(value, bytes) else value
        data = parse(text, key)
    else:
        data = dump(value)
        text = to_text(value)
    if schema is not None:
        validate(schema, data, key)
    if prefix:
        return await _put_prefix(endpoints, key, data, timeout)
    encoded = key.encode(), text.encode("utf-8")
    put = await _once(endpoints, timeout, lambda c: c.put(*encoded), "put_config")
    return int(put.header.revision)


async def _put_prefix(endpoints: str | Sequence[str], key: str, data: object,
                      timeout: float) -> int:
    if not isinstance(data, Mapping) or not data:
        raise ConfigValidationError(key, "", "a prefix needs a mapping of fields, got "
                                    f"{type(data).__name__}")
    base = key if key.endswith("/") else key + "/"
    fields: dict[bytes, bytes] = {}

    def flatten(node: Mapping[str, Any], path: str) -> None:
        for name, item in node.items():
            if isinstance(item, Mapping) and item:
                flatten(item, f"{path}{name}/")
            else:
                fields[f"{path}{name}".encode()] = json.dumps(item, ensure_ascii=False).encode()

    flatten(data, base)
    start = base.encode()

    async def write(client: Any) -> int:
        rpc = _rpc()
        listing = await client.get_prefix(start, keys_only=True)
        # etcd refuses a put inside a range deleted by the same transaction: the
        # stale keys are deleted one by one.
        ops = [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=kv.key))
               for kv in listing if kv.key not in fields]
        ops += [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v))
                for k, v in fields.items()]
        response = await client.kvstub.Txn(rpc.TxnRequest(success=ops), timeout=timeout,
                                           metadata=client.metadata)
        return int(response.header.revision)

    revision: int = await _once(endpoints, timeout, write, "put_config")
    return revision


async def get_config(endpoints: str | Sequence[str], key: str, *, schema: type[C] | None = None,
                     timeout: float = 2.0, prefix: bool = False) -> tuple[Any, int]:
    """The value of ``key`` and its revision: validated into ``schema``, or the parsed data.

    With ``prefix=True``, the fields stored under the prefix ``key`` put together
    as ``ConfigWatcher(..., prefix=True)`` does, and the store's revision they were
    read at.

    :raises ConfigUnavailableError: etcd cannot be reached, or the key has no value.
    :raises ConfigValidationError: the value does not parse or fit ``schema``.
    """
    if prefix:
        base = key if key.endswith("/") else key + "/"
        listing = await _once(endpoints, timeout, lambda c: c.get_prefix(base.encode()),
                              "get_config")
        revision = int(listing.header.revision)
        kvs = [(kv.key, kv.value, kv.mod_revision) for kv in listing]
        if not kvs:
            raise ConfigUnavailableError(f"{base}: no key under the prefix in etcd")
        data = _assemble(base, kvs, revision)
        if schema is None:
            return data, revision
        return validate(schema, data, base, revision), revision
    got = await _once(endpoints, timeout, lambda c: c.get(key.encode()), "get_config")
    if got is None:
        raise ConfigUnavailableError(f"{key}: no value in etcd")
    data = parse(got.value, key)
    revision = int(got.mod_revision)
    if schema is None:
        return data, revision
    return validate(schema, data, key, revision), revision


async def config_history(endpoints: str | Sequence[str], key: str, *, limit: int = 20,
                         timeout: float = 2.0, prefix: bool = False) -> list[ConfigRevision]:
    """The key's past values, newest first, as far back as etcd still keeps them.

    History ends at the last compaction, at ``limit`` values, or where the key
    was last created (a deleted and re-created key's older life is not followed).

    With ``prefix=True``, the past states of the whole prefix (one key per field,
    as ``ConfigWatcher(..., prefix=True)`` reads it): one entry per revision that
    changed a key under it, deletions included, its ``value`` the fields put
    together as JSON (``{}`` once every key was deleted) and its ``version`` the
    number of keys. The oldest entry is the state at the last compaction.
    """
    check_number("config_history", "limit", limit, minimum=1, integer=True)
    if prefix:
        base = (key if key.endswith("/") else key + "/").encode()
        entries: list[ConfigRevision] = await _once(
            endpoints, timeout, lambda c: _prefix_history(c, base, timeout), "config_history")
        return entries[:limit]

    async def read(client: Any) -> list[ConfigRevision]:
        rpc = _rpc()
        found: list[ConfigRevision] = []
        revision = 0  # 0: the newest
        while len(found) < limit:
            request = rpc.RangeRequest(key=key.encode(), revision=revision)
            try:
                response = await client.kvstub.Range(request, timeout=timeout,
                                                     metadata=client.metadata)
            except Exception as exc:
                if "compacted" in str(exc):
                    break
                raise
            if not response.kvs:
                break
            kv = response.kvs[0]
            found.append(ConfigRevision(revision=kv.mod_revision,
                                        value=kv.value.decode("utf-8", "replace"),
                                        version=kv.version))
            if kv.version <= 1:
                break
            revision = kv.mod_revision - 1
        return found

    result: list[ConfigRevision] = await _once(endpoints, timeout, read, "config_history")
    return result



async def _prefix_history(client: Any, base: bytes, timeout: float) -> list[ConfigRevision]:
    """Every state the prefix went through since the last compaction, newest first.

    Replays the watch history: the state at the compaction revision (a range at
    that revision), then each event after it. A watch has no end of history
    marker, so the replay stops once it has reached the state read at first and
    no event follows for a moment (or after ``timeout`` without any event).
    """
    rpc = _rpc()
    range_end = base[:-1] + b"0"  # base ends with "/": its range ends at the next byte up
    head = await asyncio.wait_for(client.get_prefix(base), timeout)
    head_state = {kv.key: kv.value for kv in head}
    head_mod = max((kv.mod_revision for kv in head), default=0)
    start = 1
    while True:
        state: dict[bytes, bytes] = {}
        states: dict[int, dict[bytes, bytes]] = {}
        if start > 1:
            # The compaction keeps each key's value as of its revision: the oldest state.
            response = await asyncio.wait_for(client.kvstub.Range(
                rpc.RangeRequest(key=base, range_end=range_end, revision=start - 1),
                timeout=timeout, metadata=client.metadata), timeout)
            state = {kv.key: kv.value for kv in response.kvs}
            if state:
                states[max(kv.mod_revision for kv in response.kvs)] = dict(state)
        try:
            await _replay(client, base, start, state, states, head_state, head_mod, timeout)
        except Exception as exc:
            compacted = getattr(exc, "compacted_revision", None)
            if not isinstance(compacted, int) or compacted < start:
                raise
            start = compacted + 1
            continue
        return [ConfigRevision(revision=revision, value=_prefix_text(base, kvs, revision),
                               version=len(kvs))
                for revision, kvs in sorted(states.items(), reverse=True)]


async def _replay(client: Any, base: bytes, start: int, state: dict[bytes, bytes],
                  states: dict[int, dict[bytes, bytes]], head_state: dict[bytes, bytes],
                  head_mod: int, timeout: float) -> None:
    watch = await asyncio.wait_for(client.watch_prefix(base, start_revision=start), timeout)
    last = start - 1
    try:
        iterator = aiter(watch)
        while True:
            # Caught up with the first read: only a key created and deleted since can
            # still come, and it would come at once.
            caught_up = state == head_state and last >= head_mod
            try:
                event = await asyncio.wait_for(anext(iterator), 0.3 if caught_up else timeout)
            except (TimeoutError, StopAsyncIteration):
                return
            kv = event.kv
            if event.kind == "DELETE":
                state.pop(kv.key, None)
            else:
                state[kv.key] = kv.value
            last = kv.mod_revision
            states[last] = dict(state)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(watch.cancel(), timeout)


def _prefix_text(base: bytes, state: dict[bytes, bytes], revision: int) -> str:
    kvs = [(key, value, revision) for key, value in state.items()]
    try:
        data = _assemble(base.decode(), kvs, revision)
    except ConfigValidationError:
        # A past state that no watcher could read (a field with keys under it):
        # shown as it was stored, one entry per key.
        data = {key[len(base):].decode("utf-8", "replace"): value.decode("utf-8", "replace")
                for key, value in sorted(state.items())}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
