"""ReservationService: Reserve, Commit, Release, Extend, GetReservation, MoveLine."""

from __future__ import annotations

import grpc

from engine.api.convert import lines_from_pb, reservation_pb
from engine.api.rpc import rpc
from engine.domain import auth
from engine.domain.model import MAX_LINES, HoldResult, check_size
from engine.domain.moves import Move
from engine.metrics import Metrics
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.usecases.reservations import Reservations


class ReservationService(pb_grpc.ReservationServiceServicer):
    def __init__(self, reservations: Reservations, metrics: Metrics) -> None:
        self.reservations = reservations
        self.metrics = metrics

    @rpc("Reserve")
    async def Reserve(
        self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReserveResponse:
        check_size(len(request.lines), "lines", MAX_LINES)
        lines = lines_from_pb(request.lines)
        result = await self.reservations.reserve(
            request.reservation_id,
            lines,
            request.ttl_seconds,
            channel=auth.current().channel_for(request.channel),
            customer=request.customer_id,
        )
        if result.reservation is not None:
            return pb.ReserveResponse(reservation=reservation_pb(result.reservation))
        return pb.ReserveResponse(shortfalls=_shortfalls(result))

    @rpc("Commit")
    async def Commit(
        self, request: pb.CommitRequest, context: grpc.aio.ServicerContext
    ) -> pb.Reservation:
        return reservation_pb(await self.reservations.commit(request.reservation_id))

    @rpc("Release")
    async def Release(
        self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.Reservation:
        return reservation_pb(await self.reservations.release(request.reservation_id))

    @rpc("Extend")
    async def Extend(
        self, request: pb.ExtendRequest, context: grpc.aio.ServicerContext
    ) -> pb.Reservation:
        res = await self.reservations.extend(request.reservation_id, request.ttl_seconds)
        return reservation_pb(res)

    @rpc("GetReservation")
    async def GetReservation(
        self, request: pb.GetReservationRequest, context: grpc.aio.ServicerContext
    ) -> pb.Reservation:
        return reservation_pb(await self.reservations.get(request.reservation_id))

    @rpc("MoveLine")
    async def MoveLine(
        self, request: pb.MoveLineRequest, context: grpc.aio.ServicerContext
    ) -> pb.MoveLineResponse:
        move = Move(request.location_id, request.sku, request.qty, request.to_location_id)
        result = await self.reservations.move_line(request.reservation_id, request.move_id, move)
        if result.reservation is not None:
            return pb.MoveLineResponse(reservation=reservation_pb(result.reservation))
        return pb.MoveLineResponse(shortfalls=_shortfalls(result))


def _shortfalls(result: HoldResult) -> list[pb.Shortfall]:
    return [
        pb.Shortfall(
            location_id=s.location, sku=s.sku, requested=s.requested, available=s.available
        )
        for s in result.shortfalls
    ]
