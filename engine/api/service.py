"""The one seam to gRPC: servicers translate protobuf <-> domain, and our errors into status
codes (in `rpc`, the one place). No business rules live here."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from engine.domain.auth import current
from engine.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OmnistockError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from engine.domain.model import (
    MAX_LINES,
    MAX_ROWS,
    EventKind,
    Line,
    Location,
    LocationType,
    Reservation,
    StockEvent,
    StockRow,
    check_event,
    check_id,
    check_location,
    check_qty,
    check_size,
)
from engine.domain.sourcing import COST_FIELDS, Constraints, CostModel, OrderLine, Unfillable
from engine.metrics import Metrics
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.settings import Settings
from engine.store.storage import Storage
from engine.store.watch import Closing, Overflow, Watcher, WatchHub
from engine.throttle import Budget, IdleStream, Rate, Turns, drain, gently, next_within
from engine.usecases.allocation import Allocation, Allocator, Order, check_order
from engine.usecases.geo import HALF_CIRCUMFERENCE_KM, Fulfilment
from engine.usecases.ingest import (
    ITEM,
    LOCATION,
    Count,
    Ingest,
    Shortage,
    add_count_line,
    check_count,
)
from engine.usecases.locations import LocationRegistry
from engine.usecases.nearby import BasketLine, NearbyQuery, check_query, find_nearby
from engine.usecases.reservations import Reservations

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]

# The most of each repeated field one call may carry, checked before any other work.
MAX_SKUS = 1000
MAX_LOCATION_IDS = 1000
MAX_TYPES = 8
MAX_EVENTS = 5000
MAX_LOCATIONS = 10_000  # UpsertLocations
MAX_SAFETY_ENTRIES = 10_000
SAFETY_BATCH = 1000  # safety entries per script call: no script holds Redis for long
MAX_MAPPINGS = 10_000
# Heavy work at once in one process (engine/throttle.py): event batches converted and
# applied; counts being received (each holds its lines in memory until applied; how many
# lines all of them may hold, and how long one may stay silent, are settings). (Wide row
# reads take their turn in the store: engine/store/storage.py BIG_READ.)
INGEST_BATCHES = 2
LIGHT_BATCH = 100  # events: a batch this small never waits behind the big ones
COUNTS_AT_ONCE = 2
# A count refused part way is read on (and dropped) this long before the refusal is sent:
# grpc's asyncio client loses the server's status to INTERNAL when it is still writing as
# the status arrives (grpc/grpc#36066), so a client that ends its stream soon hears why.
DRAIN_SECONDS = 1.0
STREAM_READ_AHEAD = 8  # StreamEvents requests read before their answers are sent
# Kept back from a call's deadline to send the answer: a tenth of it, 50-250 ms.
_REPLY_MARGIN = (0.05, 0.1, 0.25)

_CODES: tuple[tuple[type[OmnistockError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
)

_TYPES = {
    pb.LOCATION_TYPE_STORE: LocationType.STORE,
    pb.LOCATION_TYPE_DC: LocationType.DC,
    pb.LOCATION_TYPE_DARK_STORE: LocationType.DARK_STORE,
}
_TYPES_BACK = {v: k for k, v in _TYPES.items()}
_FULFILMENTS = {
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
_UNFILLED = {
    Unfillable.NO_STOCK: pb.UNFILLED_REASON_NO_STOCK,
    Unfillable.CAPACITY: pb.UNFILLED_REASON_CAPACITY,
    Unfillable.SPLIT: pb.UNFILLED_REASON_SPLIT,
    Unfillable.MAX_SHIPMENTS: pb.UNFILLED_REASON_MAX_SHIPMENTS,
}
_OUTCOMES = {
    "APPLIED": pb.EVENT_OUTCOME_APPLIED,
    "DUPLICATE": pb.EVENT_OUTCOME_DUPLICATE,
    "STALE": pb.EVENT_OUTCOME_STALE,
    "ECHO": pb.EVENT_OUTCOME_ECHO,
    "REJECTED": pb.EVENT_OUTCOME_REJECTED,
}


def _margin(remaining: float) -> float:
    low, share, high = _REPLY_MARGIN
    return min(high, max(low, remaining * share))


def status_of(exc: OmnistockError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _failure(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str] | None:
    """The status a handler's exception is answered with; None: let it through (an abort
    the handler made itself, a cancel)."""
    if isinstance(exc, OmnistockError):
        return status_of(exc), str(exc)
    if isinstance(exc, TimeoutError):
        # The time went waiting on the store: say so while the caller still listens.
        return (
            grpc.StatusCode.UNAVAILABLE,
            f"{method}: the store did not answer within the deadline",
        )
    if isinstance(exc, grpc.aio.AbortError) or not isinstance(exc, Exception):
        return None
    log.error("%s failed unexpectedly", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"{method}: internal error (logged on the server)"


def _budget(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(remaining - _margin(remaining), 0.001)


@contextlib.asynccontextmanager
async def _answering(
    method: str, metrics: Metrics, context: grpc.aio.ServicerContext, stream: bool
) -> AsyncIterator[None]:
    """Times a call, and answers every exception of it with its status (see `rpc`)."""
    start, code = time.perf_counter(), grpc.StatusCode.OK
    try:
        yield
    except (GeneratorExit, asyncio.CancelledError):
        code = grpc.StatusCode.CANCELLED
        raise
    except BaseException as exc:
        if stream and (context.cancelled() or _answer_undeliverable(exc)):
            code = grpc.StatusCode.CANCELLED  # the caller is gone: no one to answer
            return
        failure = _failure(exc, method)
        if failure is None:
            code = context.code() or grpc.StatusCode.CANCELLED
            raise
        code = failure[0]
        await context.abort(*failure)
    finally:
        elapsed = time.perf_counter() - start
        metrics.rpc_seconds.labels(method, _code_name(code)).observe(elapsed)


def rpc(method: str) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
    """Times the call, honours its deadline, and maps every exception to a status code:
    ours to theirs, an unexpected one to INTERNAL (logged once), never UNKNOWN."""

    def wrap(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
        @functools.wraps(handler)
        async def run(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            async with _answering(method, self.metrics, context, stream=False):
                async with asyncio.timeout(_budget(context)):
                    return await handler(self, request, context)
            raise AssertionError("unreachable: a failure is answered by abort, which raises")

        return run

    return wrap


StreamHandler = Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]


def rpc_stream(method: str) -> Callable[[StreamHandler[Req, Resp]], StreamHandler[Req, Resp]]:
    """`rpc` for a handler that streams its answers: the stream's life is timed, its
    failure answered the same way (or not at all, once its caller has gone)."""

    def wrap(handler: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
        @functools.wraps(handler)
        async def run(
            self: Any, request: Req, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Resp]:
            async with _answering(method, self.metrics, context, stream=True):
                async for answer in handler(self, request, context):
                    yield answer

        return run

    return wrap


def _answer_undeliverable(exc: BaseException) -> bool:
    """grpc's own error when a status cannot be sent because the call has ended (the
    caller went away as the stream was closing); its class is not public."""
    return type(exc).__name__ == "ExecuteBatchError"


def _code_name(code: object) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


# -- translation ------------------------------------------------------------------------


def level(location: str, sku: str, row: StockRow) -> pb.StockLevel:
    return pb.StockLevel(
        location_id=location,
        sku=sku,
        available=row.available,
        on_hand=row.on_hand,
        reserved=row.reserved,
        safety_stock=row.safety_stock,
        version=row.version,
        as_of=row.as_of,
    )


def reservation_pb(res: Reservation) -> pb.Reservation:
    return pb.Reservation(
        reservation_id=res.id,
        state=_STATES[res.state.value],
        expires_at=res.expires_at if res.state.value == "HELD" else 0,
        lines=[
            pb.ReservationLine(location_id=ln.location, sku=ln.sku, qty=ln.qty) for ln in res.lines
        ],
    )


def location_from_pb(msg: pb.Location, field: str) -> Location:
    if msg.type not in _TYPES:
        raise InvalidArgument(f"{field}.type", "must be STORE, DC or DARK_STORE")
    loc = Location(
        id=msg.id,
        name=msg.name or msg.id,
        type=_TYPES[msg.type],
        latitude=msg.latitude,
        longitude=msg.longitude,
        pickup_enabled=msg.pickup_enabled,
        ship_enabled=msg.ship_enabled,
        ship_capacity=msg.ship_capacity if msg.HasField("ship_capacity") else None,
        priority=msg.priority,
        active=msg.active,
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
    )
    if loc.ship_capacity is not None:
        msg.ship_capacity = loc.ship_capacity
    return msg


def event_from_pb(msg: pb.StockEvent, field: str) -> StockEvent:
    kinds = {pb.EVENT_KIND_COUNT: EventKind.COUNT, pb.EVENT_KIND_DELTA: EventKind.DELTA}
    if msg.kind not in kinds:
        raise InvalidArgument(f"{field}.kind", "must be COUNT or DELTA")
    event = StockEvent(
        event_id=msg.event_id,
        location=msg.location_id,
        sku=msg.sku,
        kind=kinds[msg.kind],
        qty=msg.qty,
        source_time=msg.source_time,
        reservation_id=msg.reservation_id,
        source=msg.source,
    )
    return check_event(event, field)


def _check_reads(skus: Sequence[str], location_ids: Sequence[str], types: Sequence[int]) -> None:
    check_size(len(skus), "skus", MAX_SKUS)
    check_size(len(location_ids), "location_ids", MAX_LOCATION_IDS)
    check_size(len(types), "location_types", MAX_TYPES)


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


def types_from_pb(values: Sequence[pb.LocationType.ValueType], field: str) -> set[LocationType]:
    check_size(len(values), field, MAX_TYPES)
    types = set()
    for i, t in enumerate(values):
        if t not in _TYPES:
            raise InvalidArgument(f"{field}[{i}]", "must be STORE, DC or DARK_STORE")
        types.add(_TYPES[t])
    return types


def nearby_query_from_pb(msg: pb.FindNearbyRequest) -> NearbyQuery:
    check_size(len(msg.lines), "lines", MAX_LINES)
    if msg.fulfilment not in _FULFILMENTS:
        raise InvalidArgument("fulfilment", "must be PICKUP, SHIP or unspecified (any)")
    return check_query(
        NearbyQuery(
            latitude=msg.latitude,
            longitude=msg.longitude,
            radius_km=msg.radius_km,
            lines=tuple(BasketLine(ln.sku, ln.qty) for ln in msg.lines),
            fulfilment=_FULFILMENTS[msg.fulfilment],
            types=frozenset(types_from_pb(msg.location_types, "location_types")),
            limit=msg.limit or 10,
            partial=msg.partial,
        )
    )


def lines_from_pb(lines: Sequence[pb.ReservationLine]) -> list[Line]:
    return [Line(ln.location_id, ln.sku, ln.qty) for ln in lines]


def order_from_pb(msg: pb.AllocateRequest, defaults: Settings) -> Order:
    cost = msg.cost

    def pick(name: str) -> Any:
        return getattr(cost, name) if cost.HasField(name) else getattr(defaults, name)  # type: ignore[arg-type]

    check_size(len(msg.lines), "lines", MAX_LINES)
    check_size(len(msg.excluded_location_ids), "excluded_location_ids", MAX_LOCATION_IDS)
    return check_order(
        Order(
            lines=tuple(OrderLine(ln.sku, ln.qty) for ln in msg.lines),
            latitude=msg.latitude,
            longitude=msg.longitude,
            constraints=Constraints(msg.max_shipments or defaults.max_shipments, msg.allow_split),
            types=frozenset(types_from_pb(msg.location_types, "location_types")),
            excluded=frozenset(msg.excluded_location_ids),
            max_distance_km=msg.max_distance_km or HALF_CIRCUMFERENCE_KM,
            model=CostModel(**{name: pick(name) for name in COST_FIELDS}),
            reserve=msg.reserve,
            reservation_id=msg.reservation_id,
            ttl_seconds=msg.ttl_seconds,
            allow_partial=msg.allow_partial,
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


# -- services ---------------------------------------------------------------------------


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


class ReservationService(pb_grpc.ReservationServiceServicer):
    def __init__(
        self, reservations: Reservations, locations: LocationRegistry, metrics: Metrics
    ) -> None:
        self.reservations = reservations
        self.locations = locations
        self.metrics = metrics

    @rpc("Reserve")
    async def Reserve(
        self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReserveResponse:
        check_size(len(request.lines), "lines", MAX_LINES)
        lines = lines_from_pb(request.lines)
        for i, line in enumerate(lines):
            check_id(line.location, f"lines[{i}].location_id")
        await self.locations.require([ln.location for ln in lines], "lines[].location_id")
        result = await self.reservations.reserve(request.reservation_id, lines, request.ttl_seconds)
        if result.reservation is not None:
            return pb.ReserveResponse(reservation=reservation_pb(result.reservation))
        return pb.ReserveResponse(
            shortfalls=[
                pb.Shortfall(
                    location_id=s.location, sku=s.sku, requested=s.requested, available=s.available
                )
                for s in result.shortfalls
            ]
        )

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


class SourcingService(pb_grpc.SourcingServiceServicer):
    def __init__(self, allocator: Allocator, metrics: Metrics, defaults: Settings) -> None:
        self.allocator = allocator
        self.metrics = metrics
        self.defaults = defaults

    @rpc("Allocate")
    async def Allocate(
        self, request: pb.AllocateRequest, context: grpc.aio.ServicerContext
    ) -> pb.AllocateResponse:
        order = order_from_pb(request, self.defaults)
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


class StockService(pb_grpc.StockServiceServicer):
    def __init__(
        self,
        ingest: Ingest,
        locations: LocationRegistry,
        metrics: Metrics,
        zero_missing: bool,
        count_lines_held: int = 1_000_000,
        count_idle_seconds: float = 30.0,
        ingest_rate: float = 0.0,
    ) -> None:
        self.ingest = ingest
        self.zero_missing = zero_missing
        self.storage = ingest.storage
        self.locations = locations
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
        if not request.entries:
            raise InvalidArgument("entries", "at least one entry is required")
        check_size(len(request.entries), "entries", MAX_SAFETY_ENTRIES)
        groups: dict[str, list[tuple[str, int]]] = {}
        for i, e in enumerate(request.entries):
            check_id(e.location_id, f"entries[{i}].location_id")
            check_id(e.sku, f"entries[{i}].sku")
            check_qty(e.qty, f"entries[{i}].qty", allow_zero=True)
            groups.setdefault(e.location_id, []).append((e.sku, e.qty))
        await self.locations.require(list(groups), "entries[].location_id")
        batches = [
            (loc, items[i : i + SAFETY_BATCH])
            for loc, items in groups.items()
            for i in range(0, len(items), SAFETY_BATCH)
        ]
        changed = await asyncio.gather(
            *(self.storage.set_safety_stock(loc, items) for loc, items in batches)
        )
        return pb.SetSafetyStockResponse(changed=sum(changed))

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
            outcomes=[_OUTCOMES[a.outcome.value] for a in done.acks],
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
                        event_id=m.event_id, outcome=_OUTCOMES[a.outcome.value], reason=a.reason
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
                add_count_line(lines, line.sku, line.qty, f"lines[{n}]")
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
        )

    @rpc("SetMappings")
    async def SetMappings(
        self, request: pb.SetMappingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetMappingsResponse:
        if not request.mappings:
            raise InvalidArgument("mappings", "at least one mapping is required")
        check_size(len(request.mappings), "mappings", MAX_MAPPINGS)
        kinds = {pb.MAPPING_KIND_LOCATION: LOCATION, pb.MAPPING_KIND_ITEM: ITEM}
        changes = []
        for i, m in enumerate(request.mappings):
            if m.kind not in kinds:
                raise InvalidArgument(f"mappings[{i}].kind", "must be LOCATION or ITEM")
            changes.append((m.source, kinds[m.kind], m.external_id, m.id))
        await self.ingest.mappings.set(changes)
        return pb.SetMappingsResponse(changed=len(changes))
