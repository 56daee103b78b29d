"""Specification of what makes a lab run no measurement: :func:`run_problems`."""

from __future__ import annotations

from fournines.lab.load import OUT_OF_FILES, Outcome
from fournines.lab.runner import LAG_LIMIT, run_problems


def outcome(*, status: int = 200, lag: float = 0.0, error: str = "") -> Outcome:
    return Outcome(at=0.0, status=status, latency=0.05, degraded=False, send_lag=lag,
                   error=error)


def test_a_run_on_schedule_with_answers_and_clean_faults_has_no_problem() -> None:
    outcomes = [outcome() for _ in range(99)] + [outcome(status=500)]
    log = [{"variant": "protected", "fault": "profile_kill (SIGKILL)", "action": "begin",
            "planned": 2.0}]
    assert run_problems("protected", outcomes, log) == []


def test_a_few_late_requests_are_a_pause_not_a_problem() -> None:
    outcomes = [outcome() for _ in range(99)] + [outcome(lag=LAG_LIMIT + 1)]
    assert run_problems("protected", outcomes, []) == []


def test_a_generator_that_fell_behind_its_schedule_is_a_problem() -> None:
    outcomes = [outcome() for _ in range(90)] + [outcome(lag=28.0) for _ in range(10)]
    [problem] = run_problems("unprotected", outcomes, [])
    assert problem.startswith("unprotected: the load generator fell behind its schedule: "
                              "10 of 100 requests left more than 0.5 s late (worst 28.0 s)")


def test_requests_the_generator_could_not_send_are_a_problem() -> None:
    outcomes = [outcome() for _ in range(99)] + [outcome(status=0, error=OUT_OF_FILES)]
    [problem] = run_problems("unprotected", outcomes, [])
    assert problem == f"unprotected: 1 requests were never sent: {OUT_OF_FILES}"


def test_a_variant_without_one_success_is_a_problem_not_a_zero() -> None:
    [problem] = run_problems("protected", [outcome(status=502) for _ in range(5)], [])
    assert problem.startswith("protected: not one of 5 requests succeeded")


def test_a_fault_that_could_not_be_injected_is_a_problem_of_its_variant_only() -> None:
    log = [{"variant": "unprotected", "fault": "profile_kill (SIGKILL)", "action": "end",
            "planned": 8.0, "error": "LabError: address already in use"},
           {"variant": "protected", "fault": "overload", "action": "begin", "planned": 1.0}]
    [problem] = run_problems("unprotected", [outcome()], log)
    assert problem == ("unprotected: the fault profile_kill (SIGKILL) could not end at 8 s: "
                       "LabError: address already in use")
    assert run_problems("protected", [outcome()], log) == []
