"""Future supply, promises and transfers as messages: UpsertSupply and the transfer steps
(StockService), GetPromise (AvailabilityService). Each message is sized before it is read
and checked naming its field (engine/domain/supply.py, transfers.py)."""

from __future__ import annotations

import grpc

from engine.api.convert import SUPPLY_KINDS as KINDS
from engine.api.convert import SUPPLY_OUTCOMES as OUTCOMES
from engine.api.convert import TRANSFER_STATES as STATES
from engine.api.rpc import rpc
from engine.domain.auth import current
from engine.domain.errors import InvalidArgument
from engine.domain.model import MAX_LINES, MAX_LOCATION_IDS, check_size
from engine.domain.supply import (
    MAX_PROMISE_SKUS,
    MAX_SUPPLIES,
    Promise,
    Supply,
)
from engine.domain.transfers import Transfer, TransferState
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.usecases.supply import Supplies
from engine.usecases.transfers import Transfers


def supply_from_pb(msg: pb.Supply, field: str) -> Supply:
    if msg.kind not in KINDS:
        raise InvalidArgument(f"{field}.kind", f"unknown supply kind {msg.kind}")
    return Supply(
        msg.supply_id,
        msg.location_id,
        msg.sku,
        msg.qty,
        msg.expected_at,
        KINDS[msg.kind],
        msg.cancel,
        msg.received,
    )


def promise_pb(p: Promise) -> pb.Promise:
    return pb.Promise(
        location_id=p.location,
        sku=p.sku,
        available_now=p.available_now,
        steps=[pb.PromiseStep(at=s.at, units=s.units) for s in p.steps],
        incoming=p.incoming,
        overdue=p.overdue,
        future_held=p.future_held,
    )


def _lines_pb(lines: tuple[tuple[str, int], ...]) -> list[pb.TransferLine]:
    return [pb.TransferLine(sku=sku, qty=qty) for sku, qty in lines]


def transfer_pb(t: Transfer) -> pb.Transfer:
    return pb.Transfer(
        transfer_id=t.transfer_id,
        from_location_id=t.from_location,
        to_location_id=t.to_location,
        lines=_lines_pb(t.lines),
        expected_at=t.expected_at,
        state=STATES.get(t.state, pb.TRANSFER_STATE_UNSPECIFIED),
        received=_lines_pb(t.received) if t.state is TransferState.RECEIVED else [],
        discrepancies=[
            pb.TransferDiscrepancy(
                sku=d.sku, shipped=d.shipped, received=d.received, missing=d.missing
            )
            for d in (t.discrepancies if t.state is TransferState.RECEIVED else [])
        ],
        returned=t.returned,
    )


def _lines_from_pb(msgs: object) -> list[tuple[str, int]]:
    lines = list(msgs)  # type: ignore[call-overload]
    check_size(len(lines), "lines", MAX_LINES)
    return [(m.sku, m.qty) for m in lines]


class SupplyRpcs:
    """StockService's RPCs of future supply and transfers (mixed into StockService)."""

    supplies: Supplies
    transfers: Transfers

    @rpc("UpsertSupply")
    async def UpsertSupply(
        self, request: pb.UpsertSupplyRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertSupplyResponse:
        check_size(len(request.supplies), "supplies", MAX_SUPPLIES)
        supplies = [supply_from_pb(m, f"supplies[{i}]") for i, m in enumerate(request.supplies)]
        current().require_locations((s.location for s in supplies), "supplies")
        outcomes = await self.supplies.upsert(supplies)
        return pb.UpsertSupplyResponse(outcomes=[OUTCOMES[o] for o in outcomes])

    @rpc("CreateTransfer")
    async def CreateTransfer(
        self, request: pb.CreateTransferRequest, context: grpc.aio.ServicerContext
    ) -> pb.Transfer:
        transfer = Transfer(
            request.transfer_id,
            request.from_location_id,
            request.to_location_id,
            tuple(_lines_from_pb(request.lines)),
            request.expected_at,
        )
        return transfer_pb(await self.transfers.create(transfer, current().require_locations))

    @rpc("ShipTransfer")
    async def ShipTransfer(
        self, request: pb.ShipTransferRequest, context: grpc.aio.ServicerContext
    ) -> pb.Transfer:
        may_act = current().require_locations
        return transfer_pb(await self.transfers.ship(request.transfer_id, may_act))

    @rpc("ReceiveTransfer")
    async def ReceiveTransfer(
        self, request: pb.ReceiveTransferRequest, context: grpc.aio.ServicerContext
    ) -> pb.Transfer:
        lines = _lines_from_pb(request.lines) if request.lines else None
        may_act = current().require_locations
        return transfer_pb(await self.transfers.receive(request.transfer_id, lines, may_act))

    @rpc("CancelTransfer")
    async def CancelTransfer(
        self, request: pb.CancelTransferRequest, context: grpc.aio.ServicerContext
    ) -> pb.Transfer:
        may_act = current().require_locations
        return transfer_pb(await self.transfers.cancel(request.transfer_id, may_act))


class PromiseRpcs:
    """AvailabilityService's GetPromise (mixed into AvailabilityService)."""

    supplies: Supplies

    @rpc("GetPromise")
    async def GetPromise(
        self, request: pb.GetPromiseRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPromiseResponse:
        check_size(len(request.skus), "skus", MAX_PROMISE_SKUS)
        check_size(len(request.location_ids), "location_ids", MAX_LOCATION_IDS)
        got = await self.supplies.promise(
            request.skus, request.location_ids, request.network, request.horizon_days
        )
        return pb.GetPromiseResponse(
            as_of=got.as_of,
            horizon_end=got.horizon_end,
            promises=[promise_pb(p) for p in got.promises],
            network_totals=[promise_pb(p) for p in got.totals],
        )
