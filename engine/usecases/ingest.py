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
from collections.abc import Awaitable, Callable, Mapping, Sequence

from engine.domain import auth
from engine.domain.errors import InvalidArgument, OmnistockError, PermissionDenied
from engine.domain.model import (
    EventKind,
    EventOutcome,
    StockEvent,
)
from engine.domain.states import row_name, sku_of, state_of
from engine.metrics import Metrics
from engine.store.codecs import EventsApplied, Gap
from engine.store.storage import Storage
from engine.usecases.ingest_values import (
    Ack,
    Count,
    Counted,
    Ingested,
    Shortage,
    shortage_event,
    uncovered,
)
from engine.usecases.locations import LocationRegistry
from engine.usecases.mappings import Mappings
from engine.usecases.sources import Sources

log = logging.getLogger(__name__)

COUNT_BATCH = 2000  # count lines per script call
COUNT_CALLS = 4  # script calls of one count in flight


_BUNDLE = "a bundle (SetBundles) has no stock of its own: send its components' events"


def _future(skew_ms: int) -> str:
    return (
        f"more than {skew_ms // 1000} s in the future: a source clock that is ahead would "
        "freeze the row (every later event older than it)"
    )


_ACKS = {outcome: Ack(outcome) for outcome in EventOutcome}  # an applied event's ack


class Ingest:
    def __init__(
        self,
        storage: Storage,
        locations: LocationRegistry,
        metrics: Metrics,
        now_ms: Callable[[], int],
        max_skew_ms: int = 300_000,
        bundles: Callable[[], Awaitable[Mapping[str, object]]] | None = None,
    ) -> None:
        """max_skew_ms: how far from the server's clock a source's may be (sources.py);
        an event further in the future than that is rejected. bundles: the bundle skus."""
        self.storage = storage
        self.locations = locations
        self.mappings = Mappings(storage)
        self.metrics = metrics
        self.now_ms = now_ms
        self.max_skew_ms = max_skew_ms
        self.bundles = bundles
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
        kits = await self.bundles() if self.bundles is not None else {}
        for i, got in await self.mappings.translate(parsed):
            if isinstance(got, StockEvent) and got.source_time > now + self.max_skew_ms:
                got = InvalidArgument(f"events[{i}].source_time", _future(self.max_skew_ms))
            if isinstance(got, StockEvent) and got.sku in kits:
                got = InvalidArgument(f"events[{i}].sku", _BUNDLE)
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
        counted = await self._our_lines(count.source, lines)
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

    async def _our_lines(self, source: str, lines: dict[str, int]) -> dict[str, int]:
        """A count's lines by our rows (a source's skus mapped; a row: a sku, or a sku's
        units in a state), none of them a bundle's."""
        counted: dict[str, int] = {}
        kits = await self.bundles() if self.bundles is not None else {}
        for row, qty in lines.items():
            sku, state = sku_of(row), state_of(row)
            ours = await self.mappings.item(source, sku, "lines[].sku")
            if ours in kits:
                raise InvalidArgument("lines[].sku", f"{ours}: {_BUNDLE}")
            named = row_name(ours, state)
            if named in counted:
                raise InvalidArgument("lines", f"{row!r} and another item both map to {named!r}")
            counted[named] = qty
        return counted

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
