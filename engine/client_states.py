"""The Python client's calls of stock states and returns anywhere (issue 17): a mixin of
OmnistockClient (engine/client.py), which gives it its stubs, options and retries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from engine.api.convert import STOCK_STATES, STOCK_STATES_BACK
from engine.domain.returns import Returned, ReturnLine
from engine.domain.states import OTHER_STATES, StockState
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc


def _states(lv: pb.StockLevel) -> dict[StockState, int]:
    others = (lv.damaged, lv.quality_control, lv.returned)
    return {StockState.SELLABLE: lv.on_hand, **dict(zip(OTHER_STATES, others, strict=True))}


class StatesClient:
    _stock: pb_grpc.StockServiceStub
    _availability: pb_grpc.AvailabilityServiceStub
    _opts: dict[str, Any]
    _call: Callable[..., Awaitable[Any]]

    async def stock_states(
        self, skus: Sequence[str], location_ids: Sequence[str]
    ) -> dict[tuple[str, str], dict[StockState, int]]:
        """(location, sku) -> its units in each state (sellable: on_hand)."""
        request = pb.GetAvailabilityRequest(skus=skus, location_ids=location_ids, states=True)
        resp = await self._call(lambda: self._availability.GetAvailability(request, **self._opts))
        return {(lv.location_id, lv.sku): _states(lv) for lv in resp.levels}

    async def move_units(
        self,
        event_id: str,
        location_id: str,
        sku: str,
        qty: int,
        source_time: int,
        *,
        from_state: StockState,
        to_state: StockState,
    ) -> bool:
        """Moves qty units of a row from one state to another at once (inspection passed:
        RETURNED -> SELLABLE; found damaged: SELLABLE -> DAMAGED), once by event id;
        answers whether it changed anything now (False: a duplicate, or stale)."""
        event = pb.StockEvent(
            event_id=event_id,
            location_id=location_id,
            sku=sku,
            kind=pb.EVENT_KIND_MOVE,
            qty=qty,
            source_time=source_time,
            state=STOCK_STATES_BACK[from_state],
            to_state=STOCK_STATES_BACK[to_state],
        )
        request = pb.ApplyEventsRequest(events=[event])
        resp = await self._call(lambda: self._stock.ApplyEvents(request, **self._opts))
        return bool(resp.outcomes[0] == pb.EVENT_OUTCOME_APPLIED)

    async def record_return(
        self,
        return_id: str,
        location_id: str,
        lines: Sequence[tuple[str, int]],
        *,
        reservation_id: str = "",
    ) -> Returned:
        """A customer's return of (sku, qty) lines at any location, once per return_id,
        optionally under the reservation the units were bought with; each line answered
        with the state its units landed in."""
        request = pb.RecordReturnRequest(
            return_id=return_id,
            location_id=location_id,
            lines=[pb.ReturnLine(sku=sku, qty=qty) for sku, qty in lines],
            reservation_id=reservation_id,
        )
        resp = await self._call(lambda: self._stock.RecordReturn(request, **self._opts))
        got = tuple(ReturnLine(ln.sku, ln.qty, STOCK_STATES[ln.state]) for ln in resp.lines)
        return Returned(resp.return_id, got, resp.replayed)

    async def set_return_rule(
        self, *, location_id: str = "", sku: str = "", to_sellable: bool, remove: bool = False
    ) -> int:
        """Where returned units land, at a location ('' any), of a sku ('' any): straight to
        sellable, or to `returned` for inspection; answers the rules' version."""
        rule = pb.ReturnRule(
            location_id=location_id, sku=sku, to_sellable=to_sellable, remove=remove
        )
        request = pb.SetReturnRulesRequest(rules=[rule])
        resp = await self._call(lambda: self._stock.SetReturnRules(request, **self._opts))
        return int(resp.version)
