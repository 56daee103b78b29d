"""Specification of config validation (no etcd): types, paths, unknown fields, JSON/YAML."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

import pytest

from fournines import ConfigurationError
from fournines.discovery import ConfigValidationError, validate_config


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    per_second: float = 10.0
    burst: int = 20

    def __post_init__(self) -> None:
        if self.per_second <= 0:
            raise ConfigurationError(f"Rate.per_second must be > 0, got {self.per_second!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    path: str
    weight: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    rate: Rate = field(default_factory=Rate)
    mode: Mode = Mode.SAFE
    level: Literal["low", "high"] = "low"
    timeout: float | None = None
    routes: tuple[Route, ...] = ()
    tags: list[str] = field(default_factory=list)
    weights: dict[str, int] = field(default_factory=dict)
    enabled: bool = True


def refused(value: object) -> ConfigValidationError:
    with pytest.raises(ConfigValidationError) as info:
        validate_config(Limits, value, key="payment/limits")
    return info.value


def test_a_valid_json_value_becomes_the_typed_config() -> None:
    cfg = validate_config(Limits, '{"rate": {"per_second": 5, "burst": 7}, "mode": "fast", '
                                  '"routes": [{"path": "/a", "weight": 2}], "tags": ["x"], '
                                  '"weights": {"a": 1}, "timeout": null}')

    assert cfg == Limits(rate=Rate(per_second=5.0, burst=7), mode=Mode.FAST,
                         routes=(Route(path="/a", weight=2),), tags=["x"], weights={"a": 1})
    assert isinstance(cfg.rate.per_second, float)


def test_a_valid_yaml_value_becomes_the_typed_config() -> None:
    cfg = validate_config(Limits, "rate:\n  per_second: 2.5\nlevel: high\n")

    assert cfg == Limits(rate=Rate(per_second=2.5), level="high")


def test_missing_fields_take_their_defaults() -> None:
    assert validate_config(Limits, "{}") == Limits()


def test_a_wrong_type_names_the_key_and_the_field_path() -> None:
    error = refused('{"rate": {"per_second": "fast"}}')

    assert str(error) == "payment/limits: field 'rate.per_second': expected float, got str 'fast'"
    assert (error.key, error.field) == ("payment/limits", "rate.per_second")
    assert isinstance(error, ValueError)


def test_a_bool_is_not_an_int() -> None:
    assert refused('{"rate": {"burst": true}}').field == "rate.burst"


def test_an_out_of_range_value_is_refused_by_the_dataclass_own_check() -> None:
    error = refused('{"rate": {"per_second": -1}}')

    assert error.field == "rate.per_second"
    assert "must be > 0" in error.problem


def test_an_unknown_field_is_refused() -> None:
    error = refused('{"rate": {"per_secnd": 3}}')

    assert error.field == "rate.per_secnd"
    assert "unknown field" in error.problem


def test_a_field_without_default_is_required() -> None:
    assert refused('{"routes": [{"weight": 3}]}').field == "routes[0].path"


def test_an_item_of_a_list_is_named_by_its_index() -> None:
    assert refused('{"routes": [{"path": "/a"}, {"path": "/b", "weight": "x"}]}').field == (
        "routes[1].weight")


def test_a_literal_takes_only_its_values() -> None:
    error = refused('{"level": "medium"}')

    assert error.field == "level"
    assert "'low', 'high'" in error.problem


def test_an_enum_takes_its_values() -> None:
    assert "'fast', 'safe'" in refused('{"mode": "turbo"}').problem


def test_an_optional_takes_null_or_its_type() -> None:
    assert validate_config(Limits, '{"timeout": 1}').timeout == 1.0
    assert refused('{"timeout": "soon"}').field == "timeout"


def test_a_mapping_value_is_named_by_its_key() -> None:
    assert refused('{"weights": {"a": 1, "b": "heavy"}}').field == "weights.b"


def test_invalid_json_is_refused_with_its_position() -> None:
    error = refused('{"rate": {"per_second": 5,}}')

    assert error.field == ""
    assert error.problem.startswith("invalid JSON at line 1 column")
    assert str(error).startswith("payment/limits: invalid JSON")


def test_invalid_yaml_is_refused_with_its_position() -> None:
    error = refused("rate:\n  per_second: 5\n bad: [\n")

    assert error.problem.startswith("invalid YAML at line")


def test_a_value_that_is_not_an_object_is_refused() -> None:
    assert "expected an object (Limits), got list" in refused("[1, 2]").problem


def test_an_empty_value_is_refused() -> None:
    assert refused("  ").problem == "the value is empty"


def test_plain_data_is_validated_too() -> None:
    assert validate_config(Limits, {"enabled": False}) == Limits(enabled=False)


def test_a_pydantic_model_validates_itself_with_the_field_path() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Inner(pydantic.BaseModel):
        per_second: float

    class Model(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
        rate: Inner

    assert validate_config(Model, '{"rate": {"per_second": 3}}').rate.per_second == 3.0
    with pytest.raises(ConfigValidationError) as info:
        validate_config(Model, '{"rate": {"per_second": "fast"}}', key="k")
    assert info.value.field == "rate.per_second"
