"""channels: the flash sale of `flash-sale`, sold through sales channels under their rules:
one hot sku at one store, with a launch pool of a fifth of it ring-fenced for the app (with
fallback), the web kept off the store's last units (a buffer) and capped at half of the
sellable units (a share); each buyer holds one unit, through the web or the app at random.
Its Reserve rate beside flash-sale's is what channel rules cost a hold."""

from __future__ import annotations

import random
import uuid
from collections import Counter

from bench.scenarios import Stubs
from bench.scenarios.common import seed_stores, sku_id, store_id
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

CHANNELS = ("web", "app")


class Channels:
    def __init__(self, units: int = 20_000) -> None:
        self.units = units

    async def setup(self, stubs: Stubs) -> None:
        await seed_stores(stubs, 1, 1, on_hand=self.units)
        rule = pb.ChannelRule(
            channel="web", location_type=pb.LOCATION_TYPE_STORE, buffer=2, max_share=0.5
        )
        await stubs.stock.SetChannelRules(pb.SetChannelRulesRequest(rules=[rule]))
        pool = pb.Pool(
            location_id=store_id(0), sku=sku_id(0), channel="app", units=self.units // 5,
            fallback=True,
        )  # fmt: skip
        await stubs.stock.SetPool(pb.SetPoolRequest(pools=[pool]))

    async def request(
        self, stubs: Stubs, rng: random.Random, held: Counter[tuple[str, str]]
    ) -> str:
        line = pb.ReservationLine(location_id=store_id(0), sku=sku_id(0), qty=1)
        resp = await stubs.reservations.Reserve(
            pb.ReserveRequest(
                reservation_id=f"ch-{uuid.uuid4().hex}",
                lines=[line],
                ttl_seconds=3600,
                channel=rng.choice(CHANNELS),
            ),
            timeout=5,
        )
        if not resp.HasField("reservation"):
            return "short"
        held[(store_id(0), sku_id(0))] += 1
        return "ok"
