"""Protobuf <-> domain for the messages the servicers and the client share. Each
conversion from the wire checks what it builds and names the field at fault."""

from __future__ import annotations

from collections.abc import Sequence

from engine.domain.errors import InvalidArgument
from engine.domain.events import check_event
from engine.domain.geo import Fulfilment
from engine.domain.model import (
    MAX_TYPES,
    EventKind,
    FutureLine,
    Line,
    Location,
    LocationType,
    Reservation,
    StockEvent,
    StockRow,
    check_location,
    check_size,
)
from engine.domain.rules import StockStatus
from engine.domain.states import StockState
from engine.domain.supply import SupplyKind, SupplyOutcome
from engine.domain.transfers import TransferState
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

TYPES = {
    pb.LOCATION_TYPE_STORE: LocationType.STORE,
    pb.LOCATION_TYPE_DC: LocationType.DC,
    pb.LOCATION_TYPE_DARK_STORE: LocationType.DARK_STORE,
}
_TYPES_BACK = {v: k for k, v in TYPES.items()}
FULFILMENTS = {
    pb.FULFILMENT_UNSPECIFIED: Fulfilment.ANY,
    pb.FULFILMENT_PICKUP: Fulfilment.PICKUP,
    pb.FULFILMENT_SHIP: Fulfilment.SHIP,
}


_STATES = {
    "HELD": pb.RESERVATION_STATE_HELD,
    "COMMITTED": pb.RESERVATION_STATE_COMMITTED,
    "RELEASED": pb.RESERVATION_STATE_RELEASED,
    "EXPIRED": pb.RESERVATION_STATE_EXPIRED,
}


OUTCOMES = {
    "APPLIED": pb.EVENT_OUTCOME_APPLIED,
    "DUPLICATE": pb.EVENT_OUTCOME_DUPLICATE,
    "STALE": pb.EVENT_OUTCOME_STALE,
    "ECHO": pb.EVENT_OUTCOME_ECHO,
    "REJECTED": pb.EVENT_OUTCOME_REJECTED,
}


STATUSES = {
    StockStatus.IN_STOCK: pb.STOCK_STATUS_IN_STOCK,
    StockStatus.LOW: pb.STOCK_STATUS_LOW,
    StockStatus.OUT: pb.STOCK_STATUS_OUT,
}


def level(
    location: str,
    sku: str,
    row: StockRow,
    available: int | None = None,
    status: StockStatus | None = None,
    states: tuple[int, ...] = (),
) -> pb.StockLevel:
    """available: what the asking channel may hold (default: the row's available units);
    status: its band (default: unset); states: its units damaged, in quality control and
    returned (default: not read, 0)."""
    damaged, quality_control, returned = states or (0, 0, 0)
    return pb.StockLevel(
        damaged=damaged,
        quality_control=quality_control,
        returned=returned,
        status=STATUSES[status] if status is not None else pb.STOCK_STATUS_UNSPECIFIED,
        location_id=location,
        sku=sku,
        available=row.available if available is None else available,
        on_hand=row.on_hand,
        reserved=row.reserved,
        safety_stock=row.safety_stock,
        version=row.version,
        as_of=row.as_of,
    )


def reservation_pb(res: Reservation) -> pb.Reservation:
    future = {(f.location, f.sku): f for f in res.future}
    return pb.Reservation(
        reservation_id=res.id,
        state=_STATES[res.state.value],
        expires_at=res.expires_at if res.state.value == "HELD" else 0,
        lines=[_line_pb(ln, future.get((ln.location, ln.sku))) for ln in res.lines],
    )


def _line_pb(ln: Line, future: FutureLine | None) -> pb.ReservationLine:
    msg = pb.ReservationLine(location_id=ln.location, sku=ln.sku, qty=ln.qty)
    if future is not None:
        msg.future_qty = future.qty
        msg.promise_by = future.promise_by
        msg.promise_broken = not future.promise_by
    return msg


def location_from_pb(msg: pb.Location, field: str) -> Location:
    if msg.type not in TYPES:
        raise InvalidArgument(f"{field}.type", "must be STORE, DC or DARK_STORE")
    loc = Location(
        id=msg.id,
        name=msg.name or msg.id,
        type=TYPES[msg.type],
        latitude=msg.latitude,
        longitude=msg.longitude,
        pickup_enabled=msg.pickup_enabled,
        ship_enabled=msg.ship_enabled,
        ship_capacity=msg.ship_capacity if msg.HasField("ship_capacity") else None,
        priority=msg.priority,
        active=msg.active,
        country=msg.country,
        region=msg.region,
    )
    return check_location(loc, field)


def location_pb(loc: Location) -> pb.Location:
    msg = pb.Location(
        id=loc.id,
        name=loc.name,
        type=_TYPES_BACK[loc.type],
        latitude=loc.latitude,
        longitude=loc.longitude,
        pickup_enabled=loc.pickup_enabled,
        ship_enabled=loc.ship_enabled,
        priority=loc.priority,
        active=loc.active,
        country=loc.country,
        region=loc.region,
    )
    if loc.ship_capacity is not None:
        msg.ship_capacity = loc.ship_capacity
    return msg


_EVENT_KINDS = {
    pb.EVENT_KIND_COUNT: EventKind.COUNT,
    pb.EVENT_KIND_DELTA: EventKind.DELTA,
    pb.EVENT_KIND_MOVE: EventKind.MOVE,
}
STOCK_STATES = {
    pb.STOCK_STATE_UNSPECIFIED: StockState.SELLABLE,
    pb.STOCK_STATE_SELLABLE: StockState.SELLABLE,
    pb.STOCK_STATE_DAMAGED: StockState.DAMAGED,
    pb.STOCK_STATE_QUALITY_CONTROL: StockState.QUALITY_CONTROL,
    pb.STOCK_STATE_RETURNED: StockState.RETURNED,
}


def state_from_pb(value: pb.StockState.ValueType, field: str) -> StockState:
    state = STOCK_STATES.get(value)
    if state is None:
        raise InvalidArgument(
            field, "must be SELLABLE, DAMAGED, QUALITY_CONTROL or RETURNED (unset: SELLABLE)"
        )
    return state


STOCK_STATES_BACK = {state: value for value, state in STOCK_STATES.items() if value}


def event_from_pb(msg: pb.StockEvent, field: str) -> StockEvent:
    kind = _EVENT_KINDS.get(msg.kind)
    if kind is None:
        raise InvalidArgument(f"{field}.kind", "must be COUNT, DELTA or MOVE")
    event = StockEvent(
        msg.event_id,
        msg.location_id,
        msg.sku,
        kind,
        msg.qty,
        msg.source_time,
        msg.reservation_id,
        msg.source,
        msg.sequence,
        state_from_pb(msg.state, f"{field}.state"),
        state_from_pb(msg.to_state, f"{field}.to_state"),
    )
    return check_event(event, field)


def types_from_pb(values: Sequence[pb.LocationType.ValueType], field: str) -> set[LocationType]:
    check_size(len(values), field, MAX_TYPES)
    types = set()
    for i, t in enumerate(values):
        if t not in TYPES:
            raise InvalidArgument(f"{field}[{i}]", "must be STORE, DC or DARK_STORE")
        types.add(TYPES[t])
    return types


def lines_from_pb(lines: Sequence[pb.ReservationLine]) -> list[Line]:
    return [Line(ln.location_id, ln.sku, ln.qty, ln.promise_by) for ln in lines]


# -- future supply and transfers (issue 17): engine/api/supply.py, engine/client_supply.py
SUPPLY_KINDS = {
    pb.SUPPLY_KIND_UNSPECIFIED: SupplyKind.PURCHASE_ORDER,
    pb.SUPPLY_KIND_PURCHASE_ORDER: SupplyKind.PURCHASE_ORDER,
    pb.SUPPLY_KIND_ASN: SupplyKind.ASN,
    pb.SUPPLY_KIND_TRANSFER: SupplyKind.TRANSFER,
}
SUPPLY_OUTCOMES = {
    SupplyOutcome.CREATED: pb.SUPPLY_OUTCOME_CREATED,
    SupplyOutcome.UPDATED: pb.SUPPLY_OUTCOME_UPDATED,
    SupplyOutcome.UNCHANGED: pb.SUPPLY_OUTCOME_UNCHANGED,
    SupplyOutcome.CANCELLED: pb.SUPPLY_OUTCOME_CANCELLED,
    SupplyOutcome.RECEIVED: pb.SUPPLY_OUTCOME_RECEIVED,
}
# What a caller sees of a transfer's state: one in the middle of a step is finished before
# it is answered, so those never reach it.
TRANSFER_STATES = {
    TransferState.CREATED: pb.TRANSFER_STATE_CREATED,
    TransferState.SHIPPED: pb.TRANSFER_STATE_SHIPPED,
    TransferState.RECEIVED: pb.TRANSFER_STATE_RECEIVED,
    TransferState.CANCELLED: pb.TRANSFER_STATE_CANCELLED,
}
