"""Chaos Toolkit actions: inject and remove faults, toxics and network partitions.

Every action returns what it changed (a JSON-able value that lands in the
journal), and every "remove" action is safe to run when there is nothing to
remove, so it can sit in ``rollbacks`` unconditionally.
"""

# No `from __future__ import annotations`: `chaos discover` reads the annotations as
# objects (inspect.signature without eval_str) to tell argument types.
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from ._common import (
    DEFAULT_PREFIX,
    admin_headers,
    check_response,
    fail,
    proxy_headers,
    select_instances,
)

__all__ = [
    "add_toxic",
    "heal",
    "inject_fault",
    "inject_fault_by_label",
    "partition",
    "remove_fault",
    "remove_faults_by_label",
    "remove_toxic",
    "set_proxy_enabled",
]

Secrets = Mapping[str, Any] | None


def _fault_body(kind: str, duration: float, rate: float, status: int, latency: float,
                jitter: float, correlation: float, route: str | None, header: str | None,
                name: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "duration": duration, "rate": rate,
                            "correlation": correlation}
    if kind == "error":
        body["status"] = status
    elif kind == "latency":
        body["latency"] = latency
        body["jitter"] = jitter
    for key, value in (("route", route), ("header", header), ("name", name)):
        if value is not None:
            body[key] = value
    return body


def _post_fault(url: str, body: dict[str, Any], headers: dict[str, str], prefix: str,
                timeout: float) -> dict[str, Any]:
    try:
        response = httpx.post(url.rstrip("/") + prefix, json=body, headers=headers,
                              timeout=timeout)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {url}: {exc}") from exc
    check_response(response, 201)
    created: dict[str, Any] = response.json()
    return created


def inject_fault(
    url: str,
    kind: str,
    duration: float,
    rate: float = 1.0,
    status: int = 500,
    latency: float = 0.0,
    jitter: float = 0.0,
    correlation: float = 0.0,
    route: str | None = None,
    header: str | None = None,
    name: str | None = None,
    token: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    timeout: float = 10.0,
    secrets: Secrets = None,
) -> dict[str, Any]:
    """Add a fault to the service at ``url`` through its ChaosMiddleware admin API.

    ``kind`` is ``latency`` (``latency`` seconds, ``jitter``, ``correlation``),
    ``error`` (answers ``status``) or ``crash``; it hits ``rate`` of the requests
    (optionally only under ``route`` or carrying ``header``) and removes itself
    after ``duration`` seconds. Returns the fault as the service describes it,
    with its ``id``.
    """
    body = _fault_body(kind, duration, rate, status, latency, jitter, correlation, route,
                       header, name)
    return _post_fault(url, body, admin_headers(token, secrets), prefix, timeout)


def inject_fault_by_label(
    instances: list[dict[str, Any]],
    selector: dict[str, str],
    kind: str,
    duration: float,
    mode: str = "one",
    value: float | None = None,
    seed: int | None = None,
    rate: float = 1.0,
    status: int = 500,
    latency: float = 0.0,
    jitter: float = 0.0,
    correlation: float = 0.0,
    route: str | None = None,
    header: str | None = None,
    name: str | None = None,
    token: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    timeout: float = 10.0,
    secrets: Secrets = None,
) -> list[dict[str, Any]]:
    """Add a fault to instances picked by labels, as Chaos Mesh picks pods.

    ``instances`` lists ``{"url": ..., "labels": {...}}`` objects; ``selector``
    keeps those having all its labels; ``mode`` then takes ``one`` at random,
    ``all``, ``fixed`` (``value`` of them) or ``fixed-percent`` (``value`` %);
    ``seed`` makes the pick reproducible. The fault fields are those of
    :func:`inject_fault`. Returns ``[{"url", "labels", "fault"}]`` for each one hit.
    """
    headers = admin_headers(token, secrets)
    body = _fault_body(kind, duration, rate, status, latency, jitter, correlation, route,
                       header, name)
    hit = []
    for instance in select_instances(instances, selector, mode, value, seed):
        fault = _post_fault(instance["url"], body, headers, prefix, timeout)
        hit.append({"url": instance["url"], "labels": dict(instance.get("labels") or {}),
                    "fault": fault})
    return hit


def remove_fault(
    url: str,
    fault_id: str | None = None,
    token: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    timeout: float = 10.0,
    secrets: Secrets = None,
) -> int:
    """Remove one fault (``fault_id``) or every fault from the service at ``url``.

    Returns how many faults were removed (a fault that already expired counts 0).
    """
    headers = admin_headers(token, secrets)
    base = url.rstrip("/") + prefix
    try:
        with httpx.Client(timeout=timeout, headers=headers) as client:
            if fault_id is not None:
                response = client.delete(f"{base}/{quote(fault_id, safe='')}")
                check_response(response, 204, 404)
                return 1 if response.status_code == 204 else 0
            listing = client.get(base)
            check_response(listing, 200)
            response = client.delete(base)
            check_response(response, 204)
            return len(listing.json()["faults"])
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {url}: {exc}") from exc


def remove_faults_by_label(
    instances: list[dict[str, Any]],
    selector: dict[str, str] | None = None,
    token: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    timeout: float = 10.0,
    secrets: Secrets = None,
) -> int:
    """Remove every fault from every instance ``selector`` matches (a rollback).

    Tries all of them even when some fail, then fails naming those. Returns how
    many faults were removed in all.
    """
    removed, errors = 0, []
    for instance in select_instances(instances, selector, "all"):
        try:
            removed += remove_fault(instance["url"], None, token, prefix, timeout, secrets)
        except Exception as exc:
            errors.append(f"{instance['url']}: {exc}")
    if errors:
        raise fail("could not remove faults from " + "; ".join(errors))
    return removed


def _toxics_url(toxiproxy_url: str, proxy: str) -> str:
    return f"{toxiproxy_url.rstrip('/')}/proxies/{quote(proxy, safe='')}/toxics"


def add_toxic(
    proxy: str,
    type: str,
    attributes: dict[str, Any] | None = None,
    name: str | None = None,
    stream: str = "downstream",
    toxicity: float = 1.0,
    toxiproxy_url: str = "http://127.0.0.1:8474",
    timeout: float = 10.0,
    token: str | None = None,
    secrets: Secrets = None,
) -> dict[str, Any]:
    """Add a toxic to a Toxiproxy proxy (Toxiproxy or ``fournines chaos proxy``).

    ``type`` is a Toxiproxy toxic (``latency``, ``bandwidth``, ``slow_close``,
    ``timeout``, ``reset_peer``, ``slicer``, ``limit_data``) with its
    ``attributes`` (e.g. ``{"latency": 100, "jitter": 10}`` in milliseconds);
    ``name`` defaults to Toxiproxy's ``<type>_<stream>``. Returns the toxic.
    A ``fournines chaos proxy`` started with a token needs ``token`` (or the secret
    ``proxy_token``); Toxiproxy needs none.
    """
    body: dict[str, Any] = {"type": type, "stream": stream, "toxicity": toxicity,
                            "attributes": attributes or {}}
    if name is not None:
        body["name"] = name
    try:
        response = httpx.post(_toxics_url(toxiproxy_url, proxy), json=body, timeout=timeout,
                              headers=proxy_headers(token, secrets))
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach Toxiproxy at {toxiproxy_url}: {exc}") from exc
    check_response(response, 200, 201)
    toxic: dict[str, Any] = response.json()
    return toxic


def remove_toxic(
    proxy: str,
    name: str,
    toxiproxy_url: str = "http://127.0.0.1:8474",
    missing_ok: bool = True,
    timeout: float = 10.0,
    token: str | None = None,
    secrets: Secrets = None,
) -> bool:
    """Remove the toxic ``name`` from a Toxiproxy proxy; whether it was there.

    A missing toxic (or proxy) is not an error unless ``missing_ok`` is false;
    ``token`` as for :func:`add_toxic`.
    """
    url = f"{_toxics_url(toxiproxy_url, proxy)}/{quote(name, safe='')}"
    try:
        response = httpx.delete(url, timeout=timeout, headers=proxy_headers(token, secrets))
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach Toxiproxy at {toxiproxy_url}: {exc}") from exc
    if response.status_code == 404 and missing_ok:
        return False
    check_response(response, 200, 204)
    return True


def set_proxy_enabled(
    proxy: str,
    enabled: bool,
    toxiproxy_url: str = "http://127.0.0.1:8474",
    timeout: float = 10.0,
    token: str | None = None,
    secrets: Secrets = None,
) -> dict[str, Any]:
    """Take a Toxiproxy proxy down (``enabled=false``: refuses and drops connections) or up.

    ``token`` as for :func:`add_toxic`.
    """
    url = f"{toxiproxy_url.rstrip('/')}/proxies/{quote(proxy, safe='')}"
    try:
        response = httpx.post(url, json={"enabled": bool(enabled)}, timeout=timeout,
                              headers=proxy_headers(token, secrets))
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach Toxiproxy at {toxiproxy_url}: {exc}") from exc
    check_response(response, 200)
    state: dict[str, Any] = response.json()
    return state


def partition(
    name: str,
    dst: str,
    dport: int | None = None,
    src: str | None = None,
    netns: str | None = None,
    loss: float = 100.0,
    direction: str = "egress",
) -> dict[str, Any]:
    """Drop packets to ``dst`` (all, or ``loss`` percent) until :func:`heal` (needs root).

    ``dport`` limits it to one port, ``src`` to one source address, ``netns`` to a
    network namespace; ``direction`` is ``egress``, ``ingress`` or ``both``. See
    :func:`fournines.chaos.network.partition`. Returns the arguments used.
    """
    from .. import network  # noqa: PLC0415 - needs nftables and root; load only when used

    network.partition(name, dst=dst, dport=dport, src=src, netns=netns, loss=loss,
                      direction=direction)  # type: ignore[arg-type]
    return {"name": name, "dst": dst, "dport": dport, "src": src, "netns": netns,
            "loss": loss, "direction": direction}


def heal(name: str) -> str:
    """Remove the network fault ``name`` (a partition or delay); does nothing if gone."""
    from .. import network  # noqa: PLC0415 - needs nftables and root; load only when used

    network.heal(name)
    return name
