"""SourcingService: Allocate."""

from __future__ import annotations

from typing import Any

import grpc

from engine.api.convert import location_pb, reservation_pb, types_from_pb
from engine.api.rpc import rpc
from engine.domain import auth
from engine.domain.geo import HALF_CIRCUMFERENCE_KM
from engine.domain.model import MAX_LINES, MAX_LOCATION_IDS, BasketLine, check_size
from engine.domain.sourcing import COST_FIELDS, Constraints, CostModel, Unfillable
from engine.metrics import Metrics
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.usecases.allocation import Allocation, Allocator, Order, check_order

_UNFILLED = {
    Unfillable.NO_STOCK: pb.UNFILLED_REASON_NO_STOCK,
    Unfillable.CAPACITY: pb.UNFILLED_REASON_CAPACITY,
    Unfillable.SPLIT: pb.UNFILLED_REASON_SPLIT,
    Unfillable.MAX_SHIPMENTS: pb.UNFILLED_REASON_MAX_SHIPMENTS,
}


def order_from_pb(msg: pb.AllocateRequest, default: CostModel, max_shipments: int) -> Order:
    cost = msg.cost

    def pick(name: str) -> Any:
        return getattr(cost, name) if cost.HasField(name) else getattr(default, name)  # type: ignore[arg-type]

    check_size(len(msg.lines), "lines", MAX_LINES)
    check_size(len(msg.excluded_location_ids), "excluded_location_ids", MAX_LOCATION_IDS)
    return check_order(
        Order(
            lines=tuple(BasketLine(ln.sku, ln.qty) for ln in msg.lines),
            latitude=msg.latitude,
            longitude=msg.longitude,
            constraints=Constraints(msg.max_shipments or max_shipments, msg.allow_split),
            types=frozenset(types_from_pb(msg.location_types, "location_types")),
            excluded=frozenset(msg.excluded_location_ids),
            max_distance_km=msg.max_distance_km or HALF_CIRCUMFERENCE_KM,
            model=CostModel(**{name: pick(name) for name in COST_FIELDS}),
            reserve=msg.reserve,
            reservation_id=msg.reservation_id,
            ttl_seconds=msg.ttl_seconds,
            allow_partial=msg.allow_partial,
            channel=auth.current().channel_for(msg.channel),
            customer=msg.customer_id,
        )
    )


def allocation_pb(result: Allocation) -> pb.AllocateResponse:
    plan = result.plan
    return pb.AllocateResponse(
        shipments=[
            pb.Shipment(
                location=location_pb(s.location),
                lines=[pb.BasketLine(sku=ln.sku, qty=ln.qty) for ln in s.lines],
                distance_km=s.distance_km,
                cost=s.cost,
            )
            for s in plan.shipments
        ],
        total_cost=plan.cost,
        unfilled=[
            pb.UnfilledLine(sku=u.sku, qty=u.qty, reason=_UNFILLED[u.reason]) for u in plan.unfilled
        ],
        reservation=reservation_pb(result.reservation) if result.reservation else None,
        attempts=result.attempts,
        retries=result.retries,
        exact=plan.exact,
        locations_considered=plan.candidates,
    )


class SourcingService(pb_grpc.SourcingServiceServicer):
    def __init__(
        self, allocator: Allocator, metrics: Metrics, cost: CostModel, max_shipments: int
    ) -> None:
        """cost, max_shipments: what a call that sets none of its own gets."""
        self.allocator = allocator
        self.metrics = metrics
        self.cost = cost
        self.max_shipments = max_shipments

    @rpc("Allocate")
    async def Allocate(
        self, request: pb.AllocateRequest, context: grpc.aio.ServicerContext
    ) -> pb.AllocateResponse:
        order = order_from_pb(request, self.cost, self.max_shipments)
        result = await self.allocator.allocate(order)
        self.metrics.replans.inc(len(result.retries))
        self.metrics.allocations.labels(_outcome(order, result)).inc()
        return allocation_pb(result)


def _outcome(order: Order, result: Allocation) -> str:
    if result.reservation is not None:
        return "held"
    if result.plan.unfilled:
        return "unfilled"
    return "not_held" if order.reserve else "planned"
