"""Specification of the lab's arithmetic: percentiles, error budgets, per-second series."""

from __future__ import annotations

import math

import pytest

from fournines.lab.confidence import clopper_pearson
from fournines.lab.load import Outcome
from fournines.lab.metrics import Sample, parse_metrics
from fournines.lab.scenario import Fault
from fournines.lab.stats import (
    budget_consumed,
    per_second,
    percentile,
    phase_of,
    summarize,
    time_to_full_service,
)


def outcome(at: float, status: int = 200, latency: float = 0.01, degraded: bool = False,
            sources: str = "") -> Outcome:
    return Outcome(at=at, status=status, latency=latency, degraded=degraded, send_lag=0.0,
                   sources=sources)


def test_percentiles_are_nearest_rank_values_that_really_occurred() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([5.0], 99) == 5.0


def test_a_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 99))


def test_one_failure_in_ten_thousand_spends_exactly_the_four_nines_budget() -> None:
    assert budget_consumed(10_000, 1) == pytest.approx(1.0)
    assert budget_consumed(10_000, 0) == 0.0
    assert budget_consumed(1_000, 1) == pytest.approx(10.0)
    assert budget_consumed(0, 0) == 0.0


def test_failures_are_attributed_to_the_fault_window_they_were_sent_in() -> None:
    faults = [Fault(kind="profile_kill", at=10, duration=5)]
    assert phase_of(9.99, faults) == "steady"
    assert phase_of(10.0, faults) == "profile_kill (SIGKILL)"


def test_failures_after_a_fault_are_attributed_to_its_aftermath_not_to_calm() -> None:
    # A queue that drains for seconds after an overload is the overload's doing: calling
    # those failures "steady" would blame the fleet's normal state for them.
    faults = [Fault(kind="profile_kill", at=10, duration=5),
              Fault(kind="overload", at=20, duration=5)]
    assert phase_of(15.0, faults) == "after profile_kill (SIGKILL)"
    assert phase_of(27.0, faults) == "after overload (3x capacity)"


def test_per_second_series_count_by_intended_send_time() -> None:
    outcomes = [outcome(0.1), outcome(0.5, status=502), outcome(1.2, degraded=True),
                outcome(1.7, latency=0.5)]
    series = per_second(outcomes, [], duration=2)
    assert series["requests"] == [2, 2]
    assert series["availability"] == [0.5, 1.0]
    assert series["availability_full"] == [0.5, 0.5]
    assert series["p99"][1] == 0.5
    # 1 failure of 4 requests against a budget of 0.0004 requests
    assert series["budget_consumed"] == pytest.approx([2500.0, 2500.0])


def test_a_counter_reset_by_a_restart_counts_what_the_new_process_counted() -> None:
    # Prometheus's rule for increase(): after a reset the new value is the increase.
    samples = [Sample(at=0.1, retries=0), Sample(at=1.1, retries=5), Sample(at=2.1, retries=2)]
    series = per_second([], samples, duration=3)
    assert series["retries"] == [0.0, 5.0, 2.0]


def scrape(at: float, **retries_by_service: float) -> Sample:
    sample = Sample(at=at)
    for service, value in retries_by_service.items():
        parse_metrics(f'fournines_retries_total{{name="x"}} {value}\n', service, sample)
    return sample


def test_a_missed_scrape_of_one_service_neither_hides_nor_doubles_its_counts() -> None:
    # order's /metrics did not answer at 1.1 s (busy, or killed): its 10 earlier retries
    # must not be counted again when it answers at 2.1 s, and gateway's 3 must not vanish.
    samples = [scrape(0.1, order=10, gateway=0), scrape(1.1, gateway=3),
               scrape(2.1, order=12, gateway=3)]
    series = per_second([], samples, duration=3)
    assert series["retries"] == [0.0, 3.0, 2.0]
    summary = summarize("protected", [outcome(0.5)], samples, [], duration=3)
    assert summary.retries == 5  # during the load only: 3 at gateway, 2 at order


def test_per_service_counter_resets_are_handled_one_service_at_a_time() -> None:
    samples = [scrape(0.1, order=0, profile=4), scrape(1.1, order=6, profile=1)]
    assert per_second([], samples, duration=2)["retries"] == [0.0, 7.0]


def test_breaker_states_carry_forward_and_start_closed() -> None:
    samples = [Sample(at=0.5), Sample(at=1.5, breakers={"a -> b": 2}), Sample(at=3.5)]
    series = per_second([], samples, duration=4)
    assert series["breakers"] == [{"name": "a -> b", "states": [0, 2, 2, 2]}]


def test_a_summary_counts_full_degraded_and_failed_and_says_where_failures_came_from() -> None:
    faults = [Fault(kind="partition", at=1, duration=1)]
    outcomes = [outcome(0.1), outcome(0.2, degraded=True, sources="payment-status"),
                outcome(1.5, status=0), outcome(1.6, status=502)]
    outcomes[2].error = "timeout"
    outcomes[3].error = "order 502"
    summary = summarize("protected", outcomes, [], faults, duration=2)
    assert (summary.requests, summary.full, summary.degraded, summary.failed) == (4, 1, 1, 2)
    assert summary.availability == 0.5
    assert summary.availability_full == 0.25
    assert not summary.meets_objective
    assert summary.verdict == "99.99 % missed, p99 < 1 s"
    assert summary.failures_by_phase == {
        "partition (timeout)": {"timeout": 1, "HTTP 502 (order 502)": 1}}
    assert summary.degraded_by_source == {"payment-status": 1}


def test_the_fleet_counters_are_read_from_the_prometheus_exposition() -> None:
    text = "\n".join([
        'fournines_retries_total{name="http://127.0.0.1:1"} 4.0',
        'fournines_rejections_total{name="shed",policy="load_shedder",reason="overload"} 3.0',
        'fournines_rejections_total{name="x",policy="circuit_breaker",reason="open"} 9.0',
        'fournines_circuit_breaker_transitions_total{from_state="closed",'
        'name="http://127.0.0.1:1",to_state="open"} 2.0',
        'fournines_circuit_breaker_state{name="http://127.0.0.1:1",state="open"} 1.0',
        'fournines_circuit_breaker_state{name="http://127.0.0.1:1",state="closed"} 0.0',
        'fournines_fallbacks_total{kind="stale",name="payment-status"} 7.0',
        "",
    ])
    sample = Sample(at=0.0)
    parse_metrics(text, "order", sample)
    assert (sample.retries, sample.sheds, sample.openings, sample.fallbacks) == (4, 3, 2, 7)
    assert sample.breakers == {"order -> 127.0.0.1:1": 2}


def test_p99_is_also_judged_second_by_second_because_the_target_says_throughout() -> None:
    fast = [outcome(i / 150) for i in range(300)]  # seconds 0 and 1
    slow = outcome(2.5, latency=1.5)  # one slow answer, alone in second 2
    summary = summarize("protected", [*fast, slow], [], [], duration=3)
    assert summary.p99 < 1.0
    assert summary.worst_second_p99 == 1.5
    assert summary.p99_by_phase == {"steady": summary.p99}


def test_each_availability_carries_its_exact_interval() -> None:
    outcomes = [outcome(i / 100, degraded=i % 4 == 0) for i in range(100)]
    summary = summarize("protected", outcomes, [], [], duration=1)
    assert summary.availability_interval == clopper_pearson(100, 100)
    assert summary.availability_full_interval == clopper_pearson(75, 100)
    assert summary.availability_interval.method == "Clopper-Pearson exact"


def test_no_failure_in_a_short_run_is_not_proven_and_does_not_meet_the_objective() -> None:
    summary = summarize("protected", [outcome(i / 100) for i in range(100)], [], [],
                        duration=1)
    assert summary.availability == 1.0
    assert summary.objective.outcome == "not proven"
    assert not summary.meets_objective
    assert summary.verdict == ("99.99 % not proven at this sample size (need 29,956 requests "
                               "with 0 failures), p99 < 1 s")
    assert summary.to_json()["objective_verdict"]["requests_needed"] == 29_956


def test_no_failure_in_29956_requests_holds_four_nines() -> None:
    summary = summarize("protected", [outcome(i / 1000) for i in range(29_956)], [], [],
                        duration=30)
    assert summary.meets_objective
    assert summary.verdict == "99.99 % held, p99 < 1 s"


def test_the_json_names_the_interval_method_and_what_the_verdict_is_judged_on() -> None:
    data = summarize("protected", [outcome(0.1), outcome(0.2, status=502)], [], [],
                     duration=1).to_json()
    assert data["interval_method"] == "Clopper-Pearson exact"
    assert data["availability_interval"]["lower"] == clopper_pearson(1, 2).lower
    assert data["availability_interval"]["upper"] == clopper_pearson(1, 2).upper
    assert data["objective_verdict"]["outcome"] == "missed"
    assert data["objective_verdict"]["judged_on"].startswith("one-sided 95 % lower bound")
    assert data["meets_objective"] is False


def test_a_variant_without_requests_proves_nothing() -> None:
    summary = summarize("protected", [], [], [], duration=1)
    assert (summary.availability_interval.lower, summary.availability_interval.upper) == (
        0.0, 1.0)
    assert summary.objective.outcome == "missed"


# -- answers per phase and the return of full service ---------------------------------


def _page(at: float, *, degraded: bool = False, status: int = 200,
          latency: float = 0.05) -> Outcome:
    return Outcome(at=at, status=status, latency=latency, degraded=degraded, send_lag=0.0)


def test_phase_counts_separate_full_degraded_and_late_answers() -> None:
    faults = [Fault(kind="profile_kill", at=10, duration=5)]
    outcomes = [_page(11.0), _page(11.1, degraded=True), _page(11.2, latency=1.5),
                _page(11.3, status=502), _page(1.0)]
    phase = summarize("protected", outcomes, [], faults, 20).phases["profile_kill (SIGKILL)"]
    assert (phase.requests, phase.full_in_time, phase.answered_in_time, phase.degraded,
            phase.failed) == (4, 1, 2, 1, 1)


def test_answers_in_time_that_came_only_after_the_fault_ended_are_counted_apart() -> None:
    # a +2 s latency fault from 10 to 15: a page sent at 14.5 and answered at 15.1
    # (the proxy let its held answer go when the fault ended) is in time but late for
    # the fault; one sent at 11 and answered at 11.05 is not
    faults = [Fault(kind="payment_latency", at=10, duration=5, latency=2.0)]
    outcomes = [_page(14.5, latency=0.6), _page(11.0), _page(14.9, latency=1.2)]
    phase = summarize("unprotected", outcomes, [], faults, 20).phases["payment_latency (+2 s)"]
    assert (phase.answered_in_time, phase.in_time_after_end) == (2, 1)
    assert phase.to_json()["in_time_after_end"] == 1


def test_full_service_is_back_after_the_last_short_bucket() -> None:
    fault = Fault(kind="profile_kill", at=10, duration=5)
    # 15.0-15.5 and 15.5-16.0 degraded, full from 16.0 on
    outcomes = [_page(15.0 + i * 0.1, degraded=15.0 + i * 0.1 < 16.0) for i in range(40)]
    assert time_to_full_service(outcomes, fault, [fault], 20) == pytest.approx(1.0)


def test_full_service_is_immediate_when_no_bucket_falls_short() -> None:
    fault = Fault(kind="profile_kill", at=10, duration=5)
    outcomes = [_page(15.0 + i * 0.1) for i in range(40)]
    assert time_to_full_service(outcomes, fault, [fault], 20) == 0.0


def test_full_service_never_back_before_the_next_fault_is_none() -> None:
    first = Fault(kind="profile_kill", at=10, duration=5)
    second = Fault(kind="partition", at=17, duration=2)
    outcomes = [_page(15.0 + i * 0.1, degraded=True) for i in range(20)]
    assert time_to_full_service(outcomes, first, [first, second], 30) is None


def test_late_full_answers_do_not_count_as_full_service() -> None:
    fault = Fault(kind="profile_kill", at=10, duration=5)
    outcomes = [_page(15.0 + i * 0.1, latency=1.2 if i < 10 else 0.05) for i in range(40)]
    assert time_to_full_service(outcomes, fault, [fault], 20) == pytest.approx(1.0)


def test_pages_sent_just_before_the_next_fault_do_not_count_against_recovery() -> None:
    first = Fault(kind="profile_kill", at=10, duration=5)
    second = Fault(kind="partition", at=18, duration=2)
    # full after the first fault, but degraded from 17.5 s (the next fault's first victims)
    outcomes = [_page(15.0 + i * 0.1, degraded=15.0 + i * 0.1 >= 17.5) for i in range(30)]
    assert time_to_full_service(outcomes, first, [first, second], 30) == 0.0
