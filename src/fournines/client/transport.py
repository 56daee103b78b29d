"""Resilient httpx transports: per-host breakers, budgeted retries, deadlines, bulkheads.

Users keep ``httpx.Client`` / ``httpx.AsyncClient`` and all their habits; only
the transport changes::

    client = httpx.AsyncClient(transport=AsyncResilientTransport())
    client = httpx.Client(transport=ResilientTransport())

Each origin (``scheme://host:port``), or each group a ``host_key`` names, gets its
own circuit breaker, retry budget and optional bulkhead, created on first use from
one :class:`ClientPolicy` and kept in a registry of at most ``max_hosts``, so one
failing host never opens another host's breaker. Room is made by evicting an idle
host whose breaker is closed; a host with a request in flight or an open breaker
stays, and when none can go a new host shares the overflow policies ``_other``
(each case sends :class:`~fournines.client.HostEvicted`). Per attempt the transport:

1. refuses at once with a :class:`~fournines.DeadlineExceededError` when the
   current deadline is spent (the network is not touched);
2. takes a bulkhead slot and a breaker permit (an open breaker raises a
   :class:`~fournines.CircuitOpenError` without touching the network);
3. sets the attempt's timeout to ``min(attempt_timeout, remaining deadline)``
   through ``request.extensions["timeout"]`` and sends the remaining budget in
   ``x-request-timeout-ms`` and the 1-based attempt number in ``x-request-attempt``;
4. counts 5xx, network errors (refused, closed or reset connections), read
   timeouts, protocol errors and deadline overruns as breaker failures (4xx,
   429 included, are not); the success of an answer below 500 is counted when
   its body is closed, so a body cut mid-response is a failure too. An attempt
   (or a body being read) that a fournines deadline cancels, an enclosing
   ``Timeout`` that ran out, is a failure: a hung host opens its breaker. One
   cancelled from elsewhere (a caller that went away) is no outcome at all;
   either way its bulkhead slot and breaker permit are given back;
5. retries idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE, TRACE, or any
   request with an ``Idempotency-Key``) whose body can be sent again (not one
   from an iterator or generator) on connect errors, connections closed or reset
   before the response, read timeouts and the retryable statuses, honouring
   ``Retry-After`` (seconds or HTTP-date; one beyond ``max_retry_after`` stops),
   drawing each retry from the host's :class:`~fournines.RetryBudget` and never
   sleeping past the deadline. Exhausted retries return the last response or
   re-raise the last error.

Every refusal is raised as a twin that is also an httpx error
(:class:`~fournines.client.TransportCircuitOpenError` is a ``CircuitOpenError``
and an ``httpx.TransportError``; :class:`~fournines.client.TransportDeadlineExceededError`
a ``DeadlineExceededError`` and an ``httpx.TimeoutException``), so both
``except`` styles work.

The two transports share every decision (:mod:`fournines.client._core`); they
differ only in how they wait and send. Hedging (``hedge_after``: one concurrent
twin for a late idempotent attempt; see :class:`ClientPolicy`) needs concurrency
and is async-only: :class:`ResilientTransport` ignores it. The race itself is
:func:`fournines.policies.hedge.race`, the core of :class:`~fournines.Hedge`.

Routes (``per_route`` and ``fallbacks`` keys) are ``(method, path pattern)``: an
exact path, a template (``/payments/{id}/status``: ``{id}`` is one non-empty
segment) or a prefix (``/static/*``); exact beats template beats prefix.
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from .._clock import Clock, system_clock
from .._events import Listener, RetryScheduled, dispatch, global_listeners
from .._propagation import ATTEMPT_HEADER, TIMEOUT_HEADER, format_timeout_ms
from ..policies.budget import RetryBudget
from ..policies.bulkhead import BulkheadPermit
from ..policies.circuit_breaker import BreakerPermit
from ..policies.fallback import StaleCache
from ..policies.hedge import race
from ._core import (
    _FAILURES,
    _RETRYABLE,
    EDGE_ERRORS,
    IDEMPOTENT_METHODS,
    STALE_AGE_EXTENSION,
    STALE_HEADER,
    ClientPolicy,
    FallbackHook,
    Fallbacks,
    HostKey,
    TransportCore,
    _attempt_timeout,
    _Call,
    _hold,
    _HostPolicies,
    copy_request,
    parse_retry_after,
    resumed,
)
from ._errors import at_the_edge

__all__ = [
    "IDEMPOTENT_METHODS",
    "STALE_AGE_EXTENSION",
    "STALE_HEADER",
    "AsyncResilientTransport",
    "ClientPolicy",
    "FallbackHook",
    "HostKey",
    "ResilientTransport",
    "parse_retry_after",
]

_MAX_STALE_BYTES = 1 << 20

# Each shell below is the same steps in the same order; only the I/O differs (await or
# not, aread/read, aclose/close). Every decision is a TransportCore method.


class AsyncResilientTransport(TransportCore, httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` that protects every request; see the module docstring.

    :param transport: the transport that does the I/O (default ``httpx.AsyncHTTPTransport()``).
    :param config: the policy of every host without an override.
    :param per_route: overrides keyed by origin (``"http://host:port"``), or by
        ``(method, path pattern)`` for a route (that route then has policies of its own,
        shared by every path the pattern matches): an exact path, a template
        (``"/payments/{id}/status"``) or a prefix (``"/static/*"``).
    :param budget: one retry budget shared by all hosts (default: one per host).
    :param fallbacks: keyed by ``(method, path pattern)`` like ``per_route``: a hook
        called with the request and the error when a request fails (an exception, or
        a 5xx as ``httpx.HTTPStatusError``) to answer instead, or a
        :class:`~fournines.StaleCache`.
    :param listeners: receive the events of every policy (named by host).
    :param clock: where time comes from.
    :param max_hosts: hosts whose policies are kept. To make room, the least recently
        used idle host whose breaker is closed goes (one without a recent failure
        first); a host with a request in flight or an open breaker is never evicted.
        When none can go, a new host shares the overflow policies named ``_other``
        (:class:`~fournines.client.HostEvicted` says which happened). The ``host`` metric
        label names the first ``max_hosts`` hosts seen, later ones ``_other``.
    :param host_key: ``host_key(request) -> str | None``: requests with one key share
        one set of policies (a service or origin group: ``"payments"`` for every
        payments replica); ``None`` keys by the request's origin.
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
        host_key: HostKey | None = None,
    ) -> None:
        TransportCore.__init__(
            self, config=config, per_route=per_route, budget=budget, fallbacks=fallbacks,
            listeners=listeners, clock=clock, max_hosts=max_hosts, rng=rng, tracing=tracing,
            tracer_provider=tracer_provider, max_stale_bytes=max_stale_bytes,
            host_key=host_key,
        )
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` under the policies of its host (``request`` is left unchanged)."""
        request = copy_request(request)
        if not self._observing():
            if not self._fallbacks:
                return await self._protected(request)
            return await self._answer(request)
        obs = self._observe_start(request)
        try:
            response = await self._answer(request, obs.hp)
        except BaseException as exc:
            self._observe_end(obs, request, None, exc)
            raise
        self._observe_end(obs, request, response, None)
        return response

    async def _answer(self, request: httpx.Request,
                      hp: _HostPolicies | None = None) -> httpx.Response:
        """The protected call, or its route's fallback when it failed."""
        found = self._hook(request) if self._fallbacks else None
        if found is None:
            return await self._protected(request, hp)
        pattern, hook = found
        try:
            response = await self._protected(request, hp)
        except Exception as exc:
            return self._instead_of_error(pattern, hook, request, exc)
        if self._keeps(hook, response):
            assert isinstance(hook, StaleCache)
            if response.is_stream_consumed:
                return self._remember_read(hook, request, response)
            limit, size, chunks = self._max_stale_bytes, 0, []
            raw = response.aiter_raw()
            try:
                async for chunk in raw:
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        # Too large to keep: stream it on rather than hold it all
                        # (it may be endless) in memory before answering.
                        return resumed(response, chunks, raw)
            except Exception as exc:
                # The connection was cut mid-body: as good as no answer at all.
                await response.aclose()
                return self._instead_of_error(pattern, hook, request, exc)
            finally:
                if size <= limit:
                    await response.aclose()
            return self._remember(hook, request, response, b"".join(chunks))
        try:
            answer = self._instead_of_5xx(pattern, hook, request, response)
        except BaseException:
            await response.aclose()
            raise
        if answer is not response:
            await response.aclose()
        return answer

    async def _protected(self, request: httpx.Request,
                         hp: _HostPolicies | None = None) -> httpx.Response:
        try:
            call = self._begin(request, hp)
            try:
                inner = self._transport
                while True:
                    permit = self._admit(call, request)
                    if permit is None:
                        assert call.last is not None
                        self._ended(call)
                        return call.last
                    planned: float | None
                    slot = None
                    if call.hp.bulkhead is not None:
                        try:
                            slot = await call.hp.bulkhead.aacquire()
                        except BaseException:
                            permit.release()
                            raise
                    try:
                        if call.hedge:
                            response = await self._hedged(call, request, permit, slot)
                        else:
                            response = await inner.handle_async_request(request)
                    except Exception as exc:
                        planned = self._failed(call, exc, permit, slot)
                    except BaseException:
                        self._abandoned(permit, slot)
                        raise
                    else:
                        planned = self._answered(call, response, permit, slot)
                        if planned is None:
                            return response
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
            except BaseException:
                self._ended(call)
                raise
        except EDGE_ERRORS as exc:
            raise at_the_edge(exc, request)  # noqa: B904 - the cause is set on it

    # -- hedging (async only: the losing attempt must be cancelled) -----------------------

    async def _hedged(self, call: _Call, request: httpx.Request, permit: BreakerPermit,
                      slot: BulkheadPermit | None) -> httpx.Response:
        """Send ``request``, hedged once if its headers are late; the first decisive outcome wins.

        The caller settles ``permit`` and ``slot`` from what this returns or raises;
        when the hedge's outcome is the one returned, the primary attempt is settled
        here (those later calls are then no-ops), and the hedge always is.
        """
        hp = call.hp
        cfg = hp.config
        clock = self._clock
        inner = self._transport
        delay = hp.hedge_delay()
        start = clock.monotonic()
        # The hedge's breaker permit, bulkhead slot and start, once launched.
        hedge: list[Any] = []

        def launch() -> Callable[[], Awaitable[httpx.Response]] | None:
            launched = self._launch_hedge(call, request, delay)
            if launched is None:
                return None
            h_request, h_permit, h_slot = launched
            hedge.extend((h_permit, h_slot, clock.monotonic()))
            return lambda: inner.handle_async_request(h_request)

        def decisive(task: asyncio.Future[httpx.Response]) -> bool:
            if task.cancelled():
                return False
            error = task.exception()
            if error is not None:
                return not isinstance(error, _RETRYABLE)
            return task.result().status_code not in cfg.retry_statuses

        async def settle(task: asyncio.Future[httpx.Response], index: int) -> None:
            if index == 0:
                await self._settle_loser(task, permit, slot)
            else:
                await self._settle_loser(task, hedge[0], hedge[1])

        index, winner = await race(lambda: inner.handle_async_request(request), delay=delay,
                                   launch=launch, decisive=decisive, clock=clock, settle=settle)
        if index == 1:
            h_permit, h_slot, start = hedge
            if winner.exception() is not None:
                await self._settle_loser(winner, h_permit, h_slot)  # records its failure
            response = winner.result()
            # Settled as the primary attempt's would be (TransportCore._answered): a 5xx
            # at once, a probe's success at once, any other success by its body.
            outcome: BreakerPermit | None = None
            if response.status_code >= 500:
                h_permit.failure()
            elif h_permit.probe:
                h_permit.success()
            else:
                outcome = h_permit
            _hold(response, h_slot, outcome)
        else:
            response = winner.result()
        if hp.latencies is not None and response.status_code < 500:
            hp.latencies.append(clock.monotonic() - start)
        return response

    def _launch_hedge(self, call: _Call, request: httpx.Request, delay: float
                      ) -> tuple[httpx.Request, BreakerPermit, BulkheadPermit | None] | None:
        """The hedge's request, breaker permit and slot, or ``None`` when it may not go."""
        hp = call.hp
        limit = hp.config.attempt_timeout
        deadline = call.deadline
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
        hedge = copy_request(request)
        headers = hedge.headers  # a copy of the primary's
        if limit is not None:
            headers[TIMEOUT_HEADER] = format_timeout_ms(limit)
            _attempt_timeout(hedge, limit)
        headers[ATTEMPT_HEADER] = str(call.attempt + 1)
        if self._listeners or global_listeners():
            dispatch(self._listeners, RetryScheduled(
                policy="hedge", name=hp.name, attempt=call.attempt, delay=delay, error=None,
            ))
        return hedge, permit, slot

    @staticmethod
    async def _settle_loser(task: asyncio.Future[httpx.Response], permit: BreakerPermit,
                            slot: BulkheadPermit | None) -> None:
        """Wait for a cancelled attempt to end; record its outcome if it had one."""
        try:
            if not task.done():
                task.cancel()
                try:
                    await asyncio.wait((task,))
                except asyncio.CancelledError:
                    task.cancel()
                    raise
            if task.cancelled():
                # Lost the race: no outcome. Cut with the race by the deadline: it hung.
                permit.cancelled()
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
    ignored: a hedge needs a second concurrent attempt, and a losing sync attempt
    cannot be cancelled). Sync code cannot be cancelled either: the deadline
    becomes each attempt's httpx timeouts, and the ``ReadTimeout`` (or deadline
    error) a hung host ends with is a breaker failure.
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
        host_key: HostKey | None = None,
    ) -> None:
        TransportCore.__init__(
            self, config=config, per_route=per_route, budget=budget, fallbacks=fallbacks,
            listeners=listeners, clock=clock, max_hosts=max_hosts, rng=rng, tracing=tracing,
            tracer_provider=tracer_provider, max_stale_bytes=max_stale_bytes,
            host_key=host_key,
        )
        self._transport = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` under the policies of its host (``request`` is left unchanged)."""
        request = copy_request(request)
        if not self._observing():
            if not self._fallbacks:
                return self._protected(request)
            return self._answer(request)
        obs = self._observe_start(request)
        try:
            response = self._answer(request, obs.hp)
        except BaseException as exc:
            self._observe_end(obs, request, None, exc)
            raise
        self._observe_end(obs, request, response, None)
        return response

    def _answer(self, request: httpx.Request, hp: _HostPolicies | None = None) -> httpx.Response:
        """The protected call, or its route's fallback when it failed."""
        found = self._hook(request) if self._fallbacks else None
        if found is None:
            return self._protected(request, hp)
        pattern, hook = found
        try:
            response = self._protected(request, hp)
        except Exception as exc:
            return self._instead_of_error(pattern, hook, request, exc)
        if self._keeps(hook, response):
            assert isinstance(hook, StaleCache)
            if response.is_stream_consumed:
                return self._remember_read(hook, request, response)
            limit, size, chunks = self._max_stale_bytes, 0, []
            raw = response.iter_raw()
            try:
                for chunk in raw:
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        return resumed(response, chunks, raw)
            except Exception as exc:
                response.close()
                return self._instead_of_error(pattern, hook, request, exc)
            finally:
                if size <= limit:
                    response.close()
            return self._remember(hook, request, response, b"".join(chunks))
        try:
            answer = self._instead_of_5xx(pattern, hook, request, response)
        except BaseException:
            response.close()
            raise
        if answer is not response:
            response.close()
        return answer

    def _protected(self, request: httpx.Request,
                   hp: _HostPolicies | None = None) -> httpx.Response:
        try:
            call = self._begin(request, hp)
            try:
                inner = self._transport
                while True:
                    permit = self._admit(call, request)
                    if permit is None:
                        assert call.last is not None
                        self._ended(call)
                        return call.last
                    planned: float | None
                    slot = None
                    if call.hp.bulkhead is not None:
                        try:
                            slot = call.hp.bulkhead.acquire()
                        except BaseException:
                            permit.release()
                            raise
                    try:
                        response = inner.handle_request(request)
                    except Exception as exc:
                        planned = self._failed(call, exc, permit, slot)
                    except BaseException:
                        self._abandoned(permit, slot)
                        raise
                    else:
                        planned = self._answered(call, response, permit, slot)
                        if planned is None:
                            return response
                        try:
                            response.read()
                            call.last = response
                        except Exception:
                            call.last = None
                        finally:
                            response.close()
                    call.delay = planned
                    self._clock.sleep(planned)
                    call.attempt += 1
            except BaseException:
                self._ended(call)
                raise
        except EDGE_ERRORS as exc:
            raise at_the_edge(exc, request)  # noqa: B904 - the cause is set on it

    def close(self) -> None:
        """Close the wrapped transport."""
        self._transport.close()

    def __repr__(self) -> str:
        return f"ResilientTransport(hosts={len(self._registry)}, config={self._config!r})"
