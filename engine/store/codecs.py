"""How values are laid out in Redis, both ways: stock rows, the lines of a reservation (in
its directory, "location\tsku\tqty\n" each, and in a part, "sku\tqty\n" each: the Lua
scripts read the same), locations, event ids; and the typed values the store hands up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine.domain.model import (
    EventOutcome,
    FutureLine,
    IdKind,
    Line,
    Location,
    LocationType,
    StockEvent,
    StockRow,
)
from engine.domain.moves import Move
from engine.domain.rules import ChannelRule, Pool


class PickCapacity(NamedTuple):
    """A hold that takes one of the `limit` orders its location may pick on `day`."""

    limit: int
    day: str  # YYYYMMDD (UTC)
    keep_from: str  # days before this one are forgotten


class ChannelHold(NamedTuple):
    """A hold for a sales channel, with that channel's rule at the location (hold.lua)."""

    channel: str = ""  # '': no channel, no rule
    buffer: int = 0
    share_ppm: int = 1_000_000  # the most of a row's sellable units, in millionths

    @classmethod
    def of(cls, channel: str, rule: ChannelRule) -> ChannelHold:
        return cls(channel, rule.buffer, rule.share_ppm)


class HoldCall(NamedTuple):
    keys: list[str]
    args: list[Any]
    location: str
    expires_at: int
    wakes: bool  # the script sets the location's wake-up itself (only when it holds)


@dataclass(frozen=True, slots=True)
class MoveRecord:
    """A MoveLine under way, as its directory entry records it (engine/usecases/moves.py)."""

    move_id: str
    move: Move  # resolved: the line's qty
    token: str  # the attempt's own name, on every step it takes


@dataclass(frozen=True, slots=True)
class DirEntry:
    fingerprint: str
    lines: tuple[Line, ...]
    saga: str
    owner: str  # the principal that made it ('' on an open server)
    customer: str = ""  # the customer it was held for, if any (per-customer limits)
    generation: int = 0  # moved on by every MoveLine that took effect (field n)
    moving: MoveRecord | None = None  # the MoveLine under way (saga field MOVING:<token>)
    done: Move | None = None  # what the move id asked about moved, if it did (d:<move id>)
    asked: tuple[Line, ...] = ()  # the lines as sent, when bundles made `lines` other (else ())

    @property
    def shown(self) -> tuple[Line, ...]:
        """The lines as the caller asked for them (a bundle as itself, not its components)."""
        return self.asked or self.lines


@dataclass(frozen=True, slots=True)
class PartState:
    location: str
    state: str | None  # None: no part at this location
    expires_at: int
    future: tuple[FutureLine, ...] = ()  # its lines' units waiting for supply (field fl)


PART_STATE_FIELDS = ("s", "x", "fl")


def part_state(location: str, fields: Sequence[bytes | None]) -> PartState:
    """A part as read by HMGET of PART_STATE_FIELDS; its field fl is "sku\tqty\tpromise_ms\n"...
    (hold.lua)."""
    s, x, fl = fields
    future = future_lines(location, fl or b"")
    return PartState(location, s.decode() if s else None, int(x) if x else 0, future)


def future_lines(location: str, fl: bytes) -> tuple[FutureLine, ...]:
    """A part's field fl: "sku\tqty\tpromise_ms\n" a line waiting for supply (hold.lua)."""
    future = []
    for row in fl.decode().splitlines():
        sku, qty, promise_by = row.split("\t")
        future.append(FutureLine(location, sku, int(qty), int(promise_by)))
    return tuple(future)


class Holder(NamedTuple):
    reservation_id: str
    qty: int
    held_at: int  # ms; 0 for a part held before holds recorded it


@dataclass(frozen=True, slots=True)
class Gap:
    """Numbers of a source's sequence at a location that have not arrived."""

    location: str
    source: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class EventsApplied:
    outcomes: list[EventOutcome]
    short_rows: list[tuple[str, int, int]]  # sku, on_hand, reserved
    gaps: list[Gap] = field(default_factory=list)  # open longer than the grace, reported now


def dedupe_id(event: StockEvent) -> str:
    """What makes an event a duplicate at its location: its id, from its source. ("|" is
    no id's character, so two sources' ids never meet.)"""
    return f"{event.source}|{event.event_id}" if event.source else event.event_id


def encode_lines(lines: Iterable[Line]) -> str:
    return "".join(f"{ln.location}\t{ln.sku}\t{ln.qty}\n" for ln in lines)


def encode_part_lines(lines: Iterable[Line]) -> str:
    """A part's lines, as its field `l` holds them (the location is the part's)."""
    return "".join(f"{ln.sku}\t{ln.qty}\n" for ln in lines)


def encode_move(move: Move) -> str:
    return f"{move.location}\t{move.sku}\t{move.qty}\t{move.to}"


def decode_move(text: str) -> Move:
    location, sku, qty, to = text.split("\t")
    return Move(location, sku, int(qty), to)


def decode_lines(text: str) -> tuple[Line, ...]:
    out = []
    for row in text.splitlines():
        location, sku, qty = row.split("\t")
        out.append(Line(location, sku, int(qty)))
    return tuple(out)


def encode_dir_lines(lines: Iterable[Line], asked: Sequence[Line] = ()) -> str:
    """A directory entry's lines (field l): those held, then, when bundles made them other
    than the lines as sent, those, each row marked '=' (no location id holds one)."""
    return encode_lines(lines) + "".join(f"={ln.location}\t{ln.sku}\t{ln.qty}\n" for ln in asked)


def decode_dir_lines(text: str) -> tuple[tuple[Line, ...], tuple[Line, ...]]:
    """(lines held, lines as sent when other: else ()) of encode_dir_lines."""
    held, _, asked = text.partition("=")
    return decode_lines(held), decode_lines(asked.replace("\n=", "\n"))


def available_of(value: bytes | None) -> int:
    """A stored row's available units (StockRow.available), without decoding the rest."""
    if value is None:
        return 0
    on_hand, reserved, safety, _ = value.split(b",", 3)
    return max(0, int(on_hand) - int(reserved) - int(safety))


def parse_row(value: bytes | None) -> StockRow:
    if value is None:
        return StockRow()
    on_hand, reserved, safety, version, as_of = value.split(b",")
    return StockRow(int(on_hand), int(reserved), int(safety), int(version), int(as_of))


@dataclass(frozen=True, slots=True)
class RowNote:
    """What a row's change message says beside the row of what sales channels may take of
    it (write_row, hold_channel and pools_note in lua/_prelude.lua): what some channels hold
    of it now, and its pools, when they are told (None: as they were)."""

    held: dict[str, int]
    pools: tuple[Pool, ...] | None = None


def parse_note(text: bytes) -> RowNote:
    """A note: lines "h\t<channel>\t<units>", "P" (the pools follow, all of them), and
    "p\t<channel>\t<units>\t<fallback>", each after a newline."""
    held: dict[str, int] = {}
    pools: list[Pool] | None = None
    for line in text.decode().split("\n")[1:]:
        kind, _, rest = line.partition("\t")
        if kind == "h":
            channel, units = rest.split("\t")
            held[channel] = int(units)
        elif kind == "P":
            pools = []
        elif kind == "p" and pools is not None:
            channel, units, fallback = rest.split("\t")
            pools.append(Pool(channel, int(units), fallback == "1"))
        else:
            raise ValueError(f"a row's note has {line!r}")
    return RowNote(held, None if pools is None else tuple(pools))


def parse_change(data: bytes) -> tuple[str, StockRow, RowNote | None]:
    """A row's change message: "sku\t<the row as stored>", then its note, if any."""
    sku, rest = data.split(b"\t", 1)
    value, newline, _ = rest.partition(b"\n")
    note = parse_note(rest[len(value) :]) if newline else None
    return sku.decode(), parse_row(value), note


def part_lines(text: bytes | None) -> list[tuple[str, int]]:
    """The (sku, qty) lines of a reservation part's `l` field."""
    out = []
    for row in (text or b"").decode().splitlines():
        sku, qty = row.split("\t")
        out.append((sku, int(qty)))
    return out


def location_dict(loc: Location) -> dict[str, Any]:
    return {
        "id": loc.id,
        "name": loc.name,
        "type": loc.type.value,
        "lat": loc.latitude,
        "lon": loc.longitude,
        "pickup": loc.pickup_enabled,
        "ship": loc.ship_enabled,
        "cap": loc.ship_capacity,
        "prio": loc.priority,
        "active": loc.active,
        "country": loc.country,
        "region": loc.region,
    }


def location_from(d: dict[str, Any]) -> Location:
    return Location(
        id=d["id"],
        name=d["name"],
        type=LocationType(d["type"]),
        latitude=d["lat"],
        longitude=d["lon"],
        pickup_enabled=d["pickup"],
        ship_enabled=d["ship"],
        ship_capacity=d["cap"],
        priority=d["prio"],
        active=d["active"],
        country=d.get("country", ""),  # a location stored before countries has none
        region=d.get("region", ""),
    )


# A mapping's field, "<l|i>:<their id>" (only mappings live under {omnistock}:map:).
_KIND_TAGS = {IdKind.LOCATION: "l", IdKind.ITEM: "i"}
_TAG_KINDS = {tag: kind for kind, tag in _KIND_TAGS.items()}


def mapping_field(kind: IdKind, theirs: str) -> str:
    return f"{_KIND_TAGS[kind]}:{theirs}"


def mapping_of(field: str) -> tuple[IdKind, str]:
    tag, theirs = field.split(":", 1)
    return _TAG_KINDS[tag], theirs
