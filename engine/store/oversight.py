"""What operators read and mend (engine/usecases/oversight.py): a location's sizes, the
sources of stock events, the alerts stream, and the ingest adapters' dead letters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.store.base import Base
from engine.store.keys import ALERTS, ALERTS_KEPT, SOURCES, Keys


@dataclass(frozen=True, slots=True)
class SourceSeen:
    """What one server process saw of a source since it last wrote it down."""

    events: int
    last_arrival: int  # ms
    last_source_time: int  # ms
    clock_offset_ms: int
    clock: str  # "ok", "ahead", "behind"


@dataclass(frozen=True, slots=True)
class Numbered:
    """A numbered source at a location: its watermark and the gaps below it."""

    source: str
    highest: int
    gaps: list[tuple[int, int, int]]  # first, last, opened at (ms); lowest first


Entry = tuple[str, dict[str, bytes]]  # a stream entry: its id and fields


def _gap(member: bytes) -> tuple[int, int, int]:
    """A gap as apply_events.lua keeps it: "first\\tlast\\topened"."""
    first, last, opened = member.split(b"\t")
    return int(first), int(last), int(opened)


def _entries(got: Sequence[tuple[bytes, Mapping[bytes, bytes]]]) -> list[Entry]:
    return [(i.decode(), {k.decode(): v for k, v in f.items()}) for i, f in got]


class Oversight(Base):
    async def location_sizes(self, location: str) -> tuple[int, int]:
        """(stock rows, reservations with a HELD part) at a location, one round trip."""
        buckets = self.keys.stock_buckets(location)
        got = await self.pipeline(
            lambda pipe: [*(pipe.hlen(k) for k in buckets), pipe.zcard(Keys.due(location))]
        )
        return sum(got[:-1]), got[-1]

    async def numbered(self, location: str) -> list[Numbered]:
        """The numbered sources at a location (apply_events.lua keeps them), by name."""
        marks = await self.command(lambda p: p.hgetall(Keys.marks(location)))
        highest = {
            k.decode(): int(v)
            for k, v in marks.items()
            if b"\t" not in k  # "<src>\tr": a mark
        }
        names = sorted(highest)
        got = await self.pipeline(
            lambda pipe: [pipe.zrange(Keys.gaps(location, n), 0, -1) for n in names]
        )
        return [
            Numbered(name, highest[name], [_gap(g) for g in gaps])
            for name, gaps in zip(names, got, strict=True)
        ]

    async def record_sources(self, seen: Mapping[str, SourceSeen], new: Sequence[str]) -> None:
        """Adds what this process saw of each source to what every process saw; `new`: the
        sources this process has not named in the index yet."""

        def build(pipe: Any) -> list[Any]:
            out = [pipe.sadd(SOURCES, *new)] if new else []
            for source, s in seen.items():
                key = Keys.source(source)
                out.append(pipe.hincrby(key, "events", s.events))
                fields = {
                    "last_arrival": s.last_arrival,
                    "last_source_time": s.last_source_time,
                    "clock_offset_ms": s.clock_offset_ms,
                    "clock": s.clock,
                }
                out.append(pipe.hset(key, mapping=fields))
            return out

        await self.pipeline(build)

    async def sources(self) -> dict[str, dict[str, bytes]]:
        """Every source any process wrote down, with its fields."""
        names = sorted(n.decode() for n in await self.command(lambda p: p.smembers(SOURCES)))
        got = await self.pipeline(lambda pipe: [pipe.hgetall(Keys.source(n)) for n in names])
        return {n: {k.decode(): v for k, v in f.items()} for n, f in zip(names, got, strict=True)}

    async def publish_alerts(self, alerts: Sequence[Mapping[str, str]]) -> None:
        """Appends alerts (each with its `kind` and `at`) to the alerts stream, trimmed to
        about ALERTS_KEPT."""
        if alerts:
            await self.pipeline(
                lambda pipe: [
                    pipe.xadd(ALERTS, dict(a), maxlen=ALERTS_KEPT, approximate=True) for a in alerts
                ]
            )

    async def alerts(self, after: str, limit: int) -> list[Entry]:
        start = f"({after}" if after else "-"
        return _entries(await self.command(lambda p: p.xrange(ALERTS, start, "+", count=limit)))

    async def dead_letters(self, stream: str, after: str, limit: int) -> list[Entry]:
        start = f"({after}" if after else "-"
        return _entries(await self.command(lambda p: p.xrange(stream, start, "+", count=limit)))

    async def delete_dead_letters(self, stream: str, ids: Sequence[str]) -> int:
        return int(await self.command(lambda p: p.xdel(stream, *ids)))
