"""flash-sale: one hot sku at one store, many buyers each holding one unit until it is gone;
after that, every buyer must be told "short". With `reads` (a share of requests, 0 to 1), the
storefront is open too: that share are listing pages (50 skus at the store, the hot one
among them) read through the buyer's channel while the sale runs."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import grpc

from bench.scenarios import Stubs
from bench.scenarios.common import seed_stores, sku_id, store_id
from engine.pb.omnistock.v1 import omnistock_pb2 as pb


class FlashSale:
    def __init__(self, units: int = 20_000, reads: float = 0.0, listing: int = 50) -> None:
        self.units, self.reads, self.listing = units, float(reads), int(listing)

    async def setup(self, stubs: Stubs) -> None:
        await seed_stores(stubs, 1, self.listing if self.reads else 1, on_hand=self.units)

    def channel(self, rng: random.Random) -> str:
        """The sales channel a buyer holds through ('' for none)."""
        return ""

    def customer(self, rng: random.Random) -> str:
        """The buyer, for per-customer limits ('' for none named)."""
        return ""

    async def request(
        self, stubs: Stubs, rng: random.Random, held: Counter[tuple[str, str]]
    ) -> str:
        if rng.random() < self.reads:
            skus = [sku_id(k) for k in range(self.listing)]
            read = pb.GetAvailabilityRequest(
                skus=skus, location_ids=[store_id(0)], channel=self.channel(rng)
            )
            await stubs.availability.GetAvailability(read, timeout=5)
            return "ok"
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
