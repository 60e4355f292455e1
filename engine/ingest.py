"""The one ingest path. Every stock event, from ApplyEvents, StreamEvents, ReconcileCount
or an adapter, comes through Ingest.apply: its ids translated through its source's mapping,
checked, grouped by location, and applied by the apply_events script (each at most once,
independent of arrival order: I5, I6). A row the events leave with on_hand below what is
held becomes a shortage: the holds stay (I3), and the reservations left uncovered are named,
in the answer, in the log, and as an event on the shortage stream.

Mappings. A platform names things its own way (a Shopify location 24826418, an inventory
item 271878346596884015). Each source may have a mapping, kept in Redis: an event of that
source has its location_id and sku translated where the mapping has them, and kept as they
are where it has not (a source may send our ids). Each process keeps the mappings it uses
in memory, checked against the version every change moves at most once a second; a change
made through this process is seen at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import orjson

from engine.domain import EventKind, EventOutcome, StockEvent, check_id, check_qty
from engine.errors import InvalidArgument, OmnistockError
from engine.locations import LocationRegistry
from engine.metrics import Metrics
from engine.storage import Holder, Storage

log = logging.getLogger(__name__)

_RELOAD_INTERVAL = 1.0
LOCATION, ITEM = "l", "i"  # the two kinds of mapped id, as stored
MAX_COUNT_LINES = 2_000_000
COUNT_BATCH = 2000  # count lines per script call
COUNT_CALLS = 4  # script calls of one count in flight


@dataclass(frozen=True, slots=True)
class Ack:
    outcome: EventOutcome
    reason: str = ""  # REJECTED: "<field>: <why>"


@dataclass(frozen=True, slots=True)
class Uncovered:
    reservation_id: str
    qty: int  # what it holds of the row
    missing: int  # of those, the units the row no longer has


@dataclass(frozen=True, slots=True)
class Shortage:
    location: str
    sku: str
    on_hand: int
    reserved: int
    uncovered: tuple[Uncovered, ...]


@dataclass
class Ingested:
    acks: list[Ack]
    shortages: list[Shortage] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Count:
    """A full count of one location (ReconcileCount, the file adapter)."""

    location: str
    count_id: str
    counted_at: int  # ms since the epoch
    zero_missing: bool  # rows the count does not list are counted as 0
    source: str = ""


@dataclass
class Counted:
    lines: int = 0
    changed: int = 0
    unchanged: int = 0
    zeroed: int = 0
    shortages: list[Shortage] = field(default_factory=list)


def uncovered(on_hand: int, holders: Sequence[Holder]) -> tuple[Uncovered, ...]:
    """Holds are covered oldest first; the ones the row's on_hand does not reach, with how
    many units each is missing."""
    out, cover = [], max(on_hand, 0)
    for h in holders:
        got = min(cover, h.qty)
        cover -= got
        if got < h.qty:
            out.append(Uncovered(h.reservation_id, h.qty, h.qty - got))
    return tuple(out)


class Mappings:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.by_source: dict[str, dict[str, str]] = {}
        self._version = -1
        self._checked_at = float("-inf")

    async def _fresh(self) -> None:
        if time.monotonic() - self._checked_at > _RELOAD_INTERVAL:
            version = await self.storage.mappings_version()
            if version != self._version:
                self.by_source, self._version = {}, version
            self._checked_at = time.monotonic()

    async def of(self, source: str) -> dict[str, str]:
        await self._fresh()
        if source not in self.by_source:
            self.by_source[source] = await self.storage.mapping(source)
        return self.by_source[source]

    async def location(self, source: str, location: str) -> str:
        return (
            (await self.of(source)).get(f"{LOCATION}:{location}", location) if source else location
        )

    async def item(self, source: str, sku: str) -> str:
        return (await self.of(source)).get(f"{ITEM}:{sku}", sku) if source else sku

    async def translate(self, events: Sequence[StockEvent]) -> list[StockEvent]:
        out = []
        for ev in events:
            if ev.source:
                location = await self.location(ev.source, ev.location)
                sku = await self.item(ev.source, ev.sku)
                if (location, sku) != (ev.location, ev.sku):
                    ev = replace(ev, location=location, sku=sku)
            out.append(ev)
        return out

    async def set(self, changes: Sequence[tuple[str, str, str, str]]) -> None:
        """(source, kind LOCATION|ITEM, external id, our id or "" to remove) each."""
        for i, (source, _, external, ours) in enumerate(changes):
            check_id(source, f"mappings[{i}].source")
            check_id(external, f"mappings[{i}].external_id")
            if ours:
                check_id(ours, f"mappings[{i}].id")
        await self.storage.set_mappings([(s, f"{k}:{e}", o) for s, k, e, o in changes])
        self.by_source, self._checked_at = {}, float("-inf")


class Ingest:
    def __init__(
        self,
        storage: Storage,
        locations: LocationRegistry,
        metrics: Metrics,
        now_ms: Callable[[], int],
    ) -> None:
        self.storage = storage
        self.locations = locations
        self.mappings = Mappings(storage)
        self.metrics = metrics
        self.now_ms = now_ms

    async def apply(
        self, events: Sequence[StockEvent | OmnistockError], *, strict: bool = False
    ) -> Ingested:
        """Applies every event; an item that is an error (it failed to parse) and an event
        naming no known location are REJECTED with the reason. strict: the first such
        item raises instead, and nothing is applied."""
        acks: list[Ack | None] = [None] * len(events)
        parsed = [(i, ev) for i, ev in enumerate(events) if isinstance(ev, StockEvent)]
        for i, ev in enumerate(events):
            if not isinstance(ev, StockEvent):
                acks[i] = self._reject(ev, strict)
        translated = await self.mappings.translate([ev for _, ev in parsed])
        groups: dict[str, list[tuple[int, StockEvent]]] = {}
        for (i, _), ev in zip(parsed, translated, strict=True):
            groups.setdefault(ev.location, []).append((i, ev))
        known = await self.locations.known(groups)
        for location in set(groups) - known:
            for i, ev in groups.pop(location):
                reason = f"unknown location {ev.location!r}" + (
                    f" (and no {ev.source} mapping names it)" if ev.source else ""
                )
                acks[i] = self._reject(InvalidArgument(f"events[{i}].location_id", reason), strict)
        now = self.now_ms()
        results = await asyncio.gather(
            *(
                self.storage.apply_events(loc, [ev for _, ev in items], now)
                for loc, items in groups.items()
            )
        )
        short: list[tuple[str, str, int, int]] = []
        for (loc, items), result in zip(groups.items(), results, strict=True):
            for (i, _), outcome in zip(items, result.outcomes, strict=True):
                acks[i] = Ack(outcome)
                self.metrics.events.labels(outcome.value.lower()).inc()
            short += [(loc, sku, on_hand, held) for sku, on_hand, held in result.short_rows]
        return Ingested([a for a in acks if a is not None], await self.shortages(short))

    def _reject(self, exc: OmnistockError, strict: bool) -> Ack:
        if strict:
            raise exc
        self.metrics.events.labels("rejected").inc()
        return Ack(EventOutcome.REJECTED, str(exc))

    async def shortages(self, rows: Sequence[tuple[str, str, int, int]]) -> list[Shortage]:
        """Names the reservations each short row leaves uncovered; logs, counts and
        publishes a shortage event for each row."""
        by_location: dict[str, list[tuple[str, str, int, int]]] = {}
        for row in rows:
            by_location.setdefault(row[0], []).append(row)
        out = []
        for location, loc_rows in by_location.items():
            held = await self.storage.holders(location, [r[1] for r in loc_rows])
            for _, sku, on_hand, reserved in loc_rows:
                out.append(
                    Shortage(
                        location, sku, on_hand, reserved, uncovered(on_hand, held.get(sku, []))
                    )
                )
        if not out:
            return out
        for s in out:
            log.warning(
                "short row %s/%s: on_hand %d < reserved %d; uncovered: %s",
                s.location,
                s.sku,
                s.on_hand,
                s.reserved,
                ", ".join(f"{u.reservation_id} (missing {u.missing})" for u in s.uncovered),
            )
        self.metrics.shortages.inc(len(out))
        await self.storage.publish_shortages([shortage_event(s, self.now_ms()) for s in out])
        return out

    async def count(self, count: Count, lines: dict[str, int]) -> Counted:
        """Applies a full count: every line a COUNT event "<count_id>/<sku>" at counted_at;
        with zero_missing, every row of the location the count does not list and that is
        not already counted later, a COUNT of 0 the same way. The lines were all checked
        before this starts, so a failure here leaves a count that sending it again
        completes (its events are recognised as the duplicates they are)."""
        result = Counted(lines=len(lines))
        location = await self.mappings.location(count.source, count.location)
        await self.locations.require([location], "header.location_id")
        started, done = time.perf_counter(), 0
        counted: dict[str, int] = {}
        for sku, qty in lines.items():
            ours = await self.mappings.item(count.source, sku)
            if ours in counted:
                raise InvalidArgument("lines", f"{sku!r} and another item both map to {ours!r}")
            counted[ours] = qty
        events = [self._count_event(count, location, sku, qty) for sku, qty in counted.items()]
        missing = []
        if count.zero_missing:
            rows = await self.storage.rows_at(location)
            missing = [
                self._count_event(count, location, sku, 0)
                for sku, row in rows.items()
                if sku not in counted and row.as_of < count.counted_at
            ]
            result.zeroed = len(missing)
        gate = asyncio.Semaphore(COUNT_CALLS)
        short: list[tuple[str, str, int, int]] = []

        async def run(batch: list[StockEvent], zeroing: bool) -> None:
            nonlocal done
            async with gate:
                got = await self.storage.apply_events(location, batch, self.now_ms())
            for outcome in got.outcomes:
                self.metrics.events.labels(outcome.value.lower()).inc()
                if outcome is EventOutcome.APPLIED:
                    result.changed += not zeroing
                else:
                    result.unchanged += not zeroing
                    result.zeroed -= zeroing
            short.extend((location, sku, on_hand, held) for sku, on_hand, held in got.short_rows)
            done += len(batch)
            log.info(
                "count %s at %s: %d of %d rows applied (%.1fs)",
                count.count_id,
                location,
                done,
                len(events) + len(missing),
                time.perf_counter() - started,
            )

        await asyncio.gather(
            *(run(events[i : i + COUNT_BATCH], False) for i in range(0, len(events), COUNT_BATCH)),
            *(run(missing[i : i + COUNT_BATCH], True) for i in range(0, len(missing), COUNT_BATCH)),
        )
        worst: dict[str, tuple[str, str, int, int]] = {}
        for row in short:  # one sku may come back from several batches: keep the last word
            worst[row[1]] = row
        rows_now = await self.storage.rows([(location, sku) for sku in worst])
        still = [
            (location, sku, r.on_hand, r.reserved)
            for sku, r in zip(worst, rows_now, strict=True)
            if r.on_hand < r.reserved
        ]
        result.shortages = await self.shortages(still)
        return result

    @staticmethod
    def _count_event(count: Count, location: str, sku: str, qty: int) -> StockEvent:
        return StockEvent(
            f"{count.count_id}/{sku}", location, sku, EventKind.COUNT, qty, count.counted_at
        )


def check_count(count: Count) -> Count:
    check_id(count.location, "header.location_id")
    check_id(count.count_id, "header.count_id")
    if count.counted_at <= 0:
        raise InvalidArgument("header.counted_at", "must be set (ms since the epoch)")
    if count.source:
        check_id(count.source, "header.source")
    return count


def add_count_line(lines: dict[str, int], sku: str, qty: int, where: str) -> None:
    check_id(sku, f"{where}.sku")
    check_qty(qty, f"{where}.qty", allow_zero=True)
    if sku in lines:
        raise InvalidArgument(f"{where}.sku", f"{sku!r} is counted twice in this count")
    if len(lines) >= MAX_COUNT_LINES:
        raise InvalidArgument(where, f"a count may hold at most {MAX_COUNT_LINES} lines")
    lines[sku] = qty


def shortage_event(s: Shortage, now: int) -> dict[str, str]:
    return {
        "location_id": s.location,
        "sku": s.sku,
        "on_hand": str(s.on_hand),
        "reserved": str(s.reserved),
        "uncovered": orjson.dumps(
            [
                {"reservation_id": u.reservation_id, "qty": u.qty, "missing": u.missing}
                for u in s.uncovered
            ]
        ).decode(),
        "at": str(now),
    }
