"""pos: a till holds 1-3 items at its own store, then commits the sale (80%) or voids it.
Each request is one RPC: a client with a hold settles it next, else it makes a new one."""

from __future__ import annotations

import random
import uuid
from collections import Counter

from bench.scenarios import Stubs
from bench.scenarios.common import seed_stores, sku_id, store_id
from engine.pb.omnistock.v1 import omnistock_pb2 as pb


class Pos:
    def __init__(self, stores: int = 20, skus: int = 2000, on_hand: int = 1_000_000) -> None:
        self.stores, self.skus, self.on_hand = stores, skus, on_hand
        self.pending: list[tuple[str, list[tuple[str, str, int]]]] = []

    async def setup(self, stubs: Stubs) -> None:
        await seed_stores(stubs, self.stores, self.skus, on_hand=self.on_hand)

    async def request(
        self, stubs: Stubs, rng: random.Random, held: Counter[tuple[str, str]]
    ) -> str:
        if self.pending and rng.random() < 0.5:
            rid, lines = self.pending.pop()
            for loc, sku, qty in lines:
                held[(loc, sku)] -= qty
            if rng.random() < 0.8:
                await stubs.reservations.Commit(pb.CommitRequest(reservation_id=rid), timeout=5)
            else:
                await stubs.reservations.Release(pb.ReleaseRequest(reservation_id=rid), timeout=5)
            return "ok"
        store = store_id(rng.randrange(self.stores))
        lines = [
            (store, sku_id(k), rng.randint(1, 2))
            for k in rng.sample(range(self.skus), rng.randint(1, 3))
        ]
        rid = f"pos-{uuid.uuid4().hex}"
        resp = await stubs.reservations.Reserve(
            pb.ReserveRequest(
                reservation_id=rid,
                ttl_seconds=3600,
                lines=[pb.ReservationLine(location_id=loc, sku=s, qty=q) for loc, s, q in lines],
            ),
            timeout=5,
        )
        if not resp.HasField("reservation"):
            return "short"
        for loc, sku, qty in lines:
            held[(loc, sku)] += qty
        self.pending.append((rid, lines))
        return "ok"
