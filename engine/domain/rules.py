"""What a sales channel may take of a row (ChannelRule, Pool), the stock bands a row is in,
and per-customer limits: the values the channels' rules are made of."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine.domain.model import StockRow


@dataclass(frozen=True, slots=True)
class ChannelRule:
    """What a sales channel may take of each row at a location: never its last `buffer`
    units, and at most `max_share` of its sellable units (on_hand - safety) held at once."""

    buffer: int = 0
    max_share: float | None = None  # None: no cap
    # max_share in millionths, as the hold script counts it (1,000,000: no cap)
    share_ppm: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ppm = 1_000_000 if self.max_share is None else round(self.max_share * 1_000_000)
        object.__setattr__(self, "share_ppm", ppm)


NO_RULE = ChannelRule()


class StockStatus(enum.StrEnum):
    IN_STOCK = "IN_STOCK"
    LOW = "LOW"
    OUT = "OUT"


@dataclass(frozen=True, slots=True)
class Band:
    """A row's thresholds: OUT at or below `out` available units, LOW at or below `low`."""

    low: int = 0
    out: int = 0

    def status(self, available: int) -> StockStatus:
        if available <= self.out:
            return StockStatus.OUT
        if available <= self.low:
            return StockStatus.LOW
        return StockStatus.IN_STOCK


DEFAULT_BAND = Band()


@dataclass(frozen=True, slots=True)
class Pool:
    """Units of a row ring-fenced for one sales channel: no other channel sees or holds
    them; the channel's own holds draw from them first, and with `fallback` from the shared
    units once they are gone."""

    channel: str
    units: int
    fallback: bool = False


def channel_offer(
    row: StockRow, pools: Sequence[Pool], held: Mapping[str, int], channel: str, rule: ChannelRule
) -> int:
    """What `channel`, under `rule` at the row's location, may hold of the row: its pools
    and what each channel holds of it (`held`; a channel not in it holds none) taken into
    account. The formula of channel_available in engine/store/lua/_prelude.lua, which its
    holds are checked by, worked out here for reads (the read cache has no script to run);
    tests/test_channel_reads.py holds the two to the same answers."""
    there = row.available
    shared, mine, fallback = there, None, False
    for pool in pools:  # each keeps free what its channel does not hold of it
        free = max(pool.units - held.get(pool.channel, 0), 0)
        shared -= free
        if pool.channel == channel:
            mine, fallback = free, pool.fallback
    own = max(shared, 0) - rule.buffer
    if rule.share_ppm < 1_000_000:
        sellable = max(row.on_hand - row.safety_stock, 0)
        own = min(own, sellable * rule.share_ppm // 1_000_000 - held.get(channel, 0))
    own = max(own, 0)
    if mine is None:
        return own
    kept = min(mine, there)
    return kept + own if fallback else kept


@dataclass(frozen=True, slots=True)
class CustomerLimit:
    """The most units of a sku one customer may hold and buy within `window_ms` of each
    commit (held units count while held)."""

    max_units: int
    window_ms: int
