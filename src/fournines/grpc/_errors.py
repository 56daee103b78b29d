"""The errors the gRPC client interceptors raise: fournines errors that are ``grpc.RpcError`` too.

Code around a stub already catches ``grpc.RpcError`` and asks it for ``code()``
and ``details()``. So what an interceptor refuses is raised as a class that is
both, and that answers those questions as a failed call would::

    RejectedError ──────────┐          grpc.RpcError
      CircuitOpenError      ├── GrpcRejectedError               code() UNAVAILABLE
                            │     └── GrpcCircuitOpenError      (also CircuitOpenError)
    DeadlineExceededError ──┴── GrpcDeadlineExceededError       code() DEADLINE_EXCEEDED

``except CircuitOpenError`` and ``except grpc.RpcError`` both catch an open
breaker; ``except DeadlineExceededError``, ``except TimeoutError`` and
``except grpc.RpcError`` all catch a deadline that was spent before the call
was sent. An RPC that failed on the wire is raised as gRPC raised it.
"""

from __future__ import annotations

from typing import Any

import grpc

from .._errors import CircuitOpenError, DeadlineExceededError, RejectedError

__all__ = ["GrpcCircuitOpenError", "GrpcDeadlineExceededError", "GrpcRejectedError"]


class _CallLike:
    """What ``grpc.RpcError`` raised by a stub answers: a code, details and metadata."""

    _code = grpc.StatusCode.UNAVAILABLE

    def code(self) -> grpc.StatusCode:
        """The status code a failed call with this outcome would have."""
        return self._code

    def details(self) -> str:
        """A short description, as a failed call's ``details()``."""
        return str(self)

    def initial_metadata(self) -> tuple[Any, ...]:
        """Nothing was received: empty."""
        return ()

    def trailing_metadata(self) -> tuple[Any, ...]:
        """Nothing was received: empty."""
        return ()


class GrpcRejectedError(_CallLike, RejectedError, grpc.RpcError):
    """A client interceptor's policy refused the call: a RejectedError and a grpc.RpcError.

    ``code()`` is ``UNAVAILABLE``: the call was not sent, as when no connection
    could be made.
    """


class GrpcCircuitOpenError(CircuitOpenError, GrpcRejectedError):
    """The target's breaker is open: a CircuitOpenError and a grpc.RpcError (UNAVAILABLE)."""


class GrpcDeadlineExceededError(_CallLike, DeadlineExceededError, grpc.RpcError):
    """No time was left to send the call: a DeadlineExceededError and a grpc.RpcError.

    ``code()`` is ``DEADLINE_EXCEEDED``, as gRPC's own answer would be.
    """

    _code = grpc.StatusCode.DEADLINE_EXCEEDED
