"""Reading what the protected fleet's policies did, from each service's ``/metrics``.

The lab scrapes every protected service once a second while the load runs and
keeps, per scrape, the cumulative fournines counters (retries, sheds, breaker
openings, fallbacks) summed over the fleet and the state of every breaker.
Differences between scrapes give the per-second series of the report. The
unprotected fleet has no policies and no ``/metrics``: its series are zeros.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

__all__ = ["COUNTERS", "SLI_COUNTERS", "Sample", "Scraper", "parse_metrics"]

BREAKER_LEVEL = {"closed": 0, "forced_closed": 0, "half_open": 1, "open": 2, "forced_open": 2}
"""How breaker states are drawn: 0 closed, 1 half-open, 2 open."""

COUNTERS = ("retries", "sheds", "openings", "fallbacks")
"""The cumulative counters a :class:`Sample` keeps, per service and summed."""


@dataclass(slots=True)
class Sample:
    """One scrape of the fleet: cumulative counters and breaker states at ``at`` s."""

    at: float
    retries: float = 0.0
    sheds: float = 0.0
    openings: float = 0.0
    fallbacks: float = 0.0
    breakers: dict[str, int] = field(default_factory=dict)
    # The same counters per service that answered this scrape: a fleet-wide sum drops
    # when one service misses a scrape or restarts, so increases are taken per service.
    services: dict[str, dict[str, float]] = field(default_factory=dict)
    # What each service's own BudgetTracker (fournines.slo) says is left of its error
    # budget, "service/slo" -> ratio (1 untouched, 0 spent, < 0 overspent).
    budget_remaining: dict[str, float] = field(default_factory=dict)
    # Each service's own golden signals, cumulative (see SLI_COUNTERS): the root-cause
    # ranking compares them with the service's steady baseline.
    slis: dict[str, dict[str, float]] = field(default_factory=dict)


SLI_COUNTERS = ("requests", "errors", "duration_sum", "duration_count", "in_flight")
"""A service's own golden signals read from its ``/metrics``: requests served, 5xx
answers, the request histogram's sum and count, and requests in flight (a gauge)."""


def parse_metrics(text: str, service: str, sample: Sample) -> None:
    """Add the fournines counters of one service's exposition ``text`` to ``sample``."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    own = sample.services.setdefault(service, dict.fromkeys(COUNTERS, 0.0))
    slis = sample.slis.setdefault(service, dict.fromkeys(SLI_COUNTERS, 0.0))
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, s.value
            if name == "http_requests_total":
                slis["requests"] += value
                if labels.get("status", "").startswith("5"):
                    slis["errors"] += value
                continue
            if name in ("http_request_duration_seconds_sum", "http_requests_in_flight"):
                slis["duration_sum" if name.endswith("_sum") else "in_flight"] += value
                continue
            if name == "http_request_duration_seconds_count":
                slis["duration_count"] += value
                continue
            counter = None
            if name == "fournines_retries_total":
                counter = "retries"
            elif name == "fournines_rejections_total" and labels.get("policy") == "load_shedder":
                counter = "sheds"
            elif (name == "fournines_circuit_breaker_transitions_total"
                  and labels.get("to_state") == "open"):
                counter = "openings"
            elif name == "fournines_fallbacks_total":
                counter = "fallbacks"
            if counter is not None:
                own[counter] += value
                setattr(sample, counter, getattr(sample, counter) + value)
            elif name == "fournines_slo_error_budget_remaining_ratio":
                sample.budget_remaining[f"{service}/{labels.get('slo', '?')}"] = value
            elif name == "fournines_circuit_breaker_state" and value == 1:
                key = f"{service} -> {_short(labels.get('name', '?'))}"
                sample.breakers[key] = BREAKER_LEVEL.get(labels.get("state", ""), 0)


def _merge(into: Sample, part: Sample) -> None:
    for counter in COUNTERS:
        setattr(into, counter, getattr(into, counter) + getattr(part, counter))
    into.breakers.update(part.breakers)
    into.services.update(part.services)
    into.budget_remaining.update(part.budget_remaining)
    into.slis.update(part.slis)


def _short(name: str) -> str:
    return name.removeprefix("http://")


class Scraper:
    """Scrapes ``targets`` (service name -> base URL) every ``interval`` seconds."""

    def __init__(self, targets: Mapping[str, str], names: Mapping[str, str] | None = None,
                 interval: float = 1.0) -> None:
        self.targets = dict(targets)
        self.names = dict(names or {})  # host:port -> service name, for breaker labels
        self.interval = interval
        self.samples: list[Sample] = []
        self.errors = 0

    def _rename(self, sample: Sample) -> None:
        renamed: dict[str, int] = {}
        for key, level in sample.breakers.items():
            source, _, target = key.partition(" -> ")
            renamed[f"{source} -> {self.names.get(target, target)}"] = level
        sample.breakers = renamed

    async def scrape(self, client: httpx.AsyncClient, at: float) -> Sample:
        """One scrape of every target."""
        sample = Sample(at=at)

        async def one(service: str, url: str) -> None:
            # Parsed apart and merged only when whole: a half-read service would count
            # its counters as a drop, then as a jump at the next scrape.
            own = Sample(at=at)
            try:
                response = await client.get(url + "/metrics")
                if response.status_code != 200:
                    raise ValueError(f"/metrics answered {response.status_code}")
                parse_metrics(response.text, service, own)
            except (httpx.HTTPError, ValueError):
                self.errors += 1  # a killed, starting or draining service: a missed scrape
                return
            _merge(sample, own)

        await asyncio.gather(*(one(s, u) for s, u in self.targets.items()))
        self._rename(sample)
        return sample

    async def run(self, start: float, stop: asyncio.Event) -> None:
        """Scrape until ``stop`` is set; ``start`` is the load's ``perf_counter`` origin."""
        if not self.targets:
            return
        async with httpx.AsyncClient(timeout=1.0) as client:
            while not stop.is_set():
                self.samples.append(await self.scrape(client, time.perf_counter() - start))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)
            self.samples.append(await self.scrape(client, time.perf_counter() - start))
