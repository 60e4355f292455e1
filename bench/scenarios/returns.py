"""returns: web orders shipped from one store (or DC) and brought back at another. Each
order goes through four requests, one RPC each: a hold (1-2 units of 1-2 skus at a random
location), its commit, a RecordReturn at another store naming the order (some or all of its
units), then the inspection of that store: a MOVE of the returned units back to sellable.
A client with an order under way takes its next step half the time, else starts another."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass

from bench.scenarios import Stubs
from bench.scenarios.common import seed_stores, sku_id, store_id
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

Lines = list[tuple[str, str, int]]


@dataclass
class Order:
    rid: str
    lines: Lines
    step: int = 0  # 0: held, 1: committed, 2: returned at `back_at`
    back_at: str = ""
    returned: Lines | None = None


class Returns:
    def __init__(self, stores: int = 20, skus: int = 2000, on_hand: int = 1_000_000) -> None:
        self.stores, self.skus, self.on_hand = stores, skus, on_hand
        self.orders: list[Order] = []

    async def setup(self, stubs: Stubs) -> None:
        await seed_stores(stubs, self.stores, self.skus, on_hand=self.on_hand)

    async def request(
        self, stubs: Stubs, rng: random.Random, held: Counter[tuple[str, str]]
    ) -> str:
        if self.orders and rng.random() < 0.5:
            return await self._next_step(stubs, rng, held, self.orders.pop(0))
        at = store_id(rng.randrange(self.stores))
        lines = [
            (at, sku_id(k), rng.randint(1, 2))
            for k in rng.sample(range(self.skus), rng.randint(1, 2))
        ]
        rid = f"web-{uuid.uuid4().hex}"
        resp = await stubs.reservations.Reserve(
            pb.ReserveRequest(
                reservation_id=rid,
                ttl_seconds=3600,
                channel="web",
                lines=[pb.ReservationLine(location_id=loc, sku=s, qty=q) for loc, s, q in lines],
            ),
            timeout=5,
        )
        if not resp.HasField("reservation"):
            return "short"
        for loc, sku, qty in lines:
            held[(loc, sku)] += qty
        self.orders.append(Order(rid, lines))
        return "ok"

    async def _next_step(
        self, stubs: Stubs, rng: random.Random, held: Counter[tuple[str, str]], order: Order
    ) -> str:
        if order.step == 0:
            for loc, sku, qty in order.lines:
                held[(loc, sku)] -= qty
            await stubs.reservations.Commit(pb.CommitRequest(reservation_id=order.rid), timeout=5)
        elif order.step == 1:
            sold_at = order.lines[0][0]
            others = [store_id(i) for i in range(self.stores) if store_id(i) != sold_at]
            order.back_at = rng.choice(others or [sold_at])
            order.returned = [(order.back_at, s, rng.randint(1, q)) for _, s, q in order.lines]
            await stubs.stock.RecordReturn(
                pb.RecordReturnRequest(
                    return_id=f"ret-{order.rid}",
                    location_id=order.back_at,
                    reservation_id=order.rid,
                    lines=[pb.ReturnLine(sku=s, qty=q) for _, s, q in order.returned],
                ),
                timeout=5,
            )
        else:
            now = int(time.time() * 1000)
            events = [
                pb.StockEvent(
                    event_id=f"insp-{order.rid}-{sku}",
                    location_id=loc,
                    sku=sku,
                    kind=pb.EVENT_KIND_MOVE,
                    qty=qty,
                    source_time=now,
                    state=pb.STOCK_STATE_RETURNED,
                    to_state=pb.STOCK_STATE_SELLABLE,
                )
                for loc, sku, qty in order.returned or []
            ]
            await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=events), timeout=5)
            return "ok"
        order.step += 1
        self.orders.append(order)
        return "ok"
