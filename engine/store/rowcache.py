"""The read cache: each server process keeps the stock rows it is asked for, kept fresh by
the row-change messages every row-writing script publishes (`{L}:w`, write_row in
lua/_prelude.lua), so that a storefront read of rows it has costs no Redis round trip.
Holds, commits and every other write still go to Redis, atomically, as before.

How a location comes in sync. The first read of a location subscribes its channel (on a
connection of the cache's own, one per Redis node) and is answered from Redis. Once Redis
has confirmed the subscription, every later write there reaches this process, in order:
a row read from Redis after that is kept (a fill; also when read because the cache could
not vouch for it right then, so no read served here is older than one read from Redis
before it), and a message that arrives while its fill is under way is not lost: the fill
keeps whichever of the two has the higher version. A message older than the row kept is
dropped, as are a location's messages for rows nobody asked for.

How stale a cached read can be (docs/architecture.md). The cache sends PING on each of its
connections every max_lag/4; Redis answers it in order with the messages, so its PONG says
that every write Redis ran before that PING was sent has been applied. A location is served
from the cache only while the PONG of a PING sent at most `max_lag` ago has come back, and
only once a PING sent after this process's own last write there has come back (so a
caller's own write through this process is seen by its next read here). So a cached read at
time t reflects every write acknowledged before t - max_lag; anything else falls back to
Redis.

A gap drops what it touches and starts again: a connection that fails, closes, answers
out of turn (a slot moved away: Redis unsubscribes it) or leaves a PING unanswered for
`dead_after` forgets every location of its node (their next reads go to Redis and
subscribe again); a store flushed under us (FLUSHALL: no message) is found by the epoch
key `{omnistock}:epoch` disappearing, checked every EPOCH_CHECK seconds, and forgets every
location. Memory: at most `max_rows` rows and MAX_LOCATIONS locations, the least recently
read location dropped (and unsubscribed) first. What is kept of a location, and in what
form (rows as plain tuples, out of the garbage collector's walk): engine/store/kept.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Protocol

from engine.domain.model import StockRow
from engine.domain.rules import ChannelRule, channel_offer
from engine.metrics import Metrics
from engine.store.cachelink import Follower, Link, node_of, open_link
from engine.store.codecs import parse_change
from engine.store.kept import (
    NO_ROW,
    KeptLocation,
    as_kept,
    as_row,
    begin_fill,
    both,
    end_fill,
    kept_channels,
    offer,
    told,
    version_of,
)
from engine.store.keys import Keys
from engine.store.storage import Storage

log = logging.getLogger(__name__)
MAX_LOCATIONS = 10_000  # subscribed at once, per process
RETRY_AFTER = 0.5  # seconds a node whose connection failed is left alone
READS = ("hit", "filled", "fallback")  # how a row read was answered (a metric's labels)
Followed = tuple[KeptLocation | None, bool]  # the state rows read are kept in; served now?


class RowReader(Protocol):
    """Where reads get stock rows: Storage (always Redis) or RowCache."""

    async def rows(self, pairs: Sequence[tuple[str, str]]) -> list[StockRow]: ...

    async def available(self, pairs: Sequence[tuple[str, str]]) -> list[int]: ...

    async def offers(
        self, channel: str, rules: Mapping[str, ChannelRule], pairs: Sequence[tuple[str, str]]
    ) -> tuple[list[StockRow], list[int]]:
        """The rows, and what `channel`, under its rule at each location, may hold of each."""


class RowCache(Follower):
    """Stock rows for reads, served from this process where it can vouch for them (see the
    module docstring), else from Redis: `rows` and `available` as Storage's."""

    what = "read cache"

    def __init__(
        self,
        storage: Storage,
        metrics: Metrics,
        max_rows: int,
        max_lag: float,
        dead_after: float = 2.0,
    ) -> None:
        super().__init__()
        self.storage = storage
        self.metrics = metrics
        self.max_rows = max_rows
        self.max_lag = max_lag
        self.beat = max_lag / 4
        self.dead_after = max(dead_after, 2 * max_lag)
        self.locations: OrderedDict[str, KeptLocation] = OrderedDict()  # least recent first
        self.links: dict[str, Link] = {}
        self.retry_at: dict[str, float] = {}
        self.cached = 0  # rows kept, over all locations
        self._heard = asyncio.Event()  # a PONG came back, or a connection was dropped
        self._reads = {how: metrics.read_cache_reads.labels(how) for how in READS}
        metrics.read_cache_rows.set_function(lambda: self.cached)
        metrics.read_cache_locations.set_function(lambda: len(self.locations))

    # -- reads -------------------------------------------------------------------------

    async def rows(self, pairs: Sequence[tuple[str, str]]) -> list[StockRow]:
        """The rows of (location, sku) pairs, each as fresh as the module docstring says."""
        out: list[StockRow | None] = [None] * len(pairs)
        fills: list[tuple[int, KeptLocation | None]] = []  # from Redis: None = not kept
        unsure = 0  # of them, rows of locations that may not be served now
        states = self._states(pairs)
        for i, (location, sku) in enumerate(pairs):
            state, serve = states[location]
            kept = state.rows.get(sku) if serve and state is not None else None
            if kept is not None:
                out[i] = as_row(kept)
            else:
                fills.append((i, state))
                unsure += not serve
        self._count(len(pairs) - len(fills), len(fills) - unsure, unsure)
        if fills:
            await self._fill(pairs, fills, out)
        return out  # type: ignore[return-value]  # every slot was set

    async def available(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        return [row.available for row in await self.rows(pairs)]

    async def offers(
        self, channel: str, rules: Mapping[str, ChannelRule], pairs: Sequence[tuple[str, str]]
    ) -> tuple[list[StockRow], list[int]]:
        """The rows, and what `channel` may hold of each (channel_offer), from rows kept
        with their pools and what the channels that matter hold (each pool's, and the
        asking one's where its rule caps its share), as fresh as `rows`; the others read
        from Redis, one script call a location, and kept."""
        rows: list[StockRow] = [NO_ROW] * len(pairs)
        offers = [0] * len(pairs)
        misses: dict[str, list[int]] = {}
        unsure = 0  # of them, rows of locations that may not be served now
        states = self._states(pairs)
        for i, (location, sku) in enumerate(pairs):
            state, serve = states[location]
            kept = state.rows.get(sku) if serve and state is not None else None
            row = None if kept is None else as_row(kept)
            got = None
            if state is not None and row is not None:
                got = offer(state, sku, row, channel, rules[location])
            if got is None or row is None:
                misses.setdefault(location, []).append(i)
                unsure += not serve
            else:
                rows[i], offers[i] = row, got
        missed = sum(map(len, misses.values()))
        self._count(len(pairs) - missed, missed - unsure, unsure)
        if misses:
            await asyncio.gather(
                *(
                    self._fill_offers(
                        channel, rules[loc], states[loc][0], loc, at, pairs, (rows, offers)
                    )
                    for loc, at in misses.items()
                )
            )
        return rows, offers

    async def _fill_offers(
        self,
        channel: str,
        rule: ChannelRule,
        state: KeptLocation | None,
        location: str,
        at: list[int],
        pairs: Sequence[tuple[str, str]],
        out: tuple[list[StockRow], list[int]],
    ) -> None:
        """Reads the rows of `pairs` at `at` (all at `location`) with their channels' counts
        from Redis, answers from what was read, and keeps it (state None: not kept)."""
        skus = list(dict.fromkeys(pairs[i][1] for i in at))
        if state is not None:
            for sku in skus:
                begin_fill(state, sku)
        try:
            read = await self.storage.channel_rows(location, skus, channel, rule)
        finally:
            seen = {sku: end_fill(state, sku) for sku in skus} if state else {}
        answers = {}
        for sku, (row, note) in zip(skus, read, strict=True):
            pools = note.pools or ()
            answers[sku] = row, channel_offer(row, pools, note.held, channel, rule)
            if state is not None and self._still_kept(state):
                kept = kept_channels(row.version, pools, note.held)
                for message, message_note in seen[sku]:
                    kept = told(kept, message.version, message_note)
                    row = message if message.version > row.version else row
                self._keep(state, sku, row)
                known = state.channels.get(sku)
                if known is None or kept[0] > known[0]:
                    state.channels[sku] = kept
                elif kept[0] == known[0]:  # of one instant: both hold
                    state.channels[sku] = both(known, kept)
        for i in at:
            out[0][i], out[1][i] = answers[pairs[i][1]]
        self._evict()

    def kept(self, location: str, sku: str) -> StockRow | None:
        """The row as kept here (None: not kept), whether or not it may be served now."""
        state = self.locations.get(location)
        kept = None if state is None else state.rows.get(sku)
        return None if kept is None else as_row(kept)

    def wrote(self, location: str) -> None:
        """A write at `location` was just answered to this process: its rows are served
        from here again only once a PING sent after now has come back (one is sent at
        once, not at the next beat)."""
        state = self.locations.get(location)
        if state is not None:
            state.written_at = time.monotonic()
            state.link.ping_soon()

    def _states(self, pairs: Sequence[tuple[str, str]]) -> dict[str, Followed]:
        """Each location of `pairs`, as _followed says."""
        now = time.monotonic()
        return {loc: self._followed(loc, now) for loc in dict.fromkeys(loc for loc, _ in pairs)}

    def _followed(self, location: str, now: float) -> Followed:
        """The location's state if rows read of it from Redis may be kept (None: not
        followed yet, and then subscribed for the reads after this one), and whether its
        kept rows may be served now (freshness proven: the module docstring)."""
        state = self.locations.get(location)
        if state is None:
            self._subscribe(location, now)
            return None, False
        self.locations.move_to_end(location)
        if self.epoch is None or not state.live:  # a flush before the epoch would go unseen
            return None, False
        fresh_at = state.link.fresh_at
        return state, now - fresh_at <= self.max_lag and fresh_at > state.written_at

    def _count(self, hits: int, filled: int, fallbacks: int) -> None:
        for how, n in zip(READS, (hits, filled, fallbacks), strict=True):
            if n:
                self._reads[how].inc(n)

    async def _fill(
        self,
        pairs: Sequence[tuple[str, str]],
        fills: list[tuple[int, KeptLocation | None]],
        out: list[StockRow | None],
    ) -> None:
        for i, state in fills:
            if state is not None:
                begin_fill(state, pairs[i][1])
        try:
            read = await self.storage.rows([pairs[i] for i, _ in fills])
        finally:
            got = {}
            for i, state in fills:
                if state is not None:
                    got[i] = end_fill(state, pairs[i][1])
        for (i, state), row in zip(fills, read, strict=True):
            out[i] = row
            if state is not None and self._still_kept(state):
                newest = max((m for m, _ in got[i]), key=version_of, default=row)
                self._keep(state, pairs[i][1], max(row, newest, key=version_of))
        self._evict()

    def _still_kept(self, state: KeptLocation) -> bool:
        """Whether a location read for is still followed, by the same subscription."""
        return self.locations.get(state.name) is state and state.live

    def _keep(self, state: KeptLocation, sku: str, row: StockRow) -> None:
        """Keeps a row read (or told of) unless a newer one is kept already."""
        kept = state.rows.get(sku)
        if kept is None:
            self.cached += 1
        elif as_row(kept).version >= row.version:
            return
        state.rows[sku] = as_kept(row)

    # -- subscriptions -----------------------------------------------------------------

    def _subscribe(self, location: str, now: float) -> None:
        node = None if self._closed else node_of(self.storage, location)
        if node is None or now < self.retry_at.get(node, 0.0):
            return
        link = self.links.get(node)
        if link is None:
            link = self._open(node, location)
        state = KeptLocation(location, link)
        self.locations[location] = state
        link.locations.add(location)
        link.send("sub", location, state.serial)
        self._evict()

    def _open(self, node: str, location: str) -> Link:
        link = open_link(
            self.storage, node, location, self, self.beat, self.dead_after, "read cache"
        )
        self.links[node] = link
        return link

    def _evict(self) -> None:
        """Drops the least recently read locations while over a bound."""
        while self.locations and (
            self.cached > self.max_rows or len(self.locations) > MAX_LOCATIONS
        ):
            _, state = self.locations.popitem(last=False)
            self._forget(state)
            self.metrics.read_cache_evictions.inc()
            link = state.link
            if self.links.get(link.node) is link:
                link.send("unsub", state.name, state.serial)

    def _forget(self, state: KeptLocation) -> None:
        self.cached -= len(state.rows)
        state.rows.clear()
        state.channels.clear()
        state.live = False
        state.link.locations.discard(state.name)

    def _drop(self, link: Link, why: str) -> None:
        """A gap on `link`: every location of its node is forgotten."""
        if self.links.get(link.node) is not link:
            return  # dropped already (a reset)
        del self.links[link.node]
        self._heard.set()
        if why == "gap":
            self.retry_at[link.node] = time.monotonic() + RETRY_AFTER
        for name in list(link.locations):
            state = self.locations.pop(name, None)
            if state is not None:
                self._forget(state)
                self.metrics.read_cache_resyncs.labels(why).inc()
        link.locations.clear()

    def reset(self, why: str) -> None:
        """Forgets every location (a gap of the whole store)."""
        for link in list(self.links.values()):
            self._drop(link, why)
            link.task.cancel()
        self.retry_at.clear()

    # -- what the links tell ------------------------------------------------------------

    def on_message(self, channel: bytes, data: bytes) -> None:
        state = self.locations.get(Keys.location_of_changes(channel.decode()))
        if state is None or not state.live:
            return
        sku, row, note = parse_change(data)
        kept = state.rows.get(sku)
        if kept is not None and row.version > as_row(kept).version:
            state.rows[sku] = as_kept(row)
        channels = state.channels.get(sku)
        if channels is not None:
            state.channels[sku] = told(channels, row.version, note)
        filling = state.filling.get(sku)
        if filling is not None:
            filling[1].append((row, note))

    def on_live(self, location: str, serial: int) -> None:
        state = self.locations.get(location)
        if state is not None and state.serial == serial:  # not a dropped one's
            state.live = True

    def on_refused(self, location: str, serial: int, error: Exception) -> None:
        state = self.locations.get(location)
        if state is not None and state.serial == serial:
            del self.locations[location]
            self._forget(state)
        log.info("read cache: %s not subscribed: %s", location, error)

    def on_pong(self) -> None:
        self._heard.set()

    def on_gone(self, link: Link) -> None:
        self._drop(link, "gap")

    async def caught_up(self) -> None:
        """Waits until every connection has answered a PING sent after now (or is gone):
        from then on, every write answered before now is in the cache."""
        since = time.monotonic()
        while True:
            self._heard.clear()
            if all(link.fresh_at > since for link in self.links.values()):
                return
            await self._heard.wait()

    def on_flush(self) -> None:
        self.reset("flush")
