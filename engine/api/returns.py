"""StockService.RecordReturn and SetReturnRules, and the stock states' messages: a mixin of
the StockService servicer (engine/api/stock.py), which gives it `returns`."""

from __future__ import annotations

import grpc

from engine.api.convert import STOCK_STATES_BACK
from engine.api.rpc import rpc
from engine.domain.errors import InvalidArgument
from engine.domain.returns import Return, Returned, ReturnLine, ReturnRule
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.usecases.returns import Returns


def return_from_pb(msg: pb.RecordReturnRequest) -> Return:
    lines = tuple(ReturnLine(ln.sku, ln.qty) for ln in msg.lines)
    return Return(msg.return_id, msg.location_id, lines, msg.reservation_id)


def returned_pb(got: Returned) -> pb.RecordReturnResponse:
    return pb.RecordReturnResponse(
        return_id=got.return_id,
        lines=[
            pb.ReturnLine(sku=ln.sku, qty=ln.qty, state=STOCK_STATES_BACK[ln.state])
            for ln in got.lines
        ],
        replayed=got.replayed,
    )


class ReturnRpcs(pb_grpc.StockServiceServicer):
    returns: Returns

    @rpc("RecordReturn")
    async def RecordReturn(
        self, request: pb.RecordReturnRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordReturnResponse:
        if len(request.lines) > 1000:  # before building anything of them
            raise InvalidArgument("lines", f"at most 1000 per call, got {len(request.lines)}")
        return returned_pb(await self.returns.record(return_from_pb(request)))

    @rpc("SetReturnRules")
    async def SetReturnRules(
        self, request: pb.SetReturnRulesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetReturnRulesResponse:
        if len(request.rules) > 10_000:
            raise InvalidArgument("rules", f"at most 10000 per call, got {len(request.rules)}")
        rules = [ReturnRule(r.location_id, r.sku, r.to_sellable, r.remove) for r in request.rules]
        return pb.SetReturnRulesResponse(version=await self.returns.set_rules(rules))
