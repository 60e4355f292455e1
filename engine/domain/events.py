"""A stock event checked field by field before anything is done with it: each fault named
by its field (`events[3].qty`)."""

from __future__ import annotations

from engine.domain.errors import InvalidArgument
from engine.domain.model import (
    MAX_QTY,
    MAX_SEQUENCE,
    EventKind,
    StockEvent,
    check_id,
    check_qty,
)
from engine.domain.states import StockState


def check_event(event: StockEvent, field_name: str) -> StockEvent:
    check_id(event.event_id, f"{field_name}.event_id")
    check_id(event.location, f"{field_name}.location_id")
    check_id(event.sku, f"{field_name}.sku")
    if event.reservation_id:
        check_id(event.reservation_id, f"{field_name}.reservation_id")
    if event.source:
        check_id(event.source, f"{field_name}.source")
    if event.sequence:
        check_sequence(event, field_name)
    if event.source_time <= 0:
        raise InvalidArgument(f"{field_name}.source_time", "must be set (ms since the epoch)")
    if event.kind is EventKind.COUNT:
        check_qty(event.qty, f"{field_name}.qty", allow_zero=True)
    elif event.kind is EventKind.MOVE:
        check_move(event, field_name)
    elif event.qty == 0 or abs(event.qty) > MAX_QTY:
        raise InvalidArgument(f"{field_name}.qty", f"a DELTA must be non-zero, got {event.qty}")
    if event.kind is not EventKind.MOVE and event.to_state is not StockState.SELLABLE:
        raise InvalidArgument(f"{field_name}.to_state", "only a MOVE has one")
    if event.reservation_id and event.state is not StockState.SELLABLE:
        raise InvalidArgument(
            f"{field_name}.reservation_id", "only a change of sellable units echoes a sale"
        )
    return event


def check_move(event: StockEvent, field_name: str) -> None:
    check_qty(event.qty, f"{field_name}.qty")
    if event.to_state is event.state:
        raise InvalidArgument(f"{field_name}.to_state", "a MOVE must change the units' state")
    if event.reservation_id:
        raise InvalidArgument(f"{field_name}.reservation_id", "a MOVE echoes no sale")


def check_sequence(event: StockEvent, field_name: str) -> None:
    if not 0 < event.sequence <= MAX_SEQUENCE:
        raise InvalidArgument(
            f"{field_name}.sequence", f"must be 1 to {MAX_SEQUENCE} (0: not numbered)"
        )
    if not event.source:
        raise InvalidArgument(
            f"{field_name}.source", "must be set with a sequence: events are numbered per source"
        )
