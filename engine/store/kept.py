"""What the read cache (engine/store/rowcache.py) keeps of a location it follows: its rows,
each as a plain tuple of its fields (Kept), which the garbage collector stops tracking after
a pass (a StockRow, a tuple subclass, it tracks for life: every full collection would walk
the whole cache, passes of up to 37-44 ms with 40,000 rows kept, bench/RESULTS.md,
"Storefront: levels encoded once, rows the collector does not walk"); each row's
channels (KeptChannels, a plain tuple too), once read; the fills under way and the
messages seen meanwhile; and what a channel may hold of a kept row."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.domain.model import StockRow
from engine.domain.rules import ChannelRule, Pool, channel_offer
from engine.store.cachelink import Link
from engine.store.codecs import RowNote

_serials = itertools.count(1)
NO_ROW = StockRow()
Kept = tuple[int, int, int, int, int]  # a row as kept: StockRow's fields, in order


def as_row(kept: Kept) -> StockRow:
    return tuple.__new__(StockRow, kept)


def as_kept(row: StockRow) -> Kept:
    return tuple(row)  # type: ignore[return-value]  # StockRow's five ints


# What a sales channel's share of a kept row depends on beside it, as of the row's version:
# (version, its pools, what some channels hold of it as (channel, units) pairs: those a
# fill read and those messages told since; a channel not there is not known, not none).
# Plain tuples all through, as rows are, so out of the collector's walk after a pass or two
# (a dict in a tuple would keep it tracked; a row with pools stays tracked, by its Pool
# objects: most rows have none).
KeptChannels = tuple[int, tuple[Pool, ...], tuple[tuple[str, int], ...]]


def kept_channels(version: int, pools: tuple[Pool, ...], held: Mapping[str, int]) -> KeptChannels:
    return version, pools, tuple(held.items())


def told(kept: KeptChannels, version: int, note: RowNote | None) -> KeptChannels:
    """`kept` after a change message of its row, in the order Redis sent them (older ones
    ignored)."""
    old, pools, held = kept
    if version <= old:
        return kept
    if note is None:
        return version, pools, held
    return kept_channels(
        version, pools if note.pools is None else note.pools, {**dict(held), **note.held}
    )


def both(known: KeptChannels, read: KeptChannels) -> KeptChannels:
    """Two reads of one row's channels at the same version: what either knows."""
    return kept_channels(known[0], known[1], {**dict(known[2]), **dict(read[2])})


@dataclass(eq=False)
class KeptLocation:
    """A followed location: its subscription, and its rows and their channels as kept."""

    name: str
    link: Link
    serial: int = field(default_factory=lambda: next(_serials))  # which subscription
    live: bool = False  # Redis confirmed the subscription on link
    written_at: float = -math.inf  # when this process's last write here was answered
    rows: dict[str, Kept] = field(default_factory=dict)
    channels: dict[str, KeptChannels] = field(default_factory=dict)  # of kept rows, once read
    # sku -> [fills under way, the messages of the row seen meanwhile, in order]
    filling: dict[str, list[Any]] = field(default_factory=dict)


def begin_fill(state: KeptLocation, sku: str) -> None:
    """A fill of `sku` is under way: its messages are kept for it until end_fill."""
    state.filling.setdefault(sku, [0, []])[0] += 1


def end_fill(state: KeptLocation, sku: str) -> list[tuple[StockRow, RowNote | None]]:
    """The messages of `sku` seen while its fills were under way, in order."""
    entry = state.filling[sku]
    entry[0] -= 1
    if entry[0] == 0:
        del state.filling[sku]
    seen: list[tuple[StockRow, RowNote | None]] = entry[1]
    return seen


def version_of(row: StockRow) -> int:
    return row.version


def offer(
    state: KeptLocation, sku: str, row: StockRow, channel: str, rule: ChannelRule
) -> int | None:
    """What `channel` may hold of a kept row, or None when it cannot be told from what is
    kept: the row's channels not kept, not of the row's version, or a count it needs not
    known (each pool's channel's, and its own where its rule caps its share)."""
    channels = state.channels.get(sku)
    if channels is None:
        return None
    version, pools, pairs = channels
    if version != row.version:
        return None
    held = dict(pairs)
    if rule.share_ppm < 1_000_000 and channel not in held:
        return None
    for pool in pools:
        if pool.channel not in held:
            return None
    return channel_offer(row, pools, held, channel, rule)
