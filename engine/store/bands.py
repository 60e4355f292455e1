"""Stock band crossings, for the alerts stream (engine/usecases/bandalerts.py decides which
rows to check, and when): the band last found of each row for each channel ({L}:b:<b>), each
location's outbox of crossings (band_check.lua), their move onto the alerts stream, once
each (band_publish.lua), and the leases that make one process the detector (lease.lua)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from engine.domain.rules import Band, StockStatus
from engine.store.base import Base
from engine.store.codecs import ChannelHold
from engine.store.keys import ALERTS, ALERTS_KEPT, BANDS_ALERTED, KeyList, Keys

CHECK_ROWS = 50  # rows checked by one script call: a big batch holds Redis a little at a time
PUBLISH_ROWS = 200  # crossings put on the alerts stream by one script call
_BAND = {"I": StockStatus.IN_STOCK, "L": StockStatus.LOW, "O": StockStatus.OUT}


@dataclass(frozen=True, slots=True)
class Crossing:
    """A row's change of band down (into LOW or OUT) for a channel ('': none), as found."""

    number: int  # grows with each crossing at its location
    sku: str
    channel: str
    was: StockStatus
    status: StockStatus
    available: int  # what the channel could hold of the row then
    version: int  # the row's version then
    at: int  # ms

    def encoded(self) -> str:
        """As the outbox holds it (band_check.lua)."""
        fields = (self.number, self.sku, self.channel, self.was, self.status, self.available)
        return "\t".join(map(str, (*fields, self.version, self.at)))

    @classmethod
    def decoded(cls, raw: bytes) -> Crossing:
        n, sku, channel, was, status, available, version, at = raw.decode().split("\t")
        return cls(
            int(n),
            sku,
            channel,
            StockStatus(was),
            StockStatus(status),
            int(available),
            int(version),
            int(at),
        )


@dataclass(frozen=True, slots=True)
class RowBands:
    """A row to check, with its band for each channel checked (in their order)."""

    sku: str
    bands: Sequence[Band]


class BandStore(Base):
    async def check_bands(
        self,
        location: str,
        now_ms: int,
        acked: int,
        channels: Sequence[ChannelHold],
        rows: Sequence[RowBands],
    ) -> list[Crossing]:
        """Checks the rows' bands for each channel (its rule at the location), now; answers
        every crossing at the location not yet on the alerts stream (those numbered up to
        `acked` are, and are dropped), oldest first."""
        calls = [
            self._check_call(location, (now_ms, acked), channels, rows[i : i + CHECK_ROWS])
            for i in range(0, len(rows), CHECK_ROWS)
        ]
        pending = await asyncio.gather(*(self.call("band_check", k, a) for k, a in calls))
        if not any(pending):
            return []
        outbox = Keys.band_outbox(location)
        return [Crossing.decoded(c) for c in await self.command(lambda p: p.lrange(outbox, 0, -1))]

    def _check_call(
        self,
        location: str,
        at: tuple[int, int],
        channels: Sequence[ChannelHold],
        rows: Sequence[RowBands],
    ) -> tuple[list[str], list[object]]:
        """at: now_ms and acked (band_check.lua)."""
        keys = KeyList(
            Keys.band_outbox(location),
            Keys.band_number(location),
            Keys.channel_holds(location),
            Keys.pools(location),
        )
        args: list[object] = [*at, len(channels)]
        for ch in channels:
            args += [ch.channel, ch.buffer, ch.share_ppm]
        args.append(len(rows))
        for row in rows:
            stock = keys.add(self.keys.stock(location, row.sku))
            args += [row.sku, stock, keys.add(self.keys.bands(location, row.sku))]
            for band in row.bands:
                args += [band.low, band.out]
        return keys.keys, args

    async def publish_crossings(
        self, location: str, crossings: Sequence[Crossing]
    ) -> tuple[int, list[StockStatus]]:
        """Puts the crossings (oldest first) on the alerts stream, each once (kind `band`),
        PUBLISH_ROWS to a script call; answers the number of the location's last crossing
        there, and the status of each put there now."""
        last, statuses = 0, list[StockStatus]()
        for start in range(0, len(crossings), PUBLISH_ROWS):
            some = crossings[start : start + PUBLISH_ROWS]
            args = [location, ALERTS_KEPT, *(c.encoded() for c in some)]
            got, *put = await self.call("band_publish", [ALERTS, BANDS_ALERTED], args)
            last, statuses = int(got), statuses + [StockStatus(s.decode()) for s in put]
        return last, statuses

    async def detected_bands(self, location: str, sku: str) -> dict[str, StockStatus]:
        """The band last found of a row, by channel ('': none); empty before its first
        check."""
        raw = await self.command(lambda p: p.hget(self.keys.bands(location, sku), sku))
        found = {}
        for entry in (raw or b"").decode().splitlines():
            found[entry[1:]] = _BAND[entry[0]]
        return found

    async def lease(self, key: str, holder: str, ttl_ms: int) -> bool:
        """Takes or keeps the lease `key` for `holder` for ttl_ms (0: lets it go): whether
        the holder has it now."""
        return bool(await self.call("lease", [key], [holder, ttl_ms]))
