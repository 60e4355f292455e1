"""flash-sale: one hot sku at one store, many buyers each holding one unit until it is gone;
after that, every buyer must be told "short"."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import grpc

from bench.scenarios import Stubs
from bench.scenarios.common import seed_stores, sku_id, store_id
from engine.pb.omnistock.v1 import omnistock_pb2 as pb


class FlashSale:
    def __init__(self, units: int = 20_000) -> None:
        self.units = units

    async def setup(self, stubs: Stubs) -> None:
        await seed_stores(stubs, 1, 1, on_hand=self.units)

    def channel(self, rng: random.Random) -> str:
        """The sales channel a buyer holds through ('' for none)."""
        return ""

    def customer(self, rng: random.Random) -> str:
        """The buyer, for per-customer limits ('' for none named)."""
        return ""

    async def request(
        self, stubs: Stubs, rng: random.Random, held: Counter[tuple[str, str]]
    ) -> str:
        line = pb.ReservationLine(location_id=store_id(0), sku=sku_id(0), qty=1)
        request = pb.ReserveRequest(
            reservation_id=f"fs-{uuid.uuid4().hex}",
            lines=[line],
            ttl_seconds=3600,
            channel=self.channel(rng),
            customer_id=self.customer(rng),
        )
        try:
            resp = await stubs.reservations.Reserve(request, timeout=5)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.FAILED_PRECONDITION:
                return "limited"  # the customer has their most of the sku already
            raise
        if not resp.HasField("reservation"):
            return "short"
        held[(store_id(0), sku_id(0))] += 1
        return "ok"
