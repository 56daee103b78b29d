"""Toxiproxy's toxics: their JSON, and what each one does to the bytes of one link.

A *link* is one direction of one proxied connection: ``upstream`` carries client -> server
bytes, ``downstream`` server -> client bytes. A link passes each chunk it reads through
the active toxics of its stream in the order they were added; each toxic is an async
generator stage over ``(timestamp, bytes)`` pieces, so a slicer's pieces still meet a
later latency toxic one by one, as in Toxiproxy's chain of stubs.

Semantics follow Toxiproxy 2.x (README "Toxics" and ``toxics/*.go``):

- ``latency``: each chunk leaves ``latency`` +/- ``jitter`` ms after it was read.
- ``bandwidth``: at most ``rate`` KB/s (1 KB = 1000 bytes), sent in 100 ms portions.
- ``slow_close``: the end of the stream is passed on ``delay`` ms late.
- ``timeout``: data is dropped; the connection closes once ``timeout`` ms pass without
  data on the link (0: never). Removing the toxic closes the connections it held.
- ``reset_peer``: the first data (or end of stream) on the link is dropped and, ``timeout``
  ms later, both sockets are reset (SO_LINGER 0, so the peers see ECONNRESET).
- ``slicer``: chunks are cut into pieces of ``average_size`` +/- ``size_variation`` bytes,
  ``delay`` microseconds apart.
- ``limit_data``: the link passes exactly ``bytes`` bytes, then the connection closes.

``toxicity`` is the probability that a toxic acts on a given link; it is drawn when the
toxic meets the link (connection opened, toxic added) and again when the toxic is updated.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "STREAMS",
    "TOXIC_ATTRIBUTES",
    "ApiError",
    "LinkToxic",
    "Piece",
    "Toxic",
    "ToxicClose",
    "latency_delay",
    "parse_new_toxic",
    "parse_toxic_update",
    "run_stage",
    "slice_bounds",
]

STREAMS = ("upstream", "downstream")

#: Toxic type -> its integer attributes, in Toxiproxy's JSON order.
TOXIC_ATTRIBUTES: Mapping[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
}

#: ``(loop time when read, data)``
Piece = tuple[float, bytes]


class ApiError(Exception):
    """An error the HTTP API answers as Toxiproxy does: ``{"error": ..., "status": ...}``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"error": self.message, "status": self.status}


class ToxicClose(Exception):
    """Raised by a stage to end the whole connection (``reset``: with RST, not FIN)."""

    def __init__(self, *, reset: bool) -> None:
        super().__init__("reset" if reset else "close")
        self.reset = reset


@dataclass(frozen=True, slots=True, kw_only=True)
class Toxic:
    """One toxic of one proxy, as the API shows it; updates replace it with a new one."""

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Toxiproxy's JSON shape of a toxic."""
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
        }

    def attr(self, name: str) -> int:
        """One integer attribute (0 when unset, as Go's zero value)."""
        return self.attributes.get(name, 0)


def _bad_body(detail: str) -> ApiError:
    return ApiError(f"bad request body: {detail}", 400)


# Toxiproxy decodes attributes into Go int64s and toxicity into a float32: numbers outside
# those fail its JSON decoding with a 400, and must not reach a link here (a float()
# overflow in a link would kill it and leave its connection hanging).
_INT64 = range(-(2**63), 2**63)
_FLOAT32_MAX = 3.4028234663852886e38


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad_body(f"{what} must be a number, got {value!r}")
    if not -_FLOAT32_MAX <= value <= _FLOAT32_MAX:  # NaN fails this too
        raise _bad_body(f"{what} must be a finite float32")
    return float(value)


def _attributes(kind: str, raw: object, base: Mapping[str, int]) -> dict[str, int]:
    attributes = {name: base.get(name, 0) for name in TOXIC_ATTRIBUTES[kind]}
    if raw is None:
        return attributes
    if not isinstance(raw, dict):
        raise _bad_body(f"attributes must be an object, got {raw!r}")
    for name, value in raw.items():
        if name not in attributes:
            continue  # Go's decoder ignores unknown fields; so do we
        if isinstance(value, bool) or not isinstance(value, int) or value not in _INT64:
            shown = "a huge number" if isinstance(value, int) and abs(value) > 10**20 else (
                repr(value))
            raise _bad_body(f"attribute {name!r} of a {kind} toxic must be an int64, "
                            f"got {shown}")
        attributes[name] = value
    return attributes


def parse_new_toxic(body: object) -> Toxic:
    """A new toxic from a ``POST /proxies/{proxy}/toxics`` body, checked in Toxiproxy's order."""
    if not isinstance(body, dict):
        raise _bad_body("expected a JSON object")
    stream = body.get("stream", "downstream")
    if not isinstance(stream, str):
        raise _bad_body(f"stream must be a string, got {stream!r}")
    kind = body.get("type", "")
    name = body.get("name", "")
    if not isinstance(kind, str) or not isinstance(name, str):
        raise _bad_body("name and type must be strings")
    toxicity = _number(body.get("toxicity", 1.0), "toxicity")
    if stream.lower() not in STREAMS:
        raise ApiError("stream was invalid, can be either upstream or downstream", 400)
    stream = stream.lower()
    if kind not in TOXIC_ATTRIBUTES:
        raise ApiError("invalid toxic type", 400)
    attributes = _attributes(kind, body.get("attributes"), {})
    return Toxic(name=name or f"{kind}_{stream}", type=kind, stream=stream,
                 toxicity=toxicity, attributes=attributes)


def parse_toxic_update(toxic: Toxic, body: object) -> Toxic:
    """``toxic`` with the ``attributes`` and ``toxicity`` of an update body merged in."""
    if not isinstance(body, dict):
        raise _bad_body("expected a JSON object")
    toxicity = _number(body.get("toxicity", toxic.toxicity), "toxicity")
    attributes = _attributes(toxic.type, body.get("attributes"), toxic.attributes)
    return Toxic(name=toxic.name, type=toxic.type, stream=toxic.stream,
                 toxicity=toxicity, attributes=attributes)


def latency_delay(latency_ms: int, jitter_ms: int, rng: random.Random) -> float:
    """Seconds of delay for one chunk: ``latency`` +/- ``jitter`` (uniform), never negative."""
    delay = latency_ms
    if jitter_ms > 0:
        delay += rng.randrange(2 * jitter_ms) - jitter_ms
    return max(delay, 0) / 1000.0


def slice_bounds(size: int, average: int, variation: int, rng: random.Random) -> list[int]:
    """Cut points ``[0, ..., size]`` for the slicer.

    Toxiproxy's scheme: halve a span (moved by up to +/- ``variation``) until it is within
    ``variation`` of ``average``, so pieces vary evenly along the chunk.
    """
    average = max(average, 1)
    variation = max(variation, 0)
    cuts = [0]
    spans = [(0, size)]
    while spans:
        start, end = spans.pop()
        if end - start - average <= variation or end - start < 2:
            cuts.append(end)
            continue
        middle = start + (end - start) // 2
        if variation > 0:
            middle += rng.randrange(2 * variation) - variation
        middle = min(max(middle, start + 1), end - 1)
        spans.append((middle, end))  # popped second: keeps the cuts in order
        spans.append((start, middle))
    return cuts


class LinkToxic:
    """One toxic as one link sees it: whether it acts here (toxicity) and its state."""

    __slots__ = ("_wake", "active", "deadline", "next_send", "removed", "sent", "timer",
                 "toxic")

    def __init__(self, toxic: Toxic, rng: random.Random) -> None:
        self.toxic = toxic
        self.active = rng.random() < toxic.toxicity
        self.removed = False
        self.sent = 0  # limit_data: bytes passed on this link
        self.next_send = 0.0  # bandwidth: when the link may send again
        self.deadline = 0.0  # timeout: when the link closes unless data comes first
        self.timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def update(self, toxic: Toxic, rng: random.Random) -> None:
        """Take new attributes; like Toxiproxy, draw toxicity again and cut waits short."""
        self.toxic = toxic
        self.active = rng.random() < toxic.toxicity
        self.next_send = 0.0
        self.interrupt()

    def interrupt(self) -> None:
        """End the current wait of this toxic's stage (the toxic changed or went away)."""
        self._wake.set()
        self._wake = asyncio.Event()

    @property
    def acting(self) -> bool:
        """True while the toxic is on the link and drew to act on it."""
        return self.active and not self.removed

    async def sleep_until(self, when: float) -> bool:
        """Wait until loop time ``when``; False when interrupted first."""
        delay = when - asyncio.get_running_loop().time()
        if delay <= 0:
            return True
        wake = self._wake
        try:
            await asyncio.wait_for(wake.wait(), delay)
        except TimeoutError:
            return True
        return False


async def _latency(state: LinkToxic, piece: Piece, rng: random.Random,
                   ) -> AsyncIterator[Piece]:
    stamp, data = piece
    when = stamp + latency_delay(state.toxic.attr("latency"), state.toxic.attr("jitter"), rng)
    await state.sleep_until(when)  # interrupted: pass the chunk on at once, as Toxiproxy
    # the next latency toxic counts from here, so chained latencies add up
    yield (max(when, stamp), data)


async def _bandwidth(state: LinkToxic, piece: Piece, rng: random.Random,
                     ) -> AsyncIterator[Piece]:
    stamp, data = piece
    rate = state.toxic.attr("rate")
    if rate <= 0:
        yield piece
        return
    portion = rate * 100  # bytes in 100 ms
    loop = asyncio.get_running_loop()
    for offset in range(0, len(data), portion):
        part = data[offset:offset + portion]
        state.next_send = max(state.next_send, loop.time()) + len(part) / (rate * 1000.0)
        if not await state.sleep_until(state.next_send):
            yield (stamp, data[offset:])  # changed mid-way: send the rest unthrottled
            return
        yield (stamp, part)


async def _slicer(state: LinkToxic, piece: Piece, rng: random.Random,
                  ) -> AsyncIterator[Piece]:
    stamp, data = piece
    toxic = state.toxic
    cuts = slice_bounds(len(data), toxic.attr("average_size"), toxic.attr("size_variation"),
                        rng)
    loop = asyncio.get_running_loop()
    for start, end in itertools.pairwise(cuts):
        yield (stamp, data[start:end])
        if not await state.sleep_until(loop.time() + toxic.attr("delay") / 1e6):
            yield (stamp, data[end:])
            return


async def _limit_data(state: LinkToxic, piece: Piece, rng: random.Random,
                      ) -> AsyncIterator[Piece]:
    stamp, data = piece
    remaining = max(state.toxic.attr("bytes") - state.sent, 0)
    data = data[:remaining]
    if data:
        yield (stamp, data)
        state.sent += len(data)
    if state.toxic.attr("bytes") - state.sent <= 0:
        raise ToxicClose(reset=False)


async def _timeout(state: LinkToxic, piece: Piece, rng: random.Random,
                   ) -> AsyncIterator[Piece]:
    # Data is dropped; each chunk restarts the close timer (Toxiproxy's timer is per wait).
    timeout = state.toxic.attr("timeout")
    if timeout > 0:
        state.deadline = asyncio.get_running_loop().time() + timeout / 1000.0
    return
    yield piece  # pragma: no cover - makes this an async generator


async def _reset_peer(state: LinkToxic, piece: Piece, rng: random.Random,
                      ) -> AsyncIterator[Piece]:
    await asyncio.sleep(max(state.toxic.attr("timeout"), 0) / 1000.0)
    raise ToxicClose(reset=True)
    yield piece  # pragma: no cover - makes this an async generator


async def _pass(state: LinkToxic, piece: Piece, rng: random.Random,
                ) -> AsyncIterator[Piece]:
    yield piece


_Stage = Callable[[LinkToxic, Piece, random.Random], AsyncIterator[Piece]]
_STAGES: Mapping[str, _Stage] = {
    "latency": _latency,
    "bandwidth": _bandwidth,
    "slicer": _slicer,
    "limit_data": _limit_data,
    "timeout": _timeout,
    "reset_peer": _reset_peer,
    "slow_close": _pass,  # acts only on the end of the stream
}


async def run_stage(state: LinkToxic, pieces: AsyncIterator[Piece], rng: random.Random,
                    ) -> AsyncIterator[Piece]:
    """Pass ``pieces`` through one toxic; checked per piece, so changes apply at once."""
    async for piece in pieces:
        if not state.acting:
            yield piece
            continue
        async for out in _STAGES[state.toxic.type](state, piece, rng):
            yield out
