"""Future supply and promises by date: incoming units (purchase orders, ASNs, transfers in
transit) per location and sku, each with an expected time, checked field by field; and the
promise of a row, the units that can be held now and by each time supply is due.

The promise of a row by time t is the least, over every time t' >= t, of what on-hand less
safety stock and holds, plus the supply due by t', leaves once the future holds due by t'
are covered:

    promise(t) = max(0, min over t' >= t of (on_hand - reserved - safety + S(t') - F(t')))

S(t') is the supply due by t', F(t') the future holds promised by t' (a Reserve line's
`promise_by`: what on hand could not cover of it, held against supply). Future holds are
covered by supply alone (I9: F(t') <= S(t') at every t'), never by on-hand units, so an
ordinary hold never breaks one; a line with a promise date takes what is available on hand
and the rest from supply, so a line of promise(t) units by t can be held. With F = 0 the
min is reached at t itself, as S only grows. A row short now (holds above on-hand) takes
its shortfall from the first supply due.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass

from engine.domain.errors import InvalidArgument
from engine.domain.model import Line, StockRow, check_id, check_qty, check_size

DAY_MS = 24 * 3600 * 1000
MAX_SUPPLIES = 1000  # supplies one UpsertSupply may set
MAX_SUPPLY_PER_ROW = 200  # open supplies of one (location, sku): each is read with the row
PAST_MS = DAY_MS  # how far in the past an expected time may be (a date-only "today")
AHEAD_MS = 2 * 366 * DAY_MS  # how far ahead
DEFAULT_HORIZON_DAYS = 30
MAX_HORIZON_DAYS = 365
MAX_PROMISE_SKUS = 1000
MAX_PROMISE_ROWS = 20_000  # skus x locations one GetPromise may read


class SupplyKind(enum.Enum):
    PURCHASE_ORDER = "P"
    ASN = "A"
    TRANSFER = "T"


class SupplyOutcome(enum.Enum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    UNCHANGED = "UNCHANGED"
    CANCELLED = "CANCELLED"
    RECEIVED = "RECEIVED"


@dataclass(frozen=True, slots=True)
class Supply:
    supply_id: str
    location: str
    sku: str
    qty: int
    expected_at: int  # ms since the epoch
    kind: SupplyKind = SupplyKind.PURCHASE_ORDER
    cancel: bool = False
    received: bool = False  # qty units came: they land on hand (expected_at ignored)


@dataclass(frozen=True, slots=True)
class Incoming:
    """One supply of a row as stored: its units and when they are due."""

    qty: int
    expected_at: int
    kind: SupplyKind


@dataclass(frozen=True, slots=True)
class BrokenPromise:
    """A reservation's units that the supply at its location no longer covers by their
    promise date (the supply was delayed, cut or cancelled): they hold nothing now."""

    reservation_id: str
    location: str
    sku: str
    qty: int
    promise_by: int


@dataclass(frozen=True, slots=True)
class PromiseStep:
    at: int
    units: int


@dataclass(frozen=True, slots=True)
class Promise:
    location: str  # "" for a network total
    sku: str
    available_now: int
    steps: tuple[PromiseStep, ...]
    incoming: int
    overdue: int
    future_held: int = 0


def check_expected(expected_at: int, now: int, field_name: str) -> int:
    if expected_at <= 0:
        raise InvalidArgument(field_name, "must be set (ms since the epoch)")
    if expected_at < now - PAST_MS:
        raise InvalidArgument(
            field_name,
            f"more than a day in the past ({expected_at} < {now - PAST_MS}): a late supply "
            "gets a new date, a received one is cancelled",
        )
    if expected_at > now + AHEAD_MS:
        raise InvalidArgument(field_name, f"more than two years ahead ({expected_at})")
    return expected_at


def check_supply(supply: Supply, now: int, field_name: str) -> Supply:
    check_id(supply.supply_id, f"{field_name}.supply_id")
    check_id(supply.location, f"{field_name}.location_id")
    if supply.cancel and supply.received:
        raise InvalidArgument(f"{field_name}.received", "a supply is cancelled or received")
    if supply.received:
        check_id(supply.sku, f"{field_name}.sku")
        check_qty(supply.qty, f"{field_name}.qty")
        return supply
    if supply.cancel:
        if supply.sku:
            check_id(supply.sku, f"{field_name}.sku")
        return supply
    check_id(supply.sku, f"{field_name}.sku")
    check_qty(supply.qty, f"{field_name}.qty")
    check_expected(supply.expected_at, now, f"{field_name}.expected_at")
    return supply


def check_supplies(supplies: Sequence[Supply], now: int) -> None:
    if not supplies:
        raise InvalidArgument("supplies", "at least one supply is required")
    check_size(len(supplies), "supplies", MAX_SUPPLIES)
    seen: dict[tuple[str, str], int] = {}
    for i, supply in enumerate(supplies):
        check_supply(supply, now, f"supplies[{i}]")
        key = (supply.location, supply.supply_id)
        if key in seen:
            raise InvalidArgument(
                f"supplies[{i}].supply_id", f"already given at supplies[{seen[key]}]"
            )
        seen[key] = i


def check_promises(
    lines: Sequence[Line], now: int, bundles: Container[str], channel: str = ""
) -> int:
    """The latest promise date of a Reserve's lines (0: none), each checked by field: ahead
    of now and at most two years ahead. A reservation with one holds at one location, for no
    sales channel (its units held on receipt would not be held to the channel's rules), and
    holds no bundle (its units wait for supply as the lines say: hold.lua)."""
    latest = 0
    for i, ln in enumerate(lines):
        if not ln.promise_by:
            continue
        name = f"lines[{i}].promise_by"
        if ln.promise_by <= now:
            raise InvalidArgument(name, f"must be ahead of now ({ln.promise_by} <= {now})")
        if ln.promise_by > now + AHEAD_MS:
            raise InvalidArgument(name, f"more than two years ahead ({ln.promise_by})")
        latest = max(latest, ln.promise_by)
    if not latest:
        return 0
    if channel:
        raise InvalidArgument("channel", "a reservation with a promise date holds for no channel")
    if len({ln.location for ln in lines}) > 1:
        raise InvalidArgument(
            "lines[].promise_by", "a reservation with a promise date holds at one location"
        )
    for i, ln in enumerate(lines):
        if ln.sku in bundles:
            raise InvalidArgument(
                f"lines[{i}].sku",
                f"{ln.sku!r} is a bundle: a reservation with a promise date holds no bundle",
            )
    return latest


def waiting_until(lines: Iterable[Line], now: int, ttl_ms: int) -> int:
    """When a part of these lines expires if some of its units wait for supply: a ttl after
    its latest promise date (a ttl after now with none)."""
    return (max((ln.promise_by for ln in lines), default=0) or now) + ttl_ms


def check_horizon(days: int) -> int:
    """The horizon in days: 0 for the default."""
    if days == 0:
        return DEFAULT_HORIZON_DAYS
    if not 1 <= days <= MAX_HORIZON_DAYS:
        raise InvalidArgument("horizon_days", f"must be within [1, {MAX_HORIZON_DAYS}], got {days}")
    return days


def promise(
    location: str,
    sku: str,
    row: StockRow,
    incoming: Iterable[Incoming],
    future: Iterable[tuple[int, int]],
    now: int,
    horizon_end: int,
) -> Promise:
    """The promise of one row (module docstring): a step at each time supply is due up to
    horizon_end (supply due before now counted at now). future: (units, by) the row's future
    holds promise, each by its date or all those of a span of the row's supply by the span's
    start (the same min: within a span, supply is flat); all of them, and all its supply,
    count in the min."""
    change: dict[int, int] = {}  # time -> what S - F gains then
    due: dict[int, int] = {}
    overdue = incoming_total = 0
    for s in incoming:
        at = max(s.expected_at, now)
        change[at] = change.get(at, 0) + s.qty
        if at <= horizon_end:
            due[at] = due.get(at, 0) + s.qty
            incoming_total += s.qty
            overdue += s.qty if s.expected_at < now else 0
    held = 0
    for qty, by in future:
        at = max(by, now)  # as supply overdue
        change[at] = change.get(at, 0) - qty
        held += qty
    base = row.on_hand - row.reserved - row.safety_stock
    value, values = base, []  # base + S(t) - F(t) at each time of change
    for at in sorted(change):
        value += change[at]
        values.append((at, value))
    least, suffix = value, {}  # the least value at each time of change and after
    for at, v in reversed(values):
        least = min(least, v)
        suffix[at] = least
    steps = tuple(PromiseStep(at, max(0, suffix[at])) for at in sorted(due))
    return Promise(location, sku, max(0, base), steps, incoming_total, overdue, held)


def network_total(sku: str, promises: Sequence[Promise]) -> Promise:
    """One sku's promises at many locations, summed: at each time, what each location
    promises by then."""
    times = sorted({step.at for p in promises for step in p.steps})
    steps = tuple(PromiseStep(at, sum(units_by(p, at) for p in promises)) for at in times)
    return Promise(
        "",
        sku,
        sum(p.available_now for p in promises),
        steps,
        sum(p.incoming for p in promises),
        sum(p.overdue for p in promises),
        sum(p.future_held for p in promises),
    )


def units_by(p: Promise, at: int) -> int:
    """What a promise holds out by time `at` (its available units now before any step)."""
    units = p.available_now
    for step in p.steps:
        if step.at > at:
            break
        units = step.units
    return units
