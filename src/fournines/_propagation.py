"""How a deadline crosses the network: header names and their formats.

Outgoing calls send the remaining budget; servers read it back and set the
request's deadline from it. Two formats are understood:

- ``x-request-timeout-ms: 1500`` — fournines' own header: the remaining budget
  in milliseconds, a non-negative decimal number (fractions allowed);
- ``grpc-timeout: 1500m`` — gRPC's: at most 8 digits and a unit, one of
  ``H`` (hours), ``M`` (minutes), ``S``, ``m``, ``u``, ``n`` (seconds, milli-,
  micro-, nanoseconds), as in the gRPC over HTTP/2 specification.

``x-request-attempt: 2`` counts the attempts of one logical request across
retries, so the next hop can refuse to retry a request that is already a retry
(3 layers x 3 attempts must not become 27 calls at the bottom).
"""

from __future__ import annotations

__all__ = [
    "ATTEMPT_HEADER",
    "GRPC_TIMEOUT_HEADER",
    "TIMEOUT_HEADER",
    "format_timeout_ms",
    "parse_grpc_timeout",
    "parse_timeout_ms",
]

TIMEOUT_HEADER = "x-request-timeout-ms"
GRPC_TIMEOUT_HEADER = "grpc-timeout"
ATTEMPT_HEADER = "x-request-attempt"

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


def parse_timeout_ms(value: str | bytes) -> float | None:
    """Seconds from an ``x-request-timeout-ms`` value, or ``None`` if malformed."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not text or len(text) > _MAX_LEN:
        return None
    try:
        ms = float(text)
    except ValueError:
        return None
    if ms != ms or ms < 0 or ms == float("inf"):
        return None
    return ms / 1000.0


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
    """The ``x-request-timeout-ms`` value for ``seconds`` left (never negative)."""
    return str(max(0, int(seconds * 1000)))
