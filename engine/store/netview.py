"""The network view: per server process, what a sales channel may hold of each row of the
networks it was asked about, kept between GetNetworkAvailability calls while nothing has
changed it, so that a listing of 50 skus over a network of 500 locations is a sum in this
process instead of 25,000 rows read from Redis (bench/RESULTS.md, "Location networks").

What it keeps. An entry per (network, channel): the network's members, and per sku a
column: each member's figure as read_network.lua gave it (the hold's own formula,
channel_available, run in Redis), and the members whose figure must be read again (dirty).
A query reads from Redis only the figures it lacks or that are dirty (each location's rows
in one step: engine/store/networks.py), and sums them with the others here.

When a figure is dirty. The view follows each member's change channel `{L}:w` (every script
that writes a row publishes it there: write_row in lua/_prelude.lua) through its feeds
(engine/store/feeds.py: connections of its own, one per node), and a message for a row
marks that row's figure dirty in every entry. What a channel may hold of a row changes
with the row (its holds, commits, releases, expiries, counts and safety stock all write
it), with the row's pools and with the channel's rules; pools and rules move the rules'
version, and an entry made under another version (or for other members) is dropped whole.

How fresh, as the read cache is (docs/architecture.md). A figure is dirty from the moment
its read is sent, so a message that arrives while the read is under way leaves it dirty;
one read before Redis confirmed its location's subscription is used once and stays dirty.
A query serves a location's clean figures only while the feeds vouch for it (Feeds.unsure:
its connection has answered a PING sent at most max_lag ago, and one sent after this
process's own last write there); else it reads them again. So an answer reflects every
write Redis ran more than max_lag before it, and every write made through this process
before it.

Gaps: a connection that fails, closes, goes out of step or leaves a PING unanswered drops
every entry with a member on its node; a flushed store (the epoch key `{omnistock}:epoch`
gone or changed, looked at every second) drops every entry. Bounded: at most `max_cells`
figures, the least recently asked columns dropped first; a location is followed while an
entry holds it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from engine.metrics import Metrics
from engine.store.feeds import Feeds
from engine.store.storage import Storage

log = logging.getLogger(__name__)
SUBSCRIBE_WAIT = 0.5  # seconds a new entry waits, at most, for its members' subscriptions

EntryKey = tuple[str, str]  # (network, channel)
Figures = NDArray[np.int64]
# Reads figures from Redis: location -> skus, answered location -> each sku's figure
Read = Callable[[dict[str, list[str]]], Awaitable[dict[str, list[int]]]]


@dataclass(eq=False)
class _Column:
    values: Figures  # per member, in the entry's order
    dirty: set[int]  # members whose figure is to be read again


@dataclass(eq=False)
class _Entry:
    key: EntryKey
    stamp: object  # what it was made under (members' and rules' versions): another drops it
    members: tuple[str, ...]
    names: frozenset[str]  # the members, as a set
    columns: dict[str, _Column] = field(default_factory=dict)


class NetworkView:
    """Figures of networks' rows, kept while unchanged (see the module docstring)."""

    def __init__(
        self, storage: Storage, metrics: Metrics, max_cells: int, max_lag: float, dead_after: float
    ) -> None:
        self.max_cells = max_cells
        self.entries: dict[EntryKey, _Entry] = {}
        self.recent: OrderedDict[tuple[EntryKey, str], None] = OrderedDict()  # least first
        self.cells = 0
        self.where: dict[str, dict[EntryKey, int]] = {}  # location -> entry -> its index
        self.feeds = Feeds(
            storage, "network view", max_lag, dead_after, self._changed, self._lost, self.reset
        )
        self._kept = metrics.network_rows.labels("kept")
        self._read = metrics.network_rows.labels("read")
        metrics.network_view_rows.set_function(lambda: self.cells)

    async def start(self) -> None:
        await self.feeds.start()

    async def close(self) -> None:
        await self.feeds.close()

    def wrote(self, location: str) -> None:
        """A write at `location` was just answered to this process: its kept figures are
        served again only once a PING sent after now has come back."""
        self.feeds.wrote(location)

    async def caught_up(self) -> None:
        await self.feeds.caught_up()

    # -- queries -----------------------------------------------------------------------

    async def figures(
        self,
        key: EntryKey,
        stamp: object,
        members: tuple[str, ...],
        skus: Sequence[str],
        read: Read,
    ) -> list[Figures]:
        """Each sku's figures over `members` (of the network and channel `key`, resolved
        under `stamp`), those not kept read with `read`."""
        entry = self.entries.get(key)
        if entry is None or entry.stamp != stamp or entry.members != members:
            entry = self._make(key, stamp, members)
            await self.feeds.confirmed(SUBSCRIBE_WAIT)
            if self.entries.get(key) is not entry:  # dropped while it waited (a flush, a
                entry = self._make(key, stamp, members)  # lost feed): anew, every row read
        unsure = self.feeds.unsure(entry.names, time.monotonic())
        stale = {self.where[name][key] for name in unsure}
        columns: list[_Column] = []
        todo: dict[int, list[str]] = {}
        for sku in skus:
            column = self._column(entry, sku)
            need = column.dirty | stale
            # a message from now on marks them again (a new set: one emptied in place would
            # keep the room of all its members)
            column.dirty = column.dirty - need
            for i in need:
                todo.setdefault(i, []).append(sku)
            columns.append(column)
        wanted = len(skus) * len(members)
        read_now = sum(len(some) for some in todo.values())
        self._kept.inc(wanted - read_now)
        if todo:
            self._read.inc(read_now)
            await self._fill(entry, dict(zip(skus, columns, strict=True)), todo, read)
        self._evict()
        return [column.values for column in columns]

    async def _fill(
        self, entry: _Entry, columns: dict[str, _Column], todo: dict[int, list[str]], read: Read
    ) -> None:
        """Reads the figures of `todo` (member -> skus) into their columns; each stays dirty
        unless its location's subscription was confirmed when the read was sent."""
        trusted = {i for i in todo if entry.members[i] in self.feeds.live}
        try:
            got = await read({entry.members[i]: some for i, some in todo.items()})
        except BaseException:
            for i, some in todo.items():
                for sku in some:
                    columns[sku].dirty.add(i)
            raise
        for i, some in todo.items():
            for sku, figure in zip(some, got[entry.members[i]], strict=True):
                column = columns[sku]
                column.values[i] = figure
                if i not in trusted:
                    column.dirty.add(i)

    # -- entries and columns ------------------------------------------------------------

    def _make(self, key: EntryKey, stamp: object, members: tuple[str, ...]) -> _Entry:
        old = self.entries.get(key)
        if old is not None:
            self._drop(old)
        entry = self.entries[key] = _Entry(key, stamp, members, frozenset(members))
        now = time.monotonic()
        for i, name in enumerate(members):
            self.where.setdefault(name, {})[key] = i
            self.feeds.follow(name, now)
        return entry

    def _column(self, entry: _Entry, sku: str) -> _Column:
        column = entry.columns.get(sku)
        if column is None:
            n = len(entry.members)
            column = entry.columns[sku] = _Column(np.zeros(n, dtype=np.int64), set(range(n)))
            self.cells += n
            self.recent[(entry.key, sku)] = None
        else:
            self.recent.move_to_end((entry.key, sku))
        return column

    def _evict(self) -> None:
        """Drops the least recently asked columns while over max_cells (and an entry left
        with none)."""
        while self.cells > self.max_cells and self.recent:
            (key, sku), _ = self.recent.popitem(last=False)
            entry = self.entries[key]
            del entry.columns[sku]
            self.cells -= len(entry.members)
            if not entry.columns:
                self._drop(entry)

    def _drop(self, entry: _Entry) -> None:
        if self.entries.get(entry.key) is not entry:
            return
        del self.entries[entry.key]
        for sku in entry.columns:
            del self.recent[(entry.key, sku)]
        self.cells -= len(entry.members) * len(entry.columns)
        for name in entry.members:
            where = self.where.get(name, {})
            where.pop(entry.key, None)
            if not where:
                self.where.pop(name, None)
                self.feeds.unfollow(name)

    def reset(self) -> None:
        """Forgets every entry (a flush of the whole store)."""
        log.warning("network view: every entry dropped")
        for entry in list(self.entries.values()):
            self._drop(entry)

    # -- what the feeds tell ------------------------------------------------------------

    def _changed(self, location: str, sku: str) -> None:
        """A row changed: its figure is dirty in every entry."""
        for key, i in self.where.get(location, {}).items():
            column = self.entries[key].columns.get(sku)
            if column is not None:
                column.dirty.add(i)

    def _lost(self, names: list[str]) -> None:
        """A connection was lost: every entry with a member it followed is dropped."""
        keys = {key for name in names for key in self.where.get(name, {})}
        for key in keys:
            entry = self.entries.get(key)
            if entry is not None:
                self._drop(entry)
