"""The lab's fleet: gateway, order, payment and profile, as plain ASGI apps.

Every service runs in its own uvicorn process (``create_app`` is the factory,
configured from ``FOURNINES_LAB_*`` environment variables), in one of two
variants that share all their business code:

- ``unprotected``: plain ``httpx`` with fixed 5 s timeouts (httpx's default), no
  policies; the payment service queues without bound;
- ``protected``: every service behind :func:`fournines.asgi.protect` (health,
  metrics, deadlines, load shedding); outgoing calls through
  :class:`~fournines.client.AsyncResilientTransport` (breakers, budgeted
  retries, deadline propagation); the payment status from a
  :class:`~fournines.StaleCache` (up to 300 s old); a missing profile renders
  the default avatar and the nickname "Guest" / "访客".

The gateway's page ``GET /page/{order}?user={user}`` calls order (which calls
payment through the fault proxy) and profile concurrently. A degraded answer
is still 200, and says so in ``x-lab-degraded`` (the fallbacks that answered)
and in the JSON body.

With ``FOURNINES_LAB_ETCD_URL`` set (``fournines lab --etcd``, protected variant
only) every service registers itself in etcd once it serves (at
``FOURNINES_LAB_ADVERTISE_URL``) and deregisters when it stops, and order and the
gateway call ``http://payment``, ``http://order`` and ``http://profile``: the
client balancer picks among the instances :class:`~fournines.discovery.EtcdEndpoints`
follows.

The payment service models a capacity: ``concurrency`` workers that each take
``service_time`` seconds per request (an ``asyncio.Semaphore``; the CPU cost
is negligible, so the model, not the shared machine, is the bottleneck).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from .._deadline import current_deadline, deadline_after
from .._errors import DeadlineExceededError
from ..asgi._types import ASGIApp, Receive, Scope, Send

__all__ = [
    "CAPACITY_PATH",
    "GUEST_PROFILE",
    "LEAK_PATH",
    "PAYMENT_LIMIT_PER_WORKER",
    "PAYMENT_MIN_LIMIT_PER_WORKER",
    "UNKNOWN_STATUS",
    "create_app",
]

GUEST_PROFILE: dict[str, Any] = {
    "user": None, "nickname": "Guest", "nickname_zh": "访客", "avatar": "/avatars/default.png",
}
"""What the protected gateway renders when the profile service cannot answer."""

UNKNOWN_STATUS = "unknown"
"""The payment status the protected order page shows when payment cannot answer and no
status of the order is cached (the page says the status is being checked)."""

# The lab's time scale: a minute of load stands for an hour of operation, so the seed's
# 60 s breaker reset is about a second here. Breakers probe 0.5 s after they open and
# back off to 1.5 s while the fault lasts (fournines' adaptive reset), so full service is
# back within 2 s of a fault's end however long it lasted.
BREAKER_RESET = 1.5
BREAKER_FIRST_RESET = 0.5
PAGE_DEADLINE = 0.9  # the gateway answers within 0.9 s or not at all (p99 target: 1 s)

Handler = Callable[[dict[str, str], dict[str, str]], Awaitable[tuple[int, dict[str, Any],
                                                                     dict[str, str]]]]


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(f"FOURNINES_LAB_{name}", default)
    if value is None:
        raise RuntimeError(f"FOURNINES_LAB_{name} is not set")
    return value


async def _send_json(send: Send, status: int, body: dict[str, Any],
                     headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body, ensure_ascii=False).encode()
    raw = [(b"content-type", b"application/json"),
           (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def _router(prefix: str, handler: Handler) -> ASGIApp:
    from ..policies import fallback  # noqa: F401, PLC0415 - imported before the first request

    """An ASGI app: ``GET {prefix}{id}`` -> ``handler(params, query)``; ``/livez`` -> 200."""

    leak = _Leak(_env("CHAOS_TOKEN", ""))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/livez":
            await _send_json(send, 200, {"status": "pass"})
            return
        if path == LEAK_PATH:
            await leak.control(scope, send)
            return
        if not path.startswith(prefix):
            await _send_json(send, 404, {"error": "not found"})
            return
        if leak.started is not None and not await leak.suffer(send):
            return
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        status, body, headers = await handler({"id": path[len(prefix):]}, query)
        await _send_json(send, status, body, headers)

    return app


# -- leak -------------------------------------------------------------------------------

LEAK_PATH = "/lab/leak"
"""``PUT {LEAK_PATH}?growth=G`` (the chaos token as bearer) starts a leak in this process:
from then on every request is ``G`` seconds slower per second since (up to
:data:`LEAK_MAX_DELAY`), until the process is replaced; ``GET`` answers
``{"leaking": bool, "delay": seconds}``. Nothing undoes it but a restart."""
LEAK_MAX_DELAY = 30.0


class _Leak:
    """A leak that only a restart cures: the state lives in this process and nowhere else.

    It stands for what grows with uptime in a real service (a heap whose collections
    get longer, a pool that loses a connection now and then): the longer it runs, the
    slower every request. A protected service still honours its callers' deadlines, so
    work it cannot finish in time is answered 504 at the deadline and counted in its own
    metrics, as payment's queue does.
    """

    __slots__ = ("expected", "growth", "started")

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()
        self.growth = 0.0
        self.started: float | None = None

    def delay(self) -> float:
        if self.started is None:
            return 0.0
        return min(self.growth * (asyncio.get_running_loop().time() - self.started),
                   LEAK_MAX_DELAY)

    async def suffer(self, send: Send) -> bool:
        """Wait out the leak; ``False`` when the caller's deadline passed (504 sent)."""
        delay = self.delay()
        deadline = current_deadline()
        if deadline is not None and deadline.remaining() < delay:
            await asyncio.sleep(max(deadline.remaining(), 0.0))
            await _send_json(send, 504, {"error": "deadline passed (the service leaks)"},
                             {"x-lab-error": "leak"})
            return False
        await asyncio.sleep(delay)
        return True

    async def control(self, scope: Scope, send: Send) -> None:
        headers = dict(scope.get("headers") or [])
        if not self.expected.removeprefix(b"Bearer ") or headers.get(
                b"authorization") != self.expected:
            await _send_json(send, 401, {"error": "the lab's chaos token is required"})
            return
        if scope["method"] == "GET":
            await _send_json(send, 200, {"leaking": self.started is not None,
                                         "delay": self.delay()})
            return
        query = parse_qs(scope.get("query_string", b"").decode())
        try:
            growth = float(query["growth"][0])
        except (KeyError, ValueError):
            growth = -1.0
        if scope["method"] != "PUT" or not 0.0 < growth <= 10.0:
            await _send_json(send, 400, {"error": "PUT ?growth=G with 0 < G <= 10"})
            return
        self.growth = growth
        self.started = asyncio.get_running_loop().time()
        await _send_json(send, 200, {"leaking": True, "growth": growth})


# -- payment ----------------------------------------------------------------------------


def _payment(protected: bool) -> ASGIApp:
    concurrency = int(_env("PAYMENT_CONCURRENCY", "2"))
    workers = asyncio.Semaphore(concurrency)
    service_time = float(_env("PAYMENT_SERVICE_TIME", "0.03"))
    # capacity_loss: each request holds its worker `slowdown` times longer, so the same
    # workers serve 1/slowdown of the model (a failing disk, a noisy neighbour).
    slowdown = [1.0]

    async def status(params: dict[str, str], query: dict[str, str]) -> tuple[
            int, dict[str, Any], dict[str, str]]:
        deadline = current_deadline() if protected else None
        if deadline is not None:
            # Work whose caller has given up is dropped, not done: a queue of dead requests
            # is how an overload outlives the burst that caused it.
            try:
                async with asyncio.timeout(max(deadline.remaining(), 0.0)):
                    await workers.acquire()
            except TimeoutError:
                return 504, {"error": "deadline passed while queued"}, {}
        else:
            await workers.acquire()
        try:
            await asyncio.sleep(service_time * slowdown[0])
        finally:
            workers.release()
        return 200, {"order": params["id"], "status": "paid"}, {}

    app = _router("/status/", status)
    if protected:
        app = _registered(app, "payment")
    from ..chaos import ChaosMiddleware  # noqa: PLC0415

    # Seeded: both variants see the same injected errors in the same order of calls.
    chaotic: ASGIApp = ChaosMiddleware(app, admin_token=_env("CHAOS_TOKEN"),
                                       admin_prefix="/chaos/faults",
                                       seed=int(_env("SEED", "7")))
    if protected:
        # Payment is where the fleet's capacity ends, and a shed payment call becomes a
        # stale answer upstream: shed early, from a limit derived from the model (a few
        # requests queued per worker), so a larger modelled capacity is not shed as if
        # it had two workers.
        chaotic = _protect(chaotic, "payment", concurrency_limit=_limit(
            initial=PAYMENT_LIMIT_PER_WORKER * concurrency,
            minimum=PAYMENT_MIN_LIMIT_PER_WORKER * concurrency))
    # The write path (a scenario with database or consumer steps) sits outside the read
    # path's modelled capacity and shedder: its protection is the transaction retry.
    from ._payments import with_payments  # noqa: PLC0415

    chaotic = with_payments(chaotic, protected)
    # Outermost: the lab's own control of the model is never shed or counted.
    return _capacity_control(chaotic, slowdown, _env("CHAOS_TOKEN"))


PAYMENT_LIMIT_PER_WORKER = 4
"""The protected payment's initial concurrency limit, per modelled worker."""
PAYMENT_MIN_LIMIT_PER_WORKER = 2
"""The least the adaptive limit may fall to, per modelled worker (one running, one queued)."""

CAPACITY_PATH = "/lab/capacity"
"""``PUT {CAPACITY_PATH}?slowdown=F`` (the chaos token as bearer) sets the payment model's
slowdown: every request holds its worker F times longer (``1`` restores the model)."""


def _capacity_control(app: ASGIApp, slowdown: list[float], token: str) -> ASGIApp:
    expected = f"Bearer {token}".encode()

    async def control(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != CAPACITY_PATH:
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if headers.get(b"authorization") != expected:
            await _send_json(send, 401, {"error": "the lab's chaos token is required"})
            return
        query = parse_qs(scope.get("query_string", b"").decode())
        try:
            factor = float(query["slowdown"][0])
        except (KeyError, ValueError):
            factor = -1.0
        if scope["method"] != "PUT" or not 1.0 <= factor <= 100.0:
            await _send_json(send, 400, {"error": "PUT ?slowdown=F with 1 <= F <= 100"})
            return
        slowdown[0] = factor
        await _send_json(send, 200, {"slowdown": factor})

    return control


def _protect(app: ASGIApp, service: str, **options: Any) -> ASGIApp:
    from ..asgi import protect  # noqa: PLC0415

    return protect(app, service=service, **options)


def _limit(*, initial: int, minimum: int, maximum: int = 1000) -> Any:
    from ..policies.adaptive import Gradient2Limit  # noqa: PLC0415

    return Gradient2Limit(initial_limit=initial, min_limit=minimum, max_limit=maximum)


# Gateway and order have no fallback above them: what they shed is a failed page. They shed
# only far past normal (their deadlines bound latency already); the bottleneck sheds first.
_EDGE = {"max_loop_lag": 0.5}


# -- profile ----------------------------------------------------------------------------


def _profile(protected: bool) -> ASGIApp:
    async def profile(params: dict[str, str], query: dict[str, str]) -> tuple[
            int, dict[str, Any], dict[str, str]]:
        user = params["id"]
        return 200, {"user": user, "nickname": f"user-{user}",
                     "avatar": f"/avatars/{user}.png"}, {}

    app = _router("/profiles/", profile)
    return _protect(_registered(app, "profile"), "profile") if protected else app


# -- registry ---------------------------------------------------------------------------


def _etcd() -> tuple[str, str] | None:
    """``(etcd URL, key prefix)`` when the fleet runs behind the registry."""
    url = os.environ.get("FOURNINES_LAB_ETCD_URL")
    return (url, _env("ETCD_PREFIX")) if url else None


def _endpoints(service: str) -> Any:
    """The live instances of ``service`` in etcd (started with the app's lifespan)."""
    from ..discovery import EtcdEndpoints  # noqa: PLC0415

    etcd = _etcd()
    assert etcd is not None
    return EtcdEndpoints(etcd[0], service, prefix=etcd[1])


def _balanced(source: Any) -> Any:
    from ..client import AsyncBalancingTransport  # noqa: PLC0415
    from ._transport import LeanTransport  # noqa: PLC0415

    return AsyncBalancingTransport(source, transport=LeanTransport())


def _registered(app: ASGIApp, service: str, sources: tuple[Any, ...] = ()) -> ASGIApp:
    """``app`` that follows ``sources`` and is in the registry while it serves.

    At startup the discovery sources get their first listing (a caller must know its
    dependencies before it takes traffic); the registration waits until this process
    accepts connections, so no client is sent to a port nobody listens on yet. On
    SIGTERM it deregisters before uvicorn stops accepting, and at the lifespan's
    shutdown it stops following.
    """
    etcd = _etcd()
    if etcd is None:
        return app
    from ..discovery import EtcdRegistry, Instance, default_instance_id  # noqa: PLC0415
    from .registry import LAB_TTL  # noqa: PLC0415

    registry = EtcdRegistry(etcd[0], prefix=etcd[1], ttl=LAB_TTL)
    instance = Instance(service=service, id=default_instance_id(),
                        address=_env("ADVERTISE_URL"))
    port = int(_env("PORT"))
    tasks: list[asyncio.Task[None]] = []

    async def register_when_serving() -> None:
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            break
        await registry.register(instance)  # it keeps trying by itself if etcd is down

    def deregister_first() -> None:
        """On SIGTERM, leave the registry before the server stops accepting connections.

        uvicorn's own handler (installed before the lifespan starts) closes the
        listening socket at once; it gets the signal once the record is gone (or
        after a second, when etcd does not answer), so that clients stop sending
        here while this process still answers.
        """
        uvicorn_handler = signal.getsignal(signal.SIGTERM)
        if not callable(uvicorn_handler):
            return
        loop = asyncio.get_running_loop()

        async def drain(signum: int, frame: Any) -> None:
            try:
                async with asyncio.timeout(1.0):
                    await registry.deregister()
            except TimeoutError:
                pass
            finally:
                uvicorn_handler(signum, frame)

        def on_term(signum: int, frame: Any) -> None:
            loop.call_soon_threadsafe(
                lambda: tasks.append(loop.create_task(drain(signum, frame))))

        signal.signal(signal.SIGTERM, on_term)

    async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.gather(*(source.start() for source in sources))
                tasks.append(asyncio.create_task(register_when_serving()))
                deregister_first()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in tasks:
                    if task is not asyncio.current_task():
                        task.cancel()
                await registry.aclose()
                await asyncio.gather(*(source.aclose() for source in sources))
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send)
        else:
            await app(scope, receive, send)

    return wrapped


# -- clients ----------------------------------------------------------------------------


def _plain_client() -> Any:
    import httpx  # noqa: PLC0415

    from ._transport import LeanTransport  # noqa: PLC0415

    return httpx.AsyncClient(transport=LeanTransport(), timeout=5.0)


def _resilient_client(config: Any, per_route: dict[Any, Any] | None = None,
                      under: Any = None) -> Any:
    import httpx  # noqa: PLC0415

    from ..client import AsyncResilientTransport  # noqa: PLC0415
    from ._transport import LeanTransport  # noqa: PLC0415

    transport = AsyncResilientTransport(under or LeanTransport(), config=config,
                                        per_route=per_route)
    return httpx.AsyncClient(transport=transport, timeout=5.0)


# -- order ------------------------------------------------------------------------------


def _order(protected: bool) -> ASGIApp:
    payment_url = _env("PAYMENT_URL")
    client = None
    sources: tuple[Any, ...] = ()
    if _etcd() is not None and protected:
        payment_url = "http://payment"
        sources = (_endpoints("payment"),)

    def get_client() -> Any:
        nonlocal client
        if client is None:
            if protected:
                from ..client import ClientPolicy  # noqa: PLC0415
                from ..policies.backoff import Backoff  # noqa: PLC0415
                from ..policies.circuit_breaker import FailureRate  # noqa: PLC0415

                # Each attempt may take 0.25 s of the 0.3 s the status read has: an attempt
                # timeout below what a slowed payment needs (90 ms of service plus its
                # queue under capacity_loss) turns every slow answer into a failure, the
                # failures open the breaker and the cache answers everything. Measured
                # (scenario of latency + capacity_loss, 400/s): 0.12 s gave 227 full answers
                # of 2500 in the loss, 0.25 s 851, no attempt timeout 832 but a slower
                # return to full service; fast errors (500s) are still retried.
                client = _resilient_client(ClientPolicy(
                    attempts=3, attempt_timeout=0.25, reset_timeout=BREAKER_RESET,
                    initial_reset_timeout=BREAKER_FIRST_RESET, half_open_probes=3,
                    # Hundreds of attempts a second: five failures in a row happen every
                    # few seconds at 20 % errors, which the retries absorb. Trip on half
                    # of the last 100 attempts failing instead (see ClientPolicy.trip).
                    trip=FailureRate(threshold=0.5, window=100, minimum_calls=20),
                    # the status read is idempotent and a 500 from payment is transient
                    retry_statuses=frozenset({429, 500, 502, 503, 504}),
                    backoff=Backoff(initial=0.01, cap=0.04),
                ), under=_balanced(sources[0]) if sources else None)
            else:
                client = _plain_client()
        return client

    get_client()  # imports and policies now, not on the first request

    async def fetch_status(order: str) -> str:
        response = await get_client().get(f"{payment_url}/status/{order}")
        response.raise_for_status()
        return str(response.json()["status"])

    payment_status: Callable[[str], Awaitable[str]] = fetch_status
    if protected:
        from ..policies.fallback import Fallback, StaleCache  # noqa: PLC0415
        from ..policies.pipeline import Pipeline  # noqa: PLC0415
        from ..policies.timeout import Timeout  # noqa: PLC0415

        # The seed's fallback is the last status up to 5 minutes old. An order whose status
        # was never read (a cold cache) still renders, with the status marked unknown:
        # a degraded page now beats an error page, and the gateway says it was degraded.
        pipeline = Pipeline(Fallback(value=UNKNOWN_STATUS, name="payment-unknown"),
                            StaleCache(max_age=300, name="payment-status"), Timeout(0.3))

        async def cached(order: str) -> str:
            result: str = await pipeline.acall(fetch_status, order)
            return result

        payment_status = cached

    async def order(params: dict[str, str], query: dict[str, str]) -> tuple[
            int, dict[str, Any], dict[str, str]]:
        from ..policies.fallback import track_degradation  # noqa: PLC0415

        oid = params["id"]
        with track_degradation() as degradation:
            try:
                status = await payment_status(oid)
            except Exception as exc:
                return 502, {"error": f"payment: {type(exc).__name__}"}, {
                    "x-lab-error": f"payment {type(exc).__name__}"}
        body = {"order": oid, "items": [{"sku": f"sku-{oid}", "qty": 1}], "payment": status,
                "degraded": sorted(set(degradation.sources))}
        return 200, body, {}

    app = _router("/orders/", order)
    if not protected:
        return app
    return _protect(_registered(app, "order", sources), "order",
                    concurrency_limit=_limit(initial=300, minimum=300), **_EDGE)


# -- gateway ----------------------------------------------------------------------------


def _gateway(protected: bool) -> ASGIApp:
    order_url = _env("ORDER_URL")
    profile_url = _env("PROFILE_URL")
    client = None
    sources: tuple[Any, ...] = ()
    if _etcd() is not None and protected:
        order_url, profile_url = "http://order", "http://profile"
        sources = (_endpoints("order"), _endpoints("profile"))

    def get_client() -> Any:
        nonlocal client
        if client is None:
            if protected:
                from ..client import ClientPolicy  # noqa: PLC0415
                from ..policies.backoff import Backoff  # noqa: PLC0415
                from ..policies.circuit_breaker import FailureRate  # noqa: PLC0415

                # Order has no fallback above it, and its 502 usually says "payment had no
                # cached answer", not "order is down": trip on a failure RATE (half of at
                # least 20 calls in 5 s), not on the seed's 5 in a row.
                base = ClientPolicy(attempts=2, attempt_timeout=0.6,
                                    trip=FailureRate(threshold=0.5, window=5,
                                                     window_type="time", minimum_calls=20),
                                    reset_timeout=BREAKER_RESET, half_open_probes=3,
                                    initial_reset_timeout=BREAKER_FIRST_RESET,
                                    backoff=Backoff(initial=0.01, cap=0.05))
                fast = ClientPolicy(attempts=2, attempt_timeout=0.2,
                                    reset_timeout=BREAKER_RESET, half_open_probes=3,
                                    initial_reset_timeout=BREAKER_FIRST_RESET,
                                    backoff=Backoff(initial=0.01, cap=0.05))
                under = None
                if sources:
                    from ._transport import HostRouter  # noqa: PLC0415

                    under = HostRouter({"order": _balanced(sources[0]),
                                        "profile": _balanced(sources[1])})
                client = _resilient_client(base, per_route={profile_url: fast}, under=under)
            else:
                client = _plain_client()
        return client

    get_client()  # imports and policies now, not on the first request

    async def fetch_order(oid: str) -> dict[str, Any]:
        response = await get_client().get(f"{order_url}/orders/{oid}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def fetch_profile(user: str) -> dict[str, Any]:
        response = await get_client().get(f"{profile_url}/profiles/{user}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    profile_of: Callable[[str], Awaitable[dict[str, Any]]] = fetch_profile
    if protected:
        from ..policies.fallback import Fallback  # noqa: PLC0415

        guest = Fallback(value=GUEST_PROFILE, name="profile")

        async def with_fallback(user: str) -> dict[str, Any]:
            result: dict[str, Any] = await guest.acall(fetch_profile, user)
            return result

        profile_of = with_fallback

    async def page(params: dict[str, str], query: dict[str, str]) -> tuple[
            int, dict[str, Any], dict[str, str]]:
        from ..policies.fallback import track_degradation  # noqa: PLC0415

        oid, user = params["id"], query.get("user", "0")
        with track_degradation() as degradation:
            try:
                if protected:
                    with deadline_after(PAGE_DEADLINE):
                        order, profile = await asyncio.gather(fetch_order(oid), profile_of(user))
                else:
                    order, profile = await asyncio.gather(fetch_order(oid), profile_of(user))
            except DeadlineExceededError:
                return 504, {"error": "deadline exceeded"}, {"x-lab-error": "deadline"}
            except Exception as exc:
                return 502, {"error": f"{type(exc).__name__}: {exc}"[:200]}, {
                    "x-lab-error": _reason(exc)}
        degraded = sorted({*degradation.sources, *order.get("degraded", [])})
        body = {"order": order, "profile": profile, "degraded": degraded}
        return 200, body, {"x-lab-degraded": ",".join(degraded)} if degraded else {}

    app = _router("/page/", page)
    if not protected:
        return app
    options: dict[str, Any] = {}
    redis_url = os.environ.get("FOURNINES_LAB_REDIS_URL")
    if redis_url:
        options["rate_limit"] = [_redis_limit(redis_url)]
    from ..slo.tracker import BudgetTracker, TrackingMiddleware  # noqa: PLC0415

    # The gateway keeps its own error budget (fournines.slo.BudgetTracker, exported on
    # /metrics as fournines_slo_error_budget_remaining_ratio), as a service without
    # Prometheus would; outermost, so its own sheds and 503s count against it.
    budget = BudgetTracker(name="page-availability", objective=99.99, period="30d")
    budget.export()
    return TrackingMiddleware(
        _protect(_registered(app, "gateway", sources), "gateway",
                 concurrency_limit=_limit(initial=300, minimum=300),
                 **_EDGE, **options),
        budget)


def _redis_limit(url: str) -> Any:
    """``--redis``: a per-client GCRA shared through Redis at the gateway.

    Generous on purpose (2000/s, bursts of 4000): the lab shows the Redis round trip
    on every page and that Redis trouble cannot fail a page (``on_redis_error="local"``
    falls back to a local limiter), not a limit the load generator would hit.
    """
    import redis.asyncio as redis  # noqa: PLC0415

    from ..asgi import RateLimitRule  # noqa: PLC0415
    from ..policies.redis_rate_limit import RedisGcra  # noqa: PLC0415

    client = redis.from_url(url, socket_timeout=0.1, socket_connect_timeout=0.1)
    limiter = RedisGcra(client, rate=2000, burst=4000, on_redis_error="local")
    return RateLimitRule(name="edge", limiter=limiter, key="ip")


def _reason(exc: BaseException) -> str:
    """Why a page failed, in a few words (the load generator records it)."""
    import httpx  # noqa: PLC0415

    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        where = "order" if "/orders/" in str(response.request.url) else "profile"
        return f"{where} {response.status_code} {response.headers.get('x-lab-error', '')}".strip()
    return type(exc).__name__


_ROLES: dict[str, Callable[[bool], ASGIApp]] = {
    "gateway": _gateway, "order": _order, "payment": _payment, "profile": _profile,
}


def create_app() -> ASGIApp:
    """The ``FOURNINES_LAB_ROLE`` service in ``FOURNINES_LAB_VARIANT`` (a uvicorn factory)."""
    role = _env("ROLE")
    variant = _env("VARIANT")
    if role not in _ROLES:
        raise RuntimeError(f"FOURNINES_LAB_ROLE must be one of {', '.join(_ROLES)}, got {role!r}")
    if variant not in ("protected", "unprotected"):
        raise RuntimeError(f"FOURNINES_LAB_VARIANT must be protected or unprotected, "
                           f"got {variant!r}")
    return _ROLES[role](variant == "protected")
