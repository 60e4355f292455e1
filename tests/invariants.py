"""The invariants every suite checks on what the store holds, written once.

I1  a row's `reserved` equals the sum of the HELD reservation lines on it, read from the
    reservation parts themselves (whatever the directory says);
    and what each sales channel is counted to hold of a row, the sum of its HELD lines there;
I9  holds against future supply: each row's ({L}:uf:<sku>) are exactly the units its HELD
    parts say wait for supply (field fl) with a promise date, the supply due by each date
    covers the future holds promised by then, and the row's span totals add them up by the
    spans of its supply (`future_problems`);
I2  a reservation took effect at all of its locations or at none: it is HELD at all of them
    or none, COMMITTED at all of them or none (`all_or_nothing_problems`); and, once made, it
    has a part at each of its locations, all in one state (`in_one_state_problems`).

Read through the store's own seam: key names come from its `Keys`, a part's lines are
decoded by its `part_lines` (engine/store/codecs.py), the rows are read by
`Storage.rows_at`. Only the names of a part's fields (s state, x expiry, l lines, as
engine/store/keys.py documents them) are spelled here: the store has no reader that hands
up a part's lines.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.domain.model import FutureLine, StockRow
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.codecs import part_lines, part_state
from engine.store.keys import SAGAS, Keys
from engine.store.storage import Storage
from engine.store.supply import parse_future, parse_supply

from .grpc_helpers import Stubs

HELD = "HELD"
COMMITTED = "COMMITTED"
Row = tuple[str, str]  # (location, sku)
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


@dataclass(frozen=True)
class Part:
    """A reservation's part at one location."""

    state: str
    expires_at: int
    lines: tuple[tuple[str, int], ...]  # (sku, qty)
    channel: str = ""  # the sales channel it was held for
    future: tuple[FutureLine, ...] = ()  # of its lines' units, those waiting for supply

    @property
    def on_hand(self) -> list[tuple[str, int]]:
        """(sku, qty) of its lines held on hand: less any units waiting for supply."""
        waiting = {f.sku: f.qty for f in self.future}
        return [(sku, qty - waiting.get(sku, 0)) for sku, qty in self.lines]


@dataclass(frozen=True)
class Holds:
    """The stock rows and the reservation parts at some locations, as the store holds them."""

    rows: dict[Row, StockRow]  # every stock row at those locations
    parts: dict[str, dict[str, Part]]  # reservation id -> location -> its part there
    by_channel: dict[tuple[Row, str], int]  # (row, channel) -> units counted held ({L}:h)

    @property
    def states(self) -> dict[str, dict[str, str]]:
        """reservation id -> location -> the state of its part there."""
        return {rid: {loc: p.state for loc, p in by.items()} for rid, by in self.parts.items()}

    def state(self, reservation_id: str, location: str) -> str | None:
        """The state of the reservation's part at the location; None: it has none there."""
        part = self.parts.get(reservation_id, {}).get(location)
        return part.state if part is not None else None

    def held_ids(self, location: str) -> set[str]:
        return {rid for rid in self.parts if self.state(rid, location) == HELD}

    @property
    def held_by_channel(self) -> Counter[tuple[Row, str]]:
        """The units the HELD parts of each channel hold on each row."""
        units: Counter[tuple[Row, str]] = Counter()
        for by_location in self.parts.values():
            for location, part in by_location.items():
                if part.state == HELD and part.channel:
                    for sku, qty in part.on_hand:
                        units[((location, sku), part.channel)] += qty
        return units

    @property
    def held(self) -> Counter[Row]:
        """The units the HELD parts hold on each row: I1's right-hand side."""
        units: Counter[Row] = Counter()
        for by_location in self.parts.values():
            for location, part in by_location.items():
                if part.state == HELD:
                    for sku, qty in part.on_hand:
                        units[(location, sku)] += qty
        return units


async def part_ids(storage: Storage, location: str) -> list[str]:
    """The id of every reservation with a part at `location`, in any state, from the names
    of the part keys (`Keys.part`, matched with the location and any id)."""
    marker = "\0"
    prefix, suffix = Keys.part(location, marker).split(marker)
    pattern = prefix.translate(_GLOB_SPECIAL) + "*" + suffix.translate(_GLOB_SPECIAL)
    names = [key.decode() async for key in storage.redis.scan_iter(match=pattern, count=1000)]
    return sorted(name[len(prefix) : len(name) - len(suffix)] for name in names)


async def read_holds(
    storage: Storage, locations: Iterable[str], ids: Iterable[str] | None = None
) -> Holds:
    """What the store holds at `locations`: every row, and the part there of each
    reservation (of `ids`, or of every id that has a part there), read in one pipeline."""
    where = sorted(set(locations))
    rows: dict[Row, StockRow] = {}
    places: list[tuple[str, str]] = []  # (reservation id, location)
    by_channel: dict[tuple[Row, str], int] = {}
    for location in where:
        rows.update({(location, sku): r for sku, r in (await storage.rows_at(location)).items()})
        counted = await storage.command(lambda p, at=location: p.hgetall(Keys.channel_holds(at)))
        for field, units in counted.items():
            sku, channel = field.decode().split("\t")
            by_channel[((location, sku), channel)] = int(units)
        if ids is None:
            places += [(rid, location) for rid in await part_ids(storage, location)]
    if ids is not None:
        places = [(rid, location) for rid in sorted(set(ids)) for location in where]

    def build(pipe: Any) -> None:
        for rid, location in places:
            pipe.hmget(Keys.part(location, rid), ["s", "x", "l", "ch", "fl"])

    got = await storage.pipeline(build) if places else []
    parts: dict[str, dict[str, Part]] = defaultdict(dict)
    for (rid, location), (state, x, lines, channel, fl) in zip(places, got, strict=True):
        if state is not None:
            parts[rid][location] = Part(
                state.decode(),
                int(x or 0),
                tuple(part_lines(lines)),
                (channel or b"").decode(),
                part_state(location, (state, x, fl)).future,
            )
    return Holds(rows, dict(parts), by_channel)


# -- I1 ------------------------------------------------------------------------------------


def reserved_problems(holds: Holds, served: Mapping[Row, int] | None = None) -> list[str]:
    """I1 on every row at the locations read, as stored; and, given `served` (row ->
    reserved, as a reader was answered), on those rows as served."""
    out, held = [], holds.held
    for how, reserved in (
        ("stored", {row: stock.reserved for row, stock in holds.rows.items()}),
        ("served", served or {}),
    ):
        out += [
            f"I1 broken at {row} ({how}): reserved {n}, HELD lines sum to {held[row]}"
            for row, n in sorted(reserved.items())
            if n != held[row]
        ]
    stray = sorted(set(held) - set(holds.rows))
    if stray:
        out.append(f"HELD lines on no row: {stray}")
    return out + channel_problems(holds)


def channel_problems(holds: Holds) -> list[str]:
    """What each channel is counted to hold of each row is what its HELD parts hold there
    (a channel's rules are checked against that count); no count is kept of nothing."""
    held, out = holds.held_by_channel, []
    for key in sorted(set(holds.by_channel) | set(held)):
        counted = holds.by_channel.get(key)
        if counted is not None and counted <= 0:
            out.append(f"a channel count of {counted} kept at {key}")
        elif (counted or 0) != held[key]:
            out.append(f"channel count wrong at {key}: {counted}, HELD lines sum to {held[key]}")
    return out


def assert_reserved_is_held(holds: Holds, served: Mapping[Row, int] | None = None) -> None:
    problems = reserved_problems(holds, served)
    assert not problems, "\n".join(problems)


# -- I2 ------------------------------------------------------------------------------------


def all_or_nothing_problems(holds: Holds, reservations: Mapping[str, Iterable[str]]) -> list[str]:
    """I2 for each reservation (id -> its locations), whatever became of it: HELD at all of
    its locations or at none, COMMITTED at all or none. (A saga rolled back leaves parts
    RELEASED at some locations and none at others: that is nothing, everywhere.)"""
    out = []
    for rid, locations in sorted(reservations.items()):
        states = {loc: holds.state(rid, loc) for loc in sorted(set(locations))}
        for state in (HELD, COMMITTED):
            at = [loc for loc, s in states.items() if s == state]
            if at and len(at) != len(states):
                out.append(f"I2 broken: {rid} is {state} at {at} only; its parts: {states}")
    return out


def in_one_state_problems(holds: Holds, reservations: Mapping[str, Iterable[str]]) -> list[str]:
    """I2 for each reservation that was made (id -> its locations): a part at each of its
    locations, every one in the same state."""
    out = []
    for rid, locations in sorted(reservations.items()):
        states = {loc: holds.state(rid, loc) for loc in sorted(set(locations))}
        if None in states.values() or len(set(states.values())) != 1:
            out.append(f"I2 broken: the parts of {rid} are {states}")
    return out


def assert_all_or_nothing(holds: Holds, reservations: Mapping[str, Iterable[str]]) -> None:
    problems = all_or_nothing_problems(holds, reservations)
    assert not problems, "\n".join(problems)


# -- as served ------------------------------------------------------------------------------


async def served_levels(
    stubs: Stubs, locations: Sequence[str], skus: Sequence[str]
) -> dict[Row, pb.StockLevel]:
    resp = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=list(skus), location_ids=list(locations))
    )
    return {(lv.location_id, lv.sku): lv for lv in resp.levels}


def arithmetic_problems(levels: Mapping[Row, pb.StockLevel]) -> list[str]:
    """available = max(0, on_hand - reserved - safety_stock), on every level served."""
    return [
        f"available wrong at {row}: {level}"
        for row, level in sorted(levels.items())
        if level.available != max(0, level.on_hand - level.reserved - level.safety_stock)
    ]


async def assert_served_rows_match_holds(
    stubs: Stubs, storage: Storage, locations: Sequence[str], skus: Sequence[str]
) -> dict[Row, pb.StockLevel]:
    """I1 on every row at `locations`, as stored and, for locations x skus, as served; and
    the availability arithmetic as served. Returns the levels served."""
    levels = await served_levels(stubs, locations, skus)
    holds = await read_holds(storage, locations)
    served = {row: level.reserved for row, level in levels.items()}
    problems = reserved_problems(holds, served) + arithmetic_problems(levels)
    assert not problems, "\n".join(problems)
    return levels


async def open_sagas(redis: Any) -> set[str]:
    """Every reservation id the sagas index holds (every shard of it)."""
    return {member.decode() for key in SAGAS for member in await redis.zrange(key, 0, -1)}


async def no_open_sagas(redis: Any) -> bool:
    return not await open_sagas(redis)


# -- I9 ------------------------------------------------------------------------------------


async def future_problems(storage: Storage, holds: Holds) -> list[str]:
    """I9 at the locations `holds` read: each row's future holds ({L}:uf:<sku>) are those its
    HELD parts name (a broken one, promise 0, is in none); at every promise date T the supply
    due by T covers the future holds promised by T (Hall's condition, date by date); and the
    row's span totals (field '=') are its holds summed by the span of its supply each is in."""
    out = []
    parts = {loc for by in holds.parts.values() for loc in by}
    for location in sorted({loc for loc, _ in holds.rows} | parts):
        kept, totals = await _future_holds(storage, location)
        named = [
            (f.sku, rid, f.qty, f.promise_by)
            for rid, by in holds.parts.items()
            for loc, part in by.items()
            if loc == location and part.state == HELD
            for f in part.future
            if f.promise_by
        ]
        if sorted(kept) != sorted(named):
            out.append(f"{location}: future holds {sorted(kept)}, parts say {sorted(named)}")
        due = await storage.command(lambda p, at=location: p.hgetall(Keys.supply(at)))
        for sku in {s for s, _, _, _ in kept} | set(totals):
            supply = [(s.qty, s.expected_at) for s in parse_supply(due.get(sku.encode()))]
            mine = [(q, by) for s, _, q, by in kept if s == sku]
            out += [f"{location} {sku}: {p}" for p in _row_problems(mine, supply, totals.get(sku))]
    return out


async def _future_holds(
    storage: Storage, location: str
) -> tuple[list[tuple[str, str, int, int]], dict[str, dict[int, int]]]:
    """The location's future holds, (sku, id, units, promise) each, and each row's span
    totals (start -> units), as stored."""
    prefix = Keys.future_holds(location, "")
    pattern = prefix.translate(_GLOB_SPECIAL) + "*"
    names = [key.decode() async for key in storage.redis.scan_iter(match=pattern)]
    kept, totals = [], {}
    for name in names:
        sku = name[len(prefix) :]
        for field, value in (await storage.command(lambda p, key=name: p.hgetall(key))).items():
            if field == b"=":
                totals[sku] = {by: units for units, by in parse_future(value)}
            else:
                qty, by, _ = value.decode().split("\t")
                kept.append((sku, field.decode(), int(qty), int(by)))
    return kept, totals


def _row_problems(
    holds: list[tuple[int, int]], supply: list[tuple[int, int]], totals: dict[int, int] | None
) -> list[str]:
    """One row's: holds (units, promise) and supply (units, expected)."""
    out = []
    for _, date in holds:
        promised = sum(q for q, by in holds if by <= date)
        covered = sum(q for q, at in supply if at <= date)
        if promised > covered:
            out.append(f"{promised} promised by {date}, {covered} due")
    starts = sorted({0} | {at for _, at in supply})
    spans: dict[int, int] = {}
    for q, by in holds:
        start = max(d for d in starts if d <= by)
        spans[start] = spans.get(start, 0) + q
    if (totals or {}) != spans:
        out.append(f"span totals {totals}, its holds make {spans}")
    return out
