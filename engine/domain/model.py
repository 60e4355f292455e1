"""The business of stock, in its own words: locations, stock rows, lines, reservations,
stock events, and the rules for checking them. Pure: no Redis, no gRPC.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from engine.domain.errors import InvalidArgument
from engine.domain.places import check_country
from engine.domain.states import StockState

MAX_ID_LENGTH = 128
MAX_LINES = 200
MAX_QTY = 1_000_000_000
MAX_TTL_SECONDS = 7 * 24 * 3600
MAX_ROWS = 20_000  # stock rows one call may read (GetAvailability, a watch's opening,
# Allocate's and FindNearby's candidates x lines)
MAX_NAME_LENGTH = 200
# The most of each repeated field one call may carry, checked before any other work.
MAX_SKUS = 1000
MAX_LOCATION_IDS = 1000
MAX_TYPES = 8
MAX_EVENTS = 5000
MAX_SEQUENCE = 2**53 - 1  # exact in the scripts' numbers (Lua's are doubles)
MAX_LOCATIONS = 10_000  # UpsertLocations
MAX_SAFETY_ENTRIES = 10_000
MAX_MAPPINGS = 10_000
# Ids travel inside Redis key names; braces would break the `{location}` hash tag and
# whitespace or separators would make logs and encodings ambiguous. Matched in full
# (fullmatch): with `$`, "S1\n" would pass, and a newline breaks every line format.
_ID = re.compile(r"[A-Za-z0-9._:/@+-]+")
# A list of ids, each ended by a newline (which no id holds), matched at once: a listing's
# 50 skus in one call of the matcher, not 50 (check_ids).
_IDS = re.compile(rf"(?:[A-Za-z0-9._:/@+-]{{1,{MAX_ID_LENGTH}}}\n)*")


class LocationType(enum.StrEnum):
    STORE = "store"
    DC = "dc"
    DARK_STORE = "dark_store"


class ReservationState(enum.StrEnum):
    HELD = "HELD"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


class EventKind(enum.StrEnum):
    COUNT = "COUNT"
    DELTA = "DELTA"
    MOVE = "MOVE"  # qty units from `state` to `to_state`, at one location, at once


class EventOutcome(enum.StrEnum):
    APPLIED = "APPLIED"
    DUPLICATE = "DUPLICATE"  # this event id was applied before, within the window
    STALE = "STALE"  # older than the row's last count: the count already includes it
    ECHO = "ECHO"  # the store's report of a sale the engine already committed (I6)
    REJECTED = "REJECTED"  # can never be applied (bad field, unknown location): not applied


class IdKind(enum.StrEnum):
    """The two kinds of id a platform's mapping translates into ours."""

    LOCATION = "location"
    ITEM = "item"


@dataclass(frozen=True, slots=True)
class Location:
    id: str
    name: str
    type: LocationType
    latitude: float
    longitude: float
    pickup_enabled: bool = True
    ship_enabled: bool = True
    ship_capacity: int | None = None  # orders per day; None = unlimited
    priority: int = 0
    active: bool = True
    country: str = ""  # ISO 3166-1 alpha-2 ("GB"); "": not said
    region: str = ""  # a tag of the retailer's own (an id); "": none


class StockRow(NamedTuple):
    """A tuple: the read cache keeps rows as plain tuples of these fields, which the garbage
    collector stops tracking, and makes a StockRow of one at the cost of a tuple
    (engine/store/rowcache.py)."""

    on_hand: int = 0
    reserved: int = 0
    safety_stock: int = 0
    version: int = 0
    as_of: int = 0  # source time (ms) of the last absolute count applied

    @property
    def available(self) -> int:
        return max(0, self.on_hand - self.reserved - self.safety_stock)


@dataclass(frozen=True, slots=True, order=True)
class Line:
    location: str
    sku: str
    qty: int
    # A Reserve line's promise date (ms since the epoch; 0: none): what on hand cannot
    # cover may be held against supply due by then (engine/domain/supply.py).
    promise_by: int = 0


@dataclass(frozen=True, slots=True)
class FutureLine:
    """A reservation line's units held against future supply, not on hand: qty of them, due
    by promise_by; promise_by 0 when the supply no longer covers them (a broken promise)."""

    location: str
    sku: str
    qty: int
    promise_by: int


@dataclass(frozen=True, slots=True)
class BasketLine:
    """A sku and how many of it a basket (FindNearby) or an order (Allocate) wants; where
    from is not said yet (a Line says where)."""

    sku: str
    qty: int


@dataclass(frozen=True, slots=True)
class NearbyHit:
    """A location near the point asked about, and what it has of each line of the basket."""

    location: Location
    distance_km: float
    available: tuple[int, ...]  # per basket line, in the query's order

    def filled(self, lines: tuple[BasketLine, ...]) -> tuple[int, int]:
        """(lines filled, units filled) of this basket here."""
        pairs = list(zip(lines, self.available, strict=True))
        return (
            sum(1 for ln, a in pairs if a >= ln.qty),
            sum(min(ln.qty, a) for ln, a in pairs),
        )


@dataclass(frozen=True, slots=True)
class Shortfall:
    location: str
    sku: str
    requested: int
    available: int

    @property
    def missing(self) -> int:
        return self.requested - self.available


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    lines: tuple[Line, ...]
    state: ReservationState
    expires_at: int  # ms since the epoch; meaningful while HELD
    future: tuple[FutureLine, ...] = ()  # its lines' units waiting for supply


@dataclass(frozen=True, slots=True)
class HoldResult:
    """The answer to a hold: the reservation, or every line that fell short (and every
    location whose daily pick capacity was used up, for a hold that takes capacity)."""

    reservation: Reservation | None
    shortfalls: tuple[Shortfall, ...] = ()
    full: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Every line is held (or, for a retried id, was held and then committed)."""
        return self.reservation is not None and self.reservation.state in (
            ReservationState.HELD,
            ReservationState.COMMITTED,
        )


@dataclass(frozen=True, slots=True)
class StockEvent:
    event_id: str
    location: str
    sku: str
    kind: EventKind
    qty: int  # absolute on_hand for COUNT, signed change for DELTA
    source_time: int  # ms since the epoch, when it happened at the source
    reservation_id: str = ""
    source: str = ""
    sequence: int = 0  # its number in its source's sequence at its location (0: not numbered)
    state: StockState = StockState.SELLABLE  # of the units counted or changed; a MOVE's from
    to_state: StockState = StockState.SELLABLE  # a MOVE's: the state its units enter


@dataclass(frozen=True, slots=True)
class Availability:
    location: str
    sku: str
    row: StockRow
    offered: int | None = None  # what the asking sales channel may hold (None: no channel)

    @property
    def available(self) -> int:
        return self.row.available if self.offered is None else self.offered


def check_id(value: str, field_name: str) -> str:
    if not value:
        raise InvalidArgument(field_name, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field_name, f"longer than {MAX_ID_LENGTH} characters")
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            field_name, "may hold only letters, digits and . _ : / @ + - (no spaces or braces)"
        )
    return value


def check_ids(values: Sequence[str], field_name: str) -> None:
    """check_id of each of `values`, the one at fault named as `field_name[i]`."""
    joined = "\n".join(values) + "\n" if values else ""
    # a newline inside a value would split it into two that pass: counted out
    if _IDS.fullmatch(joined) and joined.count("\n") == len(values):
        return
    for i, value in enumerate(values):
        check_id(value, f"{field_name}[{i}]")


def check_size(count: int, field_name: str, most: int) -> None:
    """A repeated field's size, checked before anything else is done with it."""
    if count > most:
        raise InvalidArgument(field_name, f"at most {most} per call, got {count}")


def check_name(value: str, field_name: str) -> str:
    """A display name: free text, but bounded and printable (it reaches logs and JSON)."""
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(field_name, f"longer than {MAX_NAME_LENGTH} characters")
    if not value.isprintable():
        raise InvalidArgument(field_name, "may not hold control characters")
    return value


def check_qty(value: int, field_name: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if value < low:
        raise InvalidArgument(field_name, f"must be at least {low}, got {value}")
    if value > MAX_QTY:
        raise InvalidArgument(field_name, f"must be at most {MAX_QTY}, got {value}")
    return value


def check_coordinates(latitude: float, longitude: float, field_name: str = "") -> None:
    """field_name: the message holding them ('' for the request itself)."""
    prefix = f"{field_name}." if field_name else ""
    if not (math.isfinite(latitude) and -90.0 <= latitude <= 90.0):
        raise InvalidArgument(f"{prefix}latitude", f"must be within [-90, 90], got {latitude}")
    if not (math.isfinite(longitude) and -180.0 <= longitude <= 180.0):
        raise InvalidArgument(f"{prefix}longitude", f"must be within [-180, 180], got {longitude}")


def check_ttl(ttl_seconds: float, field_name: str) -> None:
    if not math.isfinite(ttl_seconds) or ttl_seconds <= 0:
        raise InvalidArgument(
            field_name, f"must be a positive number of seconds, got {ttl_seconds}"
        )
    if ttl_seconds > MAX_TTL_SECONDS:
        raise InvalidArgument(field_name, f"must be at most {MAX_TTL_SECONDS} seconds")


def ttl_ms(ttl_seconds: float) -> int:
    """A checked ttl in whole milliseconds, at least one: truncated to 0, a positive ttl
    would make a hold that is answered HELD yet already expired (its expiry is now)."""
    return max(1, int(ttl_seconds * 1000))


def check_location(location: Location, field_name: str) -> Location:
    check_id(location.id, f"{field_name}.id")
    check_name(location.name, f"{field_name}.name")
    check_coordinates(location.latitude, location.longitude, field_name)
    if location.ship_capacity is not None and location.ship_capacity < 0:
        raise InvalidArgument(f"{field_name}.ship_capacity", "must not be negative")
    if location.country:
        check_country(location.country, f"{field_name}.country")
    if location.region:
        check_id(location.region, f"{field_name}.region")
    return location


def canonical_lines(lines: Sequence[Line], field_name: str = "lines") -> tuple[Line, ...]:
    """Checks every line and merges repeats of one (location, sku): a cart may list an
    item twice, a reservation holds it once. The result is sorted, so it fingerprints."""
    if not lines:
        raise InvalidArgument(field_name, "at least one line is required")
    if len(lines) > MAX_LINES:
        raise InvalidArgument(field_name, f"at most {MAX_LINES} lines, got {len(lines)}")
    merged: dict[tuple[str, str], int] = {}
    promised: dict[tuple[str, str], int] = {}
    for i, line in enumerate(lines):
        check_id(line.location, f"{field_name}[{i}].location_id")
        check_id(line.sku, f"{field_name}[{i}].sku")
        check_qty(line.qty, f"{field_name}[{i}].qty")
        key = (line.location, line.sku)
        merged[key] = check_qty(merged.get(key, 0) + line.qty, f"{field_name}[{i}].qty")
        if promised.setdefault(key, line.promise_by) != line.promise_by:
            raise InvalidArgument(
                f"{field_name}[{i}].promise_by", "another line of this sku there has another"
            )
    return tuple(
        Line(loc, sku, qty, promised[loc, sku]) for (loc, sku), qty in sorted(merged.items())
    )


def check_sku_lines(lines: Sequence[tuple[str, int]], what: str) -> None:
    """(sku, qty) lines of a basket or an order: 1 to MAX_LINES of them, each sku once."""
    if not lines:
        raise InvalidArgument("lines", "at least one line (a sku and a qty) is required")
    if len(lines) > MAX_LINES:
        raise InvalidArgument("lines", f"at most {MAX_LINES} lines, got {len(lines)}")
    seen: set[str] = set()
    for i, (sku, qty) in enumerate(lines):
        check_id(sku, f"lines[{i}].sku")
        check_qty(qty, f"lines[{i}].qty")
        if sku in seen:
            raise InvalidArgument(f"lines[{i}].sku", f"{sku!r} is already in the {what}")
        seen.add(sku)


def fingerprint(lines: Iterable[Line], owner: str = "") -> str:
    """Identifies a reservation's content: the same id must always mean the same lines,
    held by the same principal (another principal's same id and lines is another call)."""
    text = "\n".join(
        f"{ln.location}\t{ln.sku}\t{ln.qty}" + (f"\t{ln.promise_by}" if ln.promise_by else "")
        for ln in lines
    )
    if owner:
        text = f"{owner}\n{text}"
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def by_location(lines: Iterable[Line]) -> dict[str, list[Line]]:
    groups: dict[str, list[Line]] = {}
    for line in lines:
        groups.setdefault(line.location, []).append(line)
    return groups
