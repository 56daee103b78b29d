"""Resilient httpx transports: per-host breakers, budgeted retries, deadlines, bulkheads.

Users keep ``httpx.Client`` / ``httpx.AsyncClient`` and all their habits; only
the transport changes::

    client = httpx.AsyncClient(transport=AsyncResilientTransport())
    client = httpx.Client(transport=ResilientTransport())

Each origin (``scheme://host:port``) gets its own circuit breaker, retry budget
and optional bulkhead, created on first use from one :class:`ClientPolicy` and
kept in a bounded LRU registry, so one failing host never opens another host's
breaker. Per attempt the transport:

1. refuses at once with :class:`~fournines.DeadlineExceededError` when the
   current deadline is spent (the network is not touched);
2. takes a bulkhead slot and a breaker permit (an open breaker raises
   :class:`~fournines.CircuitOpenError` without touching the network);
3. sets the attempt's timeout to ``min(attempt_timeout, remaining deadline)``
   through ``request.extensions["timeout"]`` and sends the remaining budget in
   ``x-request-timeout-ms`` and the 1-based attempt number in ``x-request-attempt``;
4. counts 5xx, network errors (refused, closed or reset connections), read
   timeouts, protocol errors and deadline overruns as breaker failures (4xx,
   429 included, are not); the success of an answer below 500 is counted when
   its body is closed, so a body cut mid-response is a failure too;
5. retries idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE, TRACE, or any
   request with an ``Idempotency-Key``) whose body can be sent again (not one
   from an iterator or generator) on connect errors, connections closed or reset
   before the response, read timeouts and the retryable statuses, honouring
   ``Retry-After`` (seconds or HTTP-date, capped),
   drawing each retry from the host's :class:`~fournines.RetryBudget` and never
   sleeping past the deadline. Exhausted retries return the last response or
   re-raise the last error.

The two transports share every decision (:mod:`fournines.client._core`); they
differ only in how they wait and send. Hedging (``hedge_after``: one concurrent
twin for a late idempotent attempt; see :class:`ClientPolicy`) needs concurrency
and is async-only: :class:`ResilientTransport` ignores it.

A route in ``fallbacks`` may map to a function ``hook(request, error) -> response``
or to a :class:`~fournines.StaleCache`: the transport then reads and keeps the
last 2xx answer (206 excepted) of each URL of that route (bodies up to
``max_stale_bytes``; a longer body is streamed on, not kept)
and, when a call fails (an error, an open breaker, a 5xx), serves it while it is
at most the cache's ``max_age`` old, marked with ``x-fournines-degraded: stale``,
an ``Age`` header and the response extension ``"fournines.stale_age"``.

With ``tracing=True`` (or a ``tracer_provider``) each request is one
OpenTelemetry ``CLIENT`` span (see :mod:`fournines.client._tracing`); when
anyone listens, each request also sends :class:`~fournines.ClientRequestStarted`
and :class:`~fournines.ClientRequestFinished` (the client golden metrics of
:class:`~fournines.instrumentation.prometheus.PrometheusListener`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import httpx

from .._clock import Clock, system_clock
from .._deadline import Deadline
from .._events import Listener, RetryScheduled, dispatch, global_listeners
from .._propagation import ATTEMPT_HEADER, TIMEOUT_HEADER, format_timeout_ms
from ..policies.budget import RetryBudget
from ..policies.bulkhead import BulkheadPermit
from ..policies.circuit_breaker import BreakerPermit
from ..policies.fallback import StaleCache
from ._core import (
    _FAILURES,
    _RETRYABLE,
    IDEMPOTENT_METHODS,
    STALE_AGE_EXTENSION,
    STALE_HEADER,
    ClientPolicy,
    FallbackHook,
    Fallbacks,
    TransportCore,
    _attempt_timeout,
    _HostPolicies,
    parse_retry_after,
)

__all__ = [
    "IDEMPOTENT_METHODS",
    "STALE_AGE_EXTENSION",
    "STALE_HEADER",
    "AsyncResilientTransport",
    "ClientPolicy",
    "FallbackHook",
    "ResilientTransport",
    "parse_retry_after",
]

_MAX_STALE_BYTES = 1 << 20

class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives the bulkhead slot back when it is closed.

    With ``outcome``, the breaker permit of the attempt is settled by the body: a
    body cut by the network (the connection closed or reset mid-response) is a
    failure although its headers were fine; a complete or closed body a success.
    """

    __slots__ = ("_outcome", "_permit", "_stream")

    def __init__(self, stream: httpx.AsyncByteStream, permit: BulkheadPermit | None,
                 outcome: BreakerPermit | None = None) -> None:
        self._stream = stream
        self._permit = permit
        self._outcome = outcome

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except _FAILURES as exc:
            if self._outcome is not None:
                self._outcome.failure(exc)
            raise

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._outcome is not None:
                self._outcome.success()  # ignored when the body already failed
            if self._permit is not None:
                self._permit.release()


class _ReleasingSyncStream(httpx.SyncByteStream):
    """The sync twin of :class:`_ReleasingStream`."""

    __slots__ = ("_outcome", "_permit", "_stream")

    def __init__(self, stream: httpx.SyncByteStream, permit: BulkheadPermit | None,
                 outcome: BreakerPermit | None = None) -> None:
        self._stream = stream
        self._permit = permit
        self._outcome = outcome

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except _FAILURES as exc:
            if self._outcome is not None:
                self._outcome.failure(exc)
            raise

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            if self._outcome is not None:
                self._outcome.success()
            if self._permit is not None:
                self._permit.release()


class _ResumedStream(httpx.AsyncByteStream):
    """A body of which ``head`` was read already: the rest still comes from ``response``."""

    __slots__ = ("_head", "_response", "_rest")

    def __init__(self, head: list[bytes], rest: AsyncIterator[bytes],
                 response: httpx.Response) -> None:
        self._head = head
        self._rest = rest
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._head:
            yield chunk
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        await self._response.aclose()


class _ResumedSyncStream(httpx.SyncByteStream):
    """The sync twin of :class:`_ResumedStream`."""

    __slots__ = ("_head", "_response", "_rest")

    def __init__(self, head: list[bytes], rest: Iterator[bytes],
                 response: httpx.Response) -> None:
        self._head = head
        self._rest = rest
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        yield from self._head
        yield from self._rest

    def close(self) -> None:
        self._response.close()


def _resumed(response: httpx.Response, stream: httpx.AsyncByteStream | httpx.SyncByteStream
             ) -> httpx.Response:
    """A response like ``response`` (whose body was started) with ``stream`` as its body."""
    return httpx.Response(response.status_code, headers=response.headers.raw, stream=stream,
                          extensions=response.extensions)


def _hold(response: httpx.Response, slot: BulkheadPermit | None, *, sync: bool = False,
          outcome: BreakerPermit | None = None) -> None:
    """Keep the bulkhead slot (and leave ``outcome`` unsettled) until the body is closed."""
    if response.is_closed:
        # A response built with its content (a mock, a cache) was read and closed
        # at construction: nobody will close its stream again.
        if outcome is not None:
            outcome.success()
        if slot is not None:
            slot.release()
    elif slot is None and outcome is None:
        return
    elif sync:
        response.stream = _ReleasingSyncStream(
            response.stream,  # type: ignore[arg-type]
            slot, outcome,
        )
    else:
        response.stream = _ReleasingStream(
            response.stream,  # type: ignore[arg-type]
            slot, outcome,
        )


class AsyncResilientTransport(TransportCore, httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` that protects every request; see the module docstring.

    :param transport: the transport that does the I/O (default ``httpx.AsyncHTTPTransport()``).
    :param config: the policy of every host without an override.
    :param per_route: overrides keyed by origin (``"http://host:port"``), or by
        ``(method, path)`` for one route (that route then has policies of its own).
    :param budget: one retry budget shared by all hosts (default: one per host).
    :param fallbacks: keyed by ``(method, path)``: a hook called with the request and
        the error when a request fails (an exception, or a 5xx as
        ``httpx.HTTPStatusError``) to answer instead, or a :class:`~fournines.StaleCache`.
    :param listeners: receive the events of every policy (named by host).
    :param clock: where time comes from.
    :param max_hosts: hosts whose policies are kept (least recently used go first).
    :param rng: the random source of backoff jitter.
    :param tracing: one OpenTelemetry client span per request (needs OpenTelemetry).
    :param tracer_provider: where spans go (implies ``tracing``; default: the global one).
    :param max_stale_bytes: larger bodies are not kept for a stale-cache fallback.
    """

    _owner = "AsyncResilientTransport"

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        config: ClientPolicy | None = None,
        per_route: Mapping[str | tuple[str, str], ClientPolicy] | None = None,
        budget: RetryBudget | None = None,
        fallbacks: Fallbacks | None = None,
        listeners: Sequence[Listener] = (),
        clock: Clock = system_clock,
        max_hosts: int = 1000,
        rng: random.Random | None = None,
        tracing: bool = False,
        tracer_provider: Any = None,
        max_stale_bytes: int = _MAX_STALE_BYTES,
    ) -> None:
        TransportCore.__init__(
            self, config=config, per_route=per_route, budget=budget, fallbacks=fallbacks,
            listeners=listeners, clock=clock, max_hosts=max_hosts, rng=rng, tracing=tracing,
            tracer_provider=tracer_provider, max_stale_bytes=max_stale_bytes,
        )
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` under the policies of its host."""
        if not self._observing():
            if not self._fallbacks:
                return await self._protected(request)
            return await self._answer(request)
        obs = self._observe_start(request)
        try:
            response = await self._answer(request)
        except BaseException as exc:
            self._observe_end(obs, request, None, exc)
            raise
        self._observe_end(obs, request, response, None)
        return response

    async def _answer(self, request: httpx.Request) -> httpx.Response:
        """The protected call, or its route's fallback when it failed."""
        hook = self._hook(request) if self._fallbacks else None
        if hook is None:
            return await self._protected(request)
        try:
            response = await self._protected(request)
        except Exception as exc:
            if not isinstance(hook, StaleCache):
                return self._fallback(hook, request, exc)
            stale = self._stale(hook, request, exc)
            if stale is None:
                raise
            return stale
        if response.status_code < 500:
            if isinstance(hook, StaleCache) and 200 <= response.status_code < 300:
                limit = self._max_stale_bytes
                chunks: list[bytes] = []
                size = 0
                raw = response.aiter_raw()
                try:
                    async for chunk in raw:
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > limit:
                            # Too large to keep: stream it on rather than hold it all
                            # (it may be endless) in memory before answering.
                            return _resumed(response, _ResumedStream(chunks, raw, response))
                except Exception as exc:
                    # The connection was cut mid-body: as good as no answer at all.
                    await response.aclose()
                    stale = self._stale(hook, request, exc)
                    if stale is None:
                        raise
                    return stale
                except BaseException:
                    await response.aclose()
                    raise
                await response.aclose()
                return self._remember(hook, request, response, b"".join(chunks))
            return response
        error = self._status_error(request, response)
        if isinstance(hook, StaleCache):
            stale = self._stale(hook, request, error)
            if stale is None:
                return response
            await response.aclose()
            return stale
        await response.aclose()
        return self._fallback(hook, request, error)

    async def _protected(self, request: httpx.Request) -> httpx.Response:
        call = self._begin(request)
        inner = self._transport
        while True:
            permit = self._admit(call, request)
            if permit is None:
                assert call.last is not None
                return call.last
            slot = None
            bulkhead = call.hp.bulkhead
            if bulkhead is not None:
                try:
                    slot = await bulkhead.aacquire()
                except BaseException:
                    permit.release()
                    raise
            try:
                if call.hedge:
                    response = await self._race(call.hp, request, permit, slot, call.deadline,
                                                call.attempt)
                else:
                    response = await inner.handle_async_request(request)
            except Exception as exc:
                if slot is not None:
                    slot.release()
                planned, error = self._after_error(call, exc, permit)
                if planned is None:
                    if error is exc:
                        raise
                    raise error from exc
            except BaseException:
                # Cancelled: the attempt says nothing about the host, but its slot and
                # (maybe half-open probe) permit must not stay taken.
                if slot is not None:
                    slot.release()
                permit.release()
                raise
            else:
                planned = self._after_response(call, response, permit)
                if planned is None:
                    # A success is settled by the body: it may yet be cut mid-response.
                    # Not a half-open probe's: a long body must not hold the only probe.
                    if permit._probe:
                        permit.success()
                    _hold(response, slot, outcome=permit)
                    return response
                _hold(response, slot)
                # Read and close what we discard, so its connection goes back to the pool.
                try:
                    await response.aread()
                    call.last = response
                except Exception:
                    call.last = None  # its body was cut: nothing left to answer with
                finally:
                    await response.aclose()
            call.delay = planned
            await self._clock.asleep(planned)
            call.attempt += 1

    async def _race(self, hp: _HostPolicies, request: httpx.Request, permit: BreakerPermit,
                    slot: BulkheadPermit | None, deadline: Deadline | None,
                    attempt: int) -> httpx.Response:
        """Send ``request``, hedged once if its headers are late; the first decisive outcome wins.

        The caller settles ``permit`` and ``slot`` from what this returns or raises;
        when the hedge's outcome is the one returned, the primary attempt is settled
        here (those later calls are then no-ops), and the hedge always is.
        """
        cfg = hp.config
        clock = self._clock
        inner = self._transport
        delay = hp.hedge_delay()
        start = clock.monotonic()
        primary: asyncio.Future[httpx.Response] = asyncio.ensure_future(
            inner.handle_async_request(request))
        second: asyncio.Future[httpx.Response] | None = None
        h_permit: BreakerPermit | None = None
        h_slot: BulkheadPermit | None = None
        h_start = start
        winner: asyncio.Future[httpx.Response] | None = None
        try:
            done, _ = await asyncio.wait((primary,), timeout=delay)
            if not done:
                launched = self._launch_hedge(hp, request, deadline, attempt, delay)
                if launched is not None:
                    h_request, h_permit, h_slot = launched
                    h_start = clock.monotonic()
                    second = asyncio.ensure_future(inner.handle_async_request(h_request))
            if second is None:
                winner = primary
                response = await primary
            else:
                pending: set[asyncio.Future[httpx.Response]] = {primary, second}
                while pending:
                    done, pending = await asyncio.wait(
                        pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in (primary, second):  # the primary first on a tie
                        if task in done and self._decisive(cfg, task):
                            winner = task
                            break
                    if winner is not None:
                        break
                if winner is None:
                    winner = primary  # both retryable: the primary's outcome goes up
                response = await winner
        finally:
            entries: list[tuple[asyncio.Future[httpx.Response] | None, BreakerPermit | None,
                                BulkheadPermit | None]] = [(primary, permit, slot),
                                                           (second, h_permit, h_slot)]
            losers = [(racer, t_permit, t_slot) for racer, t_permit, t_slot in entries
                      if racer is not None and not (racer is winner and (
                          racer is primary or racer.exception() is None))]
            # (The caller settles a winning primary; a winning hedge is settled below.)
            # Cancel every loser before awaiting any: a second cancellation of this
            # task while one is awaited must not leave the other running, unsettled.
            for racer, _, _ in losers:
                racer.cancel()
            interrupted: BaseException | None = None
            for racer, t_permit, t_slot in losers:
                assert racer is not None and t_permit is not None
                try:
                    await self._settle_loser(racer, t_permit, t_slot)
                except BaseException as exc:
                    interrupted = exc
            if interrupted is not None:
                raise interrupted
        if winner is second:
            assert h_permit is not None
            if response.status_code >= 500:
                h_permit.failure()
            else:
                h_permit.success()
            if h_slot is not None:
                _hold(response, h_slot)
        if hp.latencies is not None and response.status_code < 500:
            hp.latencies.append(clock.monotonic() - (start if winner is primary else h_start))
        return response

    @staticmethod
    def _decisive(cfg: ClientPolicy, task: asyncio.Future[httpx.Response]) -> bool:
        if task.cancelled():
            return False
        error = task.exception()
        if error is not None:
            return not isinstance(error, _RETRYABLE)
        return task.result().status_code not in cfg.retry_statuses

    def _launch_hedge(self, hp: _HostPolicies, request: httpx.Request,
                      deadline: Deadline | None, attempt: int, delay: float
                      ) -> tuple[httpx.Request, BreakerPermit, BulkheadPermit | None] | None:
        """The hedge's request, breaker permit and slot, or ``None`` when it may not go."""
        limit = hp.config.attempt_timeout
        if deadline is not None:
            remaining = deadline.remaining()
            if remaining <= 0:
                return None
            if limit is None or remaining < limit:
                limit = remaining
        try:
            permit = hp.breaker.try_acquire()
        except Exception:
            return None
        slot = None
        if hp.bulkhead is not None:
            try:
                slot = hp.bulkhead.try_acquire()
            except Exception:
                permit.release()
                return None
        if not hp.budget.try_withdraw():
            permit.release()
            if slot is not None:
                slot.release()
            return None
        hedge = httpx.Request(request.method, request.url, headers=request.headers,
                              stream=request.stream, extensions=dict(request.extensions))
        headers = hedge.headers  # a copy of the primary's
        if limit is not None:
            headers[TIMEOUT_HEADER] = format_timeout_ms(limit)
            _attempt_timeout(hedge, limit)
        headers[ATTEMPT_HEADER] = str(attempt + 1)
        if self._listeners or global_listeners():
            dispatch(self._listeners, RetryScheduled(
                policy="hedge", name=hp.name, attempt=attempt, delay=delay, error=None,
            ))
        return hedge, permit, slot

    @staticmethod
    async def _settle_loser(task: asyncio.Future[httpx.Response], permit: BreakerPermit,
                            slot: BulkheadPermit | None) -> None:
        """Cancel an attempt that lost the race; record its outcome if it had one."""
        try:
            if not task.done():
                task.cancel()
                try:
                    await asyncio.wait((task,))
                except asyncio.CancelledError:
                    task.cancel()
                    raise
            if task.cancelled():
                permit.release()
                return
            error = task.exception()
            if error is not None:
                if isinstance(error, _FAILURES):
                    permit.failure(error)
                else:
                    permit.release()
                return
            response = task.result()
            if response.status_code >= 500:
                permit.failure()
            else:
                permit.success()
            await response.aclose()
        finally:
            permit.release()
            if slot is not None:
                slot.release()


    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()

    def __repr__(self) -> str:
        return f"AsyncResilientTransport(hosts={len(self._registry)}, config={self._config!r})"


class ResilientTransport(TransportCore, httpx.BaseTransport):
    """The sync twin of :class:`AsyncResilientTransport`: same parameters, same decisions.

    ``httpx.Client(transport=ResilientTransport())``. It blocks the calling thread
    for backoff and bulkhead queueing, and it does not hedge (``hedge_after`` is
    ignored: a hedge needs a second concurrent attempt).
    """

    _owner = "ResilientTransport"

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        config: ClientPolicy | None = None,
        per_route: Mapping[str | tuple[str, str], ClientPolicy] | None = None,
        budget: RetryBudget | None = None,
        fallbacks: Fallbacks | None = None,
        listeners: Sequence[Listener] = (),
        clock: Clock = system_clock,
        max_hosts: int = 1000,
        rng: random.Random | None = None,
        tracing: bool = False,
        tracer_provider: Any = None,
        max_stale_bytes: int = _MAX_STALE_BYTES,
    ) -> None:
        TransportCore.__init__(
            self, config=config, per_route=per_route, budget=budget, fallbacks=fallbacks,
            listeners=listeners, clock=clock, max_hosts=max_hosts, rng=rng, tracing=tracing,
            tracer_provider=tracer_provider, max_stale_bytes=max_stale_bytes,
        )
        self._transport = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` under the policies of its host."""
        if not self._observing():
            if not self._fallbacks:
                return self._protected(request)
            return self._answer(request)
        obs = self._observe_start(request)
        try:
            response = self._answer(request)
        except BaseException as exc:
            self._observe_end(obs, request, None, exc)
            raise
        self._observe_end(obs, request, response, None)
        return response

    def _answer(self, request: httpx.Request) -> httpx.Response:
        """The protected call, or its route's fallback when it failed."""
        hook = self._hook(request) if self._fallbacks else None
        if hook is None:
            return self._protected(request)
        try:
            response = self._protected(request)
        except Exception as exc:
            if not isinstance(hook, StaleCache):
                return self._fallback(hook, request, exc)
            stale = self._stale(hook, request, exc)
            if stale is None:
                raise
            return stale
        if response.status_code < 500:
            if isinstance(hook, StaleCache) and 200 <= response.status_code < 300:
                limit = self._max_stale_bytes
                chunks: list[bytes] = []
                size = 0
                raw = response.iter_raw()
                try:
                    for chunk in raw:
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > limit:
                            return _resumed(response, _ResumedSyncStream(chunks, raw, response))
                except Exception as exc:
                    response.close()
                    stale = self._stale(hook, request, exc)
                    if stale is None:
                        raise
                    return stale
                except BaseException:
                    response.close()
                    raise
                response.close()
                return self._remember(hook, request, response, b"".join(chunks))
            return response
        error = self._status_error(request, response)
        if isinstance(hook, StaleCache):
            stale = self._stale(hook, request, error)
            if stale is None:
                return response
            response.close()
            return stale
        response.close()
        return self._fallback(hook, request, error)

    def _protected(self, request: httpx.Request) -> httpx.Response:
        call = self._begin(request)
        inner = self._transport
        while True:
            permit = self._admit(call, request)
            if permit is None:
                assert call.last is not None
                return call.last
            slot = None
            bulkhead = call.hp.bulkhead
            if bulkhead is not None:
                try:
                    slot = bulkhead.acquire()
                except BaseException:
                    permit.release()
                    raise
            try:
                response = inner.handle_request(request)
            except Exception as exc:
                if slot is not None:
                    slot.release()
                planned, error = self._after_error(call, exc, permit)
                if planned is None:
                    if error is exc:
                        raise
                    raise error from exc
            except BaseException:
                if slot is not None:
                    slot.release()
                permit.release()
                raise
            else:
                planned = self._after_response(call, response, permit)
                if planned is None:
                    # A success is settled by the body: it may yet be cut mid-response.
                    # Not a half-open probe's: a long body must not hold the only probe.
                    if permit._probe:
                        permit.success()
                    _hold(response, slot, sync=True, outcome=permit)
                    return response
                _hold(response, slot, sync=True)
                # Read and close what we discard, so its connection goes back to the pool.
                try:
                    response.read()
                    call.last = response
                except Exception:
                    call.last = None  # its body was cut: nothing left to answer with
                finally:
                    response.close()
            call.delay = planned
            self._clock.sleep(planned)
            call.attempt += 1

    def close(self) -> None:
        """Close the wrapped transport."""
        self._transport.close()

    def __repr__(self) -> str:
        return f"ResilientTransport(hosts={len(self._registry)}, config={self._config!r})"
