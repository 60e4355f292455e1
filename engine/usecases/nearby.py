"""FindNearby: the locations near a point that can fill one sku or a whole basket.

Candidates come from the in-process location index (engine.usecases.index), nearest
first. Their rows are read in rounds of growing size (32 locations, then 64, 128, ...),
each round one pipelined read (one script per location); a whole-basket search stops as
soon as it has `limit` locations that fill the basket, so a common query costs one round
trip. A partial search ranks locations by how much of the basket they fill, so it reads
every candidate, at most MAX_CANDIDATES of them (the nearest), fewer for a long basket, so
that one call reads at most MAX_ROWS stock rows (candidates x lines). Availability is the
engine's own: on_hand less what reservations hold and less safety stock, read through the
read cache when it is on (engine/store/rowcache.py); for a sales channel, what its rules
let it hold (engine/usecases/channels.py); of a bundle, the kits its components make
(engine/usecases/bundles.py: its components' rows read in the same round).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from engine.domain.bundles import Pair, check_disjoint, rows_per
from engine.domain.errors import InvalidArgument
from engine.domain.geo import Fulfilment, check_radius
from engine.domain.model import (
    MAX_ROWS,
    BasketLine,
    LocationType,
    NearbyHit,
    check_coordinates,
    check_id,
    check_sku_lines,
)
from engine.store.rowcache import RowReader
from engine.usecases.bundles import read_through
from engine.usecases.channels import ChannelRules
from engine.usecases.locations import LocationRegistry

MAX_CANDIDATES = 2000
FIRST_ROUND = 32
MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class NearbyQuery:
    latitude: float
    longitude: float
    radius_km: float
    lines: tuple[BasketLine, ...]
    fulfilment: Fulfilment = Fulfilment.ANY
    types: frozenset[LocationType] = frozenset()
    limit: int = 10
    partial: bool = False
    channel: str = ""  # a sales channel: what it may hold, its rules applied


@dataclass(frozen=True, slots=True)
class NearbyResult:
    hits: list[NearbyHit]
    considered: int


def check_query(query: NearbyQuery) -> NearbyQuery:
    """The query as given, or INVALID_ARGUMENT naming the first bad field."""
    check_coordinates(query.latitude, query.longitude)
    check_radius(query.radius_km, "radius_km")
    check_sku_lines([(ln.sku, ln.qty) for ln in query.lines], "basket")
    if not 1 <= query.limit <= MAX_LIMIT:
        raise InvalidArgument("limit", f"must be 1 to {MAX_LIMIT} (0: 10), got {query.limit}")
    if query.channel:
        check_id(query.channel, "channel")
    return query


async def find_nearby(
    reader: RowReader,
    registry: LocationRegistry,
    query: NearbyQuery,
    channels: ChannelRules | None = None,
) -> NearbyResult:
    """reader: the read cache, or the storage itself (Redis); channels: the sales channels'
    rules, for a query that names its channel."""
    index = await registry.index()
    table = await channels.table() if channels is not None else {}
    check_disjoint([ln.sku for ln in query.lines], table, "lines")
    width = rows_per((ln.sku for ln in query.lines), table)  # a bundle reads its components
    most = min(MAX_CANDIDATES, MAX_ROWS // width)  # a long basket reads fewer
    candidates = index.within(
        query.latitude, query.longitude, query.radius_km, set(query.types), query.fulfilment
    )[:most]
    lines = query.lines
    read: Callable[[Sequence[Pair]], Awaitable[list[int]]] = reader.available
    if query.channel and channels is not None:
        read = functools.partial(channels.offered, reader, query.channel, registry.by_id)
    full: list[NearbyHit] = []
    part: list[NearbyHit] = []
    start, size = 0, FIRST_ROUND
    while start < len(candidates) and (query.partial or len(full) < query.limit):
        batch = candidates[start : start + size]
        pairs = [(loc.id, ln.sku) for _, loc in batch for ln in lines]
        available = await read_through(table, pairs, read)
        for i, (distance, loc) in enumerate(batch):
            hit = NearbyHit(loc, distance, tuple(available[i * len(lines) : (i + 1) * len(lines)]))
            filled, units = hit.filled(lines)
            if filled == len(lines):
                full.append(hit)
            elif units > 0:
                part.append(hit)
        start, size = start + size, size * 2
    hits = full[: query.limit]  # already nearest first
    if query.partial:
        ranked = [(h.filled(lines), h) for h in part]  # each hit's fill computed once
        ranked.sort(key=lambda x: (-x[0][0], -x[0][1], x[1].distance_km))
        part = [h for _, h in ranked]
        hits += part[: query.limit - len(hits)]
    return NearbyResult(hits, min(start, len(candidates)))
