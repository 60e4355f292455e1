"""networks: a storefront listing across a network of stores (GetNetworkAvailability): 50
consecutive skus of the catalogue, for the web channel (a buffer of 2 at stores) or none,
over a network of `members` stores; with `writes` > 0, that share of requests are holds of
one unit at a member (half then released, half committed), which change the rows a
listing sums. With `read=store`, the same listing at one of the stores (GetAvailability):
the reference a network's listing is measured against."""

from __future__ import annotations

import random
import time
from collections import Counter

from bench.scenarios import Stubs
from bench.scenarios.common import sku_id, store_id
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

NETWORK = "bench-net"


class Networks:
    def __init__(
        self,
        members: int = 500,
        skus: int = 500,
        listing: int = 50,
        channel: str = "web",
        writes: float = 0.0,
        carried: float = 0.6,
        read: str = "network",
    ) -> None:
        self.members, self.skus, self.listing = int(members), int(skus), int(listing)
        self.channel, self.writes, self.carried = channel, float(writes), float(carried)
        self.read = read
        self._n = 0

    async def setup(self, stubs: Stubs) -> None:
        """`members` stores, each carrying `carried` of the catalogue (0 to 20 units a row,
        a row in eight sold out), the web's buffer, and the network of them all."""
        stores = [
            pb.Location(
                id=store_id(i), name=f"Bench store {i}", type=pb.LOCATION_TYPE_STORE,
                latitude=51.0 + (i % 100) * 0.01, longitude=-0.5 + (i // 100) * 0.01,
                pickup_enabled=True, ship_enabled=True, active=True, country="GB",
            )
            for i in range(self.members)
        ]  # fmt: skip
        await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=stores))
        rng, now = random.Random(7), int(time.time() * 1000) - 1000
        for i in range(self.members):
            events = [
                pb.StockEvent(
                    event_id=f"net-seed-{i}-{k}", location_id=store_id(i), sku=sku_id(k),
                    kind=pb.EVENT_KIND_COUNT, qty=rng.choice([0, *range(1, 21), 0, 0]),
                    source_time=now,
                )
                for k in range(self.skus)
                if rng.random() < self.carried
            ]  # fmt: skip
            for start in range(0, len(events), 5000):
                chunk = events[start : start + 5000]
                await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=chunk))
        rule = pb.ChannelRule(channel="web", location_type=pb.LOCATION_TYPE_STORE, buffer=2)
        await stubs.stock.SetChannelRules(pb.SetChannelRulesRequest(rules=[rule]))
        selector = pb.LocationSelector(types=[pb.LOCATION_TYPE_STORE], countries=["GB"])
        await stubs.stock.UpsertNetworks(
            pb.UpsertNetworksRequest(networks=[pb.Network(name=NETWORK, selectors=[selector])])
        )

    async def request(
        self, stubs: Stubs, rng: random.Random, held: Counter[tuple[str, str]]
    ) -> str:
        if self.writes and rng.random() < self.writes:
            return await self._hold(stubs, rng)
        first = rng.randrange(self.skus - self.listing + 1)
        skus = [sku_id(k) for k in range(first, first + self.listing)]
        if self.read == "store":
            at = [store_id(rng.randrange(self.members))]
            await stubs.availability.GetAvailability(
                pb.GetAvailabilityRequest(skus=skus, location_ids=at, channel=self.channel),
                timeout=5,
            )
            return "ok"
        await stubs.availability.GetNetworkAvailability(
            pb.GetNetworkAvailabilityRequest(network=NETWORK, skus=skus, channel=self.channel),
            timeout=5,
        )
        return "ok"

    async def _hold(self, stubs: Stubs, rng: random.Random) -> str:
        self._n += 1
        rid = f"net-{id(self)}-{self._n}"
        line = pb.ReservationLine(
            location_id=store_id(rng.randrange(self.members)),
            sku=sku_id(rng.randrange(self.skus)),
            qty=1,
        )
        got = await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id=rid, lines=[line], channel=self.channel), timeout=5
        )
        if not got.HasField("reservation"):
            return "short"
        if rng.random() < 0.5:
            await stubs.reservations.Release(pb.ReleaseRequest(reservation_id=rid), timeout=5)
        else:
            await stubs.reservations.Commit(pb.CommitRequest(reservation_id=rid), timeout=5)
        return "ok"
