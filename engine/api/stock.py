"""StockService: locations, safety stock, stock events (one call or a stream), counts,
the mappings of platforms' ids, sales channels' rules, pools and bands, and networks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc

from engine.api.channels import band_changes, bundle_changes, limit_changes, rule_changes
from engine.api.convert import OUTCOMES, event_from_pb, location_from_pb, state_from_pb
from engine.api.networks import network_changes
from engine.api.returns import ReturnRpcs
from engine.api.rpc import rpc, rpc_stream
from engine.api.supply import SupplyRpcs
from engine.domain.auth import current
from engine.domain.errors import InvalidArgument, OmnistockError
from engine.domain.model import (
    MAX_EVENTS,
    MAX_LOCATIONS,
    MAX_MAPPINGS,
    MAX_SAFETY_ENTRIES,
    IdKind,
    StockEvent,
    check_size,
)
from engine.domain.rules import Pool
from engine.metrics import Metrics
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.throttle import Budget, IdleStream, Rate, Turns, drain, gently, next_within
from engine.usecases.availability import Availability
from engine.usecases.bundles import set_bundles
from engine.usecases.channels import MAX_RULES, ChannelRules
from engine.usecases.ingest import Ingest
from engine.usecases.ingest_values import Count, Shortage, add_count_line, check_count
from engine.usecases.locations import LocationRegistry
from engine.usecases.networks import Networks
from engine.usecases.returns import Returns

# Heavy work at once in one process (engine/throttle.py): event batches converted and
# applied; counts being received (each holds its lines in memory until applied; how many
# lines all of them may hold, and how long one may stay silent, are settings). (Wide row
# reads take their turn in the store: engine/store/base.py BIG_READ.) One event batch at a
# time, its turn held while Redis applies it: two, or a turn for the conversion only, let
# 20 abusive streams double the small calls' p99, for 30% more events a second from one
# principal's bulk ApplyEvents (bench/RESULTS.md, "Heavy work in its lane").
INGEST_BATCHES = 1
LIGHT_BATCH = 100  # events: a batch this small never waits behind the big ones
COUNTS_AT_ONCE = 2
# A count refused part way is read on (and dropped) this long before the refusal is sent:
# grpc's asyncio client loses the server's status to INTERNAL when it is still writing as
# the status arrives (grpc/grpc#36066), so a client that ends its stream soon hears why.
DRAIN_SECONDS = 1.0
STREAM_READ_AHEAD = 8  # StreamEvents requests read before their answers are sent


def _events_of(batch: list[pb.StreamEventsRequest]) -> Iterator[StockEvent | OmnistockError]:
    """Each request's events, or for a request over MAX_EVENTS an error for each."""
    for request in batch:
        if len(request.events) > MAX_EVENTS:
            too_many = InvalidArgument("events", f"at most {MAX_EVENTS} events per message")
            yield from [too_many] * len(request.events)
            continue
        for i, m in enumerate(request.events):
            try:
                yield event_from_pb(m, f"events[{i}]")
            except InvalidArgument as exc:
                yield exc


class _Ended(Exception):
    """StreamEvents: the caller closed its side of the stream."""


def _arrived(
    first: pb.StreamEventsRequest, queue: asyncio.Queue[pb.StreamEventsRequest | Exception]
) -> tuple[list[pb.StreamEventsRequest], pb.StreamEventsRequest | Exception | None]:
    """`first` and the requests already queued behind it, up to MAX_EVENTS events; and the
    item taken that did not fit (the next batch's first request, or the stream's end)."""
    batch, events = [first], len(first.events)
    while not queue.empty():
        item = queue.get_nowait()
        if not isinstance(item, pb.StreamEventsRequest) or events + len(item.events) > MAX_EVENTS:
            return batch, item
        batch.append(item)
        events += len(item.events)
    return batch, None


def count_from_pb(msg: pb.CountHeader, zero_missing: bool) -> Count:
    if msg.missing != pb.MISSING_SKUS_UNSPECIFIED:
        zero_missing = msg.missing == pb.MISSING_SKUS_ZERO
    return check_count(
        Count(msg.location_id, msg.count_id, msg.counted_at, zero_missing, msg.source)
    )


def short_row_pb(s: Shortage) -> pb.ShortRow:
    return pb.ShortRow(
        location_id=s.location,
        sku=s.sku,
        on_hand=s.on_hand,
        reserved=s.reserved,
        uncovered=[
            pb.UncoveredHold(reservation_id=u.reservation_id, qty=u.qty, missing=u.missing)
            for u in s.uncovered
        ],
    )


class StockService(SupplyRpcs, ReturnRpcs, pb_grpc.StockServiceServicer):
    def __init__(
        self,
        ingest: Ingest,
        availability: Availability,
        locations: LocationRegistry,
        channels: ChannelRules,
        networks: Networks,
        metrics: Metrics,
        zero_missing: bool,
        count_lines_held: int = 1_000_000,
        count_idle_seconds: float = 30.0,
        ingest_rate: float = 0.0,
        returns: Returns | None = None,
    ) -> None:
        if returns is not None:
            self.returns = returns  # RecordReturn, SetReturnRules (engine/api/returns.py)
        self.ingest = ingest
        self.availability = availability
        self.zero_missing = zero_missing
        self.locations = locations
        self.channels = channels
        self.networks = networks
        self.metrics = metrics
        self.batches = Turns(INGEST_BATCHES, light=LIGHT_BATCH)
        self.counts = asyncio.Semaphore(COUNTS_AT_ONCE)
        self.count_lines = Budget(count_lines_held, "count lines")
        self.count_idle_seconds = count_idle_seconds
        self.pace = Rate(ingest_rate)

    @rpc("UpsertLocations")
    async def UpsertLocations(
        self, request: pb.UpsertLocationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertLocationsResponse:
        if not request.locations:
            raise InvalidArgument("locations", "at least one location is required")
        check_size(len(request.locations), "locations", MAX_LOCATIONS)
        locs = [location_from_pb(m, f"locations[{i}]") for i, m in enumerate(request.locations)]
        await self.locations.upsert(locs)
        return pb.UpsertLocationsResponse(upserted=len(locs))

    @rpc("SetSafetyStock")
    async def SetSafetyStock(
        self, request: pb.SetSafetyStockRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetSafetyStockResponse:
        # sized before it is read: converting 100,000 entries held the event loop ~100 ms
        check_size(len(request.entries), "entries", MAX_SAFETY_ENTRIES)
        entries = [(e.location_id, e.sku, e.qty) for e in request.entries]
        changed = await self.availability.set_safety_stock(entries)
        return pb.SetSafetyStockResponse(changed=changed)

    @rpc("ApplyEvents")
    async def ApplyEvents(
        self, request: pb.ApplyEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApplyEventsResponse:
        if not request.events:
            raise InvalidArgument("events", "at least one event is required")
        if len(request.events) > MAX_EVENTS:
            raise InvalidArgument("events", f"at most {MAX_EVENTS} events per call")
        await self._paced(len(request.events))
        async with self.batches.take(len(request.events)):
            events = [
                event_from_pb(m, f"events[{i}]") async for i, m in gently(enumerate(request.events))
            ]
            done = await self.ingest.apply(events, strict=True)
        return pb.ApplyEventsResponse(
            outcomes=[OUTCOMES[a.outcome.value] for a in done.acks],
            short_rows=[short_row_pb(s) for s in done.shortages],
        )

    @rpc_stream("StreamEvents")
    async def StreamEvents(
        self,
        requests: AsyncIterator[pb.StreamEventsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamEventsResponse]:
        """Reads at most STREAM_READ_AHEAD requests ahead of the batch it is applying; what
        has arrived by the time a batch is done goes in the next (up to MAX_EVENTS events),
        as one ingest call."""
        queue: asyncio.Queue[pb.StreamEventsRequest | Exception] = asyncio.Queue(STREAM_READ_AHEAD)

        async def read() -> None:
            try:
                async for request in requests:
                    await self._paced(len(request.events))
                    await queue.put(request)
                await queue.put(_Ended())
            except Exception as exc:  # the stream broke: the loop below raises it
                await queue.put(exc)

        reader = asyncio.create_task(read())
        self.metrics.event_streams.inc()
        try:
            item = await queue.get()
            while isinstance(item, pb.StreamEventsRequest):
                batch, after = _arrived(item, queue)
                for response in await self._acks(batch):
                    yield response
                item = after if after is not None else await queue.get()
            if not isinstance(item, _Ended):
                raise item
        finally:
            reader.cancel()
            self.metrics.event_streams.dec()

    async def _paced(self, items: int) -> None:
        """Waits while the caller's principal is over its ingest rate."""
        waited = await self.pace.take(current().name, items)
        if waited:
            self.metrics.ingest_paced.inc(waited)

    async def _acks(self, batch: list[pb.StreamEventsRequest]) -> list[pb.StreamEventsResponse]:
        """One ingest call for the events of several requests; one answer per request. A
        request over MAX_EVENTS has every event rejected; the stream goes on."""
        async with self.batches.take(sum(len(request.events) for request in batch)):
            items = [item async for item in gently(_events_of(batch))]
            if not items:
                return [pb.StreamEventsResponse() for _ in batch]
            # shielded: should the caller go away mid-call, the events applied still count
            done = await asyncio.shield(self.ingest.apply(items))
        out, at = [], 0
        for request in batch:
            acks = done.acks[at : at + len(request.events)]
            pairs = gently(zip(request.events, acks, strict=True))
            answer = pb.StreamEventsResponse()
            answer.acks.extend(
                [
                    pb.EventAck(
                        event_id=m.event_id, outcome=OUTCOMES[a.outcome.value], reason=a.reason
                    )
                    async for m, a in pairs
                ]
            )
            out.append(answer)
            at += len(request.events)
        if done.shortages:  # told once, on the answer to the last request of the batch
            out[-1].short_rows.extend(short_row_pb(s) for s in done.shortages)
        return out

    @rpc("ReconcileCount")
    async def ReconcileCount(
        self,
        request: AsyncIterator[pb.ReconcileCountRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.ReconcileCountResponse:
        async with self.counts:
            held: list[int] = [0]  # count lines this call holds of the process's budget
            try:
                try:
                    count, lines = await self._received(request, held)
                except IdleStream:
                    raise
                except OmnistockError:  # refused part way: its lines go back at once
                    self.count_lines.give(held[0])
                    held[0] = 0
                    await drain(request, DRAIN_SECONDS)
                    raise
                return await self._reconciled(count, lines)
            finally:
                self.count_lines.give(held[0])

    async def _received(
        self, requests: AsyncIterator[pb.ReconcileCountRequest], held: list[int]
    ) -> tuple[Count, dict[str, int]]:
        """The whole count, once its message marked end has come; a count that goes silent
        for count_idle_seconds is cut (its slot is others')."""
        count: Count | None = None
        lines: dict[str, int] = {}
        n, ended = 0, False
        while True:
            try:
                message = await next_within(requests, self.count_idle_seconds, "ReconcileCount")
            except StopAsyncIteration:
                break
            if ended:
                raise InvalidArgument("end", "no message may follow the one marked end")
            if count is None:
                count = count_from_pb(message.header, self.zero_missing)
            elif message.HasField("header"):
                raise InvalidArgument("header", "only the first message carries the header")
            self.count_lines.take(len(message.lines))
            await self._paced(len(message.lines))
            held[0] += len(message.lines)
            for line in message.lines:
                where = f"lines[{n}]"
                state = state_from_pb(line.state, f"{where}.state")
                add_count_line(lines, line.sku, line.qty, where, state)
                n += 1
            ended = message.end
        if count is None:
            raise InvalidArgument("header", "the first message must carry the count's header")
        if not ended:  # cancelled or cut off: a part of a count is not a count
            raise InvalidArgument("end", "the stream ended before the message marked end")
        return count, lines

    async def _reconciled(self, count: Count, lines: dict[str, int]) -> pb.ReconcileCountResponse:
        if not lines and count.zero_missing:
            raise InvalidArgument(
                "lines", "a count with no lines would zero every row: send missing KEEP"
            )
        # the whole count has arrived: it is applied in full, even if the caller goes away
        done = await asyncio.shield(self.ingest.count(count, lines))
        return pb.ReconcileCountResponse(
            lines=done.lines,
            changed=done.changed,
            unchanged=done.unchanged,
            zeroed=done.zeroed,
            short_rows=[short_row_pb(s) for s in done.shortages],
            stale=done.stale,
        )

    @rpc("SetMappings")
    async def SetMappings(
        self, request: pb.SetMappingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetMappingsResponse:
        if not request.mappings:
            raise InvalidArgument("mappings", "at least one mapping is required")
        check_size(len(request.mappings), "mappings", MAX_MAPPINGS)
        kinds = {pb.MAPPING_KIND_LOCATION: IdKind.LOCATION, pb.MAPPING_KIND_ITEM: IdKind.ITEM}
        changes = []
        for i, m in enumerate(request.mappings):
            if m.kind not in kinds:
                raise InvalidArgument(f"mappings[{i}].kind", "must be LOCATION or ITEM")
            changes.append((m.source, kinds[m.kind], m.external_id, m.id))
        await self.ingest.mappings.set(changes)
        return pb.SetMappingsResponse(changed=len(changes))

    @rpc("SetChannelRules")
    async def SetChannelRules(
        self, request: pb.SetChannelRulesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetChannelRulesResponse:
        changes = rule_changes(request.rules)
        return pb.SetChannelRulesResponse(version=await self.channels.set(changes))

    @rpc("SetPool")
    async def SetPool(
        self, request: pb.SetPoolRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetPoolResponse:
        check_size(len(request.pools), "pools", MAX_RULES)
        pools = [
            (m.location_id, m.sku, Pool(m.channel, m.units, m.fallback)) for m in request.pools
        ]
        return pb.SetPoolResponse(changed=await self.channels.set_pools(pools))

    @rpc("SetStockBands")
    async def SetStockBands(
        self, request: pb.SetStockBandsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetStockBandsResponse:
        changes = band_changes(request.bands)
        return pb.SetStockBandsResponse(version=await self.channels.set_bands(changes))

    @rpc("SetCustomerLimits")
    async def SetCustomerLimits(
        self, request: pb.SetCustomerLimitsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetCustomerLimitsResponse:
        limits = limit_changes(request.limits)
        return pb.SetCustomerLimitsResponse(version=await self.channels.set_limits(limits))

    @rpc("SetBundles")
    async def SetBundles(
        self, request: pb.SetBundlesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetBundlesResponse:
        version = await set_bundles(self.channels, bundle_changes(request.bundles))
        return pb.SetBundlesResponse(version=version)

    @rpc("UpsertNetworks")
    async def UpsertNetworks(
        self, request: pb.UpsertNetworksRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertNetworksResponse:
        changes = network_changes(request.networks)
        version, members = await self.networks.upsert(changes)
        return pb.UpsertNetworksResponse(
            networks=[
                pb.NetworkMembers(name=c.network.name, members=n)
                for c, n in zip(changes, members, strict=True)
            ],
            version=version,
        )
