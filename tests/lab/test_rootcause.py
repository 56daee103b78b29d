"""Specification of the root-cause ranking, on scrapes built by hand (no fleet needed)."""

from __future__ import annotations

from collections.abc import Callable

from fournines.lab.metrics import Sample, parse_metrics
from fournines.lab.rootcause import UNREACHABLE, accuracy, rank_faults, signals
from fournines.lab.scenario import Fault

SERVICES = ("gateway", "order", "payment", "profile")
# per second: (requests, 5xx, mean latency) of each service when all is well
STEADY = {"gateway": (100, 0, 0.040), "order": (100, 0, 0.035), "payment": (100, 0, 0.030),
          "profile": (100, 0, 0.002)}

Shape = Callable[[str, int], tuple[float, float, float] | None]


def steady(service: str, second: int) -> tuple[float, float, float] | None:
    requests, errors, latency = STEADY[service]
    wobble = 1 + 0.02 * ((second * 7 + len(service)) % 5 - 2)  # a little noise
    return requests * wobble, errors, latency * wobble


def scrapes(shape: Shape, seconds: int = 30) -> list[Sample]:
    """Cumulative samples, one a second; ``shape`` gives each second's signals or None
    (the service could not be scraped)."""
    totals = {s: {"requests": 0.0, "errors": 0.0, "duration_sum": 0.0, "duration_count": 0.0,
                  "in_flight": 0.0} for s in SERVICES}
    out = []
    for second in range(seconds + 1):
        sample = Sample(at=float(second))
        for service in SERVICES:
            values = shape(service, second) if second else steady(service, 0)
            if values is None:
                continue
            requests, errors, latency = values
            t = totals[service]
            t["requests"] += requests
            t["errors"] += errors
            t["duration_count"] += requests
            t["duration_sum"] += requests * latency
            t["in_flight"] = requests * latency
            sample.slis[service] = dict(t)
        out.append(sample)
    return out


def during(fault: Fault, change: Shape) -> Shape:
    def shape(service: str, second: int) -> tuple[float, float, float] | None:
        if fault.at < second <= fault.end:
            return change(service, second)
        return steady(service, second)
    return shape


PAYMENT_ERRORS = Fault(kind="payment_errors", at=10, duration=6)


def test_the_deepest_departed_service_is_the_top_suspect() -> None:
    def errors(service: str, second: int) -> tuple[float, float, float] | None:
        requests, _, latency = STEADY[service]
        # payment fails a fifth; order and the gateway fail with it
        return (requests, 20, latency) if service != "profile" else steady(service, second)

    [ranking] = rank_faults(scrapes(during(PAYMENT_ERRORS, errors)), [PAYMENT_ERRORS])
    names = [s.service for s in ranking.suspects]
    assert names[0] == "payment" and names[-1] == "profile"  # profile did not depart
    assert ranking.top is not None and ranking.top.signal == "errors"
    assert ranking.hit(1)


def test_a_service_that_cannot_be_scraped_is_unreachable() -> None:
    kill = Fault(kind="profile_kill", at=10, duration=5)

    def killed(service: str, second: int) -> tuple[float, float, float] | None:
        return None if service == "profile" else steady(service, second)

    [ranking] = rank_faults(scrapes(during(kill, killed)), [kill])
    assert ranking.top is not None
    assert (ranking.top.service, ranking.top.signal, ranking.top.score) == (
        "profile", "unreachable", UNREACHABLE)


def test_a_partitioned_service_departs_by_losing_its_traffic() -> None:
    cut = Fault(kind="partition", at=10, duration=6)

    def partition(service: str, second: int) -> tuple[float, float, float] | None:
        if service == "payment":
            return (0, 0, 0.0)
        if service == "order":
            return (100, 100, 0.12)
        return steady(service, second)

    [ranking] = rank_faults(scrapes(during(cut, partition)), [cut])
    assert ranking.top is not None and ranking.top.service == "payment"
    assert ranking.top.signal == "traffic"


def test_earlier_onset_wins_among_independent_departures() -> None:
    fault = Fault(kind="payment_latency", at=10, duration=6)

    def both(service: str, second: int) -> tuple[float, float, float] | None:
        if service == "payment" and second >= 13:
            return (100, 0, 0.5)
        if service == "profile":
            return (100, 0, 0.5)  # from the first second of the window
        return steady(service, second)

    [ranking] = rank_faults(scrapes(during(fault, both)), [fault])
    assert [s.service for s in ranking.suspects[:2]] == ["profile", "payment"]
    assert not ranking.hit(1) and ranking.hit(3)


def test_nothing_departs_in_a_quiet_window() -> None:
    [ranking] = rank_faults(scrapes(steady), [PAYMENT_ERRORS])
    assert not any(s.departed for s in ranking.suspects)


def test_no_steady_seconds_before_the_first_fault_means_no_ranking() -> None:
    early = Fault(kind="payment_errors", at=1, duration=5)
    [ranking] = rank_faults(scrapes(steady), [early])
    assert ranking.suspects == ()


def test_accuracy_counts_only_faults_with_a_true_cause_and_shows_the_naive_baseline() -> None:
    kill = Fault(kind="profile_kill", at=20, duration=3)
    overload = Fault(kind="overload", at=26, duration=2)

    def shape(service: str, second: int) -> tuple[float, float, float] | None:
        if service == "payment" and 10 < second <= 16:
            return (100, 20, 0.03)
        if service == "profile" and 20 < second <= 23:
            return None
        return steady(service, second)

    rankings = rank_faults(scrapes(shape), [PAYMENT_ERRORS, kill, overload])
    score = accuracy(rankings)
    assert (score.faults, score.top1, score.naive_top1) == (2, 2, 1)


def test_a_restarted_service_starts_its_counters_over() -> None:
    samples = scrapes(steady, seconds=4)
    # the process restarted just before the scrape at 3 s: its counters begin again
    base = {k: v + 10 for k, v in samples[2].slis["order"].items()}
    for sample in samples[3:]:
        sample.slis["order"] = {k: max(v - base[k], 0.0) for k, v in
                                sample.slis["order"].items()}
    points = signals(samples)["order"]
    assert len(points) == 3  # the interval across the restart is dropped
    assert all(values is not None and values["traffic"] > 50 for _, values in points
               if values is not None)


def test_the_golden_signals_are_read_from_a_services_metrics() -> None:
    text = (
        "# TYPE http_requests counter\n"
        'http_requests_total{method="GET",route="<unmatched>",status="200"} 90\n'
        'http_requests_total{method="GET",route="<unmatched>",status="503"} 10\n'
        "# TYPE http_request_duration_seconds histogram\n"
        'http_request_duration_seconds_bucket{method="GET",route="<unmatched>",status="200",'
        'le="+Inf"} 100\n'
        'http_request_duration_seconds_count{method="GET",route="<unmatched>",status="200"} 100\n'
        'http_request_duration_seconds_sum{method="GET",route="<unmatched>",status="200"} 4\n'
        "# TYPE http_requests_in_flight gauge\nhttp_requests_in_flight 3\n")
    sample = Sample(at=1.0)
    parse_metrics(text, "order", sample)
    assert sample.slis["order"] == {"requests": 100, "errors": 10, "duration_sum": 4,
                                    "duration_count": 100, "in_flight": 3}


def test_a_callers_breaker_opening_points_at_the_callee() -> None:
    cut = Fault(kind="partition", at=10, duration=6)
    samples = scrapes(steady)
    for sample in samples:
        opened = 12 <= sample.at <= 16
        sample.breakers["order -> payment (via proxy)"] = 2 if opened else 0
    [ranking] = rank_faults(samples, [cut])
    assert ranking.top is not None
    assert (ranking.top.service, ranking.top.signal, ranking.top.onset) == (
        "payment", "breaker of order", 1.0)


def test_a_breaker_already_open_when_the_fault_began_says_nothing_of_it() -> None:
    samples = scrapes(steady)
    for sample in samples:
        sample.breakers["order -> payment"] = 2 if 8 <= sample.at <= 14 else 0
    [ranking] = rank_faults(samples, [PAYMENT_ERRORS])
    assert not any(s.departed for s in ranking.suspects)
