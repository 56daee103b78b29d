"""HTTP conventions shared by fournines' server edges (ASGI and WSGI).

The problem-details bodies of the early rejections and the method label of
the golden metrics live here, below both edges, so that a 503 from the WSGI
shedder is byte for byte the ASGI shedder's and a dashboard's ``method`` label
means the same thing for both.
"""

from __future__ import annotations

import json

__all__ = [
    "EXPIRED_PROBLEM",
    "OTHER_METHOD",
    "PROBLEM_CONTENT_TYPE",
    "SHED_PROBLEM",
    "method_label",
    "problem",
]

PROBLEM_CONTENT_TYPE = b"application/problem+json"


def problem(status: int, title: str, detail: str, *, type: str = "about:blank",
            **members: object) -> bytes:
    """An RFC 9457 problem details body: ``type``, ``title``, ``status``, ``detail``.

    Every early rejection (429, 503, 504) answers with one, built once at construction
    (the body never varies per request, so a rejection costs no encoding). With the
    default ``type`` (``about:blank``) the ``title`` must be the status's reason
    phrase (RFC 9457 section 4.2.1); ``members`` are extension members.
    """
    payload = {"type": type, "title": title, "status": status, "detail": detail, **members}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


SHED_PROBLEM = problem(503, "Service Unavailable",
                       "the service is overloaded: retry after the Retry-After seconds")
"""The body of a request refused by a load shedder."""

EXPIRED_PROBLEM = problem(504, "Gateway Timeout",
                          "the request's deadline had passed before it started")
"""The body of a request whose deadline had passed when it arrived."""

OTHER_METHOD = "_OTHER"
"""The ``method`` label of a request whose method is not a standard one."""

# Methods outside this set become "_OTHER" (as in OpenTelemetry's conventions): a
# client sending random methods must not create a series per method.
_METHODS = {m: m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                           "CONNECT", "TRACE")}

method_label = _METHODS.get
"""``method_label(method, OTHER_METHOD)``: the metrics label of a request method
(a bound ``dict.get``: the request path calls it once per request)."""
