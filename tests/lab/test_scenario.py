"""Specification of lab scenario files: the default, the examples, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fournines import ConfigurationError
from fournines.lab.confidence import sample_size_to_prove
from fournines.lab.runner import AUTO_RATE_SHARE, MAX_AUTO_RATE
from fournines.lab.scenario import (
    FAULT_KINDS,
    MAX_RATE,
    NEEDS_ETCD,
    NOT_BUILT,
    STEP_KINDS,
    Fault,
    Scenario,
    check_etcd,
    check_load,
    default_scenario,
    load_scenario,
    parse_scenario,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "lab"


def test_the_default_scenario_has_every_fault_of_the_issue_within_its_75_seconds() -> None:
    scenario = default_scenario()
    assert scenario.duration == 75
    # the seed's overload is played as lost capacity; a burst of arrivals (`overload`)
    # is in examples/lab/overload.yaml; the registry's faults need --etcd, which stays
    # opt-in, and are in examples/lab/registry.yaml; the steps need PostgreSQL and
    # RabbitMQ and are in examples/lab too (see test_steps.py); the leak is the closed
    # loop's, in examples/lab/closed-loop.yaml
    assert {f.kind for f in scenario.faults} == set(FAULT_KINDS) - {
        "overload", "leak", *NEEDS_ETCD, *STEP_KINDS}
    assert all(f.end <= scenario.duration for f in scenario.faults)
    errors = next(f for f in scenario.faults if f.kind == "payment_errors")
    assert (errors.rate, errors.duration) == (0.2, 12.5)
    latency = next(f for f in scenario.faults if f.kind == "payment_latency")
    assert (latency.latency, latency.duration) == (2.0, 12.5)
    loss = next(f for f in scenario.faults if f.kind == "capacity_loss")
    assert (loss.factor, loss.duration) == (3, 6.25)


def test_the_default_scenario_plays_enough_requests_to_prove_four_nines() -> None:
    scenario = default_scenario()
    model = scenario.payment.concurrency / scenario.payment.service_time
    rate = min(MAX_AUTO_RATE, AUTO_RATE_SHARE * model)
    assert scenario.rate is None  # auto: 60 % of the measured capacity, at most the cap
    assert rate == MAX_AUTO_RATE
    assert rate * scenario.duration >= sample_size_to_prove(target=0.9999, confidence=0.95,
                                                            failures=0)


def test_at_least_two_example_scenarios_parse() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        scenario = load_scenario(path)
        assert scenario.faults, path
        assert scenario.source == str(path)


def test_faults_are_sorted_by_start() -> None:
    scenario = parse_scenario({"duration": 30, "faults": [
        {"kind": "overload", "at": 20, "duration": 2},
        {"kind": "profile_kill", "at": 5, "duration": 2},
    ]})
    assert [f.kind for f in scenario.faults] == ["profile_kill", "overload"]


def test_a_shorter_duration_scales_every_fault_time() -> None:
    scenario = parse_scenario({"duration": 60, "faults": [
        {"kind": "payment_errors", "at": 30, "duration": 10}]})
    short = scenario.with_duration(15)
    assert short.duration == 15
    assert (short.faults[0].at, short.faults[0].duration) == (7.5, 2.5)


def test_rate_auto_leaves_the_rate_to_the_capacity_probe() -> None:
    assert parse_scenario({"rate": "auto"}).rate is None
    assert parse_scenario({"rate": 80}).rate == 80


def test_an_unknown_fault_kind_names_the_file_the_index_and_the_kinds() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_scenario({"faults": [{"kind": "profile_kill", "at": 1, "duration": 1},
                                   {"kind": "meteor", "at": 1, "duration": 1}]},
                       source="my.yaml")
    message = str(info.value)
    assert message.startswith("my.yaml: faults[1].kind must be one of")
    assert "payment_latency" in message and "'meteor'" in message


def test_every_fault_of_the_seed_is_built_now() -> None:
    assert NOT_BUILT == {}
    assert {"rolling_deploy", "db_storm", "db_restart", "consumer_kill"} <= set(FAULT_KINDS)


def test_the_registry_faults_are_built_and_need_etcd() -> None:
    assert set(NEEDS_ETCD) == {"instance_kill", "registry_outage"}
    assert not set(NEEDS_ETCD) & set(NOT_BUILT)
    assert set(NEEDS_ETCD) <= set(FAULT_KINDS)


def test_the_registry_example_plays_an_instance_kill_and_a_registry_outage() -> None:
    scenario = load_scenario(EXAMPLES / "registry.yaml")
    assert [f.kind for f in scenario.faults] == ["instance_kill", "registry_outage"]
    check_etcd(scenario, "")  # the lab's own etcd: both can be played


@pytest.mark.parametrize("kind", ["instance_kill", "registry_outage"])
def test_a_registry_fault_without_etcd_is_refused_saying_to_run_with_etcd(kind: str) -> None:
    scenario = parse_scenario({"faults": [{"kind": kind, "at": 1, "duration": 2}]},
                              source="reg.yaml")
    with pytest.raises(ConfigurationError) as info:
        check_etcd(scenario, None)
    message = str(info.value)
    assert message.startswith(f"reg.yaml: faults[0] is {kind}, which needs the fleet behind "
                              "the registry")
    assert message.endswith("run `fournines lab --etcd`")


def test_a_registry_outage_is_refused_on_an_etcd_the_lab_does_not_own() -> None:
    scenario = parse_scenario({"faults": [{"kind": "registry_outage", "at": 1,
                                           "duration": 2}]}, source="reg.yaml")
    with pytest.raises(ConfigurationError, match=r"not the one at http://10\.0\.0\.1:2379: "
                                                 r"run `fournines lab --etcd` without a URL"):
        check_etcd(scenario, "http://10.0.0.1:2379")
    kill = parse_scenario({"faults": [{"kind": "instance_kill", "at": 1, "duration": 2}]})
    check_etcd(kill, "http://10.0.0.1:2379")  # an instance kill needs only the registry


def test_overlapping_instance_kills_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"faults\[1\] \(instance_kill"):
        parse_scenario({"faults": [{"kind": "instance_kill", "at": 1, "duration": 4},
                                   {"kind": "instance_kill", "at": 3, "duration": 4}]})


def test_a_missing_start_time_is_named() -> None:
    with pytest.raises(ConfigurationError, match=r"s\.yaml: faults\[0\]\.at is missing"):
        parse_scenario({"faults": [{"kind": "overload", "duration": 1}]}, source="s.yaml")


def test_an_out_of_range_value_says_the_range_and_what_was_given() -> None:
    with pytest.raises(ConfigurationError,
                       match=r"s\.yaml: faults\[0\]\.rate must be a number >= 0 and <= 1, "
                             r"got 1\.5"):
        parse_scenario({"faults": [{"kind": "payment_errors", "at": 0, "duration": 1,
                                    "rate": 1.5}]}, source="s.yaml")


def test_a_fault_that_outlasts_the_load_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"faults\[0\] ends at 70 s, after the load"):
        parse_scenario({"duration": 60, "faults": [
            {"kind": "overload", "at": 65, "duration": 5}]}, source="s.yaml")


def test_an_unknown_key_is_named_with_the_allowed_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"s\.yaml: payment has an unknown key 'cpu'"):
        parse_scenario({"payment": {"cpu": 2}}, source="s.yaml")


def test_a_partition_mode_must_be_timeout_or_refuse() -> None:
    with pytest.raises(ConfigurationError, match=r"faults\[0\]\.mode must be 'timeout' or "
                                                 r"'refuse', got 'drop'"):
        parse_scenario({"faults": [{"kind": "partition", "at": 0, "duration": 1,
                                    "mode": "drop"}]}, source="s.yaml")


def test_a_bool_is_not_a_number() -> None:
    with pytest.raises(ConfigurationError, match=r"s\.yaml: duration must be a number"):
        parse_scenario({"duration": True}, source="s.yaml")


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("faults: [\n")
    with pytest.raises(ConfigurationError, match=r"broken\.yaml: not valid YAML"):
        load_scenario(path)


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"nope\.yaml: cannot read the scenario"):
        load_scenario(tmp_path / "nope.yaml")


def test_the_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigurationError, match=r"s\.yaml must be a mapping, got \[1\]"):
        parse_scenario([1], source="s.yaml")


def test_fault_labels_say_what_the_fault_does() -> None:
    assert Fault(kind="payment_errors", at=0, duration=1, rate=0.2, status=500).label() == (
        "payment_errors (20% x 500)")
    assert Fault(kind="overload", at=0, duration=1, factor=3).label() == (
        "overload (3x capacity)")
    assert Fault(kind="capacity_loss", at=0, duration=1, factor=3).label() == (
        "capacity_loss (1/3 capacity)")
    assert Scenario().faults == ()


def test_a_fault_kind_that_is_a_list_is_named_not_a_crash() -> None:
    with pytest.raises(ConfigurationError, match=r"s\.yaml: faults\[0\]\.kind must be one of"):
        parse_scenario({"faults": [{"kind": ["overload"], "at": 0, "duration": 1}]},
                       source="s.yaml")


def test_a_file_that_is_not_utf8_text_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"name: \xff\xfe\x00\x81\n")
    with pytest.raises(ConfigurationError, match=r"binary\.yaml: cannot read the scenario"):
        load_scenario(path)


def test_a_mode_that_is_a_list_is_named_not_a_crash() -> None:
    with pytest.raises(ConfigurationError, match=r"faults\[0\]\.mode must be 'timeout'"):
        parse_scenario({"faults": [{"kind": "partition", "at": 0, "duration": 1,
                                    "mode": ["refuse"]}]}, source="s.yaml")


def test_nan_is_not_a_number_a_scenario_accepts() -> None:
    with pytest.raises(ConfigurationError, match=r"s\.yaml: duration must be a number"):
        parse_scenario({"duration": float("nan")}, source="s.yaml")
    with pytest.raises(ConfigurationError, match=r"s\.yaml: faults\[0\]\.at must be a number"):
        parse_scenario({"faults": [{"kind": "overload", "at": float("nan"), "duration": 1}]},
                       source="s.yaml")


def test_an_integer_too_big_for_a_float_is_named_not_a_crash() -> None:
    with pytest.raises(ConfigurationError, match=r"s\.yaml: faults\[0\]\.at must be a number"):
        parse_scenario({"faults": [{"kind": "overload", "at": 10**400, "duration": 1}]},
                       source="s.yaml")


def kills(*windows: tuple[float, float], kind: str = "profile_kill", **extra: object,
          ) -> dict[str, object]:
    return {"duration": 60, "faults": [{"kind": kind, "at": at, "duration": duration, **extra}
                                       for at, duration in windows]}


def test_overlapping_profile_kills_are_refused_naming_both_faults() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_scenario(kills((10, 6), (5, 6)), source="s.yaml")
    assert str(info.value).startswith(
        "s.yaml: faults[1] (profile_kill 5-11 s) overlaps faults[0] (profile_kill 10-16 s)")
    assert "restarted once at a time" in str(info.value)


def test_profile_kills_that_touch_are_refused_too() -> None:
    with pytest.raises(ConfigurationError, match=r"faults\[1\] .* overlaps faults\[0\]"):
        parse_scenario(kills((5, 5), (10, 5)))


def test_profile_kills_one_after_another_are_accepted() -> None:
    assert len(parse_scenario(kills((5, 5), (11, 5))).faults) == 2


def test_overlapping_payment_errors_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"clears every chaos fault"):
        parse_scenario(kills((5, 10), (8, 2), kind="payment_errors"))


def test_overlapping_refusing_partitions_are_refused_but_black_holes_may_overlap() -> None:
    with pytest.raises(ConfigurationError, match=r"turns the proxy back on"):
        parse_scenario(kills((5, 10), (8, 2), kind="partition", mode="refuse"))
    assert len(parse_scenario(kills((5, 10), (8, 2), kind="partition")).faults) == 2


def test_overlapping_latency_and_overload_windows_are_accepted() -> None:
    assert len(parse_scenario(kills((5, 10), (8, 2), kind="payment_latency")).faults) == 2
    assert len(parse_scenario(kills((5, 10), (8, 2), kind="overload")).faults) == 2


def test_a_rate_above_the_stated_maximum_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"s\.yaml: rate .* <= 2000, got 5000"):
        parse_scenario({"rate": 5000}, source="s.yaml")


def test_an_overload_above_the_stated_maximum_rate_names_the_fault() -> None:
    scenario = parse_scenario(kills((5, 5), kind="overload", factor=20), source="s.yaml")
    with pytest.raises(ConfigurationError) as info:
        check_load(scenario, rate=40, capacity=MAX_RATE / 10, open_files=None)
    assert str(info.value).startswith(
        "s.yaml: faults (overload at 5 s): factor 20 x the measured capacity 200/s = 4000/s "
        "is more than the lab offers (2000 requests/s")


def test_a_load_needing_more_descriptors_than_the_limit_names_the_field() -> None:
    scenario = parse_scenario({"rate": 1000, "timeout": 3}, source="s.yaml")
    with pytest.raises(ConfigurationError) as info:
        check_load(scenario, rate=1000, capacity=60, open_files=1024)
    message = str(info.value)
    assert message.startswith("s.yaml: rate 1000/s with timeout 3 s keeps up to 3000 requests")
    assert "may open 1024 (RLIMIT_NOFILE" in message and "ulimit -n" in message


def test_a_load_that_fits_the_descriptor_limit_passes() -> None:
    scenario = parse_scenario({"rate": 100, "timeout": 3})
    check_load(scenario, rate=100, capacity=60, open_files=1024)  # 300 + 256 <= 1024


def test_the_default_scenario_fits_a_common_descriptor_limit_of_1024() -> None:
    scenario = default_scenario()
    check_load(scenario, rate=40, capacity=67, open_files=1024)


def test_a_scenario_file_nested_too_deeply_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("faults: " + "[" * 1000 + "]" * 1000 + "\n")
    with pytest.raises(ConfigurationError, match=r"deep\.yaml: nested deeper than 64 levels"):
        load_scenario(path)


def test_a_scenario_file_larger_than_one_mib_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("name: big\n#" + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigurationError, match=r"big\.yaml: cannot read the scenario "
                                                 r"\(larger than 1048576 bytes"):
        load_scenario(path)


def test_a_huge_value_is_quoted_short_in_the_message() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_scenario({"rate": "x" * 100_000}, source="s.yaml")
    assert len(str(info.value)) < 200
