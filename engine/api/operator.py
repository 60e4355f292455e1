"""OperatorService: what an operator looks at and mends (engine/usecases/operators.py)."""

from __future__ import annotations

import grpc

from engine.api.convert import STATUSES, level, location_pb
from engine.api.rpc import rpc
from engine.metrics import Metrics
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.store.oversight import Entry
from engine.usecases.operators import Operators


def _alert(entry: Entry) -> pb.Alert:
    entry_id, fields = entry
    details = {k: v.decode(errors="replace") for k, v in fields.items()}
    kind, at = details.pop("kind", "shortage"), details.pop("at", "0")
    return pb.Alert(id=entry_id, kind=kind, at=int(at or 0), details=details)


def _letter(entry: Entry) -> pb.DeadLetter:
    entry_id, fields = entry
    return pb.DeadLetter(
        id=entry_id,
        origin=fields.get("dead.from", b"").decode(errors="replace"),
        reason=fields.get("dead.reason", b"").decode(errors="replace"),
        at=int(fields.get("dead.at", b"0") or 0),
        fields=fields,
    )


class OperatorService(pb_grpc.OperatorServiceServicer):
    def __init__(self, operators: Operators, metrics: Metrics) -> None:
        self.operators = operators
        self.metrics = metrics

    @rpc("GetRow")
    async def GetRow(
        self, request: pb.GetRowRequest, context: grpc.aio.ServicerContext
    ) -> pb.RowDetail:
        got = await self.operators.row(request.location_id, request.sku)
        return pb.RowDetail(
            level=level(
                request.location_id, request.sku, got.row, status=got.status, states=got.states
            ),
            holds=[
                pb.RowHold(reservation_id=h.reservation_id, qty=h.qty, held_at=h.held_at)
                for h in got.holders
            ],
            detected_bands={ch: STATUSES[s] for ch, s in got.detected.items()},
        )

    @rpc("GetLocation")
    async def GetLocation(
        self, request: pb.GetLocationRequest, context: grpc.aio.ServicerContext
    ) -> pb.LocationDetail:
        got = await self.operators.location(request.location_id)
        return pb.LocationDetail(
            location=location_pb(got.location),
            rows=got.rows,
            held_reservations=got.held_reservations,
            numbered_sources=[
                pb.NumberedSource(
                    source=n.source,
                    highest=n.highest,
                    gaps=[
                        pb.SequenceGap(first=first, last=last, opened_at=opened)
                        for first, last, opened in n.gaps
                    ],
                )
                for n in got.numbered
            ],
        )

    @rpc("ListSources")
    async def ListSources(
        self, request: pb.ListSourcesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSourcesResponse:
        sources = await self.operators.list_sources()
        return pb.ListSourcesResponse(
            sources=[
                pb.SourceStatus(
                    source=name,
                    events=s.events,
                    last_arrival=s.last_arrival,
                    last_source_time=s.last_source_time,
                    clock_offset_ms=s.clock_offset_ms,
                    clock=s.clock,
                )
                for name, s in sources.items()
            ]
        )

    @rpc("ListAlerts")
    async def ListAlerts(
        self, request: pb.ListAlertsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAlertsResponse:
        got = await self.operators.alerts(request.after, request.limit)
        return pb.ListAlertsResponse(alerts=[_alert(e) for e in got])

    @rpc("ListDeadLetters")
    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeadLettersResponse:
        got = await self.operators.dead_letters(
            request.after, request.limit, request.origin, request.reason_contains
        )
        return pb.ListDeadLettersResponse(letters=[_letter(e) for e in got])

    @rpc("DeleteDeadLetters")
    async def DeleteDeadLetters(
        self, request: pb.DeleteDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteDeadLettersResponse:
        deleted = await self.operators.delete_dead_letters(list(request.ids))
        return pb.DeleteDeadLettersResponse(deleted=deleted)
