"""Future supply (UpsertSupply) and promises by date (GetPromise).

UpsertSupply checks every supply by field, then changes each location's supply in one
script there (supply.lua). A call that spans locations first asks each location, without
writing, whether it would refuse (another sku under an id, a row's supply full), so that a
refused call changes nothing; each location's change is then all or nothing, and the call
as a whole is safe to retry (the same supply set again is UNCHANGED).

GetPromise reads each location's rows and their supply in one script call (read_promise.lua),
every location's at once, and works out each row's promise in the domain
(engine/domain/supply.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from engine.domain.clock import Clock
from engine.domain.errors import FailedPrecondition, InvalidArgument
from engine.domain.model import MAX_LOCATION_IDS, check_id, check_ids, check_size
from engine.domain.supply import (
    DAY_MS,
    MAX_PROMISE_ROWS,
    MAX_PROMISE_SKUS,
    MAX_SUPPLY_PER_ROW,
    Promise,
    Supply,
    SupplyOutcome,
    check_horizon,
    check_supplies,
    network_total,
    promise,
)
from engine.metrics import Metrics
from engine.store.storage import Storage
from engine.store.supply import SupplyChanged, SupplyOp, supply_entry
from engine.usecases.locations import LocationRegistry
from engine.usecases.networks import Networks


@dataclass(frozen=True, slots=True)
class Promises:
    as_of: int
    horizon_end: int
    promises: list[Promise]  # location by location, skus as asked
    totals: list[Promise]  # with a network: per sku


def _op(supply: Supply) -> SupplyOp:
    if supply.received:
        return SupplyOp(supply_entry(supply.supply_id), supply.sku, supply.qty, op="R")
    if supply.cancel:
        return SupplyOp(supply_entry(supply.supply_id), supply.sku, op="X")
    return SupplyOp(
        supply_entry(supply.supply_id), supply.sku, supply.qty, supply.expected_at, supply.kind
    )


def _refusal(changed: SupplyChanged, indexes: Sequence[int], supplies: Sequence[Supply]) -> None:
    if changed.refused is None:
        return
    at, why, sku = changed.refused
    i = indexes[at]
    if why == "SKU":
        raise InvalidArgument(
            f"supplies[{i}].sku",
            f"supply {supplies[i].supply_id!r} at {supplies[i].location!r} is of sku {sku!r}: "
            "cancel it and make a new one",
        )
    if why == "CANCELLED":
        raise FailedPrecondition(
            f"supplies[{i}]: supply {supplies[i].supply_id!r} at {supplies[i].location!r} was "
            "cancelled: it cannot be received (record its units with a stock event)"
        )
    raise FailedPrecondition(
        f"supplies[{i}]: {supplies[i].sku!r} at {supplies[i].location!r} has "
        f"{MAX_SUPPLY_PER_ROW} open supplies already; cancel some first"
    )


class Supplies:
    def __init__(
        self,
        storage: Storage,
        locations: LocationRegistry,
        networks: Networks,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.storage = storage
        self.locations = locations
        self.networks = networks
        self.clock = clock
        self.metrics = metrics or Metrics()

    async def upsert(self, supplies: Sequence[Supply]) -> list[SupplyOutcome]:
        now = self.clock.now_ms()
        check_supplies(supplies, now)
        for i, s in enumerate(supplies):
            await self.locations.require([s.location], f"supplies[{i}].location_id")
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(supplies):
            groups.setdefault(s.location, []).append(i)

        async def change(location: str, dry: bool) -> SupplyChanged:
            idx = groups[location]
            ops = [_op(supplies[i]) for i in idx]
            changed = await self.storage.change_supply(location, ops, now, dry=dry)
            _refusal(changed, idx, supplies)
            return changed

        if len(groups) > 1:
            await asyncio.gather(*(change(loc, True) for loc in groups))
        outcomes: list[SupplyOutcome] = [SupplyOutcome.UNCHANGED] * len(supplies)
        for location, changed in zip(
            groups, await asyncio.gather(*(change(loc, False) for loc in groups)), strict=True
        ):
            for i, outcome in zip(groups[location], changed.outcomes, strict=True):
                outcomes[i] = outcome or SupplyOutcome.CANCELLED
            await settled(self.storage, self.metrics, changed, now)
        for s, outcome in zip(supplies, outcomes, strict=True):
            kind = "cancel" if s.cancel else "received" if s.received else s.kind.name.lower()
            self.metrics.supply.labels(kind, outcome.value.lower()).inc()
        return outcomes

    async def promise(
        self,
        skus: Sequence[str],
        location_ids: Sequence[str],
        network: str = "",
        horizon_days: int = 0,
    ) -> Promises:
        wanted = _skus(skus)
        days = check_horizon(horizon_days)
        if network and location_ids:
            raise InvalidArgument("location_ids", "give location_ids or a network, not both")
        if network:
            check_id(network, "network")
            locations = list(await self.networks.members(network))
        else:
            if not location_ids:
                raise InvalidArgument("location_ids", "at least one location (or a network)")
            check_size(len(location_ids), "location_ids", MAX_LOCATION_IDS)
            check_ids(location_ids, "location_ids")
            locations = list(dict.fromkeys(location_ids))
            await self.locations.require(locations, "location_ids")
        if len(wanted) * len(locations) > MAX_PROMISE_ROWS:
            raise InvalidArgument(
                "skus", f"at most {MAX_PROMISE_ROWS} rows (skus x locations) per call"
            )
        now = self.clock.now_ms()
        end = now + days * DAY_MS
        reads = await asyncio.gather(*(self.storage.promise_rows(loc, wanted) for loc in locations))
        promises = [
            promise(loc, sku, row, incoming, future, now, end)
            for loc, got in zip(locations, reads, strict=True)
            for sku, (row, incoming, future) in zip(wanted, got, strict=True)
        ]
        totals = []
        if network:
            for j, sku in enumerate(wanted):
                totals.append(network_total(sku, promises[j :: len(wanted)]))
        return Promises(now, end, promises, totals)


async def settled(storage: Storage, metrics: Metrics, changed: SupplyChanged, now: int) -> None:
    """What a change of a location's supply did to its future holds, told: counted, and each
    broken promise put on the alerts stream (its part marks it too: GetReservation says)."""
    metrics.future_holds.labels("converted").inc(sum(qty for _, _, qty in changed.converted))
    metrics.future_holds.labels("broken").inc(sum(b.qty for b in changed.broken))
    await storage.publish_alerts(
        [
            {
                "kind": "promise_broken",
                "at": str(now),
                "reservation_id": b.reservation_id,
                "location_id": b.location,
                "sku": b.sku,
                "qty": str(b.qty),
                "promise_by": str(b.promise_by),
            }
            for b in changed.broken
        ]
    )


def _skus(skus: Sequence[str]) -> list[str]:
    if not skus:
        raise InvalidArgument("skus", "at least one sku is required")
    check_size(len(skus), "skus", MAX_PROMISE_SKUS)
    check_ids(skus, "skus")
    return list(dict.fromkeys(skus))
