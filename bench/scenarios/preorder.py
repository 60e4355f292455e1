"""preorder: a launch sold against incoming supply. A few launch skus at each store have a
little stock on hand and purchase orders due in 3, 7, 14 and 21 days; shoppers preorder 1-2
units with a promise date 5 to 30 days out (on hand first, the rest held against the supply
due by then, or short), check the promise of the sku (GetPromise), or cancel an earlier
preorder (Release). Each request is one RPC. No supply is received during the load: the rows'
reserved units stay exactly what the load holds on hand, which the run checks at the end."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter

from bench.scenarios import Stubs
from bench.scenarios.common import seed_stores, sku_id, store_id
from engine.domain.supply import DAY_MS
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

DUE_DAYS = (3, 7, 14, 21)
PROMISE_DAYS = (5, 10, 20, 30)


class Preorder:
    def __init__(
        self,
        stores: int = 10,
        skus: int = 20,
        on_hand: int = 20,
        po_units: int = 2000,
        reads: int = 15,  # percent of requests that read a promise
        cancels: int = 5,  # percent that release an earlier preorder
    ) -> None:
        self.stores, self.skus, self.on_hand, self.po_units = stores, skus, on_hand, po_units
        self.reads, self.cancels = reads, cancels
        self.made: list[tuple[str, str, str, int]] = []  # (rid, location, sku, units on hand)

    async def setup(self, stubs: Stubs) -> None:
        await seed_stores(stubs, self.stores, self.skus, on_hand=self.on_hand)
        now = int(time.time() * 1000)
        supplies = [
            pb.Supply(
                supply_id=f"po-{d}-{k}",
                location_id=store_id(i),
                sku=sku_id(k),
                qty=self.po_units,
                expected_at=now + d * DAY_MS,
            )
            for i in range(self.stores)
            for k in range(self.skus)
            for d in DUE_DAYS
        ]
        for start in range(0, len(supplies), 1000):
            request = pb.UpsertSupplyRequest(supplies=supplies[start : start + 1000])
            await stubs.stock.UpsertSupply(request)

    async def request(
        self, stubs: Stubs, rng: random.Random, held: Counter[tuple[str, str]]
    ) -> str:
        at, sku = store_id(rng.randrange(self.stores)), sku_id(rng.randrange(self.skus))
        roll = rng.randrange(100)
        if roll < self.reads:
            request = pb.GetPromiseRequest(skus=[sku], location_ids=[at])
            await stubs.availability.GetPromise(request, timeout=5)
            return "ok"
        if roll < self.reads + self.cancels and self.made:
            rid, loc, held_sku, units = self.made.pop(rng.randrange(len(self.made)))
            await stubs.reservations.Release(pb.ReleaseRequest(reservation_id=rid), timeout=5)
            held[(loc, held_sku)] -= units
            return "ok"
        qty = rng.randint(1, 2)
        by = int(time.time() * 1000) + rng.choice(PROMISE_DAYS) * DAY_MS
        rid = f"pre-{uuid.uuid4().hex}"
        line = pb.ReservationLine(location_id=at, sku=sku, qty=qty, promise_by=by)
        request = pb.ReserveRequest(reservation_id=rid, ttl_seconds=3600, lines=[line])
        resp = await stubs.reservations.Reserve(request, timeout=5)
        if not resp.HasField("reservation"):
            return "short"
        (got,) = resp.reservation.lines
        held[(at, sku)] += qty - got.future_qty  # what it holds on hand now
        self.made.append((rid, at, sku, qty - got.future_qty))
        return "ok"
