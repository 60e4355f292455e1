"""AvailabilityService: GetAvailability, WatchAvailability, FindNearby."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from engine.api.convert import FULFILMENTS, level, location_pb, types_from_pb
from engine.api.rpc import rpc, rpc_stream
from engine.domain.errors import InvalidArgument
from engine.domain.model import (
    MAX_LINES,
    MAX_LOCATION_IDS,
    MAX_ROWS,
    MAX_SKUS,
    MAX_TYPES,
    BasketLine,
    check_id,
    check_size,
)
from engine.metrics import Metrics
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.store.storage import Storage
from engine.store.watch import Closing, Overflow, Watcher, WatchHub
from engine.usecases.locations import LocationRegistry
from engine.usecases.nearby import NearbyQuery, check_query, find_nearby


def _check_reads(skus: Sequence[str], location_ids: Sequence[str], types: Sequence[int]) -> None:
    check_size(len(skus), "skus", MAX_SKUS)
    check_size(len(location_ids), "location_ids", MAX_LOCATION_IDS)
    check_size(len(types), "location_types", MAX_TYPES)


def nearby_query_from_pb(msg: pb.FindNearbyRequest) -> NearbyQuery:
    check_size(len(msg.lines), "lines", MAX_LINES)
    if msg.fulfilment not in FULFILMENTS:
        raise InvalidArgument("fulfilment", "must be PICKUP, SHIP or unspecified (any)")
    return check_query(
        NearbyQuery(
            latitude=msg.latitude,
            longitude=msg.longitude,
            radius_km=msg.radius_km,
            lines=tuple(BasketLine(ln.sku, ln.qty) for ln in msg.lines),
            fulfilment=FULFILMENTS[msg.fulfilment],
            types=frozenset(types_from_pb(msg.location_types, "location_types")),
            limit=msg.limit or 10,
            partial=msg.partial,
        )
    )


class AvailabilityService(pb_grpc.AvailabilityServiceServicer):
    def __init__(
        self, storage: Storage, locations: LocationRegistry, metrics: Metrics, hub: WatchHub
    ) -> None:
        self.storage = storage
        self.locations = locations
        self.metrics = metrics
        self.hub = hub

    @rpc("GetAvailability")
    async def GetAvailability(
        self, request: pb.GetAvailabilityRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAvailabilityResponse:
        _check_reads(request.skus, request.location_ids, request.location_types)
        skus = list(dict.fromkeys(check_id(s, f"skus[{i}]") for i, s in enumerate(request.skus)))
        if not skus:
            raise InvalidArgument("skus", "at least one sku is required")
        by_type = not request.location_ids
        locations = await self._locations(request)
        if len(skus) * len(locations) > MAX_ROWS:
            raise InvalidArgument(
                "location_ids", f"{len(skus)} skus x {len(locations)} locations is over {MAX_ROWS}"
            )
        pairs = [(loc, sku) for loc in locations for sku in skus]
        rows = await self.storage.rows(pairs)
        keep_empty = request.include_empty or not by_type
        return pb.GetAvailabilityResponse(
            levels=[
                level(loc, sku, row)
                for (loc, sku), row in zip(pairs, rows, strict=True)
                if keep_empty or row.available > 0
            ]
        )

    async def _locations(self, request: pb.GetAvailabilityRequest) -> list[str]:
        if request.location_ids:
            ids = list(dict.fromkeys(request.location_ids))
            for i, loc in enumerate(ids):
                check_id(loc, f"location_ids[{i}]")
            await self.locations.require(ids, "location_ids")
            return ids
        types = types_from_pb(request.location_types, "location_types")
        return [loc.id for loc in await self.locations.active(types)]

    @rpc_stream("WatchAvailability")
    async def WatchAvailability(
        self, request: pb.WatchAvailabilityRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AvailabilityChange]:
        try:
            skus, locations = await self._watched(request)
            self.metrics.watchers.inc()
            try:
                async with self.hub.watch(locations) as watcher:
                    async for change in self._changes(watcher, skus, locations, request):
                        yield change
            finally:
                self.metrics.watchers.dec()
        except Overflow as exc:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; resume with send_current"
            )
        except Closing as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"{exc}; reconnect and resume with send_current"
            )

    async def _changes(
        self,
        watcher: Watcher,
        skus: list[str],
        locations: list[str],
        request: pb.WatchAvailabilityRequest,
    ) -> AsyncIterator[pb.AvailabilityChange]:
        """The opening state if asked for, then every later change of the chosen rows.
        The watcher is subscribed before the state is read, so nothing falls between."""
        versions: dict[tuple[str, str], int] = {}
        if request.send_current:
            pairs = [(loc, sku) for loc in locations for sku in skus]
            rows = await self.storage.rows(pairs)
            for (loc, sku), row in zip(pairs, rows, strict=True):
                versions[(loc, sku)] = row.version
                yield pb.AvailabilityChange(level=level(loc, sku, row), current=True)
        wanted = set(skus)
        while True:
            loc, sku, row = await watcher.next()
            if (not wanted or sku in wanted) and row.version > versions.get((loc, sku), -1):
                yield pb.AvailabilityChange(level=level(loc, sku, row))

    async def _watched(self, request: pb.WatchAvailabilityRequest) -> tuple[list[str], list[str]]:
        _check_reads(request.skus, request.location_ids, ())
        skus = list(dict.fromkeys(check_id(s, f"skus[{i}]") for i, s in enumerate(request.skus)))
        locations = list(dict.fromkeys(request.location_ids))
        for i, loc in enumerate(locations):
            check_id(loc, f"location_ids[{i}]")
        await self.locations.require(locations, "location_ids")
        if not locations:
            if not skus:
                raise InvalidArgument("skus", "choose skus, locations or both")
            locations = list(await self.locations.fresh())
        if request.send_current and not skus:
            raise InvalidArgument("skus", "send_current needs the skus whose state to send")
        if len(skus) * len(locations) > MAX_ROWS and request.send_current:
            raise InvalidArgument(
                "location_ids", f"{len(skus)} skus x {len(locations)} locations is over {MAX_ROWS}"
            )
        return skus, locations

    @rpc("FindNearby")
    async def FindNearby(
        self, request: pb.FindNearbyRequest, context: grpc.aio.ServicerContext
    ) -> pb.FindNearbyResponse:
        query = nearby_query_from_pb(request)
        found = await find_nearby(self.storage, self.locations, query)
        answer = pb.FindNearbyResponse(locations_considered=found.considered)
        for hit in found.hits:
            filled, units = hit.filled(query.lines)
            answer.locations.append(
                pb.NearbyLocation(
                    location=location_pb(hit.location),
                    distance_km=hit.distance_km,
                    lines=[
                        pb.LineAvailability(sku=ln.sku, requested=ln.qty, available=a)
                        for ln, a in zip(query.lines, hit.available, strict=True)
                    ],
                    fills_basket=filled == len(query.lines),
                    lines_filled=filled,
                    units_filled=units,
                )
            )
        return answer
