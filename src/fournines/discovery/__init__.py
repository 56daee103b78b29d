"""Service registry and discovery: instances register, clients find the live ones.

An instance announces itself to a :class:`ServiceRegistry` when it is ready
and withdraws first thing on drain; clients follow a service's instances
through an endpoint source that feeds the client balancer::

    registry = EtcdRegistry("http://127.0.0.1:2379", ttl=10)
    await registry.register(Instance(service="payment", address="http://10.0.0.5:8000"))

    payments = EtcdEndpoints("http://127.0.0.1:2379", "payment", snapshot="payment.json")
    await payments.start()
    client = httpx.AsyncClient(transport=AsyncBalancingTransport(payments))

:class:`StaticRegistry` is the in-memory registry for development and tests;
:class:`EtcdRegistry` and :class:`EtcdEndpoints` are the etcd backend (the
``etcd`` extra). Key layout and value format: :mod:`fournines.discovery.registry`.

The config centre keeps typed configuration in etcd, validated before it is
applied and hot-reloaded (:mod:`fournines.discovery.config`)::

    watcher = ConfigWatcher("http://127.0.0.1:2379", "payment/limits", Limits,
                            default=Limits(), snapshot="limits.json")
    await watcher.start()
    bind(watcher, limiter, lambda cfg: {"rate": cfg.per_second})
"""

from .._events import (
    ConfigApplied,
    ConfigChanged,
    ConfigRejected,
    DiscoveryInterrupted,
    DiscoveryResumed,
    EndpointsChanged,
    RegistrationChanged,
)
from ._schema import ConfigUnavailableError, ConfigValidationError
from .config import (
    ConfigRevision,
    ConfigWatcher,
    Reconfigurable,
    bind,
    config_history,
    get_config,
    put_config,
    validate_config,
)
from .etcd import EtcdEndpoints, EtcdRegistry
from .registry import (
    DEFAULT_PREFIX,
    Instance,
    RegistrationHook,
    ServiceRegistry,
    StaticRegistry,
    default_instance_id,
    instance_key,
    service_prefix,
)

__all__ = [
    "DEFAULT_PREFIX",
    "ConfigApplied",
    "ConfigChanged",
    "ConfigRejected",
    "ConfigRevision",
    "ConfigUnavailableError",
    "ConfigValidationError",
    "ConfigWatcher",
    "DiscoveryInterrupted",
    "DiscoveryResumed",
    "EndpointsChanged",
    "EtcdEndpoints",
    "EtcdRegistry",
    "Instance",
    "Reconfigurable",
    "RegistrationChanged",
    "RegistrationHook",
    "ServiceRegistry",
    "StaticRegistry",
    "bind",
    "config_history",
    "default_instance_id",
    "get_config",
    "instance_key",
    "put_config",
    "service_prefix",
    "validate_config",
]
