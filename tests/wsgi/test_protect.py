"""protect_wsgi as a plain WSGI callable: the logic, with no server (FakeClock for time)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from fournines import ConfigurationError, TokenBucket, current_deadline
from fournines._propagation import mark_retries_exhausted
from fournines.asgi import Check, CheckFailed, ServiceState
from fournines.policies.adaptive import FixedLimit
from fournines.testing import FakeClock
from fournines.wsgi import (
    ARRIVAL_KEY,
    ROUTE_KEY,
    ProtectedWSGI,
    blocking_check,
    mark_arrival,
    protect_wsgi,
)

from ._harness import call, environ_for, hello

Protect = Callable[..., ProtectedWSGI]


@pytest.fixture
def protect() -> Iterator[Protect]:
    made: list[ProtectedWSGI] = []

    def make(app: Any = hello, **options: Any) -> ProtectedWSGI:
        options.setdefault("registry", CollectorRegistry())
        protected = protect_wsgi(app, **options)
        made.append(protected)
        return protected

    yield make
    for protected in made:
        protected.close()


def templated(route: str) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ[ROUTE_KEY] = route
        return hello(environ, start_response)
    return app


def sample(protected: ProtectedWSGI, name: str, **labels: str) -> float | None:
    value = protected.metrics.registry.get_sample_value(name, labels)
    return value


# -- health --------------------------------------------------------------------------

def test_livez_answers_without_calling_the_app(protect: Protect) -> None:
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        return hello(environ, start_response)

    answer = call(protect(app), "/livez")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/health+json"
    assert json.loads(answer.body)["status"] == "pass"
    assert calls == []


def test_readyz_fails_while_draining(protect: Protect) -> None:
    protected = protect()
    assert call(protected, "/readyz").status == 200
    protected.state.mark_draining()
    answer = call(protected, "/readyz")
    assert answer.status == 503
    assert json.loads(answer.body)["output"] == "draining"


def test_readyz_runs_the_async_checks_and_fails_on_a_critical_one(protect: Protect) -> None:
    async def down() -> None:
        raise CheckFailed("unreachable")

    async def up() -> None:
        return None

    protected = protect(checks=[Check("db", down), Check("cache", up, critical=False)])
    answer = call(protected, "/readyz")
    assert answer.status == 503
    payload = json.loads(answer.body)
    assert payload["checks"]["db:responseTime"][0]["output"] == "unreachable"
    assert payload["checks"]["cache:responseTime"][0]["status"] == "pass"


def test_a_blocking_check_runs_on_a_thread_and_fails_readiness(protect: Protect) -> None:
    def ping() -> None:
        raise ConnectionRefusedError("db down")

    protected = protect(checks=[blocking_check("db", ping, component_type="datastore")])
    answer = call(protected, "/readyz")
    assert answer.status == 503
    entry = json.loads(answer.body)["checks"]["db:responseTime"][0]
    assert entry["output"] == "unreachable"
    assert entry["componentType"] == "datastore"


def test_the_first_request_marks_the_process_ready(protect: Protect) -> None:
    state = ServiceState(service="orders")
    protected = protect(state=state)
    assert not state.ready
    call(protected, "/")
    assert state.ready


# -- metrics -------------------------------------------------------------------------

def test_requests_are_counted_by_method_route_template_and_status(protect: Protect) -> None:
    protected = protect(templated("/orders/<int:order_id>"))
    call(protected, "/orders/1")
    call(protected, "/orders/2")
    assert sample(protected, "http_requests_total", method="GET",
                  route="/orders/<int:order_id>", status="200") == 2
    assert sample(protected, "http_request_duration_seconds_count", method="GET",
                  route="/orders/<int:order_id>", status="200") == 2


def test_metrics_are_served_and_probes_are_not_counted(protect: Protect) -> None:
    protected = protect(templated("/orders/<int:order_id>"))
    call(protected, "/orders/1")
    call(protected, "/livez")
    answer = call(protected, "/metrics")
    assert answer.status == 200
    text = answer.body.decode()
    assert 'http_requests_total{method="GET",route="/orders/<int:order_id>",status="200"} 1.0' \
        in text
    assert "/livez" not in text


def test_a_request_no_route_matched_is_labelled_unmatched(protect: Protect) -> None:
    protected = protect()
    call(protected, "/random/123")
    assert sample(protected, "http_requests_total", method="GET", route="<unmatched>",
                  status="200") == 1


def test_an_exception_in_the_app_is_counted_as_500(protect: Protect) -> None:
    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("boom")

    protected = protect(broken)
    with pytest.raises(RuntimeError):
        call(protected, "/")
    assert sample(protected, "http_requests_total", method="GET", route="<unmatched>",
                  status="500") == 1
    assert protected.state.in_flight == 0


def test_a_request_is_in_flight_until_its_body_is_done(protect: Protect) -> None:
    protected = protect()
    body = protected(environ_for("/"), lambda status, headers, exc_info=None: None)
    assert protected.state.in_flight == 1
    assert b"".join(body) == b"hello"
    assert protected.state.in_flight == 0
    body.close()  # type: ignore[attr-defined]
    assert protected.state.in_flight == 0


def test_every_response_names_the_instance(protect: Protect) -> None:
    protected = protect(state=ServiceState(instance="pod-7"))
    assert call(protected, "/").headers["x-instance-id"] == "pod-7"
    assert call(protected, "/livez").headers["x-instance-id"] == "pod-7"


# -- deadlines -----------------------------------------------------------------------

def deadline_app(seen: list[float | None]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        deadline = current_deadline()
        seen.append(None if deadline is None else deadline.remaining())
        return hello(environ, start_response)
    return app


def test_the_view_runs_under_the_callers_deadline(protect: Protect) -> None:
    clock = FakeClock()
    seen: list[float | None] = []
    protected = protect(deadline_app(seen), clock=clock)
    call(protected, "/", headers={"x-request-timeout-ms": "1500"})
    assert seen == [pytest.approx(1.5)]
    assert current_deadline() is None  # reset once the response is closed


def test_grpc_timeout_is_read_too_and_budgets_are_capped(protect: Protect) -> None:
    clock = FakeClock()
    seen: list[float | None] = []
    protected = protect(deadline_app(seen), clock=clock, max_timeout=2.0)
    call(protected, "/", headers={"grpc-timeout": "500m"})
    call(protected, "/", headers={"x-request-timeout-ms": "60000"})
    assert seen == [pytest.approx(0.5), pytest.approx(2.0)]


def test_a_spent_budget_is_answered_504_without_running_the_view(protect: Protect) -> None:
    seen: list[float | None] = []
    protected = protect(deadline_app(seen), clock=FakeClock())
    answer = call(protected, "/", headers={"x-request-timeout-ms": "0"})
    assert answer.status == 504
    assert answer.headers["content-type"] == "application/problem+json"
    assert seen == []
    assert protected.expired == 1
    assert sample(protected, "http_requests_total", method="GET", route="<unmatched>",
                  status="504") == 1


def test_the_budget_counts_from_the_arrival_at_the_worker(protect: Protect) -> None:
    clock = FakeClock(100.0)
    seen: list[float | None] = []
    protected = protect(deadline_app(seen), clock=clock, queue_target=None)
    # Waited 2 s for a thread with a 1 s budget: expired work, dropped.
    dropped = call(protected, "/", headers={"x-request-timeout-ms": "1000"},
                   **{ARRIVAL_KEY: 98.0})
    assert dropped.status == 504
    # Waited 0.25 s with a 1 s budget: 0.75 s left in the view.
    call(protected, "/", headers={"x-request-timeout-ms": "1000"}, **{ARRIVAL_KEY: 99.75})
    assert seen == [pytest.approx(0.75)]


def test_a_malformed_deadline_header_is_ignored_and_counted(protect: Protect) -> None:
    seen: list[float | None] = []
    protected = protect(deadline_app(seen))
    assert call(protected, "/", headers={"x-request-timeout-ms": "1e3"}).status == 200
    assert seen == [None]
    assert protected.malformed == 1


def test_a_5xx_after_exhausted_outgoing_retries_says_do_not_retry(protect: Protect) -> None:
    def gave_up(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        mark_retries_exhausted()
        start_response("503 Service Unavailable", [("content-length", "0")])
        return []

    assert call(protect(gave_up), "/").headers["x-no-retry"] == "1"
    assert "x-no-retry" not in call(protect(), "/").headers


# -- shedding ------------------------------------------------------------------------

def test_above_the_concurrency_limit_a_request_is_shed_before_its_view(protect: Protect) -> None:
    inner: list[Any] = []
    protected: ProtectedWSGI

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        # A second request while this one is in its view: the limit of 1 is reached.
        inner.append(call(protected, "/other"))
        return hello(environ, start_response)

    protected = protect(app, concurrency_limit=FixedLimit(1), retry_after=2.0)
    assert call(protected, "/").status == 200
    shed = inner[0]
    assert shed.status == 503
    assert shed.headers["retry-after"] == "2"
    assert json.loads(shed.body)["status"] == 503
    assert protected.shedder is not None and protected.shedder.shed_overload == 1
    assert protected.shedder.in_flight == 0


def test_below_the_limit_every_request_is_served(protect: Protect) -> None:
    protected = protect(concurrency_limit=FixedLimit(1))
    assert [call(protected, "/").status for _ in range(5)] == [200] * 5


def test_a_request_that_queued_too_long_for_a_thread_is_shed(protect: Protect) -> None:
    clock = FakeClock(10.0)
    ran: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ran.append(environ["PATH_INFO"])
        return hello(environ, start_response)

    protected = protect(app, clock=clock, queue_target=0.005, queue_interval=0.1)
    # Waited 0.2 s, longer than the interval: shed whatever the recent past was.
    assert call(protected, "/late", **{ARRIVAL_KEY: 9.8}).status == 503
    # Waited 1 ms: served.
    assert call(protected, "/prompt", **{ARRIVAL_KEY: 9.999}).status == 200
    assert ran == ["/prompt"]
    assert protected.shedder is not None and protected.shedder.shed_queue_delay == 1


def test_a_standing_queue_sheds_at_the_target(protect: Protect) -> None:
    clock = FakeClock(10.0)
    protected = protect(clock=clock, queue_target=0.005, queue_interval=0.1)
    # 20 ms waits, above the 5 ms target but within the interval: served at first...
    assert call(protected, "/", **{ARRIVAL_KEY: clock.monotonic() - 0.02}).status == 200
    clock.advance(0.15)
    # ...until they have lasted a whole interval: then shed at the target.
    assert call(protected, "/", **{ARRIVAL_KEY: clock.monotonic() - 0.02}).status == 503


def test_the_arrival_a_server_marks_on_the_thread_is_used_once(protect: Protect) -> None:
    clock = FakeClock(10.0)
    protected = protect(clock=clock)
    mark_arrival(9.0)
    assert call(protected, "/").status == 503  # waited a second
    assert call(protected, "/").status == 200  # the stamp was consumed


def test_the_arrival_a_proxy_stamps_is_read_when_configured(protect: Protect) -> None:
    clock = FakeClock(10.0, wall=1_700_000_000.0)
    protected = protect(clock=clock, request_start_header="x-request-start")
    assert call(protected, "/", headers={"x-request-start": "t=1699999999500"}).status == 503
    assert call(protected, "/", headers={"x-request-start": "t=1700000000.000"}).status == 200


def test_probes_and_metrics_are_never_shed(protect: Protect) -> None:
    protected = protect(clock=FakeClock(10.0))
    for path in ("/livez", "/readyz", "/metrics"):
        assert call(protected, path, **{ARRIVAL_KEY: 0.0}).status == 200


# -- rate limits ---------------------------------------------------------------------

def test_a_client_over_its_quota_gets_429_with_ratelimit_headers(protect: Protect) -> None:
    clock = FakeClock()
    protected = protect(rate_limit=lambda: TokenBucket(rate=1.0, capacity=2, clock=clock))
    assert [call(protected, "/").status for _ in range(2)] == [200, 200]
    refused = call(protected, "/")
    assert refused.status == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit"] == '"default";r=0;t=1'
    assert refused.headers["ratelimit-policy"] == '"default";q=2;w=2'
    assert protected.limited == 1
    assert sample(protected, "http_requests_total", method="GET", route="<unmatched>",
                  status="429") == 1
    other = call(protected, "/", REMOTE_ADDR="10.0.0.2")
    assert other.status == 200


def test_an_async_limiter_is_refused_at_construction(protect: Protect) -> None:
    class AsyncLimiter:
        async def try_acquire(self, cost: int = 1, *, key: str = "") -> None:
            return None

    from fournines.asgi import RateLimitRule

    with pytest.raises(ConfigurationError, match="async"):
        protect(rate_limit=[RateLimitRule(name="remote", limiter=AsyncLimiter())])


def test_a_rate_limit_key_without_a_rate_limit_is_refused(protect: Protect) -> None:
    with pytest.raises(ConfigurationError, match="rate_limit_key"):
        protect(rate_limit_key="global")


# -- threads -------------------------------------------------------------------------

def test_requests_on_many_threads_are_all_counted_and_all_released(protect: Protect) -> None:
    import threading

    protected = protect(templated("/t"), concurrency_limit=FixedLimit(1000))
    statuses: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        mine = [call(protected, "/t").status for _ in range(300)]
        with lock:
            statuses.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 2400
    assert sample(protected, "http_requests_total", method="GET", route="/t",
                  status="200") == 2400
    assert protected.shedder is not None and protected.shedder.in_flight == 0
    assert protected.shedder.admitted == 2400
    assert protected.state.in_flight == 0
