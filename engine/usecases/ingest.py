"""The one ingest path. Every stock event, from ApplyEvents, StreamEvents, ReconcileCount
or an adapter, comes through Ingest.apply: its ids translated through its source's mapping,
checked, grouped by location, and applied by the apply_events script (each at most once,
independent of arrival order: I5, I6). A row the events leave with on_hand below what is
held becomes a shortage: the holds stay (I3), and the reservations left uncovered are named,
in the answer, in the log, and as an event on the shortage stream. (The mappings are
engine/usecases/mappings.py.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from engine.domain import auth
from engine.domain.errors import InvalidArgument, OmnistockError, PermissionDenied
from engine.domain.model import (
    EventKind,
    EventOutcome,
    StockEvent,
    check_id,
    check_qty,
)
from engine.domain.states import StockState, row_name, sku_of, state_of
from engine.metrics import Metrics
from engine.store.codecs import EventsApplied, Gap, Holder
from engine.store.storage import Storage
from engine.usecases.locations import LocationRegistry
from engine.usecases.mappings import Mappings
from engine.usecases.sources import Sources

log = logging.getLogger(__name__)

MAX_COUNT_LINES = 2_000_000
COUNT_BATCH = 2000  # count lines per script call
COUNT_CALLS = 4  # script calls of one count in flight


def _future(skew_ms: int) -> str:
    return (
        f"more than {skew_ms // 1000} s in the future: a source clock that is ahead would "
        "freeze the row (every later event older than it)"
    )


@dataclass(frozen=True, slots=True)
class Ack:
    outcome: EventOutcome
    reason: str = ""  # REJECTED: "<field>: <why>"


_ACKS = {outcome: Ack(outcome) for outcome in EventOutcome}  # an applied event's ack


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
    unchanged: int = 0  # already counted: the same count again
    zeroed: int = 0
    shortages: list[Shortage] = field(default_factory=list)
    stale: int = 0  # lines not applied: the row was counted at or after this count's time


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


class Ingest:
    def __init__(
        self,
        storage: Storage,
        locations: LocationRegistry,
        metrics: Metrics,
        now_ms: Callable[[], int],
        max_skew_ms: int = 300_000,
    ) -> None:
        """max_skew_ms: how far from the server's clock a source's may be (sources.py);
        an event further in the future than that is rejected."""
        self.storage = storage
        self.locations = locations
        self.mappings = Mappings(storage)
        self.metrics = metrics
        self.now_ms = now_ms
        self.max_skew_ms = max_skew_ms
        self.sources = Sources(storage, metrics, max_skew_ms, now_ms)

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
        now = self.now_ms()
        groups: dict[str, list[tuple[int, StockEvent]]] = {}
        for i, got in await self.mappings.translate(parsed):
            if isinstance(got, StockEvent) and got.source_time > now + self.max_skew_ms:
                got = InvalidArgument(f"events[{i}].source_time", _future(self.max_skew_ms))
            if isinstance(got, InvalidArgument):
                acks[i] = self._reject(got, strict)
            else:
                groups.setdefault(got.location, []).append((i, got))
        self._keep_to_scope(groups, acks, strict)
        known = await self.locations.known(groups)
        for location in set(groups) - known:
            for i, _ in groups.pop(location):
                where = f"events[{i}].location_id"
                acks[i] = self._reject(
                    InvalidArgument(where, f"unknown location {location!r}"), strict
                )
        # noted once nothing more can refuse the call (strict): a refused call writes nothing
        alerts = self.sources.saw([ev for _, ev in parsed], now)
        results = await asyncio.gather(
            *(
                self.storage.apply_events(loc, [ev for _, ev in items], now)
                for loc, items in groups.items()
            )
        )
        short = self._tally(groups, results, acks, alerts)
        await self.storage.publish_alerts(alerts)
        return Ingested([a for a in acks if a is not None], await self.shortages(short))

    def _tally(
        self,
        groups: dict[str, list[tuple[int, StockEvent]]],
        results: Sequence[EventsApplied],
        acks: list[Ack | None],
        alerts: list[dict[str, str]],
    ) -> list[tuple[str, str, int, int]]:
        """Each applied event's ack and the outcomes' counts; the rows left short. The gaps
        to report join `alerts`."""
        short: list[tuple[str, str, int, int]] = []
        outcomes: Counter[EventOutcome] = Counter()
        for (loc, items), result in zip(groups.items(), results, strict=True):
            for (i, _), outcome in zip(items, result.outcomes, strict=True):
                acks[i] = _ACKS[outcome]
            outcomes.update(result.outcomes)
            short += [(loc, sku, on_hand, held) for sku, on_hand, held in result.short_rows]
            alerts += self._report(result.gaps)
        for outcome, n in outcomes.items():  # one metric update an outcome, not an event
            self.metrics.events.labels(outcome.value.lower()).inc(n)
        return short

    def _report(self, gaps: Sequence[Gap]) -> list[dict[str, str]]:
        """Logs and counts each gap; answers its alert."""
        for gap in gaps:
            log.warning(
                "sequence gap: source %s at %s: events %d to %d have not arrived (open %.0f s,"
                " or the oldest of 1,000 open gaps)",
                gap.source,
                gap.location,
                gap.first,
                gap.last,
                self.storage.gap_grace_ms / 1000,
            )
            self.metrics.sequence_gaps.inc()
            self.metrics.sequence_missing.inc(gap.last - gap.first + 1)
        now = str(self.now_ms())
        return [
            {
                "kind": "sequence_gap",
                "source": g.source,
                "location_id": g.location,
                "first": str(g.first),
                "last": str(g.last),
                "at": now,
            }
            for g in gaps
        ]

    def _keep_to_scope(
        self, groups: dict[str, list[tuple[int, StockEvent]]], acks: list[Ack | None], strict: bool
    ) -> None:
        """Events at a location outside the caller's are refused (strict) or rejected."""
        who = auth.current()
        if who.locations is None:
            return
        for location in [loc for loc in groups if loc not in (who.locations or ())]:
            for i, _ in groups.pop(location):
                denied = PermissionDenied(
                    f"events[{i}].location_id: principal {who.name} may not act at {location}"
                )
                acks[i] = self._reject(denied, strict)

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
        await self.storage.publish_alerts([shortage_event(s, self.now_ms()) for s in out])
        return out

    async def count(self, count: Count, lines: dict[str, int]) -> Counted:
        """Applies a full count: every line a COUNT event "count:<count_id>/<sku>" at counted_at;
        with zero_missing, every row of the location the count does not list and that is
        not already counted later, a COUNT of 0 the same way. The lines were all checked
        before this starts, so a failure here leaves a count that sending it again
        completes (its events are recognised as the duplicates they are)."""
        result = Counted(lines=len(lines))
        if count.counted_at > self.now_ms() + self.max_skew_ms:
            raise InvalidArgument("header.counted_at", _future(self.max_skew_ms))
        location = await self.mappings.location(count.source, count.location, "header.location_id")
        auth.current().require_locations([location], "header.location_id")
        await self.locations.require([location], "header.location_id")
        started, done = time.perf_counter(), 0
        counted: dict[str, int] = {}
        for row, qty in lines.items():  # a row: a sku, or a sku's units in a state
            sku, state = sku_of(row), state_of(row)
            ours = row_name(await self.mappings.item(count.source, sku, "lines[].sku"), state)
            if ours in counted:
                raise InvalidArgument("lines", f"{row!r} and another item both map to {ours!r}")
            counted[ours] = qty
        missing: list[str] = []
        # a count older than the event window is stale for every row (apply_events.lua):
        # it may not set the location's full-count mark either, or a delta from before it
        # arriving after it would be taken for one it includes (I5: order would matter)
        in_window = count.counted_at > self.now_ms() - self.storage.event_window_ms
        if count.zero_missing and in_window:  # first the mark: rows made later are covered
            await self.storage.apply_events(location, [], self.now_ms(), count.counted_at)
            rows = await self.storage.rows_at(location)
            missing = [
                sku
                for sku, row in rows.items()
                if sku not in counted and row.as_of < count.counted_at
            ]
            result.zeroed = len(missing)
        gate = asyncio.Semaphore(COUNT_CALLS)
        short: list[tuple[str, str, int, int]] = []

        async def run(batch: list[tuple[str, int]], zeroing: bool) -> None:
            nonlocal done
            events = [self._count_event(count, location, sku, qty) for sku, qty in batch]
            async with gate:
                got = await self.storage.apply_events(location, events, self.now_ms())
            for outcome in got.outcomes:
                self.metrics.events.labels(outcome.value.lower()).inc()
                if outcome is EventOutcome.APPLIED:
                    result.changed += not zeroing
                elif zeroing:
                    result.zeroed -= 1
                elif outcome is EventOutcome.STALE:
                    result.stale += 1
                else:
                    result.unchanged += 1
            short.extend((location, sku, on_hand, held) for sku, on_hand, held in got.short_rows)
            done += len(batch)
            log.info(
                "count %s at %s: %d of %d rows applied (%.1fs)",
                count.count_id,
                location,
                done,
                len(counted) + len(missing),
                time.perf_counter() - started,
            )

        listed, zeros = list(counted.items()), [(sku, 0) for sku in missing]
        await asyncio.gather(
            *(run(listed[i : i + COUNT_BATCH], False) for i in range(0, len(listed), COUNT_BATCH)),
            *(run(zeros[i : i + COUNT_BATCH], True) for i in range(0, len(zeros), COUNT_BATCH)),
        )
        result.shortages = await self.shortages(short)  # each sku is in one batch only
        return result

    @staticmethod
    def _count_event(count: Count, location: str, row: str, qty: int) -> StockEvent:
        return StockEvent(
            f"count:{count.count_id}/{row}",
            location,
            sku_of(row),
            EventKind.COUNT,
            qty,
            count.counted_at,
            state=state_of(row),
        )


def check_count(count: Count) -> Count:
    check_id(count.location, "header.location_id")
    check_id(count.count_id, "header.count_id")
    if count.counted_at <= 0:
        raise InvalidArgument("header.counted_at", "must be set (ms since the epoch)")
    if count.source:
        check_id(count.source, "header.source")
    return count


def add_count_line(
    lines: dict[str, int], sku: str, qty: int, where: str, state: StockState = StockState.SELLABLE
) -> None:
    """lines: row name (a sku, or its units in a state: domain/states.py) -> units counted."""
    check_id(sku, f"{where}.sku")
    check_qty(qty, f"{where}.qty", allow_zero=True)
    row = row_name(sku, state)
    if row in lines:
        what = repr(sku) if state is StockState.SELLABLE else f"{sku!r} ({state})"
        raise InvalidArgument(f"{where}.sku", f"{what} is counted twice in this count")
    if len(lines) >= MAX_COUNT_LINES:
        raise InvalidArgument(where, f"a count may hold at most {MAX_COUNT_LINES} lines")
    lines[row] = qty


def shortage_event(s: Shortage, now: int) -> dict[str, str]:
    return {
        "kind": "shortage",
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
