"""The location registry: the locations in Redis, cached in this process.

Locations change rarely and are read on every call that names one, so they are cached. An
id the cache does not know is looked up in Redis (just those ids), so a location upserted
through another server process is known at once. Callers that want every location (queries
by type, FindNearby's index, the sweeper) get the cache as it is, checked at most once a
second against the version counter every upsert moves, and reloaded only when it moved.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from engine.domain.errors import InvalidArgument
from engine.domain.model import Location, LocationType
from engine.store.storage import Storage
from engine.usecases.index import LocationIndex

_RELOAD_INTERVAL = 1.0


class LocationRegistry:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.by_id: dict[str, Location] = {}
        self._checked_at = float("-inf")
        self._version = -1
        self._index = LocationIndex({})

    async def reload(self) -> None:
        version = await self.storage.locations_version()  # first: a later upsert reloads
        self.by_id = await self.storage.load_locations()
        self._version, self._checked_at = version, time.monotonic()

    async def upsert(self, locations: Sequence[Location]) -> None:
        await self.storage.upsert_locations(locations)
        await self.reload()

    async def known(self, ids: Iterable[str]) -> set[str]:
        """The ids among `ids` that name a location; those the cache lacks are looked up."""
        ids = set(ids)
        missing = [i for i in ids if i not in self.by_id]
        if missing:
            self.by_id = self.by_id | await self.storage.load_locations(missing)
        return {i for i in ids if i in self.by_id}

    async def require(self, ids: Iterable[str], field: str) -> None:
        """Every id must name a known location, else INVALID_ARGUMENT naming the first."""
        ids = list(ids)
        known = await self.known(ids)
        missing = [i for i in ids if i not in known]
        if missing:
            raise InvalidArgument(field, f"unknown location {missing[0]!r}")

    async def fresh(self) -> dict[str, Location]:
        """Every location; at most once per interval, reloaded if any upsert happened."""
        if time.monotonic() - self._checked_at > _RELOAD_INTERVAL:
            if await self.storage.locations_version() != self._version:
                await self.reload()
            self._checked_at = time.monotonic()
        return self.by_id

    async def index(self) -> LocationIndex:
        """The geographic index of the current locations (rebuilt when they change)."""
        by_id = await self.fresh()
        if self._index.source is not by_id:
            self._index = LocationIndex(by_id)
        return self._index

    async def active(self, types: set[LocationType]) -> list[Location]:
        await self.fresh()
        return [
            loc for loc in self.by_id.values() if loc.active and (not types or loc.type in types)
        ]
