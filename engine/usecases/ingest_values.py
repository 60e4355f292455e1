"""What ingest answers and takes (engine/usecases/ingest.py): an event's ack, a row left
short and the holds it no longer covers, a full count and what it did."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from engine.domain.errors import InvalidArgument
from engine.domain.model import EventOutcome, check_id, check_qty
from engine.domain.states import StockState, row_name
from engine.store.codecs import Holder

MAX_COUNT_LINES = 2_000_000


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
