"""A platform names things its own way (a Shopify location 24826418, an inventory
item 271878346596884015). Each source may have a mapping, kept in Redis: an event of that
source has its location_id and sku translated where the mapping has them, and kept as they
are where it has not (a source may send our ids). Each process keeps the mappings it uses
in memory, checked against the version every change moves at most once a second; a change
made through this process is seen at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

from engine.domain import auth
from engine.domain.errors import InvalidArgument
from engine.domain.model import IdKind, StockEvent, check_id
from engine.store.storage import Storage

_RELOAD_INTERVAL = 1.0
MAX_CACHED_SOURCES = 1024  # mappings kept in memory; the least recently used go first


class SourceMap(NamedTuple):
    ids: dict[tuple[IdKind, str], str]  # (kind, their id) -> our id
    kinds: frozenset[IdKind]  # the kinds it maps: a source must map every id of these

    def ours(self, source: str, kind: IdKind, theirs: str, field_name: str) -> str:
        """Our id for a source's id. A source with mappings of this kind must map every
        id of it: an id it does not map is refused, never taken for one of ours."""
        ours = self.ids.get((kind, theirs))
        if ours is not None:
            return ours
        if kind in self.kinds:
            raise InvalidArgument(field_name, f"no {source} mapping for {theirs!r}")
        return theirs


class Mappings:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.by_source: OrderedDict[str, SourceMap] = OrderedDict()
        self._version = -1
        self._checked_at = float("-inf")

    async def _fresh(self) -> None:
        if time.monotonic() - self._checked_at > _RELOAD_INTERVAL:
            version = await self.storage.mappings_version()
            if version != self._version:
                self.by_source, self._version = OrderedDict(), version
            self._checked_at = time.monotonic()

    async def of(self, source: str) -> SourceMap:
        await self._fresh()
        if source in self.by_source:
            self.by_source.move_to_end(source)
            return self.by_source[source]
        ids = await self.storage.mapping(source)
        found = self.by_source[source] = SourceMap(ids, frozenset(kind for kind, _ in ids))
        if len(self.by_source) > MAX_CACHED_SOURCES:
            self.by_source.popitem(last=False)
        return found

    async def _ours(self, source: str, kind: IdKind, theirs: str, field_name: str) -> str:
        if not source:
            return theirs
        return (await self.of(source)).ours(source, kind, theirs, field_name)

    async def location(self, source: str, location: str, field_name: str) -> str:
        return await self._ours(source, IdKind.LOCATION, location, field_name)

    async def item(self, source: str, sku: str, field_name: str) -> str:
        return await self._ours(source, IdKind.ITEM, sku, field_name)

    async def translate(
        self, events: Sequence[tuple[int, StockEvent]]
    ) -> list[tuple[int, StockEvent | InvalidArgument]]:
        """(index, event) each, translated; an id the source must map and does not, an error."""
        sources = {ev.source for _, ev in events if ev.source}
        maps = {source: await self.of(source) for source in sources}
        out: list[tuple[int, StockEvent | InvalidArgument]] = []
        for i, ev in events:
            m = maps.get(ev.source)
            if m is None or not m.kinds:  # nothing to translate (most events)
                out.append((i, ev))
                continue
            try:
                where = f"events[{i}]"
                location = m.ours(ev.source, IdKind.LOCATION, ev.location, f"{where}.location_id")
                sku = m.ours(ev.source, IdKind.ITEM, ev.sku, f"{where}.sku")
            except InvalidArgument as exc:
                out.append((i, exc))
                continue
            if (location, sku) != (ev.location, ev.sku):
                ev = replace(ev, location=location, sku=sku)
            out.append((i, ev))
        return out

    async def set(self, changes: Sequence[tuple[str, IdKind, str, str]]) -> None:
        """(source, kind, external id, our id or "" to remove) each."""
        who = auth.current()
        for i, (source, kind, external, ours) in enumerate(changes):
            check_id(source, f"mappings[{i}].source")
            check_id(external, f"mappings[{i}].external_id")
            if ours:
                check_id(ours, f"mappings[{i}].id")
            if kind is IdKind.LOCATION:  # a scoped principal maps only to its own locations
                who.require_locations([ours] if ours else [], f"mappings[{i}].id")
        await self.storage.set_mappings(changes)
        self.by_source, self._checked_at = OrderedDict(), float("-inf")
