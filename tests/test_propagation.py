"""The deadline's wire format: what an outgoing call may put in x-request-timeout-ms."""

from __future__ import annotations

import math

import pytest

from fournines._propagation import format_timeout_ms


@pytest.mark.parametrize(("seconds", "text"), [(1.5, "1500"), (0.0, "0"), (-2.0, "0")])
def test_a_finite_budget_is_whole_milliseconds_never_negative(seconds: float,
                                                              text: str) -> None:
    assert format_timeout_ms(seconds) == text


@pytest.mark.parametrize("seconds", [math.inf, -math.inf, math.nan])
def test_a_non_finite_budget_is_refused_by_name(seconds: float) -> None:
    with pytest.raises(ValueError, match=r"format_timeout_ms\.seconds must be finite"):
        format_timeout_ms(seconds)
