"""What operators look at and mend (OperatorService; the `omnistock` command line): a row
with the holds on it, a location, the sources of stock events, the alerts, the ingest
adapters' dead letters. Every id is checked like any caller's, and a principal limited to
some locations sees only those."""

from __future__ import annotations

from dataclasses import dataclass

from engine.domain import auth
from engine.domain.errors import InvalidArgument, NotFound
from engine.domain.model import Location, StockRow, check_id
from engine.domain.rules import StockStatus
from engine.store.codecs import Holder
from engine.store.oversight import Entry, Numbered, SourceSeen
from engine.store.storage import Storage
from engine.usecases.channels import ChannelRules
from engine.usecases.locations import LocationRegistry
from engine.usecases.sources import Sources

MAX_LIST = 1000
DEFAULT_LIST = 100
_STREAM_ID = "0123456789-"


@dataclass(frozen=True, slots=True)
class RowDetail:
    row: StockRow
    status: StockStatus  # its band, for no channel
    holders: list[Holder]  # its holds, oldest first
    detected: dict[str, StockStatus]  # the band last found by channel (bandalerts.py)
    states: tuple[int, ...]  # its units damaged, in quality control, returned


@dataclass(frozen=True, slots=True)
class LocationSizes:
    location: Location
    rows: int
    held_reservations: int
    numbered: list[Numbered]


def check_cursor(value: str, field: str) -> str:
    """A stream entry id ("<ms>-<seq>") or empty."""
    if value and (len(value) > 41 or value.count("-") != 1 or set(value) - set(_STREAM_ID)):
        raise InvalidArgument(field, f"must be an id as listed (<ms>-<n>), got {value[:50]!r}")
    return value


def check_limit(value: int, field: str) -> int:
    if value > MAX_LIST:
        raise InvalidArgument(field, f"at most {MAX_LIST}, got {value}")
    return value or DEFAULT_LIST


class Operators:
    def __init__(
        self,
        storage: Storage,
        locations: LocationRegistry,
        sources: Sources,
        channels: ChannelRules,
        dead_letter_stream: str,
    ) -> None:
        self.storage = storage
        self.locations = locations
        self.sources = sources
        self.channels = channels
        self.dead_letter_stream = dead_letter_stream

    async def _location(self, location: str) -> Location:
        check_id(location, "location_id")
        auth.current().require_locations([location], "location_id")
        if not await self.locations.known([location]):
            raise NotFound(f"location_id: no location {location!r}")
        return self.locations.by_id[location]

    async def row(self, location: str, sku: str) -> RowDetail:
        """The row and its units in the other states, its band (no channel's), its holds,
        and the bands last found of it."""
        loc = await self._location(location)
        check_id(sku, "sku")
        (row,), (states,) = await self.storage.rows_in_states([(location, sku)])
        holders = await self.storage.holders(location, [sku])
        await self.channels.fresh()
        status = self.channels.band_at(loc, sku, "").status(row.available)
        detected = await self.storage.detected_bands(location, sku)
        return RowDetail(row, status, holders.get(sku, []), detected, states)

    async def location(self, location: str) -> LocationSizes:
        loc = await self._location(location)
        rows, held = await self.storage.location_sizes(location)
        return LocationSizes(loc, rows, held, await self.storage.numbered(location))

    async def list_sources(self) -> dict[str, SourceSeen]:
        """What every process wrote down of every source (this one's written first)."""
        await self.sources.flush()
        out = {}
        for name, f in (await self.storage.sources()).items():
            out[name] = SourceSeen(
                events=int(f.get("events", 0)),
                last_arrival=int(f.get("last_arrival", 0)),
                last_source_time=int(f.get("last_source_time", 0)),
                clock_offset_ms=int(f.get("clock_offset_ms", 0)),
                clock=f.get("clock", b"ok").decode(),
            )
        return out

    async def alerts(self, after: str, limit: int) -> list[Entry]:
        return await self.storage.alerts(check_cursor(after, "after"), check_limit(limit, "limit"))

    async def dead_letters(
        self, after: str, limit: int, origin: str, reason_contains: str
    ) -> list[Entry]:
        """The letters after `after`, `limit` of them at most, that match: read a page at a
        time until enough match or the stream ends."""
        after, limit = check_cursor(after, "after"), check_limit(limit, "limit")
        found: list[Entry] = []
        while len(found) < limit:
            page = await self.storage.dead_letters(self.dead_letter_stream, after, MAX_LIST)
            for letter_id, fields in page:
                if origin and fields.get("dead.from", b"").decode(errors="replace") != origin:
                    continue
                if reason_contains not in fields.get("dead.reason", b"").decode(errors="replace"):
                    continue
                found.append((letter_id, fields))
                if len(found) == limit:
                    break
            if len(page) < MAX_LIST:
                break
            after = page[-1][0]
        return found

    async def delete_dead_letters(self, ids: list[str]) -> int:
        if len(ids) > MAX_LIST:
            raise InvalidArgument("ids", f"at most {MAX_LIST} per call, got {len(ids)}")
        for i, letter_id in enumerate(ids):
            if not letter_id:
                raise InvalidArgument(f"ids[{i}]", "must not be empty")
            check_cursor(letter_id, f"ids[{i}]")
        return await self.storage.delete_dead_letters(self.dead_letter_stream, ids) if ids else 0
