"""channels: the flash sale of `flash-sale`, sold through sales channels under their rules:
one hot sku at one store, with a launch pool of a fifth of it ring-fenced for the app (with
fallback), the web kept off the store's last units (a buffer) and capped at half of the
sellable units (a share), and the sku limited to 2 a customer over a day; each buyer (one of
a million customers) holds one unit, through the web or the app at random. Half the requests
are the storefront's listing pages for the same channels (`reads`, 0.5 unless given). Its rate
beside `flash-sale --param reads=0.5` is what channel rules and the customer's count cost
holds and reads."""

from __future__ import annotations

import random

from bench.scenarios import Stubs
from bench.scenarios.common import sku_id, store_id
from bench.scenarios.flash_sale import FlashSale
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

CHANNELS = ("web", "app")
CUSTOMERS = 1_000_000


class Channels(FlashSale):
    def __init__(self, units: int = 20_000, reads: float = 0.5, listing: int = 50) -> None:
        super().__init__(units, reads, listing)

    async def setup(self, stubs: Stubs) -> None:
        await super().setup(stubs)
        rule = pb.ChannelRule(
            channel="web", location_type=pb.LOCATION_TYPE_STORE, buffer=2, max_share=0.5
        )
        await stubs.stock.SetChannelRules(pb.SetChannelRulesRequest(rules=[rule]))
        pool = pb.Pool(
            location_id=store_id(0), sku=sku_id(0), channel="app", units=self.units // 5,
            fallback=True,
        )  # fmt: skip
        await stubs.stock.SetPool(pb.SetPoolRequest(pools=[pool]))
        limit = pb.CustomerLimit(sku=sku_id(0), max_units=2, window_seconds=86_400)
        await stubs.stock.SetCustomerLimits(pb.SetCustomerLimitsRequest(limits=[limit]))

    def channel(self, rng: random.Random) -> str:
        return rng.choice(CHANNELS)

    def customer(self, rng: random.Random) -> str:
        return f"cust-{rng.randrange(CUSTOMERS)}"
