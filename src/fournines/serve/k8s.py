"""Kubernetes manifests whose probes and grace period match ``fournines serve``'s drain.

``manifest_yaml(ManifestSpec(name="orders", image="...", app="orders.main:service"))``
(or ``fournines k8s manifest``) writes three documents:

- a **Deployment** whose container runs ``fournines serve MODULE:APP`` in exec form
  (``command: [fournines, serve, ...]``, no shell: a ``sh -c`` as PID 1 would swallow
  the kubelet's SIGTERM and the pod would be killed undrained at the end of its grace
  period), with the drain settings on its command line;
  probes on ``/startupz``, ``/livez`` and ``/readyz`` (``initialDelaySeconds: 10``,
  ``timeoutSeconds: 1``); ``POD_NAME`` from the downward API (fournines' instance id
  when ``FOURNINES_INSTANCE_ID`` is unset); resource requests; a rolling update with
  ``maxUnavailable: 0``; replicas spread over nodes;
- a **Service** in front of the ``http`` port;
- a **PodDisruptionBudget** so that node drains evict at most ``pdb_max_unavailable``
  pods at a time.

The grace period is derived, never guessed: on SIGTERM each worker fails readiness,
keeps serving ``drain_delay`` seconds (Kubernetes takes the pod out of the Service's
endpoints *while* it sends SIGTERM, not before), stops accepting, gives in-flight
requests ``drain_timeout`` seconds, then runs its lifespan shutdown and exits, for
which ``margin`` is left. ``terminationGracePeriodSeconds`` is
``ceil(drain_delay + drain_timeout + margin)``; a ``grace_period`` given explicitly
that is shorter is refused (:class:`ManifestError`), since the kubelet would SIGKILL
the pod mid-drain.

The supervisor is the container's PID 1, so a SIGHUP (``kubectl exec POD -- kill -HUP
1``) reloads the workers in place, but SIGUSR2 does not apply: the old supervisor's
exit would end the container. On Kubernetes a new version is a rollout, which the
``maxUnavailable: 0`` strategy and the drain make lossless.

``load_spec(path)`` reads the same fields from a small YAML mapping (the names of
:class:`ManifestSpec`'s fields); unknown fields and wrong types are refused, naming the
field.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from .._errors import ConfigurationError
from ..asgi.health import DEFAULT_PATHS

__all__ = [
    "PROBES",
    "ManifestError",
    "ManifestSpec",
    "load_spec",
    "manifest_documents",
    "manifest_yaml",
    "spec_from_mapping",
    "write_manifest",
]


class ManifestError(ConfigurationError):
    """A :class:`ManifestSpec` field refused: ``"ManifestSpec.port must ..."``.

    ``field`` is the spec's field name and ``problem`` what is wrong with it, so a
    command line can name its flag (``--port must ...``); with ``file`` (from
    :func:`load_spec`) it reads ``"orders.yml: port must ..."``.
    """

    def __init__(self, field: str, problem: str, *, file: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.file = file
        super().__init__(f"{file}: {field} {problem}" if file is not None
                         else f"ManifestSpec.{field} {problem}")


# The seed's probe settings: every probe waits 10 s and gives the server 1 s to answer.
# startupProbe: a slow start gets 10 + 30 x 2 = 70 s before the kubelet restarts it.
# livenessProbe: three misses in 30 s (a wedged event loop) restart the container.
# readinessProbe: two misses take the pod out of the Service, one success brings it back.
def _probe(endpoint: str, period: int, failures: int, **more: int) -> Mapping[str, Any]:
    return MappingProxyType({
        "httpGet": MappingProxyType({"path": DEFAULT_PATHS[endpoint], "port": "http"}),
        "initialDelaySeconds": 10, "periodSeconds": period, "timeoutSeconds": 1, **more,
        "failureThreshold": failures})


PROBES: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "startupProbe": _probe("startup", 2, 30),
    "livenessProbe": _probe("live", 10, 3),
    "readinessProbe": _probe("ready", 5, 2, successThreshold=1),
})
"""The probes of every generated container, by Kubernetes field (paths of
:data:`fournines.asgi.health.DEFAULT_PATHS`)."""

# Where prometheus_client's multi-process mode keeps the workers' files (workers > 1).
_METRICS_DIR = "/run/fournines-metrics"
# The flags of `fournines serve` the manifest sets itself: given again in serve_args they
# would contradict the probes, the port or the grace period.
_OWNED_FLAGS = frozenset({"--bind", "--workers", "--factory", "--drain-delay",
                          "--drain-timeout", "--grace-period", "--reload", "--status"})
# RFC 1035 labels (Service names must be one); RFC 1123 labels for namespaces.
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_APP = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestSpec:
    """What :func:`manifest_documents` needs to know about a service (seconds are floats).

    ``name``: the Deployment, Service, PDB and container name and the ``app`` label (an
    RFC 1035 label). ``image``: the container image, with fournines' ``serve`` extra
    installed. ``app``: ``MODULE:APP`` for ``fournines serve`` (``factory``: it names a
    function that returns the app). ``workers``: uvicorn workers per pod; with more than
    one, ``PROMETHEUS_MULTIPROC_DIR`` points at an in-memory ``emptyDir``.
    ``port``: the container port the workers bind on ``0.0.0.0``; ``service_port``: the
    Service's. ``drain_delay``, ``drain_timeout``, ``margin``, ``grace_period``: see the
    module docstring (``grace_period`` ``None`` derives it). ``cpu``, ``memory``: the
    requests; ``memory_limit``, ``cpu_limit``: the limits (no CPU limit by default: CFS
    throttling turns into tail latency). ``env``: plain variables; ``secret_env``:
    ``{"DATABASE_URL": "SECRET/KEY"}`` read from a Secret. ``serve_args``: more
    ``fournines serve`` flags (``("--max-requests", "10000")``), except the ones the
    manifest sets. ``max_surge``: extra pods during a rollout; ``pdb_max_unavailable``:
    pods a node drain may evict at once (fewer than ``replicas``).
    """

    name: str
    image: str
    app: str
    namespace: str | None = None
    replicas: int = 3
    workers: int = 1
    factory: bool = False
    port: int = 8000
    service_port: int = 80
    drain_delay: float = 5.0
    drain_timeout: float = 20.0
    margin: float = 5.0
    grace_period: int | None = None
    cpu: str = "250m"
    memory: str = "256Mi"
    memory_limit: str | None = "512Mi"
    cpu_limit: str | None = None
    # Compared, not hashed (a mapping has no hash): equal specs still hash equal.
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    secret_env: Mapping[str, str] = field(default_factory=dict, hash=False)
    serve_args: Sequence[str] = ()
    max_surge: int = 1
    pdb_max_unavailable: int = 1

    def __post_init__(self) -> None:
        _match("name", self.name, _DNS_1035, "an RFC 1035 label (a-z, 0-9, '-'; at most 63)")
        if not isinstance(self.image, str) or not self.image or any(
                c.isspace() for c in self.image):
            raise ManifestError("image", f"must be an image reference, got {self.image!r}")
        _match("app", self.app, _APP, "MODULE:APP, e.g. 'orders.main:service'")
        if self.namespace is not None:
            _match("namespace", self.namespace, _DNS_1123, "an RFC 1123 label or None")
        _integer("workers", self.workers, 1, 1024)
        _integer("port", self.port, 1, 65535)
        _integer("service_port", self.service_port, 1, 65535)
        _integer("max_surge", self.max_surge, 1, 1000)
        _integer("pdb_max_unavailable", self.pdb_max_unavailable, 1, 1000)
        _integer("replicas", self.replicas, 1, 10000)
        if self.replicas <= self.pdb_max_unavailable:
            raise ManifestError(
                "replicas", f"must be more than pdb_max_unavailable ({self.pdb_max_unavailable})"
                f": a node drain could evict every pod at once, got {self.replicas}")
        if not isinstance(self.factory, bool):
            raise ManifestError("factory", f"must be true or false, got {self.factory!r}")
        # Kubernetes drops the pod from the endpoints while it sends SIGTERM, not before:
        # without a delay, connections routed here meanwhile are refused.
        _number("drain_delay", self.drain_delay, 1.0, "the endpoints update as SIGTERM "
                "arrives, not before")
        _number("drain_timeout", self.drain_timeout, 0.0, None)
        _number("margin", self.margin, 0.0, None, exclusive=True)
        if self.grace_period is not None:
            _integer("grace_period", self.grace_period, 1, 86400)
            if self.grace_period < self.drain_delay + self.drain_timeout + self.margin:
                raise ManifestError(
                    "grace_period",
                    f"must be >= drain_delay + drain_timeout + margin = "
                    f"{self.drain_delay:g} + {self.drain_timeout:g} + {self.margin:g} = "
                    f"{self.drain_delay + self.drain_timeout + self.margin:g} s, or the "
                    f"kubelet kills the pod mid-drain; got {self.grace_period}")
        for name in ("cpu", "memory"):
            _match(name, getattr(self, name), _QUANTITY, "a quantity like '250m' or '256Mi'")
        for name in ("cpu_limit", "memory_limit"):
            if getattr(self, name) is not None:
                _match(name, getattr(self, name), _QUANTITY,
                       "a quantity like '1' or '512Mi', or None")
        object.__setattr__(self, "env", _env("env", self.env, workers=self.workers))
        secret_env = _env("secret_env", self.secret_env, workers=self.workers)
        for key, ref in secret_env.items():
            secret, _, item = ref.partition("/")
            if not (_SECRET_NAME.fullmatch(secret) and _SECRET_KEY.fullmatch(item)):
                raise ManifestError("secret_env", f"[{key!r}] must be 'SECRET/KEY', got {ref!r}")
            if key in self.env:
                raise ManifestError("secret_env", f"[{key!r}] is in env too")
        object.__setattr__(self, "secret_env", secret_env)
        if isinstance(self.serve_args, str) or not isinstance(self.serve_args, Sequence) or any(
                not isinstance(arg, str) for arg in self.serve_args):
            raise ManifestError("serve_args", f"must be a list of strings, got "
                                f"{self.serve_args!r}")
        for arg in self.serve_args:
            flag = arg.partition("=")[0]
            # argparse takes "--grace" for "--grace-period": prefixes are the flag too.
            if flag.startswith("--") and any(owned.startswith(flag) for owned in _OWNED_FLAGS):
                owned = min(owned for owned in _OWNED_FLAGS if owned.startswith(flag))
                raise ManifestError("serve_args", f"must not contain {owned}: the manifest "
                                    "sets it from its own fields")
        object.__setattr__(self, "serve_args", tuple(self.serve_args))
        if self.serve_args:  # a typo would only show as the pod's CrashLoopBackOff
            _check_command(self.command)
        for name, low, high in (("cpu", self.cpu, self.cpu_limit),
                                ("memory", self.memory, self.memory_limit)):
            if high is not None and _quantity(high) < _quantity(low):
                raise ManifestError(f"{name}_limit", f"must be at least the {name} request "
                                    f"({low}), got {high!r}")

    @property
    def termination_grace_period(self) -> int:
        """``grace_period``, or ``ceil(drain_delay + drain_timeout + margin)`` seconds."""
        if self.grace_period is not None:
            return self.grace_period
        return math.ceil(self.drain_delay + self.drain_timeout + self.margin)

    @property
    def command(self) -> list[str]:
        """The container's command: ``fournines serve`` in exec form."""
        command = ["fournines", "serve", self.app]
        if self.factory:
            command.append("--factory")
        command += ["--workers", str(self.workers), "--bind", f"0.0.0.0:{self.port}",
                    "--drain-delay", _seconds(self.drain_delay),
                    "--drain-timeout", _seconds(self.drain_timeout),
                    "--grace-period", str(self.termination_grace_period)]
        return [*command, *self.serve_args]


class _RefusingParser(argparse.ArgumentParser):
    """A parser whose errors are a spec's, not an exit."""

    def error(self, message: str) -> NoReturn:
        raise ManifestError("serve_args", f"are refused by fournines serve: {message}")


def _check_command(command: list[str]) -> None:
    from . import _cli  # noqa: PLC0415 - the serve command's own parser, when needed

    parser = _RefusingParser(prog="fournines")
    _cli.register(parser.add_subparsers(dest="command", parser_class=_RefusingParser))
    parser.parse_args(command[1:])


_SUFFIXES = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
             "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50,
             "Ei": 2.0**60}


def _quantity(text: str) -> float:
    number = text.rstrip("kmMGTPEi")
    return float(number) * _SUFFIXES.get(text[len(number):], 1.0)


def _seconds(value: float) -> str:
    """``value`` for a command line: ``5`` rather than ``5.0``, exactly as given."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def _match(name: str, value: object, pattern: re.Pattern[str], what: str) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ManifestError(name, f"must be {what}, got {value!r}")


def _integer(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ManifestError(name, f"must be an int from {low} to {high}, got {value!r}")


def _number(name: str, value: object, low: float, why: str | None, *,
            exclusive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ManifestError(name, f"must be a finite number of seconds, got {value!r}")
    if value < low or (exclusive and value == low):
        bound = f"> {low:g}" if exclusive else f">= {low:g}"
        raise ManifestError(name, f"must be {bound}{f' ({why})' if why else ''}, got {value!r}")


def _env(name: str, value: object, *, workers: int) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ManifestError(name, f"must be a mapping of names to strings, got {value!r}")
    reserved = {"POD_NAME"} | ({"PROMETHEUS_MULTIPROC_DIR"} if workers > 1 else set())
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise ManifestError(name, f"has a bad variable name {key!r}")
        if not isinstance(item, str):
            raise ManifestError(name, f"[{key!r}] must be a string, got {item!r}")
        if key in reserved:
            raise ManifestError(name, f"[{key!r}] is set by the manifest itself")
    return MappingProxyType(dict(value))


def manifest_documents(spec: ManifestSpec) -> list[dict[str, Any]]:
    """The Deployment, Service and PodDisruptionBudget of ``spec``, as plain data."""
    labels = {"app": spec.name}
    metadata: dict[str, Any] = {"name": spec.name}
    if spec.namespace is not None:
        metadata["namespace"] = spec.namespace
    metadata["labels"] = labels
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    if spec.workers > 1:
        env.append({"name": "PROMETHEUS_MULTIPROC_DIR", "value": _METRICS_DIR})
    env += [{"name": key, "value": value} for key, value in spec.env.items()]
    for key, ref in spec.secret_env.items():
        secret, _, item = ref.partition("/")
        env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": item}}})
    resources: dict[str, Any] = {"requests": {"cpu": spec.cpu, "memory": spec.memory}}
    limits = {key: value for key, value in (("cpu", spec.cpu_limit),
                                            ("memory", spec.memory_limit)) if value is not None}
    if limits:
        resources["limits"] = limits
    container: dict[str, Any] = {
        "name": spec.name, "image": spec.image, "command": spec.command,
        "ports": [{"name": "http", "containerPort": spec.port}], "env": env,
        **{probe: {key: dict(value) if isinstance(value, Mapping) else value
                   for key, value in settings.items()} for probe, settings in PROBES.items()},
        "resources": resources,
    }
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": spec.termination_grace_period,
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": labels}}],
        "containers": [container],
    }
    if spec.workers > 1:
        container["volumeMounts"] = [{"name": "metrics", "mountPath": _METRICS_DIR}]
        pod["volumes"] = [{"name": "metrics", "emptyDir": {"medium": "Memory"}}]
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": spec.max_surge}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": metadata,
        "spec": {"selector": labels, "ports": [
            {"name": "http", "port": spec.service_port, "targetPort": "http"}]},
    }
    budget = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": metadata,
        "spec": {"maxUnavailable": spec.pdb_max_unavailable,
                 "unhealthyPodEvictionPolicy": "AlwaysAllow",
                 "selector": {"matchLabels": labels}},
    }
    # Each document its own copy: a caller editing one must not edit the others.
    return [json.loads(json.dumps(document)) for document in (deployment, service, budget)]


def manifest_yaml(spec: ManifestSpec, *, comments: bool = True,
                  source: str | None = None) -> str:
    """The documents of :func:`manifest_documents` as one YAML stream.

    With ``comments`` (the default) each setting that follows from the drain, the
    probes or the rollout says why in a comment, and ``source`` (the spec file's
    path) is named at the top as the file to edit instead.
    """
    notes = _notes(spec, source) if comments else {}
    parts = []
    for index, document in enumerate(manifest_documents(spec)):
        lines = [f"# {line}" if line else "#" for line in notes.get((index,), "").splitlines()]
        _block(document, 0, (index,), notes, lines)
        parts.append("\n".join(lines) + "\n")
    return "---\n".join(parts)


def _notes(spec: ManifestSpec, source: str | None) -> dict[tuple[Any, ...], str]:
    pod = (0, "spec", "template", "spec")
    container = (*pod, "containers", 0)
    bound = " (derived)" if spec.grace_period is None else f", at most {spec.grace_period}"
    drain = (f"drain_delay {spec.drain_delay:g} + drain_timeout {spec.drain_timeout:g} + "
             f"margin {spec.margin:g} = "
             f"{spec.drain_delay + spec.drain_timeout + spec.margin:g} s")
    return {
        (0,): (f"Generated by `fournines k8s manifest` (fournines.serve.k8s) for {spec.name}.\n"
               "On SIGTERM every worker fails /readyz at once and keeps serving, new\n"
               f"connections too, for drain_delay ({spec.drain_delay:g} s) while the "
               "endpoints update;\nthen it stops accepting and gives in-flight requests "
               f"drain_timeout ({spec.drain_timeout:g} s).\nNo preStop hook is needed."
               + (f"\nEdit {source} and regenerate; changes made here are lost."
                  if source else "")),
        (0, "spec", "strategy", "rollingUpdate"):
            "maxUnavailable 0: never below the replicas that carry the SLO",
        (*pod, "terminationGracePeriodSeconds"): (
            f"{drain}{bound}:\n"
            "the kubelet never SIGKILLs a pod mid-drain"),
        (*pod, "topologySpreadConstraints"): "one node lost takes one replica, not all",
        (*container, "command"): ("exec form: the supervisor is PID 1 and gets SIGTERM itself "
                                  "(a shell would swallow it)"),
        (*container, "env", 0): ("the instance id in logs, metrics and /healthz "
                                 "(FOURNINES_INSTANCE_ID overrides it)"),
        (*container, "startupProbe"): ("startup finished (lifespan ran, pools opened); the "
                                       "other probes wait for it"),
        (*container, "livenessProbe"): ("the process only, never its dependencies: a database "
                                        "outage must not restart every pod"),
        (*container, "readinessProbe"): ("started, not draining, every critical check "
                                         "passing"),
        (*container, "resources"): (
            "no CPU limit: throttling becomes tail latency" if spec.cpu_limit is None
            else "a CPU limit throttles the workers: watch the tail latency"),
        (2,): (f"Node drains evict at most {spec.pdb_max_unavailable} of the "
               f"{spec.replicas} pods at a time;\na crash-looping pod never blocks them."),
    }


_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*|[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)")
# Plain words YAML 1.1 readers (PyYAML, go-yaml v2 inside kubectl) take for booleans/null.
_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})
_FLOW_WIDTH = 100


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    assert isinstance(value, str)
    if _PLAIN.fullmatch(value) and value.lower() not in _WORDS:
        return value
    return _quoted(value)


# A JSON surrogate pair: after an even run of backslashes, so never an escaped "\\u".
_SURROGATES = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def _quoted(value: str) -> str:
    r"""``value`` as a YAML double-quoted scalar, in ASCII.

    JSON's escapes are YAML's too, except that YAML reads ``\uD83D\uDE00`` as two
    lone surrogates, not one character: pairs become ``\U0001F600``.
    """
    def astral(pair: re.Match[str]) -> str:
        high, low = int(pair.group(2), 16), int(pair.group(3), 16)
        return pair.group(1) + f"\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08x}"

    return _SURROGATES.sub(astral, json.dumps(value))


def _flow(value: object) -> str | None:
    """``value`` on one line (``{a: 1}``, ``[a, b]``) when it holds scalars only."""
    if isinstance(value, dict):
        if not all(isinstance(v, str | int) for v in value.values()):
            return None
        return "{" + ", ".join(f"{_scalar(k)}: {_scalar(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        if not all(isinstance(v, str | int) for v in value):
            return None
        # Strings all quoted, as a Dockerfile's exec form: ["fournines", "serve", ...].
        return "[" + ", ".join(_quoted(v) if isinstance(v, str) else _scalar(v)
                               for v in value) + "]"
    return _scalar(value)


def _wrapped(start: str, items: list[str]) -> list[str]:
    """A flow list over several lines, each continuation under the first item."""
    lines, line = [], start + "["
    for index, item in enumerate(items):
        piece = item + ("]" if index == len(items) - 1 else ",")
        if len(line) + 1 + len(piece) > _FLOW_WIDTH and not line.endswith("["):
            lines.append(line)
            line = " " * (len(start) + 1) + piece
        else:
            line += ("" if line.endswith("[") else " ") + piece
    return [*lines, line]


def _block(value: dict[str, Any], indent: int, path: tuple[Any, ...],
           notes: Mapping[tuple[Any, ...], str], lines: list[str]) -> None:
    pad = " " * indent
    for key, item in value.items():
        here = (*path, key)
        lines += [f"{pad}# {line}" for line in notes.get(here, "").splitlines()]
        flow = _flow(item)
        if flow is not None and (len(pad) + len(key) + 2 + len(flow) <= _FLOW_WIDTH
                                 or not isinstance(item, dict | list) or not item):
            lines.append(f"{pad}{_scalar(key)}: {flow}")
        elif isinstance(item, dict):
            lines.append(f"{pad}{_scalar(key)}:")
            _block(item, indent + 2, here, notes, lines)
        elif flow is not None:  # a long list of scalars
            lines += _wrapped(f"{pad}{_scalar(key)}: ",
                              [_quoted(v) if isinstance(v, str) else _scalar(v)
                               for v in item])
        else:
            lines.append(f"{pad}{_scalar(key)}:")
            _items(item, indent + 2, here, notes, lines)


def _items(value: list[Any], indent: int, path: tuple[Any, ...],
           notes: Mapping[tuple[Any, ...], str], lines: list[str]) -> None:
    pad = " " * indent
    for index, item in enumerate(value):
        here = (*path, index)
        lines += [f"{pad}# {line}" for line in notes.get(here, "").splitlines()]
        flow = _flow(item)
        if flow is not None and len(pad) + 2 + len(flow) <= _FLOW_WIDTH:
            lines.append(f"{pad}- {flow}")
        elif isinstance(item, dict):
            start = len(lines)
            _block(item, indent + 2, here, notes, lines)
            first = next(i for i in range(start, len(lines))
                         if not lines[i].lstrip().startswith("#"))
            lines[first] = f"{pad}- {lines[first][indent + 2:]}"
        elif isinstance(item, list):
            raise TypeError("lists of lists are not emitted")  # pragma: no cover
        else:
            lines.append(f"{pad}- {_scalar(item)}")


def spec_from_mapping(data: Mapping[str, Any]) -> ManifestSpec:
    """A :class:`ManifestSpec` from a mapping of its field names (a YAML file's).

    Unknown fields are refused (:class:`ManifestError` naming the field); quantities
    may be numbers (``cpu: 1``), and ``serve_args`` a list.
    """
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"must be a mapping of ManifestSpec fields, got "
                                 f"{type(data).__name__}")
    known = [f.name for f in fields(ManifestSpec)]
    values: dict[str, Any] = {}
    for key, given in data.items():
        if key not in known:
            raise ManifestError(str(key), f"is not a field (fields: {', '.join(known)})")
        value = given
        # YAML reads `cpu: 1` and `memory: 512` as numbers; Kubernetes takes them too.
        if key in ("cpu", "memory", "cpu_limit", "memory_limit") and isinstance(
                given, int | float) and not isinstance(given, bool):
            value = str(int(given)) if float(given).is_integer() else repr(float(given))
        if key == "serve_args" and isinstance(given, list):
            value = tuple(given)
        values[key] = value
    for required in ("name", "image", "app"):
        if required not in values:
            raise ManifestError(required, "is required")
    return ManifestSpec(**values)


def load_spec(path: str | os.PathLike[str],
              overrides: Mapping[str, Any] | None = None) -> ManifestSpec:
    """The :class:`ManifestSpec` of a YAML file holding one mapping of its fields.

    ``overrides`` (a command line's flags) replace the file's fields before anything is
    checked, so a file and its overrides are judged together; ``env`` and
    ``secret_env`` overrides extend the file's. Errors in the file's own fields name
    the file: ``"orders.yml: port must be an int from 1 to 65535, got 0"``.
    """
    from .._files import read_text, yaml_documents  # noqa: PLC0415 - PyYAML only here

    file = os.fspath(path)
    given = dict(overrides or {})
    try:
        documents = yaml_documents(read_text(path))
        if len(documents) != 1:
            raise ConfigurationError(f"must hold one YAML document, found {len(documents)}")
        data = documents[0]
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"must be a mapping of ManifestSpec fields, got "
                                     f"{type(data).__name__}")
        for name in ("env", "secret_env"):
            if name in given and isinstance(data.get(name), Mapping):
                given[name] = {**data[name], **given[name]}
        return spec_from_mapping({**data, **given})
    except ManifestError as exc:
        if exc.field in given:
            raise
        raise ManifestError(exc.field, exc.problem, file=file) from None
    except ConfigurationError as exc:
        raise ConfigurationError(f"{file}: {exc}") from None


def write_manifest(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically: a reader sees the old file or the new one.

    A file that exists keeps its permissions; a new one is ``0644``.
    """
    target = Path(path)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
