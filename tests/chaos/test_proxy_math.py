"""The fault proxy's toxic arithmetic and parsing, without sockets."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fournines.chaos._toxics import (
    ApiError,
    latency_delay,
    parse_new_toxic,
    parse_toxic_update,
    slice_bounds,
)


@given(size=st.integers(0, 20_000), average=st.integers(-5, 500),
       variation=st.integers(-5, 600), seed=st.integers(0, 2**32))
def test_slice_bounds_cover_the_chunk_in_order(size: int, average: int, variation: int,
                                               seed: int) -> None:
    cuts = slice_bounds(size, average, variation, random.Random(seed))
    assert cuts[0] == 0
    assert cuts[-1] == size
    assert all(a < b for a, b in itertools.pairwise(cuts)) or size == 0


def test_slices_stay_near_the_average_size() -> None:
    cuts = slice_bounds(10_000, 100, 20, random.Random(3))
    sizes = [b - a for a, b in itertools.pairwise(cuts)]
    assert all(sizes)
    assert max(sizes) <= 120
    assert 60 <= sum(sizes) / len(sizes) <= 120


def test_latency_without_jitter_is_exact() -> None:
    assert latency_delay(250, 0, random.Random(0)) == 0.250


def test_jitter_draws_within_latency_plus_minus_jitter() -> None:
    rng = random.Random(5)
    draws = [latency_delay(100, 30, rng) for _ in range(2000)]
    assert min(draws) >= 0.070
    assert max(draws) < 0.130
    assert len(set(draws)) > 30


def test_latency_never_goes_negative() -> None:
    rng = random.Random(1)
    assert min(latency_delay(5, 50, rng) for _ in range(500)) == 0.0


def test_an_attribute_of_the_wrong_type_is_refused_naming_it() -> None:
    with pytest.raises(ApiError, match="'latency'") as caught:
        parse_new_toxic({"type": "latency", "attributes": {"latency": "fast"}})
    assert caught.value.status == 400
    assert caught.value.message.startswith("bad request body")


def test_unknown_attributes_are_ignored_as_go_does() -> None:
    toxic = parse_new_toxic({"type": "bandwidth", "attributes": {"rate": 5, "burst": 9}})
    assert dict(toxic.attributes) == {"rate": 5}


def test_stream_is_case_insensitive() -> None:
    assert parse_new_toxic({"type": "latency", "stream": "UpStream"}).stream == "upstream"


def test_an_update_keeps_name_type_and_stream() -> None:
    toxic = parse_new_toxic({"type": "slicer", "name": "s", "stream": "upstream",
                             "attributes": {"average_size": 10}})
    updated = parse_toxic_update(toxic, {"type": "latency", "stream": "downstream",
                                         "attributes": {"delay": 7}})
    assert (updated.name, updated.type, updated.stream) == ("s", "slicer", "upstream")
    assert dict(updated.attributes) == {"average_size": 10, "size_variation": 0, "delay": 7}
