"""Location networks in Redis: their definitions, in one hash of their own slot (read into
each process by engine/usecases/networks.py), and the read of what a channel may hold of
many rows at many locations (read_network.lua), for GetNetworkAvailability."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from engine.domain.model import LocationType
from engine.domain.networks import Network, Selector
from engine.domain.rules import ChannelRule
from engine.store.base import Base
from engine.store.keys import NETWORKS, NETWORKS_VERSION, KeyList, Keys

# Rows read by one script call: one call holds Redis for a few ms at most (about 3 us a row
# on the bench machine: bench/RESULTS.md, "Location networks"), and a small call waits
# behind one of them, never behind all.
ROWS_PER_CALL = 500


class MemberRead(NamedTuple):
    """The rows of some skus at one location, and the asking channel's rule there."""

    location: str
    rule: ChannelRule
    skus: Sequence[str]


def _network_json(network: Network) -> bytes:
    return orjson.dumps(
        {
            "l": sorted(network.location_ids),
            "s": [
                {
                    "t": sorted(t.value for t in s.types),
                    "c": sorted(s.countries),
                    "r": sorted(s.regions),
                    "ship": s.ship_enabled,
                    "pickup": s.pickup_enabled,
                }
                for s in network.selectors
            ],
        }
    )


def _network_from(name: str, value: bytes) -> Network:
    d = orjson.loads(value)
    return Network(
        name,
        frozenset(d["l"]),
        tuple(
            Selector(
                frozenset(LocationType(t) for t in s["t"]),
                frozenset(s["c"]),
                frozenset(s["r"]),
                s["ship"],
                s["pickup"],
            )
            for s in d["s"]
        ),
    )


class NetworkStore(Base):
    async def set_networks(self, networks: Mapping[str, Network | None]) -> int:
        """Sets (or, for None, removes) each network by name, all at once; answers the
        networks' new version."""
        fields = {name: None if n is None else _network_json(n) for name, n in networks.items()}
        return await self.set_versioned(NETWORKS, fields, NETWORKS_VERSION)

    async def networks_version(self) -> int:
        return int(await self.command(lambda p: p.get(NETWORKS_VERSION)) or 0)

    async def networks(self, names: Sequence[str] | None = None) -> dict[str, Network]:
        """Every network, or those of `names` that exist."""
        if names is None:
            raw: dict[bytes, bytes] = await self.command(lambda p: p.hgetall(NETWORKS))
            return {k.decode(): _network_from(k.decode(), v) for k, v in raw.items()}
        got = await self.command(lambda p: p.hmget(NETWORKS, list(names)))
        return {n: _network_from(n, v) for n, v in zip(names, got, strict=True) if v}

    async def network_rows(self, channel: str, reads: Sequence[MemberRead]) -> list[list[int]]:
        """What `channel` may hold of each read's skus at its location, under its rule there,
        as its hold would find it (read_network.lua): ROWS_PER_CALL rows a script call, of
        one location each on a cluster (a script touches one slot), of several on one Redis;
        all sent at once, in the lane of big calls when they are many. Each location's rows
        are read in one step: as a hold would have found them at one instant."""
        total = sum(len(r.skus) for r in reads)
        calls = self._network_calls(channel, reads)
        heavy = total > ROWS_PER_CALL
        async with self._wide_reads.take(total):
            got = await asyncio.gather(
                *(
                    self.call("read_network", c.keys.keys, c.args(channel), heavy=heavy)
                    for c in calls
                )
            )
        flat = [int(x) for part in got for x in part]
        out, at = [], 0
        for read in reads:
            out.append(flat[at : at + len(read.skus)])
            at += len(read.skus)
        return out

    def _network_calls(self, channel: str, reads: Sequence[MemberRead]) -> list[_Call]:
        """The script calls of `network_rows`, in the order of the reads and their skus."""
        calls: list[_Call] = []
        for read in reads:
            slot = self._slot(read.location)
            for start in range(0, len(read.skus), ROWS_PER_CALL):
                skus = read.skus[start : start + ROWS_PER_CALL]
                call = calls[-1] if calls else None
                if call is None or call.slot != slot or call.rows + len(skus) > ROWS_PER_CALL:
                    call = _Call(slot)
                    calls.append(call)
                call.add(read, skus, self.keys, with_channel=bool(channel))
        return calls


class _Call:
    """One read_network call: the keys and argument groups of its locations' rows."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.keys = KeyList()
        self.groups: list[Any] = []
        self.members = 0
        self.rows = 0

    def add(self, read: MemberRead, skus: Sequence[str], keys: Keys, with_channel: bool) -> None:
        loc, rule = read.location, read.rule
        held = self.keys.add(Keys.channel_holds(loc)) if with_channel else 0
        pools = self.keys.add(Keys.pools(loc)) if with_channel else 0
        self.groups += [held, pools, rule.buffer, rule.share_ppm, len(skus)]
        for sku in skus:
            self.groups += [sku, self.keys.add(keys.stock(loc, sku))]
        self.members += 1
        self.rows += len(skus)

    def args(self, channel: str) -> list[Any]:
        return [channel, self.members, *self.groups]
