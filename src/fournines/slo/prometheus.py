"""A small reader of Prometheus' instant-query API (``GET /api/v1/query``).

Only what budget reports and the deploy gate need: run an instant query, get
its samples, and fail with an error that says which server, which query and
what went wrong. Two kinds of failure matter to callers:

- :class:`PrometheusUnreachableError`: no answer (connection refused, timeout,
  DNS, a 5xx from a proxy in front): the gate exits 2, never 0;
- :class:`PrometheusQueryError`: Prometheus answered and refused the query
  (``bad_data``, ``execution``, ``timeout``): usually a wrong expression in the spec.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from .._errors import ConfigurationError, FourNinesError
from .._files import json_document

__all__ = [
    "PrometheusClient",
    "PrometheusError",
    "PrometheusQueryError",
    "PrometheusUnreachableError",
    "Sample",
]


MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""The largest answer read from Prometheus; an instant query for one series is a few
hundred bytes, and a larger answer is refused as no answer rather than held in memory."""


class PrometheusError(FourNinesError):
    """Prometheus could not answer a query; the message names the server and the query."""


class PrometheusUnreachableError(PrometheusError):
    """No usable answer from the server (network error, timeout, 5xx, not Prometheus)."""


class PrometheusQueryError(PrometheusError):
    """Prometheus answered and refused the query (``error_type`` says why)."""

    def __init__(self, message: str, *, error_type: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One series of an instant-query result: its labels and its value (may be NaN)."""

    labels: Mapping[str, str]
    value: float


def _head(content: bytes | bytearray) -> str:
    return repr(content[:200].decode("utf-8", "replace"))


def _value(raw: Any) -> float:
    # Prometheus sends values as strings, NaN and infinities included ("NaN", "+Inf").
    return float(raw[1])


def _check_url(url: object) -> None:
    # httpx would refuse a malformed URL only at the first request, with an InvalidURL
    # that is no httpx.HTTPError: checked here, it is a configuration error up front.
    problem = ""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        problem = "not an http:// or https:// URL"
    else:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            problem = str(exc)
        else:
            if not parsed.host:
                problem = "no host"
            elif parsed.port is not None and not 0 < parsed.port <= 65535:
                problem = f"port {parsed.port} is out of range"
            elif parsed.query or parsed.fragment:
                problem = "a base URL has no query or fragment"
    if problem:
        raise ConfigurationError(f"PrometheusClient.url must be an http:// or https:// URL, "
                                 f"got {url!r} ({problem})")


class PrometheusClient:
    """Instant queries against one Prometheus server.

    :param url: the server's base URL (``http://127.0.0.1:9090``; a path prefix is kept).
    :param timeout: seconds for each request, also sent as the query's own ``timeout``.
    :param headers: extra headers (e.g. ``Authorization`` for a proxy in front).
    :param client: an ``httpx.Client`` to use instead of a new one (not closed by us).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        _check_url(url)
        if (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                or not math.isfinite(timeout) or timeout <= 0):
            raise ConfigurationError(f"PrometheusClient.timeout must be > 0, got {timeout!r}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self._own = client is None
        self._client = client if client is not None else httpx.Client(
            timeout=timeout, headers=dict(headers or {}))

    def query(self, expr: str, *, at: float | None = None) -> list[Sample]:
        """The samples of an instant query (``[]`` when nothing matches).

        A scalar result comes back as one sample without labels. Range vectors
        (``x[5m]`` alone) are refused: wrap them in a function such as ``rate``.
        """
        params: dict[str, str] = {"query": expr, "timeout": f"{self.timeout:g}s"}
        if at is not None:
            params["time"] = f"{at:.3f}"
        endpoint = f"{self.url}/api/v1/query"
        try:
            with self._client.stream("GET", endpoint, params=params) as response:
                content = bytearray()
                for chunk in response.iter_bytes():
                    content += chunk
                    if len(content) > MAX_ANSWER_BYTES:
                        raise PrometheusUnreachableError(
                            f"{endpoint} answered more than {MAX_ANSWER_BYTES} bytes for "
                            f"{expr!r}: not the answer to an instant query")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise PrometheusUnreachableError(
                f"cannot reach Prometheus at {self.url}: {type(exc).__name__}: {exc}") from exc
        try:
            # Bounded nesting: a hostile answer must not make json recurse to a crash.
            body = json_document(content.decode("utf-8"))
        except (ConfigurationError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or "status" not in body:
            raise PrometheusUnreachableError(
                f"{endpoint} answered HTTP {response.status_code} without a Prometheus API "
                f"body (is {self.url} a Prometheus server?): {_head(content)}")
        if body["status"] != "success":
            error_type = str(body.get("errorType", ""))
            message = (f"Prometheus at {self.url} refused the query {expr!r}: "
                       f"{error_type}: {body.get('error', '')}")
            if response.status_code >= 500 and error_type not in ("execution", "timeout"):
                raise PrometheusUnreachableError(message)
            raise PrometheusQueryError(message, error_type=error_type)
        data = body.get("data")
        if not isinstance(data, dict):
            raise PrometheusUnreachableError(
                f"{endpoint} answered a malformed body (data is {type(data).__name__}, not "
                f"an object): {_head(content)}")
        kind, result = data.get("resultType"), data.get("result")
        try:
            if kind == "vector":
                return [Sample(labels=dict(item.get("metric", {})), value=_value(item["value"]))
                        for item in result or ()]
            if kind == "scalar":
                return [Sample(labels={}, value=_value(result))]
        except (LookupError, TypeError, ValueError, AttributeError) as exc:
            # A proxy or a half-compatible server: an answer the gate cannot read is no answer.
            raise PrometheusUnreachableError(
                f"{endpoint} answered a malformed {kind} result for {expr!r} "
                f"({type(exc).__name__}: {exc}): {_head(content)}") from exc
        raise PrometheusQueryError(
            f"the query {expr!r} returned a {kind}, not an instant vector or scalar; "
            "wrap range selectors in a function such as rate() or increase()",
            error_type="bad_data")

    def value(self, expr: str, *, at: float | None = None) -> float | None:
        """The value of a query that returns at most one series.

        ``None`` when it returns none or a NaN/infinite value (0/0: no traffic):
        callers treat both as no data. Several series are an error, naming the
        labels that differ, since summing them silently could hide a wrong query.
        """
        samples = self.query(expr, at=at)
        if not samples:
            return None
        if len(samples) > 1:
            shown = ", ".join(str(dict(s.labels)) for s in samples[:3])
            raise PrometheusQueryError(
                f"the query {expr!r} returned {len(samples)} series ({shown}, ...); "
                "expected one: aggregate it with sum()", error_type="bad_data")
        number = samples[0].value
        return number if math.isfinite(number) else None

    def close(self) -> None:
        """Close the HTTP client (only one this object made)."""
        if self._own:
            self._client.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrometheusClient(url={self.url!r})"
