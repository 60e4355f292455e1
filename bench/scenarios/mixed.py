"""mixed: a day in the life: 70% storefront reads, 20% till sales, 10% store systems
sending stock deltas."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter

from bench.scenarios import Stubs
from bench.scenarios.common import seed_stores, sku_id, store_id
from bench.scenarios.pos import Pos
from bench.scenarios.storefront import Storefront
from engine.pb.omnistock.v1 import omnistock_pb2 as pb


class Mixed:
    def __init__(self, stores: int = 20, skus: int = 2000) -> None:
        self.stores, self.skus = stores, skus
        self.storefront = Storefront(stores, skus)
        self.pos = Pos(stores, skus)

    async def setup(self, stubs: Stubs) -> None:
        await seed_stores(stubs, self.stores, self.skus, on_hand=1_000_000)

    async def request(
        self, stubs: Stubs, rng: random.Random, held: Counter[tuple[str, str]]
    ) -> str:
        roll = rng.random()
        if roll < 0.7:
            return await self.storefront.request(stubs, rng, held)
        if roll < 0.9:
            return await self.pos.request(stubs, rng, held)
        store = store_id(rng.randrange(self.stores))
        now = int(time.time() * 1000)
        events = [
            pb.StockEvent(
                event_id=f"mix-{uuid.uuid4().hex}",
                location_id=store,
                sku=sku_id(rng.randrange(self.skus)),
                kind=pb.EVENT_KIND_DELTA,
                qty=rng.randint(1, 5),
                source_time=now,
            )
            for _ in range(10)
        ]
        await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events), timeout=5)
        return "ok"
