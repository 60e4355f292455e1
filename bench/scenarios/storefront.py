"""storefront: listing pages (50 skus at the shopper's store) and product pages (one sku at
20 stores), 80/20."""

from __future__ import annotations

import random
from collections import Counter

from bench.scenarios import Stubs
from bench.scenarios.common import seed_stores, sku_id, store_id
from engine.pb.omnistock.v1 import omnistock_pb2 as pb


class Storefront:
    def __init__(self, stores: int = 20, skus: int = 2000, listing: int = 50) -> None:
        self.stores, self.skus, self.listing = stores, skus, listing

    async def setup(self, stubs: Stubs) -> None:
        await seed_stores(stubs, self.stores, self.skus, on_hand=50)

    async def request(
        self, stubs: Stubs, rng: random.Random, held: Counter[tuple[str, str]]
    ) -> str:
        if rng.random() < 0.8:
            first = rng.randrange(self.skus - self.listing)
            skus = [sku_id(k) for k in range(first, first + self.listing)]
            locations = [store_id(rng.randrange(self.stores))]
        else:
            skus = [sku_id(rng.randrange(self.skus))]
            locations = [store_id(i) for i in rng.sample(range(self.stores), min(20, self.stores))]
        await stubs.availability.GetAvailability(
            pb.GetAvailabilityRequest(skus=skus, location_ids=locations), timeout=5
        )
        return "ok"
