"""Cheap labelled histograms for the server edges' golden metrics (ASGI, gRPC).

prometheus_client's own histogram takes a lock and walks its buckets on every
observation; the edges keep plain per-series bucket counts instead (one dict
look-up, one C bisect, two adds) and build the metric families at scrape time.
This module holds the parts every edge shares: bucket validation, the series,
and turning series into a histogram plus its count as a counter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ._errors import ConfigurationError, check_number

__all__ = ["Series", "bucket_labels", "check_buckets", "fill_families"]


class Series:
    """One labelled series: non-cumulative bucket counts (the last is +Inf) and the sum."""

    __slots__ = ("counts", "labels", "total")

    def __init__(self, labels: tuple[str, ...], size: int) -> None:
        self.labels = labels
        self.counts = [0] * size
        self.total = 0.0


def check_buckets(owner: str, buckets: Sequence[float]) -> tuple[float, ...]:
    """Validate histogram bounds: finite, positive, strictly increasing, not empty."""
    bounds = tuple(buckets)
    if not bounds:
        raise ConfigurationError(f"{owner}.buckets must not be empty")
    for value in bounds:
        check_number(owner, "buckets", value, minimum=0, exclusive_minimum=True)
    if any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
        raise ConfigurationError(f"{owner}.buckets must be strictly increasing, got {bounds!r}")
    return tuple(float(b) for b in bounds)


def bucket_labels(bounds: Sequence[float]) -> list[str]:
    """The ``le`` values exactly as prometheus_client writes them ("0.005", "1.0", "+Inf")."""
    from prometheus_client.utils import floatToGoString  # noqa: PLC0415 - optional dependency

    return [*(floatToGoString(b) for b in bounds), "+Inf"]  # type: ignore[no-untyped-call]


def fill_families(histogram: Any, counter: Any, series: Iterable[Series],
                  labels: Sequence[str]) -> None:
    """Add every series to ``histogram`` (cumulative buckets) and its count to ``counter``."""
    for one in series:
        cumulative, buckets = 0, []
        for bound, count in zip(labels, one.counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        histogram.add_metric(one.labels, buckets, one.total)
        counter.add_metric(one.labels, float(cumulative))
