"""nearby: click & collect searches. Each request is a shopper at one of the stores' cities
(jittered by up to ~5 km) asking FindNearby for a basket of `basket` skus within
`radius_km`; with `--param availability=1`, GetAvailability of the same basket at the 20
stores nearest to the shopper (within 50 km) instead: a listing x a set of stores. The
stores are the demo set's (around 54 real cities, in proportion to population), `stores` of
them, each stocking each of `skus` skus with probability 0.9."""

from __future__ import annotations

import random
import time
from collections import Counter

from bench.scenarios import Stubs
from engine.api.convert import location_pb
from engine.demo import demo_locations
from engine.domain.geo import Fulfilment
from engine.domain.model import LocationType
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.usecases.index import LocationIndex

EVENTS_PER_CALL = 2000
NEAREST = 20


class Nearby:
    def __init__(
        self,
        stores: int = 1000,
        skus: int = 100,
        basket: int = 5,
        radius_km: int = 25,
        availability: int = 0,
    ) -> None:
        self.basket, self.radius_km, self.availability = basket, float(radius_km), availability
        self.skus = [f"NEAR-{k:05d}" for k in range(skus)]
        everything = demo_locations(stores=stores)
        self.stores = [loc for loc in everything if loc.type is LocationType.STORE]
        self.index = LocationIndex({loc.id: loc for loc in self.stores})

    async def setup(self, stubs: Stubs) -> None:
        for start in range(0, len(self.stores), 1000):
            chunk = [location_pb(loc) for loc in self.stores[start : start + 1000]]
            await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=chunk))
        rng, now = random.Random(11), int(time.time() * 1000) - 1000
        events = [
            pb.StockEvent(
                event_id=f"near-{loc.id}-{sku}",
                location_id=loc.id,
                sku=sku,
                kind=pb.EVENT_KIND_COUNT,
                qty=rng.randint(1, 20),
                source_time=now,
            )
            for loc in self.stores
            for sku in self.skus
            if rng.random() < 0.9
        ]
        for start in range(0, len(events), EVENTS_PER_CALL):
            chunk = events[start : start + EVENTS_PER_CALL]
            await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=chunk))

    async def request(
        self, stubs: Stubs, rng: random.Random, held: Counter[tuple[str, str]]
    ) -> str:
        anchor = rng.choice(self.stores)
        lat = anchor.latitude + rng.uniform(-0.04, 0.04)
        lon = anchor.longitude + rng.uniform(-0.06, 0.06)
        skus = rng.sample(self.skus, self.basket)
        if self.availability:
            # (the client's own search is kept small: the nearest 20 within 50 km)
            near = self.index.within(lat, lon, 50.0, set(), Fulfilment.ANY)[:NEAREST]
            await stubs.availability.GetAvailability(
                pb.GetAvailabilityRequest(skus=skus, location_ids=[loc.id for _, loc in near]),
                timeout=5,
            )
            return "ok"
        got = await stubs.availability.FindNearby(
            pb.FindNearbyRequest(
                latitude=lat,
                longitude=lon,
                radius_km=self.radius_km,
                lines=[pb.BasketLine(sku=sku, qty=1) for sku in skus],
                fulfilment=pb.FULFILMENT_PICKUP,
                limit=5,
            ),
            timeout=5,
        )
        return "ok" if got.locations else "short"
