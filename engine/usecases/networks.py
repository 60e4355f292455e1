"""Location networks (UpsertNetworks, GetNetworkAvailability): named sets of locations, and
what a sales channel may hold of skus across one.

The definitions are read into each process and refreshed at most once a second when their
version has moved (as the channels' rules are); a network this process does not know yet is
looked up in Redis at once, so one set through another process is known there straight
away. Its members are resolved here, from the location registry (itself reloaded when its
version moves), again whenever the definition or the locations change.

A listing sums, for each sku, what the channel may hold at each member, as its hold would
find it there (read_network.lua runs the hold's own formula, with the channel's rule at
that member), and counts the members that have some: from the figures this process's
network view keeps while nothing changes them (engine/store/netview.py), the others read
from Redis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.domain.errors import InvalidArgument, NotFound
from engine.domain.model import check_id, check_size
from engine.domain.networks import (
    MAX_NETWORKS,
    Network,
    NetworkLevel,
    check_cells,
    check_listing,
    check_network,
    check_networks,
)
from engine.domain.rules import NO_RULE
from engine.metrics import Metrics
from engine.store.netview import Figures, NetworkView
from engine.store.networks import MemberRead
from engine.store.storage import Storage
from engine.usecases.bundles import refuse_bundles
from engine.usecases.channels import ChannelRules
from engine.usecases.locations import LocationRegistry

_RELOAD_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class NetworkChange:
    network: Network  # with remove, only its name counts
    remove: bool = False


@dataclass(frozen=True, slots=True)
class Listing:
    network: str
    levels: list[NetworkLevel]
    members: tuple[str, ...]


class Networks:
    def __init__(
        self,
        storage: Storage,
        locations: LocationRegistry,
        channels: ChannelRules,
        metrics: Metrics | None = None,
        view: NetworkView | None = None,
    ) -> None:
        """view: where figures are kept between listings (None: every listing reads them
        all from Redis)."""
        self.storage = storage
        self.locations = locations
        self.channels = channels
        self.metrics = metrics or Metrics()
        self.view = view
        self.definitions: dict[str, Network] = {}
        self._version = -1
        self._checked_at = -math.inf
        # name -> (the definition and the locations it was resolved from, its members)
        self._resolved: dict[str, tuple[Network, object, tuple[str, ...]]] = {}

    # -- definitions --------------------------------------------------------------------

    async def upsert(self, changes: Sequence[NetworkChange]) -> tuple[int, list[int]]:
        """Sets and removes networks, all at once, checked first; answers the networks' new
        version and each one's members as it leaves them."""
        if not changes:
            raise InvalidArgument("networks", "at least one network is required")
        check_size(len(changes), "networks", MAX_NETWORKS)
        for i, change in enumerate(changes):
            if change.remove:
                check_id(change.network.name, f"networks[{i}].name")
            else:
                check_network(change.network, f"networks[{i}]")
        check_networks(c.network.name for c in changes)
        for i, change in enumerate(changes):
            if not change.remove:
                listed = sorted(change.network.location_ids)
                await self.locations.require(listed, f"networks[{i}].location_ids")
        version = await self.storage.set_networks(
            {c.network.name: None if c.remove else c.network for c in changes}
        )
        await self.reload()
        counts = [0 if c.remove else len(await self.members(c.network.name)) for c in changes]
        return version, counts

    async def reload(self) -> None:
        version = await self.storage.networks_version()  # first: a later set reloads
        self.definitions = await self.storage.networks()
        self._version, self._checked_at = version, time.monotonic()

    async def fresh(self) -> dict[str, Network]:
        """Every network; at most once per interval, reloaded if any changed."""
        if time.monotonic() - self._checked_at > _RELOAD_INTERVAL:
            if await self.storage.networks_version() != self._version:
                await self.reload()
            self._checked_at = time.monotonic()
        return self.definitions

    async def network(self, name: str) -> Network:
        """The network of that name, else NOT_FOUND naming the field."""
        network = (await self.fresh()).get(name)
        if network is None:
            found = await self.storage.networks([name])
            if name not in found:
                raise NotFound(f"network: no network {name!r}")
            self.definitions = self.definitions | found
            network = found[name]
        return network

    async def members(self, name: str) -> tuple[str, ...]:
        """The network's locations as they are now, sorted (resolved again when the
        definition or the locations have changed)."""
        network = await self.network(name)
        if not network.location_ids <= self.locations.by_id.keys():
            await self.locations.known(network.location_ids)  # one made elsewhere just now
        by_id = await self.locations.fresh()
        resolved = self._resolved.get(name)
        if resolved is not None and resolved[0] is network and resolved[1] is by_id:
            return resolved[2]
        members = network.members(by_id)
        self._resolved[name] = (network, by_id, members)
        return members

    # -- listings -----------------------------------------------------------------------

    async def listing(self, name: str, skus: Sequence[str], channel: str = "") -> Listing:
        """For each sku (once each, in order), what `channel` may hold across the network,
        and at how many of its locations there is some."""
        wanted = check_listing(name, skus, channel)
        refuse_bundles(wanted, await self.channels.table(), "skus", _NO_BUNDLES)
        members = await self.members(name)
        check_cells(len(wanted), len(members))
        await self.channels.fresh()  # its version stamps what the view keeps

        async def read(todo: dict[str, list[str]]) -> dict[str, list[int]]:
            return await self._read(channel, todo)

        if self.view is None:
            got = await read({loc: wanted for loc in members})
            self.metrics.network_rows.labels("read").inc(len(wanted) * len(members))
            figures = _columns(members, wanted, got)
        else:
            key, stamp = (name, channel), self.channels.version
            figures = await self.view.figures(key, stamp, members, wanted, read)
        table = np.vstack(figures)  # a row per sku: one sum and one count for them all
        sums, some = table.sum(axis=1).tolist(), np.count_nonzero(table, axis=1).tolist()
        levels = [NetworkLevel(*level) for level in zip(wanted, sums, some, strict=True)]
        return Listing(name, levels, members)

    async def _read(self, channel: str, todo: dict[str, list[str]]) -> dict[str, list[int]]:
        """What `channel` may hold of these skus at these locations, under its rule at each,
        read from Redis."""
        by_id = self.locations.by_id
        rules = await self.channels.at((by_id[loc] for loc in todo), channel) if channel else {}
        reads = [MemberRead(loc, rules.get(loc, NO_RULE), skus) for loc, skus in todo.items()]
        got = await self.storage.network_rows(channel, reads)
        return dict(zip(todo, got, strict=True))


_NO_BUNDLES = (
    "a network's listing sums its members' rows, and a bundle has none; ask GetAvailability "
    "at the locations, or list its components"
)


def _columns(members: tuple[str, ...], skus: list[str], got: dict[str, list[int]]) -> list[Figures]:
    """Each sku's figures over the members, from each member's figures of every sku."""
    table = np.array([got[loc] for loc in members], dtype=np.int64).reshape(len(members), len(skus))
    return [table[:, j] for j in range(len(skus))]
