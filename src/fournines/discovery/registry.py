"""Instance records, their key layout and value format, and the ``ServiceRegistry`` protocol.

An :class:`Instance` is one running copy of a service: where to reach it and what
it is. A registry stores one record per instance under the key::

    /<prefix>/<service>/<instance-id>        e.g. /fournines/services/payment/payment-7d9f

(``prefix`` defaults to :data:`DEFAULT_PREFIX`, ``fournines/services``; slashes
around it are ignored). The value is one JSON object, UTF-8::

    {"service": "payment", "id": "payment-7d9f", "address": "http://10.0.0.5:8000",
     "metadata": {"zone": "a"}, "version": "1.4.2"}

``address`` is the base URL clients send to (``scheme://host:port``, what the
client balancer takes); ``metadata`` maps strings to strings; ``version`` is a
string or ``null``. Readers ignore fields they do not know, so fields can be
added later without breaking older readers; a record that is not such an object
is skipped (and logged) by discovery, never served.

:class:`StaticRegistry` keeps the records in memory: for development, tests and
fixed fleets. :class:`~fournines.discovery.EtcdRegistry` keeps them in etcd.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from .._errors import ConfigurationError

__all__ = [
    "DEFAULT_PREFIX",
    "Instance",
    "RegistrationHook",
    "ServiceRegistry",
    "StaticRegistry",
    "default_instance_id",
    "instance_key",
    "service_prefix",
]

DEFAULT_PREFIX = "fournines/services"
"""The key prefix registries use by default: keys are ``/fournines/services/<service>/<id>``."""

_SCHEMES = ("http", "https")


def default_instance_id() -> str:
    """The process's instance id: ``FOURNINES_INSTANCE_ID``, ``POD_NAME`` or ``host-pid``.

    The explicit fournines variable wins over Kubernetes' pod name (set it to
    override); outside Kubernetes the host name and process id tell two copies
    on one machine apart.
    """
    for variable in ("FOURNINES_INSTANCE_ID", "POD_NAME"):
        value = os.environ.get(variable, "").strip()
        if value:
            return value
    return f"{socket.gethostname()}-{os.getpid()}"


def _check_name(owner: str, field_name: str, value: object) -> str:
    # A name becomes one key segment: a slash would move the record into another
    # service's prefix, and blanks or control characters make keys unreadable in etcdctl.
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{owner}.{field_name} must be a non-empty string, got {value!r}")
    if "/" in value or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ConfigurationError(
            f"{owner}.{field_name} must have no '/', blank or control character, got {value!r}")
    return value


def _check_address(value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"Instance.address must be a base URL string, got {value!r}")
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme.lower() not in _SCHEMES or not parts.hostname or (
        parts.path not in ("", "/") or parts.query or parts.fragment
    ):
        raise ConfigurationError(
            f"Instance.address must be a base URL like 'http://host:port', got {value!r}")
    return value.rstrip("/")


def _normal_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise ConfigurationError(f"prefix must be a string, got {prefix!r}")
    return prefix.strip("/")


def service_prefix(service: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The key prefix of every instance of ``service``: ``/<prefix>/<service>/``.

    The trailing slash matters: service ``pay`` must not see ``payment``'s instances.
    """
    _check_name("service_prefix", "service", service)
    inner = _normal_prefix(prefix)
    return f"/{inner}/{service}/" if inner else f"/{service}/"


def instance_key(service: str, instance_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The key of one instance's record: ``/<prefix>/<service>/<instance-id>``."""
    _check_name("instance_key", "instance_id", instance_id)
    return service_prefix(service, prefix) + instance_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    """One running instance of a service, as a registry records it.

    :param service: the service's name (one key segment: no ``/``).
    :param address: the base URL clients send to, ``scheme://host:port``.
    :param id: the instance id, unique within the service (default:
        :func:`default_instance_id`).
    :param metadata: free string labels (zone, weight, ...), stored as given.
    :param version: the version the instance runs, if known.
    """

    service: str
    address: str
    id: str = field(default_factory=default_instance_id)
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    version: str | None = None

    def __post_init__(self) -> None:
        _check_name("Instance", "service", self.service)
        _check_name("Instance", "id", self.id)
        object.__setattr__(self, "address", _check_address(self.address))
        if not isinstance(self.metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()
        ):
            raise ConfigurationError(
                f"Instance.metadata must map strings to strings, got {self.metadata!r}")
        # A copy: the caller's dict may change later, the record must not.
        object.__setattr__(self, "metadata", dict(self.metadata))
        if self.version is not None and not isinstance(self.version, str):
            raise ConfigurationError(
                f"Instance.version must be a string or None, got {self.version!r}")

    def key(self, prefix: str = DEFAULT_PREFIX) -> str:
        """The record's key under ``prefix``: ``/<prefix>/<service>/<id>``."""
        return instance_key(self.service, self.id, prefix)

    def to_json(self) -> str:
        """The record's value, as stored (compact JSON, keys in a fixed order)."""
        return json.dumps({"service": self.service, "id": self.id, "address": self.address,
                           "metadata": dict(self.metadata), "version": self.version},
                          separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, value: str | bytes) -> Instance:
        """The instance a stored value describes; :class:`~fournines.ConfigurationError` if bad."""
        try:
            data: Any = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"an instance record must be JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: object) -> Instance:
        """The instance a decoded record describes (unknown fields are ignored)."""
        if not isinstance(data, dict):
            raise ConfigurationError(f"an instance record must be a JSON object, got {data!r}")
        missing = [name for name in ("service", "id", "address") if name not in data]
        if missing:
            raise ConfigurationError(f"an instance record lacks {', '.join(missing)}")
        metadata = data.get("metadata") or {}
        return cls(service=data["service"], id=data["id"], address=data["address"],
                   metadata=metadata, version=data.get("version"))


@runtime_checkable
class ServiceRegistry(Protocol):
    """Where instances announce themselves and clients find them.

    ``register`` when the instance is ready to serve; ``deregister`` first thing
    on drain, before readiness fails, so clients stop sending before the server
    stops accepting. ``watch`` yields the whole current set of a service's
    instances (sorted by id), first at once and then after every real change.
    """

    async def register(self, instance: Instance) -> bool:
        """Announce ``instance``; whether it is registered now (a registry may keep trying)."""

    async def deregister(self, instance: Instance | None = None) -> None:
        """Remove ``instance`` (``None``: every instance this registry registered)."""

    def watch(self, service: str) -> AsyncIterator[tuple[Instance, ...]]:
        """The instances of ``service``: the current set, then each changed set."""


class StaticRegistry:
    """A registry in memory: instances given up front, or registered by this process.

    For development and tests (and fleets whose addresses never change): it
    behaves like a real registry, watchers included, within one process.
    :meth:`endpoints` gives a client balancer's source for one service.
    """

    def __init__(self, instances: Iterable[Instance] = ()) -> None:
        self._instances: dict[tuple[str, str], Instance] = {}
        self._mine: set[tuple[str, str]] = set()
        self._changed = asyncio.Event()
        self._version = 0
        self._sources: dict[str, _StaticEndpoints] = {}
        for instance in instances:
            self._instances[(instance.service, instance.id)] = instance

    def instances(self, service: str) -> tuple[Instance, ...]:
        """The instances of ``service`` now, sorted by id."""
        return tuple(sorted((i for (s, _), i in self._instances.items() if s == service),
                            key=lambda i: i.id))

    def endpoints(self, service: str) -> _StaticEndpoints:
        """An endpoint source (for ``P2CBalancer``) that follows ``service``'s addresses."""
        source = self._sources.get(service)
        if source is None:
            source = self._sources[service] = _StaticEndpoints(self, service)
        return source

    async def register(self, instance: Instance) -> bool:
        """Add (or replace) ``instance``; always registered at once."""
        key = (instance.service, instance.id)
        self._instances[key] = instance
        self._mine.add(key)
        self._bump()
        return True

    async def deregister(self, instance: Instance | None = None) -> None:
        """Remove ``instance``, or every instance registered through this registry."""
        keys = list(self._mine) if instance is None else [(instance.service, instance.id)]
        for key in keys:
            self._instances.pop(key, None)
            self._mine.discard(key)
        self._bump()

    async def watch(self, service: str) -> AsyncIterator[tuple[Instance, ...]]:
        """The current instances of ``service``, then each set that differs from the last."""
        last: tuple[Instance, ...] | None = None
        while True:
            event = self._changed
            current = self.instances(service)
            if current != last:
                last = current
                yield current
            await event.wait()

    def _bump(self) -> None:
        # One event per generation: every waiter wakes, then waits on the next one.
        self._version += 1
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        for source in self._sources.values():
            source.refresh()

    def __repr__(self) -> str:
        return f"StaticRegistry({len(self._instances)} instances)"


class _StaticEndpoints:
    """The addresses of one service of a :class:`StaticRegistry` (one cached tuple)."""

    __slots__ = ("_registry", "_service", "_urls")

    def __init__(self, registry: StaticRegistry, service: str) -> None:
        self._registry = registry
        self._service = service
        self._urls: tuple[str, ...] = ()
        self.refresh()

    def refresh(self) -> None:
        urls = addresses(self._registry.instances(self._service))
        if urls != self._urls:
            self._urls = urls

    def endpoints(self) -> Sequence[str]:
        """The service's addresses now (the same tuple until they change)."""
        return self._urls


def addresses(instances: Iterable[Instance]) -> tuple[str, ...]:
    """The distinct addresses of ``instances``, sorted (what a balancer takes)."""
    return tuple(sorted({i.address for i in instances}))


class RegistrationHook:
    """Register ``instance`` in ``registry`` when the service is ready; deregister on drain.

    A lifecycle hook for :func:`fournines.asgi.protect` (``hooks=[...]``) or
    ``ServiceState.add_hook``::

        registry = EtcdRegistry("http://127.0.0.1:2379")
        me = Instance(service="payment", address="http://10.0.0.5:8000")
        app = protect(app, service="payment", hooks=[RegistrationHook(registry, me)])
        serve(app)

    The record is put once the state turns ready (after the lifespan startup:
    a watcher never sees an instance that cannot serve yet) and withdrawn first
    thing on drain, before readiness fails: under :func:`fournines.asgi.serve`
    the SIGTERM deregisters, waits for it (up to
    ``GracefulShutdown.hook_timeout``) and only then fails readiness and starts
    the drain delay, so clients that discover through the registry stop sending
    while the server still accepts.
    """

    __slots__ = ("instance", "registry")

    def __init__(self, registry: ServiceRegistry, instance: Instance) -> None:
        if not isinstance(registry, ServiceRegistry):
            raise ConfigurationError(
                f"RegistrationHook.registry must be a ServiceRegistry, got {registry!r}")
        if not isinstance(instance, Instance):
            raise ConfigurationError(
                f"RegistrationHook.instance must be an Instance, got {instance!r}")
        self.registry = registry
        self.instance = instance

    async def on_ready(self, state: object) -> None:
        """Register the instance (a registry that cannot reach its store keeps trying)."""
        await self.registry.register(self.instance)

    async def on_drain(self, state: object) -> None:
        """Deregister the instance."""
        await self.registry.deregister(self.instance)

    def __repr__(self) -> str:
        return f"RegistrationHook({self.registry!r}, {self.instance.key()!r})"
