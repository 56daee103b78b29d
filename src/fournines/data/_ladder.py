"""What every broker's idempotent consumer shares: failure headers and the ladder's plan.

A failed delivery is either sent to a step of the retry ladder or dead-lettered;
:func:`plan_failure` decides which (the one rule of the RabbitMQ and the Kafka
consumer), and :func:`failure_headers` writes the ``fournines-*`` headers that
carry its history, so a dead letter reads the same whichever broker held it.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import PoisonMessageError

__all__ = [
    "ATTEMPTS",
    "ERROR",
    "EXCEPTION",
    "FIRST_FAILURE",
    "LAST_FAILURE",
    "QUEUE",
    "REASON",
    "REPLAYED",
    "FailurePlan",
    "decode_json",
    "failure_headers",
    "now_iso",
    "plan_failure",
]

# Headers a failure adds (the original routing only on the first failure).
ATTEMPTS = "fournines-attempts"
REASON = "fournines-reason"
EXCEPTION = "fournines-exception"
ERROR = "fournines-error"
FIRST_FAILURE = "fournines-first-failure"
LAST_FAILURE = "fournines-last-failure"
QUEUE = "fournines-queue"
REPLAYED = "fournines-replayed"


def decode_json(raw: bytes) -> Any:
    """The default decoder: JSON, or a :class:`PoisonMessageError` (``"malformed_body"``)."""
    try:
        return json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise PoisonMessageError(f"the body is not JSON: {exc}", reason="malformed_body") from exc


def now_iso() -> str:
    """The failure time as the headers carry it (UTC, ISO 8601, milliseconds)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True, kw_only=True)
class FailurePlan:
    """Where a failed delivery goes.

    Ladder ``step`` (1-based) after ``delay`` seconds, or the dead letters for
    ``reason`` (then ``step`` is ``None``).
    """

    step: int | None = None
    delay: float = 0.0
    reason: str | None = None


def plan_failure(exc: BaseException, *, attempts: int, ladder: Sequence[float],
                 fatal: Callable[[BaseException], bool],
                 retryable: Callable[[BaseException], bool]) -> FailurePlan:
    """Decide after the ``attempts``-th failure (1-based) of one message with ``exc``.

    A failure no retry can fix (``fatal``, or not ``retryable``) is dead-lettered at
    once; one past the last step of ``ladder`` is ``"retries_exhausted"``.
    """
    if fatal(exc) or not retryable(exc):
        return FailurePlan(
            reason=exc.reason if isinstance(exc, PoisonMessageError) else "not_retryable")
    if attempts > len(ladder):
        return FailurePlan(reason="retries_exhausted")
    return FailurePlan(step=attempts, delay=float(ladder[attempts - 1]))


def failure_headers(headers: Mapping[str, Any], *, queue: str, attempts: int,
                    exc: BaseException | None, original: Mapping[str, Any],
                    now: str | None = None) -> dict[str, Any]:
    """``headers`` plus the history of one more failure.

    ``original`` (the original routing) and the first failure time are kept from the
    first failure on; the attempts, last failure time, exception type and message are
    those of this one; ``queue`` is the work queue (or topic) the message belongs to.
    """
    stamp = now or now_iso()
    out = dict(headers)
    for key, value in original.items():
        out.setdefault(key, value)
    out.setdefault(FIRST_FAILURE, stamp)
    out[LAST_FAILURE] = stamp
    out[ATTEMPTS] = attempts
    out[QUEUE] = queue
    if exc is not None:
        kind = type(exc)
        out[EXCEPTION] = f"{kind.__module__}.{kind.__qualname__}"
        out[ERROR] = str(exc)[:1000]
    return out
