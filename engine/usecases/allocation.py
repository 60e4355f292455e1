"""Allocate: plan which locations ship an order, from fresh stock, and optionally hold it.

Candidates are the active, ship-enabled locations of the allowed types, not excluded,
within the maximum distance of the destination: the nearest MAX_CANDIDATES of them, fewer
for long orders so that one call reads at most MAX_ROWS stock rows. Their
rows for every line and today's pick capacity are read together (two pipelines sent at
once: one round trip of latency), the optimiser (engine.domain.sourcing) plans, and with
`reserve` the plan is held under one reservation id, taking one order of the daily pick
capacity at each shipping location that has a limit (atomic per location, the saga across
them). If the hold fails because stock moved or a location's capacity ran out since the
read, the order is planned again from fresh figures, at most MAX_ATTEMPTS times in all;
the answer says what happened to each earlier attempt.

A retried Allocate (same reservation id) answers the plan it held before, priced anew,
when the reservation holds the same units of each sku as the order (with allow_partial: no
more of each sku than the order, and the rest unfilled); otherwise the id is taken
(ALREADY_EXISTS).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
from collections import Counter
from dataclasses import dataclass, field

from engine.domain.bundles import check_disjoint, rows_per
from engine.domain.errors import AlreadyExists, InvalidArgument, NotFound
from engine.domain.geo import HALF_CIRCUMFERENCE_KM, Fulfilment, check_radius, distance_km
from engine.domain.model import (
    MAX_ROWS,
    BasketLine,
    Location,
    LocationType,
    Reservation,
    Shortfall,
    check_coordinates,
    check_id,
    check_sku_lines,
    check_ttl,
)
from engine.domain.sourcing import (
    COST_FIELDS,
    MAX_SHIPMENTS,
    Candidate,
    Constraints,
    CostModel,
    Plan,
    price,
)
from engine.store.storage import Storage
from engine.usecases.bundles import read_through
from engine.usecases.locations import LocationRegistry
from engine.usecases.planner import Planner
from engine.usecases.reservations import Reservations

MAX_CANDIDATES = 500
MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Order:
    lines: tuple[BasketLine, ...]
    latitude: float
    longitude: float
    constraints: Constraints = field(default_factory=Constraints)
    types: frozenset[LocationType] = frozenset()
    excluded: frozenset[str] = frozenset()
    max_distance_km: float = HALF_CIRCUMFERENCE_KM
    model: CostModel = field(default_factory=CostModel)
    reserve: bool = False
    reservation_id: str = ""
    ttl_seconds: float = 0.0  # 0: the server's default
    allow_partial: bool = False  # with reserve: hold a plan that leaves units unfilled
    channel: str = ""  # the sales channel ordering: planned and held under its rules
    customer: str = ""  # with reserve: the shopper, held to per-customer limits


@dataclass(frozen=True, slots=True)
class Allocation:
    plan: Plan
    reservation: Reservation | None = None
    attempts: int = 0  # plans made (0: a retried call answered from its earlier hold)
    retries: tuple[str, ...] = field(default=())  # why each earlier attempt's hold failed


def check_order(order: Order) -> Order:
    """The order as given, or INVALID_ARGUMENT naming the first bad field."""
    check_coordinates(order.latitude, order.longitude)
    check_sku_lines([(ln.sku, ln.qty) for ln in order.lines], "order")
    if not 1 <= order.constraints.max_shipments <= MAX_SHIPMENTS:
        raise InvalidArgument(
            "max_shipments", f"must be 1 to {MAX_SHIPMENTS}, got {order.constraints.max_shipments}"
        )
    check_radius(order.max_distance_km, "max_distance_km")
    for i, location in enumerate(sorted(order.excluded)):
        check_id(location, f"excluded_location_ids[{i}]")
    _check_model(order.model)
    if order.channel:
        check_id(order.channel, "channel")
    if order.customer:
        check_id(order.customer, "customer_id")
    if order.reserve:
        check_id(order.reservation_id, "reservation_id")
        if order.ttl_seconds:
            check_ttl(order.ttl_seconds, "ttl_seconds")
    return order


def _check_model(model: CostModel) -> None:
    for name in COST_FIELDS:
        value = getattr(model, name)
        if not (math.isfinite(value) and value >= 0):
            raise InvalidArgument(f"cost.{name}", f"must be a finite number >= 0, got {value}")


class Allocator:
    def __init__(
        self,
        storage: Storage,
        registry: LocationRegistry,
        reservations: Reservations,
        planner: Planner | None = None,
    ) -> None:
        self.storage = storage
        self.registry = registry
        self.reservations = reservations
        self.planner = planner or Planner(workers=0, waiting=0)

    async def allocate(self, order: Order) -> Allocation:
        if order.reserve:
            earlier = await self._earlier(order)
            if earlier is not None:
                return earlier
        retries: list[str] = []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            plan = await self.planner.plan(
                order.lines, await self.candidates(order), order.model, order.constraints
            )
            nothing_to_hold = not order.reserve or not plan.shipments
            if nothing_to_hold or (plan.unfilled and not order.allow_partial):
                return Allocation(plan, None, attempt, tuple(retries))
            held = await self.reservations.reserve(
                order.reservation_id,
                plan.reservation_lines(),
                order.ttl_seconds,
                capacity=_limits(plan),
                channel=order.channel,
                customer=order.customer,
            )
            if held.ok:
                return Allocation(plan, held.reservation, attempt, tuple(retries))
            retries.append(_why_not_held(held.shortfalls, held.full))
        return Allocation(plan, None, MAX_ATTEMPTS, tuple(retries))

    async def candidates(self, order: Order) -> list[Candidate]:
        """The locations that may ship the order, nearest first, with their stock of each
        line and the orders they may still pick today."""
        index = await self.registry.index()
        near = index.within(
            order.latitude, order.longitude, order.max_distance_km, set(order.types),
            Fulfilment.SHIP,
        )  # fmt: skip
        table = await self.reservations.channels.table()
        check_disjoint([ln.sku for ln in order.lines], table, "lines")
        width = rows_per((ln.sku for ln in order.lines), table)  # a bundle reads its components
        most = min(MAX_CANDIDATES, MAX_ROWS // width)
        near = [(d, loc) for d, loc in near if loc.id not in order.excluded][:most]
        pairs = [(loc.id, ln.sku) for _, loc in near for ln in order.lines]
        limited = [loc.id for _, loc in near if loc.ship_capacity is not None]
        available, used = await asyncio.gather(
            self._available(pairs, order.channel),
            self.storage.capacity_used(limited, self.reservations.today()),
        )
        used_at = dict(zip(limited, used, strict=True))
        width = len(order.lines)
        return [
            Candidate(
                loc,
                distance,
                tuple(available[i * width : (i + 1) * width]),
                _left(loc, used_at.get(loc.id, 0)),
            )
            for i, (distance, loc) in enumerate(near)
        ]

    async def _available(self, pairs: list[tuple[str, str]], channel: str) -> list[int]:
        """What may be held of each row: by the channel's rules when it names one; of a
        bundle, the kits its components' make (read in the same call)."""
        channels = self.reservations.channels
        if not channel:
            read = self.storage.available
        else:
            read = functools.partial(channels.offered, self.storage, channel, self.registry.by_id)
        return await read_through(await channels.table(), pairs, read)

    async def _earlier(self, order: Order) -> Allocation | None:
        """A retry of an Allocate that held its plan: that plan, if it is this order's."""
        try:
            held = await self.reservations.get(order.reservation_id)
        except NotFound:
            return None
        units: Counter[str] = Counter()
        for line in held.lines:
            units[line.sku] += line.qty
        wanted = Counter({ln.sku: ln.qty for ln in order.lines})
        # a partial hold holds part of the order, never more of any sku nor another sku
        same = units - wanted == Counter() if order.allow_partial else units == wanted
        if not same:
            raise AlreadyExists(
                f"reservation {order.reservation_id} exists with other lines than this order"
            )
        taken: dict[str, dict[str, int]] = {}
        for line in held.lines:
            taken.setdefault(line.location, {})[line.sku] = line.qty
        # priced as it was made: the stock it holds (or took) counted as still there
        candidates = [_with_units_of(c, taken, order) for c in await self.candidates(order)]
        known = {c.location.id for c in candidates}
        missing = [loc for loc in taken if loc not in known]
        candidates += await self._far_candidates(order, missing)
        plan = price(order.lines, candidates, order.model, order.constraints, taken)
        return Allocation(plan, held, 0, ())

    async def _far_candidates(self, order: Order, ids: list[str]) -> list[Candidate]:
        """Locations of an earlier plan that are no longer candidates (since deactivated,
        say): priced at their distance, with no stock of their own counted."""
        if not ids:
            return []
        await self.registry.require(ids, "reservation_id")
        out = []
        for loc_id in ids:
            loc = self.registry.by_id[loc_id]
            d = distance_km(order.latitude, order.longitude, loc.latitude, loc.longitude)
            out.append(Candidate(loc, d, (0,) * len(order.lines)))
        return out


def _with_units_of(
    candidate: Candidate, taken: dict[str, dict[str, int]], order: Order
) -> Candidate:
    mine = taken.get(candidate.location.id, {})
    if not mine:
        return candidate
    available = tuple(
        a + mine.get(ln.sku, 0) for a, ln in zip(candidate.available, order.lines, strict=True)
    )
    return dataclasses.replace(candidate, available=available)


def _left(location: Location, used: int) -> int | None:
    return None if location.ship_capacity is None else max(0, location.ship_capacity - used)


def _limits(plan: Plan) -> dict[str, int]:
    return {
        s.location.id: s.location.ship_capacity
        for s in plan.shipments
        if s.location.ship_capacity is not None
    }


def _why_not_held(shortfalls: tuple[Shortfall, ...], full: tuple[str, ...]) -> str:
    parts = [f"{s.location}: {s.sku} short, {s.available} of {s.requested}" for s in shortfalls]
    parts += [f"{loc}: no pick capacity left today" for loc in full]
    return "stock moved since the plan was made; " + "; ".join(parts)
