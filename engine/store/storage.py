"""The one seam to Redis: the key layout, the Lua scripts, and the translation of Redis
errors into ours. Nothing outside this module names a key or runs a command.

The directory lives in the slot of its reservation id, not of a location. On one Redis the
hold script of a single-location reservation writes it with the hold (one round trip); on a
Redis Cluster (engine.store.connect asks the server which it is) it never does: there every
Reserve is a saga (reservations.py). Everything else is the same on both: every script
touches one slot, and commands of several slots go in one pipeline, which the cluster
client splits by node.

Scripts run with EVALSHA; NOSCRIPT (an empty script cache after a Redis restart) loads them
and runs the call again, which is safe because every script here is idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from engine.domain.model import EventKind, EventOutcome, IdKind, Location, StockEvent, StockRow
from engine.domain.states import OTHER_STATES, STATE_MARK, row_name
from engine.store.bands import BandStore
from engine.store.channels import ChannelStore
from engine.store.codecs import (
    EventsApplied,
    Gap,
    Holder,
    available_of,
    dedupe_id,
    location_dict,
    location_from,
    mapping_field,
    mapping_of,
    parse_row,
    part_lines,
)
from engine.store.keys import (
    LOCATIONS,
    LOCATIONS_VERSION,
    MAPPINGS_VERSION,
    KeyList,
    Keys,
)
from engine.store.ledgers import Ledgers
from engine.store.moves import MoveSteps
from engine.store.networks import NetworkStore
from engine.store.oversight import Oversight
from engine.store.parts import Parts
from engine.store.returns import ReturnStore
from engine.store.scripts import Command
from engine.store.supply import SupplyStore
from engine.store.transfers import TransferStore
from engine.throttle import gently

# Stock events applied by one script, and rows read by one: a batch of 5,000 events at one
# location holds Redis a few ms at a time instead of tens of ms at once (scripts of 500
# events took 30-90 ms each in SLOWLOG while 20 streams were fed: bench/RESULTS.md).
EVENTS_PER_SCRIPT = 100
ROWS_PER_READ = 1000


def _moved_to(ev: StockEvent) -> str:
    """A MOVE's row its units enter ('' for the other kinds)."""
    return row_name(ev.sku, ev.to_state) if ev.kind is EventKind.MOVE else ""


class Storage(
    Parts,
    MoveSteps,
    Oversight,
    ChannelStore,
    Ledgers,
    BandStore,
    NetworkStore,
    SupplyStore,
    TransferStore,
    ReturnStore,
):
    """Stock and reservations in Redis. Every change is one Lua script (EVALSHA). This class
    holds locations, stock rows, events, mappings and safety stock; reservation parts and
    expiry are engine/store/parts.py, the directory and sagas directory.py, a MoveLine's
    steps moves.py, band crossings bands.py, the plumbing engine/store/base.py."""

    # Each told the location of every row-writing script call once it is answered (or
    # failed: it may have run): the fence of the read cache and of the network view for a
    # caller's own writes (rowcache.py, netview.py).
    told: tuple[Callable[[str], None], ...] = ()

    async def call(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[Any],
        then: Command | None = None,
        heavy: bool = False,
    ) -> Any:
        try:
            return await super().call(name, keys, args, then, heavy)
        finally:
            if self.told and args and Keys.is_changes(args[-1]):
                for tell in self.told:
                    tell(Keys.location_of_changes(args[-1]))

    # -- locations --------------------------------------------------------------------

    async def upsert_locations(self, locations: Sequence[Location]) -> None:
        mapping = {loc.id: orjson.dumps(location_dict(loc)) for loc in locations}

        async def run() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:  # one slot: {omnistock}
                pipe.hset(LOCATIONS, mapping=mapping)
                pipe.incr(LOCATIONS_VERSION)
                await pipe.execute()

        await self.guard(run)

    async def locations_version(self) -> int:
        return int(await self.command(lambda p: p.get(LOCATIONS_VERSION)) or 0)

    async def load_locations(self, ids: Sequence[str] | None = None) -> dict[str, Location]:
        """Every location, or those of `ids` that exist."""
        if ids is None:
            raw: dict[bytes, bytes] = await self.command(lambda p: p.hgetall(LOCATIONS))
            return {k.decode(): location_from(orjson.loads(v)) for k, v in raw.items()}
        got = await self.command(lambda p: p.hmget(LOCATIONS, list(ids)))
        return {i: location_from(orjson.loads(v)) for i, v in zip(ids, got, strict=True) if v}

    # -- stock ------------------------------------------------------------------------

    async def rows(self, pairs: Sequence[tuple[str, str]]) -> list[StockRow]:
        """Stock rows of (location, sku) pairs, read as _read_values says. Decoded giving
        the event loop a turn every few hundred rows: a read of 20,000 rows takes tens of
        milliseconds to decode."""
        async with self._wide_reads.take(len(pairs)):
            return [parse_row(v) async for v in gently(await self._read_values(pairs))]

    async def rows_in_states(
        self, pairs: Sequence[tuple[str, str]]
    ) -> tuple[list[StockRow], list[tuple[int, ...]]]:
        """The rows of `pairs`, and each one's units in the other states (in the order of
        OTHER_STATES), read together: the same script calls, no round trip more (keys.py)."""
        n = len(OTHER_STATES)
        named = [(loc, row_name(sku, s)) for loc, sku in pairs for s in OTHER_STATES]
        got = await self.rows([*pairs, *named])
        rows, units = got[: len(pairs)], [r.on_hand for r in got[len(pairs) :]]
        return rows, [tuple(units[i * n : i * n + n]) for i in range(len(pairs))]

    async def available(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """What `rows` reads, as each row's available units only (cheaper to decode)."""
        async with self._wide_reads.take(len(pairs)):
            return [available_of(v) async for v in gently(await self._read_values(pairs))]

    async def _read_values(self, pairs: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """One read script for every ROWS_PER_READ rows of one hash slot, all sent at once
        (a wide read's scripts go one by one in the heavy lane: engine/store/scripts.py),
        the event loop given a turn after building each."""
        by_slot: dict[int, list[int]] = {}
        for i, (location, _) in enumerate(pairs):
            by_slot.setdefault(self._slot(location), []).append(i)
        parts = [
            idx[start : start + ROWS_PER_READ]
            for idx in by_slot.values()
            for start in range(0, len(idx), ROWS_PER_READ)
        ]
        built: list[tuple[list[str], list[Any]]] = []
        for n, part in enumerate(parts):
            if n:
                await asyncio.sleep(0)
            keys, args = KeyList(), []
            for i in part:
                location, sku = pairs[i]
                args += [keys.add(self.keys.stock(location, sku)), sku]
            built.append((keys.keys, args))
        values = await asyncio.gather(*(self.call("read_rows", k, a) for k, a in built))
        out: list[bytes | None] = [None] * len(pairs)
        for part, got in zip(parts, values, strict=True):
            for i, value in zip(part, got, strict=True):
                out[i] = value
        return out

    async def apply_events(
        self, location: str, events: Sequence[StockEvent], now: int, full_count_at: int = 0
    ) -> EventsApplied:
        """full_count_at: a full count that zeroes what it does not list was taken then (see
        apply_events.lua); set before that count reads the rows it zeroes. The events go in
        order, EVENTS_PER_SCRIPT to a script, so that a long batch holds Redis for no longer
        than one of those at a time and a small call waits behind one of them at most."""
        outcomes: list[EventOutcome] = []
        short: dict[str, tuple[str, int, int]] = {}  # a row's latest state, should it be short
        gaps: list[Gap] = []
        for start in range(0, max(len(events), 1), EVENTS_PER_SCRIPT):
            some = events[start : start + EVENTS_PER_SCRIPT]
            part = await self._apply_some(location, some, now, full_count_at)
            outcomes += part.outcomes
            gaps += part.gaps
            for ev, outcome in zip(some, part.outcomes, strict=True):
                if outcome is EventOutcome.APPLIED:  # its row is reported if short
                    short.pop(ev.sku, None)
            short.update((row[0], row) for row in part.short_rows)
        return EventsApplied(outcomes, list(short.values()), gaps)

    async def _apply_some(
        self, location: str, events: Sequence[StockEvent], now: int, full_count_at: int
    ) -> EventsApplied:
        keys = KeyList(Keys.seen(location), Keys.full_count(location), Keys.marks(location))
        args: list[Any] = [now, self.event_window_ms, len(events), full_count_at, self.gap_grace_ms]
        for ev in events:
            part = keys.add(Keys.part(location, ev.reservation_id)) if ev.reservation_id else 0
            stock = keys.add(self.keys.stock(location, ev.sku))
            log = keys.add(self.keys.log(location, ev.sku))
            gaps = keys.add(Keys.gaps(location, ev.source)) if ev.sequence else 0
            row = row_name(ev.sku, ev.state)
            args += [dedupe_id(ev), ev.kind.value, row, ev.qty, ev.source_time, stock, log, part]
            args += [ev.sequence, gaps, _moved_to(ev)]
        args.append(Keys.changes(location))
        outcomes, short, gaps_due = await self.call("apply_events", keys.keys, args)
        return EventsApplied(
            [EventOutcome(o.decode()) for o in outcomes],
            [
                (short[i].decode(), int(short[i + 1]), int(short[i + 2]))
                for i in range(0, len(short), 3)
            ],
            [
                Gap(location, gaps_due[i].decode(), int(gaps_due[i + 1]), int(gaps_due[i + 2]))
                for i in range(0, len(gaps_due), 3)
            ],
        )

    async def rows_at(self, location: str) -> dict[str, StockRow]:
        """Every stock row of one location: each bucket read whole, in one round trip."""
        buckets = self.keys.stock_buckets(location)
        got = await self.pipeline(lambda pipe: [pipe.hgetall(k) for k in buckets])
        return {
            sku.decode(): parse_row(v)
            for bucket in got
            for sku, v in bucket.items()
            if STATE_MARK.encode() not in sku  # a state's row (keys.py): never a sku's
        }

    async def holders(self, location: str, skus: Iterable[str]) -> dict[str, list[Holder]]:
        """The HELD reservation parts at a location that hold each of `skus`, oldest hold
        first. It reads every HELD part there: meant for the rare row left short."""
        wanted = set(skus)
        ids = [
            i.decode() for i in await self.command(lambda p: p.zrange(Keys.due(location), 0, -1))
        ]
        if not ids:
            return {}
        parts = await self.pipeline(
            lambda pipe: [pipe.hmget(Keys.part(location, i), "s", "l", "t") for i in ids]
        )
        out: dict[str, list[Holder]] = {}
        for rid, (state, lines, held_at) in zip(ids, parts, strict=True):
            if state != b"HELD":
                continue
            for sku, qty in part_lines(lines):
                if sku in wanted:
                    out.setdefault(sku, []).append(Holder(rid, qty, int(held_at or 0)))
        for held in out.values():
            held.sort(key=lambda h: (h.held_at, h.reservation_id))
        return out

    # -- id mappings ------------------------------------------------------------------

    async def mappings_version(self) -> int:
        return int(await self.command(lambda p: p.get(MAPPINGS_VERSION)) or 0)

    async def mapping(self, source: str) -> dict[tuple[IdKind, str], str]:
        """A source's mapping: (kind, its id) -> ours."""
        got = await self.command(lambda p: p.hgetall(Keys.mapping(source)))
        return {mapping_of(k.decode()): v.decode() for k, v in got.items()}

    async def set_mappings(self, changes: Sequence[tuple[str, IdKind, str, str]]) -> None:
        """(source, kind, its id, ours) each: set, or removed where ours is ""; the version
        moves."""

        def build(pipe: Any) -> None:
            for source, kind, theirs, ours in changes:
                name = mapping_field(kind, theirs)
                if ours:
                    pipe.hset(Keys.mapping(source), name, ours)
                else:
                    pipe.hdel(Keys.mapping(source), name)
            pipe.incr(MAPPINGS_VERSION)

        await self.pipeline(build)

    async def set_safety_stock(self, location: str, items: Sequence[tuple[str, int]]) -> int:
        keys = KeyList()
        args: list[Any] = [len(items)]
        for sku, qty in items:
            args += [sku, qty, keys.add(self.keys.stock(location, sku))]
        args.append(Keys.changes(location))
        return int(await self.call("set_safety_stock", keys.keys, args))
