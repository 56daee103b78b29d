"""The etcd backend: registration that never gives up, and discovery that never goes blank.

:class:`EtcdRegistry` puts each instance's record (see
:mod:`fournines.discovery.registry` for the key layout and value format) under
a lease of ``ttl`` seconds (10 by default) and keeps the lease alive itself,
every ``ttl / 3`` seconds (aetcd has no background keepalive). At each
keepalive it also reads its key back, so a record deleted or overwritten by
someone else is put back within ``ttl / 3``. When the lease is lost (expired,
revoked, etcd restarted without it), a keepalive fails or etcd is unreachable,
it grants a new lease and puts the record again, after a jittered backoff, for
as long as the process lives: it never stops trying. Each change is a
``RegistrationChanged`` event (``registered``, ``lost``, ``re-registered``,
``deregistered``) and :attr:`EtcdRegistry.is_registered` says where it stands.

:class:`EtcdEndpoints` is an endpoint source for the client balancer
(``P2CBalancer``, ``AsyncBalancingTransport``): it lists the service's prefix,
then watches from the listing's revision + 1. When the watch breaks (etcd
restarted, a member died, the stream closed) or falls behind a compaction, it
lists again, applies only the difference (``EndpointsChanged`` events name the
endpoints added and removed, nothing is sent when nothing changed) and watches
again from the new revision, reconnecting with a jittered backoff. While etcd
cannot be reached it keeps serving the last endpoints it knew, never an empty
list because etcd blinked; :attr:`EtcdEndpoints.stale_seconds` says for how
long that view has gone unconfirmed. With ``snapshot=`` it writes the view to a
file (atomically) after each change and reads it at start, so a process that
starts while etcd is down still finds its peers.

A watch stream that hangs (etcd stopped, not dead: the TCP connection stays
open) sends no error; the watcher therefore reads one key every
``probe_interval`` seconds while no event arrives, and treats a probe that
fails or times out as a broken stream.

Every call to etcd has a timeout (``timeout``, 2 s by default); after a failed
call the connection is closed and the next one goes to the next URL given, so
a cluster's dead member is left for a live one. Needs the ``etcd`` extra
(``pip install 'fournines[etcd]'``, the aetcd client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .._clock import Clock, system_clock
from .._errors import ConfigurationError, check_number
from .._events import (
    DiscoveryInterrupted,
    DiscoveryResumed,
    EndpointsChanged,
    Listener,
    RegistrationChanged,
    dispatch,
)
from .._files import json_document, read_text
from ..policies.backoff import Backoff
from .registry import DEFAULT_PREFIX, Instance, addresses, service_prefix

__all__ = ["EtcdEndpoints", "EtcdRegistry"]

_log = logging.getLogger("fournines.discovery")

T = TypeVar("T")

_REGISTRY_BACKOFF = Backoff(initial=0.1, cap=5.0, jitter="full")
"""Registration attempts: a blink is retried within 100 ms, an outage at most every 5 s
(and at most every ``ttl / 3``, so that a returning etcd has the record within a TTL)."""

_DISCOVERY_BACKOFF = Backoff(initial=0.1, cap=1.0, jitter="full")
"""Reconnections of a watcher: at most a second apart, so that once etcd is back a new
instance is seen within about a second (full jitter spreads the clients' attempts)."""

SNAPSHOT_FORMAT = 1


def _targets(endpoints: str | Sequence[str], owner: str) -> list[tuple[str, int]]:
    urls = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    if not urls:
        raise ConfigurationError(f"{owner}.endpoints must name at least one etcd URL")
    targets = []
    for url in urls:
        parts = urlsplit(url if "//" in url else f"http://{url}")
        try:
            port = parts.port or 2379
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "") or not parts.hostname or port < 0:
            raise ConfigurationError(
                f"{owner}.endpoints must be etcd client URLs like 'http://127.0.0.1:2379', "
                f"got {url!r}")
        targets.append((parts.hostname, port))
    return targets


class _Connection:
    """One aetcd client at a time, over the given members; a failure moves to the next.

    A fresh client after each failure instead of gRPC's own reconnect: gRPC backs
    off up to two minutes between attempts, far longer than an etcd restart.
    """

    def __init__(self, targets: list[tuple[str, int]], timeout: float) -> None:
        self._targets = targets
        self._index = 0
        self._timeout = timeout
        self._client: Any = None

    async def client(self) -> Any:
        if self._client is None:
            try:
                import aetcd  # type: ignore[import-untyped]  # noqa: PLC0415 - optional
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise ConfigurationError(
                    "the etcd backend needs aetcd: pip install 'fournines[etcd]'") from exc
            host, port = self._targets[self._index]
            # A subchannel of its own: gRPC shares them process-wide by default, and a
            # fresh client would inherit the reconnect backoff another client's failures
            # built up, failing at once for a while after etcd is back.
            client = aetcd.Client(host=host, port=port, timeout=self._timeout,
                                  options={"grpc.use_local_subchannel_pool": 1})
            await asyncio.wait_for(client.connect(), self._timeout)
            self._client = client
        return self._client

    async def call(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        client = await self.client()
        return await asyncio.wait_for(operation(client), self._timeout)

    async def reset(self) -> None:
        client, self._client = self._client, None
        self._index = (self._index + 1) % len(self._targets)
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), self._timeout)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), self._timeout)


class _Registration:
    """What the registry keeps for one instance (all of it touched by one task only)."""

    __slots__ = ("attempted", "confirmed_at", "ever", "instance", "key", "lease", "lost_reason",
                 "registered", "task", "value")

    def __init__(self, instance: Instance, prefix: str) -> None:
        self.instance = instance
        self.key = instance.key(prefix).encode()
        self.value = instance.to_json().encode()
        self.lease: int | None = None
        self.registered = False
        self.ever = False
        self.confirmed_at = 0.0
        self.lost_reason: str | None = None
        self.attempted = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class EtcdRegistry:
    """Register instances in etcd under leases kept alive by fournines, forever.

    :param endpoints: etcd client URLs (one string or several members).
    :param ttl: seconds a record outlives its process's last keepalive (etcd's
        lease TTL; rounded up to whole seconds). Keepalives go every ``ttl / 3``.
    :param prefix: the key prefix (see :data:`~fournines.discovery.DEFAULT_PREFIX`).
    :param timeout: seconds each call to etcd may take.
    :param backoff: the wait between attempts after a failure (jittered, 0.1 s
        doubling up to 5 s, and never longer than ``ttl / 3``: the lease may still
        be saved, and once etcd is back the record is in it again within a TTL).
    :param listeners: receive ``RegistrationChanged`` events.
    :param clock: where time and sleeps come from.
    :param rng: random source of the jitter.

    Use it as an async context manager, or call :meth:`aclose` (which
    deregisters everything, unless told not to).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = "http://127.0.0.1:2379",
        *,
        ttl: float = 10.0,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 2.0,
        backoff: Backoff | None = None,
        listeners: Sequence[Listener] = (),
        clock: Clock = system_clock,
        rng: random.Random | None = None,
    ) -> None:
        check_number("EtcdRegistry", "ttl", ttl, minimum=1)
        check_number("EtcdRegistry", "timeout", timeout, minimum=0, exclusive_minimum=True)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ConfigurationError(f"EtcdRegistry.backoff must be a Backoff, got {backoff!r}")
        self._urls = endpoints
        self._connection = _Connection(_targets(endpoints, "EtcdRegistry"), timeout)
        self._ttl = float(ttl)
        self._grant_ttl = math.ceil(ttl)
        self._interval = self._ttl / 3
        self._prefix = prefix
        self._timeout = timeout
        self._backoff = backoff or _REGISTRY_BACKOFF
        self._listeners = tuple(listeners)
        self._clock = clock
        self._rng = rng or random.Random()
        self._registrations: dict[tuple[str, str], _Registration] = {}

    @property
    def ttl(self) -> float:
        """Seconds a record outlives the last keepalive."""
        return self._ttl

    @property
    def is_registered(self) -> bool:
        """Whether every instance asked for is in etcd now (``False`` with none asked for).

        "Now" is as of the last keepalive (at most ``ttl / 3`` ago); an instance
        counts as lost after a whole ``ttl`` without a successful keepalive.
        """
        regs = self._registrations.values()
        return bool(regs) and all(r.registered for r in regs)

    def registered(self, instance: Instance) -> bool:
        """Whether ``instance`` (by service and id) is registered now."""
        reg = self._registrations.get((instance.service, instance.id))
        return reg is not None and reg.registered

    async def register(self, instance: Instance) -> bool:
        """Put ``instance``'s record under a lease and keep it there until deregistered.

        Returns after the first attempt: ``True`` if the record is in etcd,
        ``False`` if etcd could not be reached (the registry keeps trying, and
        sends ``registered`` when it succeeds). Registering an instance again
        (same service and id) replaces its record.
        """
        key = (instance.service, instance.id)
        old = self._registrations.pop(key, None)
        if old is not None:
            await self._stop(old)
        reg = _Registration(instance, self._prefix)
        if old is not None:
            # Keep the lease: revoking it would delete the key, and watchers would see
            # the instance leave and come back for a mere update of its record.
            reg.lease = old.lease
        self._registrations[key] = reg
        reg.task = asyncio.create_task(self._keep(reg), name=f"fournines-keepalive-{instance.id}")
        await reg.attempted.wait()
        return reg.registered

    async def deregister(self, instance: Instance | None = None) -> None:
        """Stop keeping ``instance`` (``None``: all) alive, revoke its lease, delete its key.

        Call it first thing on drain: clients watching stop sending at once,
        while the server still accepts. It never raises: if etcd cannot be
        reached the lease expires by itself within ``ttl``.
        """
        if instance is None:
            regs = list(self._registrations.values())
            self._registrations.clear()
        else:
            reg = self._registrations.pop((instance.service, instance.id), None)
            regs = [] if reg is None else [reg]
        for reg in regs:
            await self._stop(reg)
            try:
                await self._remove(reg)
            except Exception as exc:
                _log.warning("fournines: could not deregister %s from etcd (%r); its lease "
                             "expires within %gs", reg.key.decode(), exc, self._ttl)
                await self._connection.reset()
            reg.registered = False
            dispatch(self._listeners, RegistrationChanged(
                policy="registry", name=reg.instance.service, kind="deregistered",
                instance=reg.instance.id))

    async def watch(self, service: str) -> AsyncIterator[tuple[Instance, ...]]:
        """The instances of ``service`` in etcd: the current set, then each changed set.

        Runs its own :class:`EtcdEndpoints` (same URLs, prefix and timeout).
        """
        source = EtcdEndpoints(self._urls, service, prefix=self._prefix, timeout=self._timeout,
                               clock=self._clock)
        async with source:
            async for instances in source.changes():
                yield instances

    async def aclose(self, *, deregister: bool = True) -> None:
        """Deregister everything (or, with ``deregister=False``, just stop the keepalives).

        Without deregistering, the records stay until their leases expire: what
        a crashed process leaves behind.
        """
        if deregister:
            await self.deregister()
        else:
            regs = list(self._registrations.values())
            self._registrations.clear()
            for reg in regs:
                await self._stop(reg)
        await self._connection.close()

    async def __aenter__(self) -> EtcdRegistry:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (f"EtcdRegistry({self._urls!r}, ttl={self._ttl:g}, "
                f"instances={len(self._registrations)}, registered={self.is_registered})")

    async def _remove(self, reg: _Registration) -> None:
        # Revoking the lease deletes the key with it; the delete covers a record that
        # someone re-put without our lease.
        lease, key = reg.lease, reg.key
        if lease is not None:
            await self._connection.call(lambda c: c.revoke_lease(lease))
        await self._connection.call(lambda c: c.delete(key))

    async def _stop(self, reg: _Registration) -> None:
        task, reg.task = reg.task, None
        if task is not None:
            await _cancel(task)

    async def _keep(self, reg: _Registration) -> None:
        failures, previous = 0, 0.0
        while True:
            try:
                await self._step(reg)
                failures, previous = 0, 0.0
                delay = self._interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                _log.debug("fournines: keepalive of %s failed: %r", reg.key.decode(), exc)
                await self._connection.reset()
                if reg.registered and self._clock.monotonic() - reg.confirmed_at >= self._ttl:
                    self._lost(reg, "unreachable")
                delay = previous = self._backoff.delay(failures, previous, self._rng)
                # Never longer than ttl / 3: while the lease may still be alive, to save
                # it; after, so that once etcd is back the record is again within a TTL.
                delay = min(delay, self._interval)
            finally:
                reg.attempted.set()
            await self._clock.asleep(delay)

    async def _step(self, reg: _Registration) -> None:
        call = self._connection.call
        if reg.lease is not None:
            lease = reg.lease
            reply = await call(lambda c: c.refresh_lease(lease))
            if reply is None or reply.TTL <= 0:
                self._lost(reg, "lease expired")
                reg.lease = None
        if reg.lease is None:
            granted = await call(lambda c: c.lease(self._grant_ttl))
            reg.lease = granted.id
            await self._put(reg)
            return
        current = await call(lambda c: c.get(reg.key))
        if current is None:
            self._lost(reg, "key deleted")
            await self._put(reg)
        elif current.lease != reg.lease or current.value != reg.value:
            self._lost(reg, "key changed")
            await self._put(reg)
        else:
            self._confirm(reg)

    async def _put(self, reg: _Registration) -> None:
        lease = reg.lease
        await self._connection.call(lambda c: c.put(reg.key, reg.value, lease=lease))
        self._confirm(reg)

    def _confirm(self, reg: _Registration) -> None:
        reg.confirmed_at = self._clock.monotonic()
        if reg.registered:
            return
        reg.registered = True
        kind = "re-registered" if reg.ever else "registered"
        reg.ever = True
        dispatch(self._listeners, RegistrationChanged(
            policy="registry", name=reg.instance.service, kind=kind, instance=reg.instance.id,
            reason=reg.lost_reason if kind == "re-registered" else None))

    def _lost(self, reg: _Registration, reason: str) -> None:
        reg.lost_reason = reason
        if not reg.registered:
            return
        reg.registered = False
        # Lost again and again with "key changed": another process registers the same id.
        _log.warning("fournines: registration of %s lost (%s); registering again",
                     reg.key.decode(), reason)
        dispatch(self._listeners, RegistrationChanged(
            policy="registry", name=reg.instance.service, kind="lost", instance=reg.instance.id,
            reason=reason))


class _Broken(Exception):
    """The watch stream ended or stopped answering."""


class EtcdEndpoints:
    """The live endpoints of one service in etcd, for the client balancer.

    :param endpoints: etcd client URLs (one string or several members).
    :param service: the service whose instances are followed.
    :param prefix: the key prefix (see :data:`~fournines.discovery.DEFAULT_PREFIX`).
    :param timeout: seconds each call to etcd may take.
    :param backoff: the wait between reconnection attempts (jittered, 0.1 s
        doubling up to 1 s).
    :param snapshot: a file to keep the last known instances in (written
        atomically after each change, read at start when etcd cannot be).
    :param probe_interval: seconds without events after which the watch's
        connection is checked with a read.
    :param listeners: receive ``EndpointsChanged``, ``DiscoveryInterrupted``
        and ``DiscoveryResumed`` events.
    :param clock: where time and sleeps come from.
    :param rng: random source of the jitter.

    :meth:`endpoints` is what the balancer calls on every pick: one cached
    tuple of base URLs, replaced only when the set changes. Use it as an async
    context manager, or :meth:`start` and :meth:`aclose` it.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        service: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 2.0,
        backoff: Backoff | None = None,
        snapshot: str | os.PathLike[str] | None = None,
        probe_interval: float = 1.0,
        listeners: Sequence[Listener] = (),
        clock: Clock = system_clock,
        rng: random.Random | None = None,
    ) -> None:
        check_number("EtcdEndpoints", "timeout", timeout, minimum=0, exclusive_minimum=True)
        check_number("EtcdEndpoints", "probe_interval", probe_interval, minimum=0,
                     exclusive_minimum=True)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ConfigurationError(f"EtcdEndpoints.backoff must be a Backoff, got {backoff!r}")
        self._connection = _Connection(_targets(endpoints, "EtcdEndpoints"), timeout)
        self._service = service
        self._prefix = service_prefix(service, prefix)
        self._prefix_bytes = self._prefix.encode()
        self._timeout = timeout
        self._backoff = backoff or _DISCOVERY_BACKOFF
        self._snapshot = None if snapshot is None else Path(snapshot)
        self._probe_interval = float(probe_interval)
        self._listeners = tuple(listeners)
        self._clock = clock
        self._rng = rng or random.Random()
        self._records: dict[bytes, Instance] = {}
        self._instances: tuple[Instance, ...] = ()
        self._urls: tuple[str, ...] = ()
        self._revision = 0
        self._in_sync = False
        # Monotonic time the view was last known to match etcd (-inf: never).
        self._confirmed_at = -math.inf
        self._changed = asyncio.Event()
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listed = False
        self._reported = False
        self._root = prefix

    def endpoints(self) -> Sequence[str]:
        """The base URLs of the service's instances (the same tuple until they change)."""
        return self._urls

    @property
    def service(self) -> str:
        """The service followed."""
        return self._service

    @property
    def instances(self) -> tuple[Instance, ...]:
        """The service's instances as last known, sorted by id."""
        return self._instances

    @property
    def revision(self) -> int:
        """The etcd revision the view is at (0 before the first listing)."""
        return self._revision

    @property
    def in_sync(self) -> bool:
        """Whether the watch is live (the view follows etcd as it changes)."""
        return self._in_sync

    @property
    def stale_seconds(self) -> float:
        """Seconds the view has gone unconfirmed: 0 while in sync, ``inf`` if never known."""
        if self._in_sync:
            return 0.0
        return max(0.0, self._clock.monotonic() - self._confirmed_at)

    async def start(self) -> None:
        """Read the snapshot (if any), start following etcd, and wait for the first listing.

        Returns once the first listing succeeded or failed; when it failed, the
        snapshot's endpoints (or none) are served while it keeps trying.
        """
        if self._task is not None:
            return
        self._load_snapshot()
        self._task = asyncio.create_task(self._run(), name=f"fournines-discovery-{self._service}")
        await self._first.wait()

    async def aclose(self) -> None:
        """Stop following etcd (the last known endpoints stay readable)."""
        task, self._task = self._task, None
        if task is not None:
            await _cancel(task)
        self._in_sync = False
        await self._connection.close()

    async def __aenter__(self) -> EtcdEndpoints:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def changes(self) -> AsyncIterator[tuple[Instance, ...]]:
        """The instances now, then the instances after each change (call after :meth:`start`).

        A subscriber that falls behind sees the latest set, not every step.
        """
        last: tuple[Instance, ...] | None = None
        while True:
            event = self._changed
            if self._instances != last:
                last = self._instances
                yield last
            await event.wait()

    def __repr__(self) -> str:
        return (f"EtcdEndpoints({self._service!r}, {list(self._urls)!r}, "
                f"in_sync={self._in_sync})")

    async def _run(self) -> None:
        await _keep_following(
            self._follow, connection=self._connection, backoff=self._backoff, rng=self._rng,
            clock=self._clock, interrupted=self._interrupted, listed=lambda: self._listed,
            first=self._first)

    async def _follow(self) -> None:
        self._listed = False
        client = await self._connection.client()
        timeout = self._timeout
        listing = await asyncio.wait_for(client.get_prefix(self._prefix_bytes), timeout)
        records = {}
        for kv in listing:
            instance = self._decode(kv.key, kv.value)
            if instance is not None:
                records[kv.key] = instance
        self._records = records
        self._revision = listing.header.revision
        await self._publish(listed=True)
        self._synced()
        self._listed = True
        self._first.set()
        async with contextlib.aclosing(_watch_events(
                client, self._prefix_bytes, prefix=True, start_revision=self._revision + 1,
                timeout=timeout, probe_interval=self._probe_interval,
                probed=self._probed)) as events:
            async for event in events:
                self._apply(event)
                await self._publish()

    def _probed(self) -> None:
        self._confirmed_at = self._clock.monotonic()

    def _apply(self, event: Any) -> None:
        kv = event.kv
        self._revision = max(self._revision, kv.mod_revision)
        self._confirmed_at = self._clock.monotonic()
        if event.kind == "DELETE":
            self._records.pop(kv.key, None)
            return
        instance = self._decode(kv.key, kv.value)
        if instance is None:
            self._records.pop(kv.key, None)
        else:
            self._records[kv.key] = instance

    def _decode(self, key: bytes, value: bytes) -> Instance | None:
        try:
            instance = Instance.from_json(value)
        except ConfigurationError as exc:
            _log.warning("fournines: skipping the record at %r: %s", key, exc)
            return None
        if instance.service != self._service:
            _log.warning("fournines: skipping the record at %r: it is of service %r", key,
                         instance.service)
            return None
        return instance

    def _synced(self) -> None:
        was = self._in_sync
        stale = self.stale_seconds
        self._in_sync = True
        self._reported = False
        self._confirmed_at = self._clock.monotonic()
        if not was and stale != math.inf and stale > 0:
            dispatch(self._listeners, DiscoveryResumed(
                policy="discovery", name=self._service, stale=stale))

    def _interrupted(self, reason: str, exc: BaseException) -> None:
        # One event (and one warning) per loss of sight, not one per failed reconnection.
        if self._in_sync or not self._reported:
            self._in_sync = False
            self._reported = True
            _log.warning("fournines: discovery of %r lost its watch (%s: %r); serving the "
                         "last %d known endpoints", self._service, reason, exc, len(self._urls))
            dispatch(self._listeners, DiscoveryInterrupted(
                policy="discovery", name=self._service, reason=reason, error=exc))

    async def _publish(self, *, listed: bool = False) -> None:
        instances = tuple(sorted(self._records.values(), key=lambda i: i.id))
        if instances == self._instances:
            if listed:
                # A listing confirms the view: the snapshot's time says so.
                await self._save()
            return
        old = self._urls
        self._instances = instances
        urls = addresses(instances)
        if urls != old:
            self._urls = urls
            before, after = set(old), set(urls)
            dispatch(self._listeners, EndpointsChanged(
                policy="discovery", name=self._service,
                added=tuple(sorted(after - before)), removed=tuple(sorted(before - after)),
                count=len(urls)))
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        await self._save()

    async def _save(self) -> None:
        if self._snapshot is None:
            return
        data = self._snapshot_text()
        try:
            await asyncio.to_thread(_write_atomically, self._snapshot, data)
        except OSError as exc:
            _log.warning("fournines: could not write the discovery snapshot %s: %s",
                         self._snapshot, exc)

    def _snapshot_text(self) -> str:
        return json.dumps({
            "format": SNAPSHOT_FORMAT, "service": self._service, "prefix": self._prefix,
            "revision": self._revision, "saved_at": self._clock.time(),
            "instances": [json.loads(i.to_json()) for i in self._instances],
        }, indent=1, ensure_ascii=False)

    def _load_snapshot(self) -> None:
        path = self._snapshot
        if path is None or not path.exists():
            return
        try:
            data = json_document(read_text(path))
            if not isinstance(data, dict) or data.get("service") != self._service:
                raise ConfigurationError(f"not a snapshot of service {self._service!r}")
            instances = tuple(sorted((Instance.from_dict(d) for d in data["instances"]),
                                     key=lambda i: i.id))
            saved_at = float(data["saved_at"])
        except (ConfigurationError, KeyError, TypeError, ValueError) as exc:
            _log.warning("fournines: ignoring the discovery snapshot %s: %s", path, exc)
            return
        self._records = {i.key(self._root).encode(): i for i in instances}
        self._instances = instances
        self._urls = addresses(instances)
        age = max(0.0, self._clock.time() - saved_at)
        self._confirmed_at = self._clock.monotonic() - age


async def _keep_following(
    follow: Callable[[], Awaitable[None]], *, connection: _Connection, backoff: Backoff,
    rng: random.Random, clock: Clock, interrupted: Callable[[str, BaseException], None],
    listed: Callable[[], bool], first: asyncio.Event,
) -> None:
    """Run ``follow`` (list, then watch) again and again, forever.

    After a compaction it runs again at once, after any other failure on a fresh
    connection after a jittered backoff. ``listed()`` says whether the last
    ``follow`` got as far as its listing (then the backoff starts over); ``first``
    is set once the first attempt succeeded or failed.
    Shared by discovery and the config centre.
    """
    failures, previous = 0, 0.0
    while True:
        try:
            await follow()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            compacted = _is_compacted(exc)
            interrupted("compacted" if compacted else "disconnected", exc)
            if listed():
                # It worked a moment ago: start the backoff over.
                failures, previous = 0, 0.0
            if compacted:
                # Behind a compaction, etcd itself is fine: list again at once.
                continue
        finally:
            first.set()
        await connection.reset()
        failures += 1
        delay = previous = backoff.delay(failures, previous, rng)
        await clock.asleep(delay)


async def _watch_events(
    client: Any, key: bytes, *, prefix: bool, start_revision: int, timeout: float,
    probe_interval: float, probed: Callable[[], None],
) -> AsyncGenerator[Any, None]:
    """The watch events of ``key`` (or every key under it, with ``prefix``).

    From ``start_revision`` on; raises when the stream ends, breaks or stops
    answering. A stopped etcd keeps the stream open and silent: after ``probe_interval``
    seconds without an event the key is read, and a read that fails or times out
    ends the stream; ``probed()`` is called after each read that succeeds.
    """
    start = client.watch_prefix if prefix else client.watch
    watch = await asyncio.wait_for(start(key, start_revision=start_revision), timeout)
    try:
        iterator = aiter(watch)
        while True:
            following = asyncio.ensure_future(anext(iterator))
            try:
                while True:
                    done, _ = await asyncio.wait({following}, timeout=probe_interval)
                    if done:
                        break
                    await asyncio.wait_for(client.get(key), timeout)
                    probed()
            except BaseException:
                following.cancel()
                raise
            try:
                event = following.result()
            except StopAsyncIteration:
                raise _Broken("the watch stream ended") from None
            yield event
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(watch.cancel(), timeout)


async def _cancel(task: asyncio.Task[None]) -> None:
    # aetcd swallows a CancelledError that lands while it shuts a watch stream down
    # (it awaits its own cancelled handler): cancel again until the task has ended.
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        _log.error("fournines: %s ended with an error", task.get_name(),
                   exc_info=task.exception())


def _is_compacted(exc: BaseException) -> bool:
    return type(exc).__name__ == "RevisionCompactedError"


def _write_atomically(path: Path, text: str) -> None:
    # A temporary file in the same directory, flushed to disk, then renamed over the
    # old one: a reader (or a crash) sees the old snapshot or the new, never half.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
