"""Stock rows as the callers see them: what is available where (GetAvailability), the rows
a watch follows and their state when it opens (WatchAvailability), and the safety stock
kept back from holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from engine.domain.bundles import Table, expand_pairs, fold, has_bundles, kit_row
from engine.domain.errors import InvalidArgument
from engine.domain.model import (
    MAX_ROWS,
    MAX_SAFETY_ENTRIES,
    LocationType,
    StockRow,
    check_id,
    check_ids,
    check_qty,
    check_size,
)
from engine.domain.rules import StockStatus
from engine.store.rowcache import RowReader
from engine.store.storage import Storage
from engine.usecases.bundles import refuse_bundles
from engine.usecases.channels import ChannelRules
from engine.usecases.locations import LocationRegistry

SAFETY_BATCH = 1000  # safety entries per script call: no script holds Redis for long

Level = tuple[str, str, StockRow]  # location, sku, its row
# and what the asking channel may hold of it, the band that puts it in, and (when asked
# for) its units in each other state, in the order of OTHER_STATES (else ())
Offered = tuple[str, str, StockRow, int, StockStatus, tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class Watched:
    skus: list[str]  # [] : every sku of the locations
    locations: list[str]


class Availability:
    def __init__(
        self,
        storage: Storage,
        locations: LocationRegistry,
        reader: RowReader | None = None,
        channels: ChannelRules | None = None,
    ) -> None:
        """reader: where GetAvailability reads rows (the read cache; default: Redis). A
        watch's opening state is always read from Redis, after its subscription. channels:
        the sales channels' rules (the holds' own, so both see the same)."""
        self.storage = storage
        self.locations = locations
        self.reader: RowReader = reader or storage
        self.channels = channels or ChannelRules(storage, locations)

    async def levels(
        self,
        skus: Sequence[str],
        location_ids: Sequence[str],
        types: set[LocationType],
        include_empty: bool,
        channel: str = "",
        states: bool = False,
    ) -> list[Offered]:
        """The rows of `skus` at the locations named, or else at every active location of
        `types` (all types when none), each with what `channel` may hold of it (its rules
        applied; no channel: the row's available units), where only rows with some are kept
        unless `include_empty`; with `states`, each row's units in the other states too."""
        if channel:
            check_id(channel, "channel")
        wanted = _skus(skus)
        if not wanted:
            raise InvalidArgument("skus", "at least one sku is required")
        if location_ids:
            locations = await self._named(location_ids)
        else:
            locations = [loc.id for loc in await self.locations.active(types)]
        _within_rows(wanted, locations)
        pairs = [(loc, sku) for loc in locations for sku in wanted]
        table = await self.channels.table()
        if has_bundles(wanted, table):
            rows, offered, others = await self._kits(channel, pairs, table, states)
        else:
            rows, offered, others = await self._read(channel, pairs, states)
        keep_empty = include_empty or bool(location_ids)
        statuses = self.statuses(channel, pairs, offered)
        return [
            (loc, sku, row, a, status, units)
            for (loc, sku), row, a, status, units in zip(
                pairs, rows, offered, statuses, others, strict=True
            )
            if keep_empty or a > 0
        ]

    async def _kits(
        self, channel: str, pairs: Sequence[tuple[str, str]], table: Table, states: bool
    ) -> tuple[list[StockRow], list[int], list[tuple[int, ...]]]:
        """rows, offered and states of `pairs` where some skus are bundles: their components'
        rows read with the others in one read, each bundle's level folded from them
        (kit_row); a bundle has no units in other states of its own (its components do)."""
        flat, starts = expand_pairs(pairs, table)
        if len(flat) > MAX_ROWS:
            raise InvalidArgument(
                "skus", f"their bundles' components come to {len(flat)} rows, over {MAX_ROWS}"
            )
        read, flat_offered, units = await self._read(channel, flat, states)
        offered = fold(flat_offered, pairs, starts, table)
        rows: list[StockRow] = []
        others: list[tuple[int, ...]] = []
        for (_, sku), start in zip(pairs, starts, strict=True):
            bundle = table.get(sku)
            if bundle is None:
                rows.append(read[start])
                others.append(units[start])
            else:
                rows.append(kit_row(bundle, read[start : start + len(bundle.components)]))
                others.append(tuple(0 for _ in units[start]))
        return rows, offered, others

    async def _read(
        self, channel: str, pairs: Sequence[tuple[str, str]], states: bool
    ) -> tuple[list[StockRow], list[int], list[tuple[int, ...]]]:
        """The rows, what `channel` may hold of each, and with `states` their units in the
        other states. From the read cache: the rows, or for a channel the rows with what it
        may hold of them (one read: channels.read). With `states`, from Redis: the rows and
        their state rows in the same script calls (keys.py), then the channel's offers."""
        if states:
            rows, others = await self.storage.rows_in_states(pairs)
            return rows, await self.offered(channel, pairs, rows), others
        await self.channels.fresh()  # for `status`, and the channel's rules
        if not channel:
            rows = await self.reader.rows(pairs)
            return rows, [row.available for row in rows], [()] * len(pairs)
        by_id = self.locations.by_id
        rows, offered = await self.channels.read(self.reader, channel, by_id, pairs)
        return rows, offered, [()] * len(pairs)

    async def offered(
        self,
        channel: str,
        pairs: Sequence[tuple[str, str]],
        rows: Sequence[StockRow],
        from_redis: bool = False,
    ) -> list[int]:
        """What `channel` may hold of each row (no channel: its available units), read as
        the rows were (the read cache), or `from_redis` (a watch's, after a change it was
        told of, which the cache may not have yet); the channels' rules and bands are
        refreshed first, for `statuses`."""
        await self.channels.fresh()
        if not channel:
            return [row.available for row in rows]
        reader = self.storage if from_redis else self.reader
        return await self.channels.offered(reader, channel, self.locations.by_id, pairs)

    def statuses(
        self, channel: str, pairs: Sequence[tuple[str, str]], units: Sequence[int]
    ) -> list[StockStatus]:
        """The band each row's `units` put it in, for the channel (after offered)."""
        return self.channels.statuses(self.locations.by_id, pairs, channel, units)

    async def watched(
        self, skus: Sequence[str], location_ids: Sequence[str], send_current: bool
    ) -> Watched:
        """What a watch follows: the skus (all when none) at the locations named (all when
        none); its opening state, when asked for, needs the skus and at most MAX_ROWS rows."""
        wanted = _skus(skus)
        refuse_bundles(wanted, await self.channels.table(), "skus", _NO_WATCH)
        locations = await self._named(location_ids)
        if not locations:
            if not wanted:
                raise InvalidArgument("skus", "choose skus, locations or both")
            locations = list(await self.locations.fresh())
        if send_current and not wanted:
            raise InvalidArgument("skus", "send_current needs the skus whose state to send")
        if send_current:
            _within_rows(wanted, locations)
        return Watched(wanted, locations)

    async def opening(self, watched: Watched) -> AsyncIterator[list[Level]]:
        """The watched rows' current state, one location's rows (at most MAX_SKUS) at a
        time, each read when the one before it has been taken: a watch of 20,000 rows
        never holds them all, and a hundred such watches do not fill the heap that every
        full collection walks (bench/RESULTS.md, "Heavy work in its lane")."""
        for loc in watched.locations:
            pairs = [(loc, sku) for sku in watched.skus]
            rows = await self.storage.rows(pairs)
            yield [(loc, sku, row) for (loc, sku), row in zip(pairs, rows, strict=True)]

    async def set_safety_stock(self, entries: Sequence[tuple[str, str, int]]) -> int:
        """(location, sku, units kept back) each; answers how many rows changed."""
        if not entries:
            raise InvalidArgument("entries", "at least one entry is required")
        check_size(len(entries), "entries", MAX_SAFETY_ENTRIES)
        groups: dict[str, list[tuple[str, int]]] = {}
        for i, (location, sku, qty) in enumerate(entries):
            check_id(location, f"entries[{i}].location_id")
            check_id(sku, f"entries[{i}].sku")
            check_qty(qty, f"entries[{i}].qty", allow_zero=True)
            groups.setdefault(location, []).append((sku, qty))
        await self.locations.require(list(groups), "entries[].location_id")
        batches = [
            (loc, items[i : i + SAFETY_BATCH])
            for loc, items in groups.items()
            for i in range(0, len(items), SAFETY_BATCH)
        ]
        changed = await asyncio.gather(
            *(self.storage.set_safety_stock(loc, items) for loc, items in batches)
        )
        return sum(changed)

    async def _named(self, location_ids: Sequence[str]) -> list[str]:
        check_ids(location_ids, "location_ids")
        ids = list(dict.fromkeys(location_ids))
        await self.locations.require(ids, "location_ids")
        return ids


_NO_WATCH = "a watch follows stock rows, and a bundle has none: watch its components"


def _skus(skus: Sequence[str]) -> list[str]:
    check_ids(skus, "skus")
    return list(dict.fromkeys(skus))


def _within_rows(skus: Sequence[str], locations: Sequence[str]) -> None:
    if len(skus) * len(locations) > MAX_ROWS:
        raise InvalidArgument(
            "location_ids", f"{len(skus)} skus x {len(locations)} locations is over {MAX_ROWS}"
        )
