"""Future supply and promises by date: incoming units (purchase orders, ASNs, transfers in
transit) per location and sku, each with an expected time, checked field by field; and the
promise of a row, the units that can be held now and by each time supply is due.

The promise of a row by time t is the least, over every time t' >= t, of what on-hand less
safety stock and holds, plus the supply due by t', leaves once the future holds due by t'
are covered (none yet: they come with `promise_by` holds, and fit this formula unchanged):

    promise(t) = max(0, min over t' >= t of (on_hand - reserved - safety + S(t') - F(t')))

S(t') is the supply due by t', F(t') the future holds promised by t'. With F = 0 the min
is reached at t itself, as S only grows. A row short now (holds above on-hand) takes its
shortfall from the first supply due.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine.domain.errors import InvalidArgument
from engine.domain.model import StockRow, check_id, check_qty, check_size

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


@dataclass(frozen=True, slots=True)
class Supply:
    supply_id: str
    location: str
    sku: str
    qty: int
    expected_at: int  # ms since the epoch
    kind: SupplyKind = SupplyKind.PURCHASE_ORDER
    cancel: bool = False


@dataclass(frozen=True, slots=True)
class Incoming:
    """One supply of a row as stored: its units and when they are due."""

    qty: int
    expected_at: int
    kind: SupplyKind


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
    now: int,
    horizon_end: int,
) -> Promise:
    """The promise of one row (module docstring), supply due before now counted at now and
    supply due after horizon_end left out."""
    due: dict[int, int] = {}
    overdue = 0
    for s in incoming:
        if s.expected_at > horizon_end:
            continue
        at = max(s.expected_at, now)
        due[at] = due.get(at, 0) + s.qty
        if s.expected_at < now:
            overdue += s.qty
    base = row.on_hand - row.reserved - row.safety_stock
    steps, total = [], 0
    for at in sorted(due):
        total += due[at]
        steps.append(PromiseStep(at, max(0, base + total)))
    return Promise(location, sku, max(0, base), tuple(steps), total, overdue)


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
    )


def units_by(p: Promise, at: int) -> int:
    """What a promise holds out by time `at` (its available units now before any step)."""
    units = p.available_now
    for step in p.steps:
        if step.at > at:
            break
        units = step.units
    return units
