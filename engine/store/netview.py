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
that writes a row publishes it there: write_row in lua/_prelude.lua) on connections of its
own (engine/store/cachelink.py, one per node), and a message for a row marks that row's
figure dirty in every entry. What a channel may hold of a row changes with the row (its
holds, commits, releases, expiries, counts and safety stock all write it), with the row's
pools and with the channel's rules; pools and rules move the rules' version, and an entry
made under another version (or for other members) is dropped whole.

How fresh, as the read cache is (docs/architecture.md). A figure is dirty from the moment
its read is sent, so a message that arrives while the read is under way leaves it dirty;
one read before Redis confirmed its location's subscription is used once and stays dirty.
A query serves a location's clean figures only while that location's connection has
answered a PING sent at most max_lag ago, and one sent after this process's own last write
there; else it reads them again. So an answer reflects every write Redis ran more than
max_lag before it, and every write made through this process before it.

Gaps: a connection that fails, closes, goes out of step or leaves a PING unanswered drops
every entry with a member on its node; a flushed store (the epoch key `{omnistock}:epoch`
gone or changed, looked at every second) drops every entry. Bounded: at most `max_cells`
figures, the least recently asked columns dropped first; a location is followed while an
entry holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from redis import exceptions as rexc

from engine.metrics import Metrics
from engine.store.cachelink import Link, node_of, open_link
from engine.store.keys import EPOCH, Keys
from engine.store.scripts import REDIS_DOWN
from engine.store.storage import Storage

log = logging.getLogger(__name__)
EPOCH_CHECK = 1.0  # seconds between two looks at the epoch key
RETRY_AFTER = 0.5  # seconds a node whose connection failed is left alone
SUBSCRIBE_WAIT = 0.5  # seconds a new entry waits, at most, for its members' subscriptions

EntryKey = tuple[str, str]  # (network, channel)
Figures = NDArray[np.int64]
# Reads figures from Redis: location -> skus, answered location -> each sku's figure
Read = Callable[[dict[str, list[str]]], Awaitable[dict[str, list[int]]]]

_serials = itertools.count(1)


@dataclass(eq=False)
class _Column:
    values: Figures  # per member, in the entry's order
    dirty: set[int]  # members whose figure is to be read again


@dataclass(eq=False)
class _Entry:
    key: EntryKey
    stamp: object  # what it was made under (members' and rules' versions): another drops it
    members: tuple[str, ...]
    columns: dict[str, _Column] = field(default_factory=dict)


@dataclass(eq=False)
class _Followed:
    name: str
    link: Link
    serial: int = field(default_factory=lambda: next(_serials))
    live: bool = False  # Redis confirmed the subscription
    written_at: float = -math.inf  # when this process's last write there was answered


class NetworkView:
    """Figures of networks' rows, kept while unchanged (see the module docstring)."""

    def __init__(
        self, storage: Storage, metrics: Metrics, max_cells: int, max_lag: float, dead_after: float
    ) -> None:
        self.storage = storage
        self.metrics = metrics
        self.max_cells = max_cells
        self.max_lag = max_lag
        self.beat = max_lag / 4
        self.dead_after = max(dead_after, 2 * max_lag)
        self.entries: dict[EntryKey, _Entry] = {}
        self.recent: OrderedDict[tuple[EntryKey, str], None] = OrderedDict()  # least first
        self.cells = 0
        self.where: dict[str, dict[EntryKey, int]] = {}  # location -> entry -> its index
        self.followed: dict[str, _Followed] = {}
        self.links: dict[str, Link] = {}
        self.retry_at: dict[str, float] = {}
        self.unconfirmed: set[int] = set()  # subscriptions sent and not yet answered
        self.epoch: bytes | None = None
        self._heard = asyncio.Event()
        self._epoch_task: asyncio.Task[None] | None = None
        self._closed = False
        self._kept = metrics.network_rows.labels("kept")
        self._read = metrics.network_rows.labels("read")
        metrics.network_view_rows.set_function(lambda: self.cells)

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
            await self._confirmed()
        stale = self._stale(entry, time.monotonic())
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

    def _live(self, name: str) -> bool:
        followed = self.followed.get(name)
        return followed is not None and followed.live

    def _stale(self, entry: _Entry, now: float) -> set[int]:
        """The members whose kept figures may not be served now (module docstring)."""
        if self.epoch is None:  # not looked at yet: a flush before it would go unseen
            return set(range(len(entry.members)))
        out = set()
        for i, name in enumerate(entry.members):
            followed = self.followed.get(name)
            if followed is None:
                self._follow(name, now)  # again, after a refusal or a gap
                out.add(i)
                continue
            fresh = followed.link.fresh_at
            if not followed.live or now - fresh > self.max_lag or fresh <= followed.written_at:
                out.add(i)
        return out

    async def _fill(
        self, entry: _Entry, columns: dict[str, _Column], todo: dict[int, list[str]], read: Read
    ) -> None:
        """Reads the figures of `todo` (member -> skus) into their columns; each stays dirty
        unless its location's subscription was confirmed when the read was sent."""
        trusted = {i for i in todo if self._live(entry.members[i])}
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
        entry = self.entries[key] = _Entry(key, stamp, members)
        now = time.monotonic()
        for i, name in enumerate(members):
            self.where.setdefault(name, {})[key] = i
            self._follow(name, now)
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
                self._unfollow(name)

    def reset(self, why: str) -> None:
        """Forgets every entry (a gap of the whole store)."""
        log.warning("network view: every entry dropped (%s)", why)
        for entry in list(self.entries.values()):
            self._drop(entry)

    # -- subscriptions ------------------------------------------------------------------

    def _follow(self, name: str, now: float) -> None:
        if name in self.followed or self._closed:
            return
        node = node_of(self.storage, name)
        if node is None or now < self.retry_at.get(node, 0.0):
            return
        link = self.links.get(node) or self._open(node, name)
        followed = self.followed[name] = _Followed(name, link)
        link.locations.add(name)
        self.unconfirmed.add(followed.serial)
        link.send("sub", name, followed.serial)

    def _unfollow(self, name: str) -> None:
        followed = self.followed.pop(name, None)
        if followed is None:
            return
        link = followed.link
        link.locations.discard(name)
        if self.links.get(link.node) is link:
            link.send("unsub", name, followed.serial)

    def _open(self, node: str, location: str) -> Link:
        link = open_link(
            self.storage, node, location, self, self.beat, self.dead_after, "network view"
        )
        self.links[node] = link
        return link

    async def _confirmed(self) -> None:
        """Waits, SUBSCRIBE_WAIT at most, until Redis has answered every subscription sent:
        figures read before then would only be used once."""
        deadline = time.monotonic() + SUBSCRIBE_WAIT
        while self.unconfirmed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._heard.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._heard.wait()

    async def caught_up(self) -> None:
        """Waits until every connection has answered a PING sent after now."""
        since = time.monotonic()
        while any(link.fresh_at <= since for link in self.links.values()):
            self._heard.clear()
            await self._heard.wait()

    def wrote(self, location: str) -> None:
        """A write at `location` was just answered to this process: its kept figures are
        served again only once a PING sent after now has come back."""
        followed = self.followed.get(location)
        if followed is not None:
            followed.written_at = time.monotonic()

    # -- what the links tell ------------------------------------------------------------

    def on_message(self, channel: bytes, data: bytes) -> None:
        where = self.where.get(Keys.location_of_changes(channel.decode()))
        if not where:
            return
        sku = data.split(b"\t", 1)[0].decode()
        for key, i in where.items():
            column = self.entries[key].columns.get(sku)
            if column is not None:
                column.dirty.add(i)

    def on_live(self, location: str, serial: int) -> None:
        self._answered(serial)
        followed = self.followed.get(location)
        if followed is not None and followed.serial == serial:
            followed.live = True

    def on_refused(self, location: str, serial: int, error: Exception) -> None:
        self._answered(serial)
        followed = self.followed.get(location)
        if followed is not None and followed.serial == serial:
            del self.followed[location]
            followed.link.locations.discard(location)
        log.info("network view: %s not subscribed: %s", location, error)

    def _answered(self, serial: int) -> None:
        self.unconfirmed.discard(serial)
        self.on_pong()

    def on_pong(self) -> None:
        self._heard.set()

    def on_gone(self, link: Link) -> None:
        """A gap on `link`: every entry with a member on its node is dropped."""
        if self.links.get(link.node) is not link:
            return
        del self.links[link.node]
        self.retry_at[link.node] = time.monotonic() + RETRY_AFTER
        names = list(link.locations)
        link.locations.clear()
        for kind, _, serial, *_ in [*link.pending, *link.outbox]:
            if kind == "sub":
                self.unconfirmed.discard(serial)  # never to be answered
        for name in names:
            self.followed.pop(name, None)
        keys = {key for name in names for key in self.where.get(name, {})}
        for key in keys:
            entry = self.entries.get(key)
            if entry is not None:
                self._drop(entry)
        self._heard.set()

    # -- the store's epoch, and the end ---------------------------------------------------

    async def start(self) -> None:
        """Learns the store's epoch, then looks at it every EPOCH_CHECK seconds."""
        with contextlib.suppress(*REDIS_DOWN, rexc.RedisError):
            await self.check_epoch()
        self._epoch_task = asyncio.create_task(self._watch_epoch())

    async def _watch_epoch(self) -> None:
        while not self._closed:
            await asyncio.sleep(EPOCH_CHECK)
            with contextlib.suppress(*REDIS_DOWN, rexc.RedisError):
                await self.check_epoch()

    async def check_epoch(self) -> None:
        """The store's epoch key (set when missing): gone or changed, the store was flushed."""
        redis: Any = self.storage.redis
        seen = await redis.get(EPOCH)
        if seen is None:
            await redis.set(EPOCH, secrets.token_hex(8), nx=True)
            seen = await redis.get(EPOCH)
        if self.epoch is not None and seen != self.epoch:
            self.reset("the store's epoch changed: flushed?")
        self.epoch = seen

    async def close(self) -> None:
        self._closed = True
        tasks = {t for t in (self._epoch_task, *(lk.task for lk in self.links.values())) if t}
        while tasks:  # Python 3.11's wait_for can swallow a cancel (gh-86296): send it again
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=0.5)
