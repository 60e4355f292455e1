"""AvailabilityService: GetAvailability, WatchAvailability, FindNearby, GetNetworkAvailability."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from engine.api.convert import FULFILMENTS, STATUSES, level, location_pb, types_from_pb
from engine.api.networks import listing_pb
from engine.api.rpc import rpc, rpc_stream
from engine.api.supply import PromiseRpcs
from engine.domain import auth
from engine.domain.errors import InvalidArgument
from engine.domain.model import (
    MAX_LINES,
    MAX_LOCATION_IDS,
    MAX_SKUS,
    MAX_TYPES,
    BasketLine,
    check_id,
    check_size,
)
from engine.metrics import Metrics
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.store.rowcache import RowReader
from engine.store.watch import Closing, Overflow, Watcher, WatchHub
from engine.throttle import Turns
from engine.usecases.availability import Availability, Level, Offered, Watched
from engine.usecases.locations import LocationRegistry
from engine.usecases.nearby import NearbyQuery, check_query, find_nearby
from engine.usecases.networks import Networks

# Watch openings of more than LIGHT_OPENING rows sent at once in a process, a location at
# a time (engine/throttle.py): a hundred of them would each take a turn of the event loop
# for every message, and every other call would wait behind them all.
OPENINGS_AT_ONCE = 2
LIGHT_OPENING = 1000


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
            channel=auth.current().channel_for(msg.channel),
        )
    )


class Listings:
    """GetAvailability's answers, built from each row's level encoded once: a row answered
    again as it was (the same fields, units offered, band and other states) costs a look-up,
    not a message built (about 4 us a row, most of a 50-row listing's time in this process).
    The answer is its levels' bytes parsed as one message. At most `most` rows' levels are
    kept, then all forgotten at once (0: none kept). Each is kept as a plain tuple of ints
    and bytes, which the garbage collector stops tracking (engine/store/rowcache.py)."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.kept = 0
        # location -> sku -> (the row's fields, offered, band, other states, the level)
        self._known: dict[
            str, dict[str, tuple[tuple[int, ...], int, int, tuple[int, ...], bytes]]
        ] = {}

    def answer(self, found: Sequence[Offered]) -> pb.GetAvailabilityResponse:
        parts: list[bytes] = []
        known = self._known
        for loc, sku, row, available, status, units in found:
            band = STATUSES[status]
            at = known.get(loc)
            was = None if at is None else at.get(sku)
            if (
                was is not None
                and was[0] == row
                and was[1] == available
                and was[2] == band
                and was[3] == units
            ):
                parts.append(was[4])
                continue
            one = pb.GetAvailabilityResponse(
                levels=[level(loc, sku, row, available, status, units)]
            )
            parts.append(one.SerializeToString())
            if not self.most:
                continue
            if was is None:
                if self.kept >= self.most:
                    known.clear()
                    self.kept = 0
                self.kept += 1
            known.setdefault(loc, {})[sku] = (tuple(row), available, band, units, parts[-1])
        return pb.GetAvailabilityResponse.FromString(b"".join(parts))


class AvailabilityService(PromiseRpcs, pb_grpc.AvailabilityServiceServicer):
    def __init__(
        self,
        availability: Availability,
        reader: RowReader,
        locations: LocationRegistry,
        metrics: Metrics,
        hub: WatchHub,
        networks: Networks,
        listed_rows: int,
    ) -> None:
        """listed_rows: the rows whose levels are kept encoded for GetAvailability's
        answers (Listings)."""
        self.availability = availability
        self.listings = Listings(listed_rows)
        self.networks = networks
        self.reader = reader
        self.locations = locations
        self.metrics = metrics
        self.hub = hub
        self.openings = Turns(OPENINGS_AT_ONCE, light=LIGHT_OPENING)

    @rpc("GetAvailability")
    async def GetAvailability(
        self, request: pb.GetAvailabilityRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAvailabilityResponse:
        _check_reads(request.skus, request.location_ids, request.location_types)
        types = types_from_pb(request.location_types, "location_types")
        channel = auth.current().channel_for(request.channel)
        found = await self.availability.levels(
            request.skus,
            request.location_ids,
            types,
            request.include_empty,
            channel,
            states=request.states,
        )
        return self.listings.answer(found)

    @rpc_stream("WatchAvailability")
    async def WatchAvailability(
        self, request: pb.WatchAvailabilityRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AvailabilityChange]:
        _check_reads(request.skus, request.location_ids, ())
        if request.channel:
            check_id(request.channel, "channel")
        channel = auth.current().channel_for(request.channel)
        watched = await self.availability.watched(
            request.skus, request.location_ids, request.send_current
        )
        try:
            self.metrics.watchers.inc()
            try:
                async with self.hub.watch(watched.locations) as watcher:
                    changes = self._changes(
                        watcher, watched, request.send_current, channel, request.bands_only
                    )
                    async for change in changes:
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

    async def _levels(self, channel: str, levels: list[Level]) -> list[pb.StockLevel]:
        """Each row as `channel` sees it: what it may hold (read with its holds and the
        rows' pools as they are now; no channel: the row's available units), and its band."""
        pairs, rows = [(loc, sku) for loc, sku, _ in levels], [row for _, _, row in levels]
        offers = await self.availability.offered(channel, pairs, rows, from_redis=True)
        statuses = self.availability.statuses(channel, pairs, offers)
        return [
            level(loc, sku, row, a, status)
            for (loc, sku, row), a, status in zip(levels, offers, statuses, strict=True)
        ]

    async def _changes(
        self,
        watcher: Watcher,
        watched: Watched,
        send_current: bool,
        channel: str,
        bands_only: bool = False,
    ) -> AsyncIterator[pb.AvailabilityChange]:
        """The opening state if asked for, then every later change of the chosen rows (for
        a channel: what it may hold of each). The watcher is subscribed before the state is
        read, so nothing falls between."""
        # location -> sku -> version sent: dicts of strings and ints only, which the
        # garbage collector does not track (20,000 tuple keys a watch would be walked by
        # every full collection)
        versions: dict[str, dict[str, int]] = {}
        bands: dict[str, dict[str, int]] = {}  # location -> sku -> band sent (bands_only)
        if send_current:
            size = len(watched.skus) * len(watched.locations)
            parts = aiter(self.availability.opening(watched))
            while True:  # each location's rows read and sent in a turn of their own
                async with self.openings.take(size):
                    levels = await anext(parts, None)
                    if levels is None:
                        break
                    for opened in await self._levels(channel, levels):
                        versions.setdefault(opened.location_id, {})[opened.sku] = opened.version
                        bands.setdefault(opened.location_id, {})[opened.sku] = opened.status
                        yield pb.AvailabilityChange(level=opened, current=True)
        wanted = set(watched.skus)
        while True:
            loc, sku, row = await watcher.next()
            sent = versions.get(loc, {}).get(sku, -1)
            if (not wanted or sku in wanted) and row.version > sent:
                (changed,) = await self._levels(channel, [(loc, sku, row)])
                if bands_only:
                    if bands.get(loc, {}).get(sku) == changed.status:
                        continue
                    bands.setdefault(loc, {})[sku] = changed.status
                yield pb.AvailabilityChange(level=changed)

    @rpc("FindNearby")
    async def FindNearby(
        self, request: pb.FindNearbyRequest, context: grpc.aio.ServicerContext
    ) -> pb.FindNearbyResponse:
        query = nearby_query_from_pb(request)
        found = await find_nearby(self.reader, self.locations, query, self.availability.channels)
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

    @rpc("GetNetworkAvailability")
    async def GetNetworkAvailability(
        self, request: pb.GetNetworkAvailabilityRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetNetworkAvailabilityResponse:
        check_size(len(request.skus), "skus", MAX_SKUS)
        channel = auth.current().channel_for(request.channel)
        listing = await self.networks.listing(request.network, request.skus, channel)
        return listing_pb(listing, request.include_members)
