"""Sales channels' rules (SetChannelRules): per location, per location type, or the default,
the most specific wins. A rule says what a channel may take of each row at a location: never
its last `buffer` units, and at most `max_share` of its sellable units held at once. Held
for a channel, a hold is checked against its rule inside the hold script itself (hold.lua),
so no channel ever takes what its rules keep from it, however many hold at once.

The rules (and bands, per-customer limits and bundles) are read into each process, and re-read by
a task of each process when their version has moved, checked once a second: a rule set
through one process holds there at once, and in the others within about a second, and no
call waits on the store for them. Setting a pool moves the version too (what figures a
network view keeps for a channel depend on the rows' pools).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from engine.domain.bundles import Bundle
from engine.domain.errors import InvalidArgument, Unavailable
from engine.domain.model import (
    Location,
    LocationType,
    StockRow,
    check_id,
    check_qty,
    check_size,
)
from engine.domain.rules import (
    DEFAULT_BAND,
    NO_RULE,
    Band,
    ChannelRule,
    CustomerLimit,
    Pool,
    StockStatus,
)
from engine.store.rowcache import RowReader
from engine.store.storage import Storage
from engine.usecases.locations import LocationRegistry

_RELOAD_INTERVAL = 1.0
MAX_RULES = 1000  # a call's
Pair = tuple[str, str]  # (location, sku)


@dataclass(frozen=True, slots=True)
class RuleChange:
    channel: str
    location: str = ""  # the scope: one location,
    location_type: LocationType | None = None  # or every location of a type; neither: default
    rule: ChannelRule | None = None  # None: remove

    @property
    def scope(self) -> str:
        return _scope(self.location, self.location_type)


@dataclass(frozen=True, slots=True)
class BandChange:
    channel: str  # '': any channel (one of its own wins)
    location: str = ""
    location_type: LocationType | None = None
    sku: str = ""  # with location: one row
    band: Band | None = None  # None: remove

    @property
    def scope(self) -> str:
        if self.sku:
            return f"r\t{self.location}\t{self.sku}"
        return _scope(self.location, self.location_type)


def _scope(location: str, location_type: LocationType | None) -> str:
    """How a scope is written: "l:<location>", "t:<TYPE>", or "*" (the default)."""
    if location:
        return f"l:{location}"
    if location_type is not None:
        return f"t:{location_type.value}"
    return "*"


def _check_scope(location: str, location_type: LocationType | None, field: str) -> None:
    if location:
        check_id(location, f"{field}.location_id")
        if location_type is not None:
            raise InvalidArgument(
                f"{field}.location_type", "give a location_id or a type, not both"
            )


def check_band(change: BandChange, field: str) -> BandChange:
    if change.channel:
        check_id(change.channel, f"{field}.channel")
    _check_scope(change.location, change.location_type, field)
    if change.sku:
        check_id(change.sku, f"{field}.sku")
        if not change.location:
            raise InvalidArgument(f"{field}.location_id", "a row's band needs its location too")
    band = change.band
    if band is not None:
        check_qty(band.out, f"{field}.out", allow_zero=True)
        check_qty(band.low, f"{field}.low", allow_zero=True)
        if band.low < band.out:
            raise InvalidArgument(
                f"{field}.low", f"must be at least out ({band.out}), got {band.low}"
            )
    return change


def check_rule(change: RuleChange, field: str) -> RuleChange:
    check_id(change.channel, f"{field}.channel")
    _check_scope(change.location, change.location_type, field)
    rule = change.rule
    if rule is None:
        return change
    if rule.buffer < 0:
        raise InvalidArgument(f"{field}.buffer", f"must be >= 0, got {rule.buffer}")
    share = rule.max_share
    if share is not None and not 0.000001 <= share <= 1:
        raise InvalidArgument(
            f"{field}.max_share", f"must be from 0.000001 (a millionth) to 1, got {share}"
        )
    return change


class ChannelRules:
    def __init__(self, storage: Storage, locations: LocationRegistry) -> None:
        self.storage = storage
        self.locations = locations
        self.rules: dict[tuple[str, str], ChannelRule] = {}
        self.bands: dict[tuple[str, str], Band] = {}
        # location -> the skus with bands of their own there
        self._banded_rows: dict[str, set[str]] = {}
        self._banded_channels: set[str] = set()
        self._location_bands: dict[tuple[str, LocationType, str], Band] = {}
        self.limits: dict[str, CustomerLimit] = {}  # sku -> its per-customer limit
        self.bundles: dict[str, Bundle] = {}  # bundle sku -> its components (SetBundles)
        self._version = -1

    async def set(self, changes: Sequence[RuleChange]) -> int:
        """Sets and removes rules, all at once; answers the rules' new version."""
        await self._check_scopes(changes, "rules")
        version = await self.storage.set_channel_rules(
            {(c.scope, c.channel): c.rule for c in changes}
        )
        await self._reload()
        return version

    async def _check_scopes(self, changes: Sequence[RuleChange | BandChange], field: str) -> None:
        """Each scope and channel once, each location named known."""
        scopes = [(c.scope, c.channel) for c in changes]
        if len(set(scopes)) < len(scopes):
            raise InvalidArgument(field, "a scope and channel may be given once a call")
        named = [c.location for c in changes if c.location]
        await self.locations.require(named, f"{field}[].location_id")

    async def set_bands(self, changes: Sequence[BandChange]) -> int:
        """Sets and removes bands, all at once; answers the new version."""
        await self._check_scopes(changes, "bands")
        version = await self.storage.set_bands({(c.scope, c.channel): c.band for c in changes})
        await self._reload()
        return version

    async def set_limits(self, limits: Mapping[str, CustomerLimit | None]) -> int:
        """Sets and removes per-customer limits (sku -> limit, None: removes), all at once;
        answers the new version."""
        version = await self.storage.set_limits(limits)
        await self._reload()
        return version

    async def limited(self, skus: Iterable[str]) -> dict[str, CustomerLimit]:
        """The per-customer limit of each of `skus` that has one."""
        await self.fresh()
        return {sku: self.limits[sku] for sku in skus if sku in self.limits}

    def band_at(self, location: Location, sku: str, channel: str) -> Band:
        """The band of a row for a channel: the most specific scope set for that channel,
        else for any channel (''), else the default (OUT at 0). Read from the rules as
        last refreshed (fresh() first)."""
        if sku in self._banded_rows.get(location.id, ()):
            return self._band(location, sku, channel)
        return self._location_band(location, sku, channel)

    def statuses(
        self,
        by_id: Mapping[str, Location],
        pairs: Sequence[tuple[str, str]],
        channel: str,
        units: Sequence[int],
    ) -> list[StockStatus]:
        """The band each row's `units` put it in, for the channel (band_at), its location's
        band looked up once for the rows in a run at it (a listing: 50 rows, one look-up)."""
        out: list[StockStatus] = []
        location: Location | None = None
        own: Collection[str] = ()
        band = DEFAULT_BAND
        for (loc, sku), n in zip(pairs, units, strict=True):
            if location is None or loc != location.id:
                location = by_id[loc]
                own = self._banded_rows.get(loc, ())
                band = self._location_band(location, sku, channel)
            out.append((self._band(location, sku, channel) if sku in own else band).status(n))
        return out

    def _location_band(self, location: Location, sku: str, channel: str) -> Band:
        """The band of the rows at `location` with none of their own, worked out once a
        location, type and channel with bands."""
        asking = channel if channel in self._banded_channels else ""
        key = (location.id, location.type, asking)
        band = self._location_bands.get(key)
        if band is None:
            band = self._location_bands[key] = self._band(location, sku, asking)
        return band

    def _band(self, location: Location, sku: str, channel: str) -> Band:
        scopes = (f"r\t{location.id}\t{sku}", f"l:{location.id}", f"t:{location.type.value}", "*")
        for asking in dict.fromkeys((channel, "")):
            for scope in scopes:
                band = self.bands.get((scope, asking))
                if band is not None:
                    return band
        return DEFAULT_BAND

    async def set_pools(self, pools: Sequence[tuple[str, str, Pool]]) -> int:
        """Sets each (location, sku, pool), checked first; answers how many changed."""
        if not pools:
            raise InvalidArgument("pools", "at least one pool is required")
        check_size(len(pools), "pools", MAX_RULES)
        at: dict[str, list[tuple[str, Pool]]] = {}
        seen = set()
        for i, (location, sku, pool) in enumerate(pools):
            check_id(location, f"pools[{i}].location_id")
            check_id(sku, f"pools[{i}].sku")
            check_id(pool.channel, f"pools[{i}].channel")
            check_qty(pool.units, f"pools[{i}].units", allow_zero=True)
            if (location, sku, pool.channel) in seen:
                raise InvalidArgument(f"pools[{i}]", "this row and channel are given twice")
            seen.add((location, sku, pool.channel))
            at.setdefault(location, []).append((sku, pool))
        await self.locations.require(list(at), "pools[].location_id")
        if len(at) > 1:  # each location's pools are checked before any is set
            await asyncio.gather(
                *(self.storage.set_pools(loc, items, check=True) for loc, items in at.items())
            )
        got = await asyncio.gather(
            *(self.storage.set_pools(loc, items) for loc, items in at.items()),
            return_exceptions=True,
        )
        changed = sum(n for n in got if isinstance(n, int))
        if changed:  # what channels may hold moved: figures kept for them must go
            await self.storage.touch_channel_rules()
            await self._reload()
        for failed in got:
            if isinstance(failed, BaseException):
                raise failed
        return changed

    async def _reload(self) -> None:
        version = await self.storage.channel_rules_version()  # first: a later set reloads
        self.rules = await self.storage.channel_rules()
        self.bands = await self.storage.bands()
        self.limits = await self.storage.limits()
        self.bundles = await self.storage.bundles()
        self._version = version
        self._banded_rows = {}
        for scope, _ in self.bands:
            if scope.startswith("r\t"):
                _, loc, sku = scope.split("\t")
                self._banded_rows.setdefault(loc, set()).add(sku)
        self._banded_channels = {channel for _, channel in self.bands}
        self._location_bands = {}

    async def table(self) -> dict[str, Bundle]:
        """The bundles as last read (as `fresh`: no call waits on the store for them)."""
        await self.fresh()
        return self.bundles

    @property
    def version(self) -> int:
        """The rules' version as last read (it moves with every rule, band and pool set)."""
        return self._version

    async def fresh(self) -> dict[tuple[str, str], ChannelRule]:
        """The rules as last read: read on first use, then kept fresh by `follow`, so that no
        call waits on the store for them."""
        if self._version < 0:
            await self._reload()
        return self.rules

    async def current(self) -> None:
        """Re-reads them now if their version has moved (for a reader that must not act on
        rules up to a second old)."""
        if await self.storage.channel_rules_version() != self._version:
            await self._reload()

    async def follow(self) -> None:
        """Re-reads the rules, bands, limits and bundles whenever their version has moved, checked
        once a second (a task of each server process)."""
        while True:
            await asyncio.sleep(_RELOAD_INTERVAL)
            try:
                if await self.storage.channel_rules_version() != self._version:
                    await self._reload()
            except Unavailable:
                pass  # the store is down: the probe says so; the next check tries again

    async def at(self, locations: Iterable[Location], channel: str) -> dict[str, ChannelRule]:
        """The rule of `channel` at each location: the location's own, else its type's, else
        the default, else none."""
        rules = await self.fresh()
        out = {}
        for loc in locations:
            for scope in (f"l:{loc.id}", f"t:{loc.type.value}", "*"):
                if (scope, channel) in rules:
                    out[loc.id] = rules[(scope, channel)]
                    break
            else:
                out[loc.id] = NO_RULE
        return out

    async def offered(
        self,
        reader: RowReader,
        channel: str,
        locations: Mapping[str, Location],
        pairs: Sequence[Pair],
    ) -> list[int]:
        """What `channel` may hold of each row, as its hold would find it (its rule where the
        row is, the row's pools, what is held), read by `reader` (the read cache, or Redis:
        one script call a location)."""
        return (await self.read(reader, channel, locations, pairs))[1]

    async def read(
        self,
        reader: RowReader,
        channel: str,
        locations: Mapping[str, Location],
        pairs: Sequence[Pair],
    ) -> tuple[list[StockRow], list[int]]:
        """The rows, and what `channel` may hold of each (`offered`), read together."""
        rules = await self.at((locations[loc] for loc in {loc for loc, _ in pairs}), channel)
        return await reader.offers(channel, rules, pairs)
