"""How a deadline crosses the network: header names and their formats.

Outgoing calls send the remaining budget; servers read it back and set the
request's deadline from it. Two formats are understood:

- ``x-request-timeout-ms: 1500`` — fournines' own header: the remaining budget
  in milliseconds, ASCII digits with an optional fraction (``1500.5``); a
  leading ``-`` (or 0) means the budget is already spent;
- ``grpc-timeout: 1500m`` — gRPC's: at most 8 digits and a unit, one of
  ``H`` (hours), ``M`` (minutes), ``S``, ``m``, ``u``, ``n`` (seconds, milli-,
  micro-, nanoseconds), as in the gRPC over HTTP/2 specification.

``x-request-attempt: 2`` counts the attempts of one logical request across
retries (informational: the server side can log or count retried requests).

``x-no-retry: 1`` is retry pushback, after the SRE book's advice to retry at one
layer only: a service answers 5xx with it when its own outgoing call failed after
*its* retries (or its retry budget refused them). The caller then does not retry
that answer, so retries are made by the layer next to the failure and nowhere
else: 3 layers x 3 attempts cannot become 27 calls at the bottom, and the bottom
sees at most ``(1 + ratio) x requests + floor`` of the one retrying layer.
"""

from __future__ import annotations

import math
import re
from contextvars import ContextVar, Token

__all__ = [
    "ATTEMPT_HEADER",
    "GRPC_TIMEOUT_HEADER",
    "NO_RETRY_HEADER",
    "TIMEOUT_HEADER",
    "RetryPushback",
    "format_timeout_ms",
    "parse_grpc_timeout",
    "parse_timeout_ms",
]

TIMEOUT_HEADER = "x-request-timeout-ms"
GRPC_TIMEOUT_HEADER = "grpc-timeout"
ATTEMPT_HEADER = "x-request-attempt"
NO_RETRY_HEADER = "x-no-retry"


class RetryPushback:
    """Per incoming request: whether an outgoing call gave up after its retries."""

    __slots__ = ("exhausted",)

    def __init__(self) -> None:
        self.exhausted = False


# A mutable marker rather than a flag in the context: child tasks of the request copy
# the context, and their outgoing calls must still be able to set it.
_pushback: ContextVar[RetryPushback | None] = ContextVar("fournines_pushback", default=None)


def begin_pushback() -> tuple[RetryPushback, Token[RetryPushback | None]]:
    """Start tracking retry pushback for the request being served (server side)."""
    marker = RetryPushback()
    return marker, _pushback.set(marker)


end_pushback = _pushback.reset


def mark_retries_exhausted() -> None:
    """An outgoing call gave up retrying: the request being served must say so."""
    marker = _pushback.get()
    if marker is not None:
        marker.exhausted = True

_GRPC_UNITS = {
    "H": 3600.0,
    "M": 60.0,
    "S": 1.0,
    "m": 1e-3,
    "u": 1e-6,
    "n": 1e-9,
}

# A header longer than this is garbage, not a timeout: refuse before parsing it.
_MAX_LEN = 32
# Not float()'s grammar: no "+", exponent, "inf", "nan", "1_000" or non-ASCII digits.
_TIMEOUT_MS = re.compile(r"(-?)([0-9]+(?:\.[0-9]+)?)")


def parse_timeout_ms(value: str | bytes) -> float | None:
    """Seconds from an ``x-request-timeout-ms`` value, or ``None`` if malformed.

    A negative value is a budget already spent: ``0.0``, like ``0``.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip(" \t")  # HTTP's optional whitespace, nothing else
    if len(text) > _MAX_LEN:
        return None
    match = _TIMEOUT_MS.fullmatch(text)
    if match is None:
        return None
    return 0.0 if match[1] else float(match[2]) / 1000.0


def parse_grpc_timeout(value: str | bytes) -> float | None:
    """Seconds from a ``grpc-timeout`` value (``"100m"``, ``"5S"``), or ``None``."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if len(text) < 2 or len(text) > 9:
        return None
    digits, unit = text[:-1], text[-1]
    if not digits.isdigit() or not digits.isascii() or unit not in _GRPC_UNITS:
        return None
    return int(digits) * _GRPC_UNITS[unit]


def format_timeout_ms(seconds: float) -> str:
    """The ``x-request-timeout-ms`` value for ``seconds`` left (never negative).

    An unbounded budget has no header value: callers send none (``math.inf`` means
    "no deadline"), so a non-finite one is a programming error, named.
    """
    if seconds != seconds or seconds in (math.inf, -math.inf):
        raise ValueError(f"format_timeout_ms.seconds must be finite, got {seconds!r}")
    return str(max(0, int(seconds * 1000)))
