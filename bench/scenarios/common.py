"""The bench data set: stores with stock, seeded over gRPC like any store system would."""

from __future__ import annotations

import time

from bench.scenarios import Stubs
from engine.pb.omnistock.v1 import omnistock_pb2 as pb


def store_id(i: int) -> str:
    return f"bench-store-{i:05d}"


def sku_id(i: int) -> str:
    return f"BENCH-{i:07d}"


async def seed_stores(stubs: Stubs, stores: int, skus: int, on_hand: int) -> None:
    locations = [
        pb.Location(
            id=store_id(i),
            name=f"Bench store {i}",
            type=pb.LOCATION_TYPE_STORE,
            latitude=51.0 + (i % 100) * 0.01,
            longitude=-0.5 + (i // 100) * 0.01,
            pickup_enabled=True,
            ship_enabled=True,
            active=True,
        )
        for i in range(stores)
    ]
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=locations))
    now = int(time.time() * 1000) - 1000
    for i in range(stores):
        events = [
            pb.StockEvent(
                event_id=f"bench-seed-{now}-{i}-{k}",
                location_id=store_id(i),
                sku=sku_id(k),
                kind=pb.EVENT_KIND_COUNT,
                qty=on_hand,
                source_time=now,
            )
            for k in range(skus)
        ]
        for start in range(0, len(events), 2000):
            await stubs.stock.ApplyEvents(
                pb.ApplyEventsRequest(events=events[start : start + 2000])
            )
