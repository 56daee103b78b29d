"""Chaos Toolkit probes: health, availability over a window, error ratio, SLO burn rate.

Probes never raise for a service that is down: an unreachable service has
health status 0, and its requests count as failures in availability. They do
fail (the activity is marked failed) for bad arguments or an unreadable
metrics source.
"""

# No `from __future__ import annotations`: `chaos discover` reads the annotations as
# objects (inspect.signature without eval_str) to tell argument types.
import math
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from ._common import DEFAULT_PREFIX, admin_headers, check_response, fail, select_instances

__all__ = [
    "active_faults",
    "availability",
    "error_ratio",
    "health_status",
    "service_availability",
    "service_healthy",
    "slo_burn_rate",
]

Secrets = Mapping[str, Any] | None


def health_status(url: str, path: str = "/readyz", timeout: float = 5.0) -> int:
    """The HTTP status of ``GET url + path`` (0 when nothing answers in ``timeout`` s)."""
    try:
        return httpx.get(url.rstrip("/") + path, timeout=timeout).status_code
    except httpx.HTTPError:
        return 0


def service_healthy(
    instances: list[dict[str, Any]],
    selector: dict[str, str] | None = None,
    path: str = "/readyz",
    timeout: float = 5.0,
) -> bool:
    """Whether every instance ``selector`` matches answers ``path`` with 200."""
    return all(health_status(i["url"], path, timeout) == 200
               for i in select_instances(instances, selector, "all"))


def _success_ratio(urls: list[str], requests: int, path: str, timeout: float,
                   window: float) -> float:
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise fail(f"requests must be an int >= 1, got {requests!r}")
    if not isinstance(window, int | float) or window < 0:
        raise fail(f"window must be seconds >= 0, got {window!r}")
    interval = window / requests
    start = time.monotonic()
    ok = 0
    with httpx.Client(timeout=timeout) as client:
        for n in range(requests):
            # Open-loop pacing: request n goes at start + n * interval, so a slow
            # answer does not stretch the window (it may bunch the next requests).
            delay = start + n * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                status = client.get(urls[n % len(urls)].rstrip("/") + path).status_code
            except httpx.HTTPError:
                continue
            ok += 200 <= status < 400
    return ok / requests


def availability(
    url: str,
    requests: int = 50,
    path: str = "/",
    timeout: float = 2.0,
    window: float = 0.0,
) -> float:
    """The share of ``requests`` GETs to ``url + path`` answered 2xx/3xx within ``timeout``.

    With ``window`` > 0 the requests are spread evenly over that many seconds;
    with 0 they go one after the other.
    """
    return _success_ratio([url], requests, path, timeout, window)


def service_availability(
    instances: list[dict[str, Any]],
    selector: dict[str, str] | None = None,
    requests: int = 50,
    path: str = "/",
    timeout: float = 2.0,
    window: float = 0.0,
) -> float:
    """:func:`availability` of a service: requests go round-robin to its instances."""
    urls = [i["url"] for i in select_instances(instances, selector, "all")]
    return _success_ratio(urls, requests, path, timeout, window)


def active_faults(
    instances: list[dict[str, Any]],
    selector: dict[str, str] | None = None,
    token: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    timeout: float = 10.0,
    secrets: Secrets = None,
) -> int:
    """How many faults the matching instances' ChaosMiddleware hold right now."""
    headers = admin_headers(token, secrets)
    total = 0
    for instance in select_instances(instances, selector, "all"):
        try:
            response = httpx.get(instance["url"].rstrip("/") + prefix, headers=headers,
                                 timeout=timeout)
        except httpx.HTTPError as exc:
            raise fail(f"cannot reach {instance['url']}: {exc}") from exc
        check_response(response, 200)
        total += len(response.json()["faults"])
    return total


def _scrape(url: str, metric: str, labels: Mapping[str, str], timeout: float
            ) -> tuple[float, float]:
    try:
        from prometheus_client.parser import (  # noqa: PLC0415 - optional dependency
            text_string_to_metric_families,
        )
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise fail("reading a /metrics page needs prometheus_client") from exc
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise fail(f"cannot scrape {url}: {exc}") from exc
    check_response(response, 200)
    errors = total = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name != metric or any(
                sample.labels.get(k) != v for k, v in labels.items()
            ):
                continue
            total += sample.value
            if sample.labels.get("status", "").startswith("5"):
                errors += sample.value
    return errors, total


def _matchers(labels: Mapping[str, str], *extra: str) -> str:
    parts = [*extra, *(f'{key}="{_escape(value)}"' for key, value in labels.items())]
    return "{" + ",".join(parts) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def error_ratio(
    url: str,
    window: float = 0.0,
    prometheus_window: str = "1m",
    metric: str = "http_requests_total",
    labels: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> float:
    """The share of requests answered 5xx, from Prometheus or from a ``/metrics`` page.

    When ``url``'s path ends in ``/metrics`` the page is scraped: with ``window``
    > 0 twice, that many seconds apart, and the ratio is of the requests in
    between; with 0, of everything counted since the service started. Otherwise
    ``url`` is a Prometheus server and the ratio is
    ``sum(rate(metric{status=~"5.."}[prometheus_window])) / sum(rate(metric[...]))``.
    ``labels`` narrow the series (e.g. ``{"job": "orders"}``). No traffic: 0.
    """
    selected = labels or {}
    if urlsplit(url).path.rstrip("/").endswith("/metrics"):
        errors, total = _scrape(url, metric, selected, timeout)
        if window > 0:
            time.sleep(window)
            later_errors, later_total = _scrape(url, metric, selected, timeout)
            errors, total = later_errors - errors, later_total - total
        return errors / total if total > 0 else 0.0
    five_xx = 'status=~"5.."'
    bad = f"sum(rate({metric}{_matchers(selected, five_xx)}[{prometheus_window}]))"
    every = f"sum(rate({metric}{_matchers(selected)}[{prometheus_window}]))"
    query = f"({bad} or vector(0)) / {every}"
    try:
        response = httpx.get(url.rstrip("/") + "/api/v1/query", params={"query": query},
                             timeout=timeout)
    except httpx.HTTPError as exc:
        raise fail(f"cannot query Prometheus at {url}: {exc}") from exc
    check_response(response, 200)
    result = response.json().get("data", {}).get("result", [])
    if not result:
        return 0.0
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else 0.0


def slo_burn_rate(
    url: str,
    objective: float = 99.99,
    window: float = 0.0,
    prometheus_window: str = "1m",
    metric: str = "http_requests_total",
    labels: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> float:
    """How many times faster than sustainable the error budget burns.

    The :func:`error_ratio` (same arguments) divided by the budget of an
    ``objective`` in percent (99.99 allows 0.0001): 1 spends the budget
    exactly over the SLO period, 14.4 spends a 30-day budget in about 2 days.
    """
    if isinstance(objective, bool) or not isinstance(objective, int | float) or not (
        0 < objective < 100
    ):
        raise fail(f"objective must be a percentage in (0, 100), got {objective!r}")
    budget = round(1.0 - objective / 100.0, 12)
    return error_ratio(url, window, prometheus_window, metric, labels, timeout) / budget
