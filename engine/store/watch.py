"""Live availability: the stream of row changes that WatchAvailability serves.

Every script that writes a stock row publishes it, as it is after the change, on its
location's shard channel `{L}:w` (write_row in lua/_prelude.lua): "sku\\ton_hand,reserved,
safety,version,as_of". On a Redis Cluster a shard channel lives on the node of its slot,
the location's, so publishing costs no hop. Each server process holds one pub/sub
subscription for all its watchers (WatchHub): a location's channel is subscribed while
someone watches it, and each message goes to the watchers of that location. A watcher is
anything that takes changes (Sink): a watch stream's queue (Watcher), or the band crossings'
detector (engine/usecases/bandalerts.py), which keeps a hub of its own.

A watcher that falls more than QUEUE_LIMIT changes behind is dropped (Overflow) rather than
letting the process buffer without end; it resumes by asking again with send_current.
Pub/sub does not keep messages: while the connection to Redis is down, changes are missed,
which a client sees as a gap in a row's versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from redis import exceptions as rexc

from engine.domain.errors import Unavailable
from engine.domain.model import StockRow
from engine.store.codecs import parse_change
from engine.store.keys import Keys
from engine.store.scripts import REDIS_DOWN

log = logging.getLogger(__name__)
QUEUE_LIMIT = 10_000
Change = tuple[str, str, StockRow]  # location, sku, row after the change


class Overflow(Exception):
    """The watcher fell too far behind; it was dropped."""


class Closing(Exception):
    """The server is shutting down."""


class Sink(Protocol):
    """What a hub hands each change of a followed location to."""

    def offer(self, change: Change) -> None:
        """Takes a change; called on the hub's task, so it must not wait."""

    def close(self) -> None:
        """The hub is closing."""


class Watcher:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue(QUEUE_LIMIT)
        self.overflowed = False
        self.closing = False

    def offer(self, change: Change) -> None:
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.overflowed = True

    def close(self) -> None:
        self.closing = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)  # wakes a reader waiting on an empty queue

    async def next(self) -> Change:
        if self.overflowed:
            raise Overflow(f"more than {QUEUE_LIMIT} changes behind")
        change = await self.queue.get()
        if change is None or self.closing:
            raise Closing("the server is shutting down")
        return change


class ChangedRows:
    """A sink that gathers which skus changed at each location rather than each change (the
    band crossings' detector: engine/usecases/bandalerts.py). While `taking`, they are kept
    until taken; else in GENERATIONS generations (`age` starts the next), the oldest
    forgotten, until `take_all` takes what they hold and starts taking."""

    GENERATIONS = 3

    def __init__(self) -> None:
        self.taking = False
        self.pending: dict[str, set[str]] = {}
        self.kept: list[dict[str, set[str]]] = [{} for _ in range(self.GENERATIONS)]

    def offer(self, change: Change) -> None:
        location, sku, _ = change
        into = self.pending if self.taking else self.kept[0]
        into.setdefault(location, set()).add(sku)

    def close(self) -> None:
        pass

    def take(self) -> dict[str, set[str]]:
        """Location -> skus changed since the last take."""
        taken, self.pending = self.pending, {}
        return taken

    def put_back(self, changed: dict[str, set[str]]) -> None:
        for location, skus in changed.items():
            self.pending.setdefault(location, set()).update(skus)

    def age(self) -> None:
        self.kept = [{}, *self.kept[:-1]]

    def take_all(self) -> None:
        """What the generations kept is to be taken, and from now on every change."""
        for kept in self.kept:
            self.put_back(kept)
        self.kept = [{} for _ in range(self.GENERATIONS)]
        self.taking = True

    def forget(self) -> None:
        self.taking = False
        self.pending = {}
        self.kept = [{} for _ in range(self.GENERATIONS)]


class WatchHub:
    def __init__(self, client: Any, cluster: bool) -> None:
        self.redis = client
        self.cluster = cluster
        self.watchers: dict[str, set[Sink]] = {}
        self._pubsub: Any = None
        self._pump: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def watch(self, locations: Sequence[str]) -> AsyncIterator[Watcher]:
        watcher = Watcher()
        await self.follow(locations, watcher)
        try:
            yield watcher
        finally:
            await self.unfollow(locations, watcher)

    async def follow(self, locations: Sequence[str], watcher: Sink) -> None:
        """Hands `watcher` every change of these locations from now on (each subscribed, if
        no watcher had it already). Unavailable, following none of them, when Redis cannot
        be reached."""
        async with self._lock:
            new = [loc for loc in locations if loc not in self.watchers]
            if new:
                if self._pubsub is None:
                    self._pubsub = self.redis.pubsub()
                try:
                    await self._pubsub.ssubscribe(*map(Keys.changes, new))
                except REDIS_DOWN as exc:
                    raise Unavailable(f"redis unreachable: {exc}") from exc
            for loc in locations:
                self.watchers.setdefault(loc, set()).add(watcher)
            if self._pump is None:
                self._pump = asyncio.create_task(self._run())

    async def unfollow(self, locations: Sequence[str], watcher: Sink) -> None:
        async with self._lock:
            gone = []
            for loc in locations:
                left = self.watchers.get(loc, set())
                left.discard(watcher)
                if not left:
                    self.watchers.pop(loc, None)
                    gone.append(loc)
            if gone and self._pubsub is not None:
                with contextlib.suppress(rexc.RedisError, OSError):
                    await self._pubsub.sunsubscribe(*map(Keys.changes, gone))

    async def _run(self) -> None:
        """Hands each published change to the watchers of its location."""
        while True:
            try:
                message = await self._next_message()
            except (rexc.RedisError, OSError) as exc:  # Redis away: it reconnects by itself
                log.warning("watch subscription interrupted: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") not in (b"smessage", "smessage"):
                continue
            location = Keys.location_of_changes(message["channel"].decode())
            sku, row, _ = parse_change(message["data"])
            change = (location, sku, row)
            for watcher in self.watchers.get(location, ()):
                watcher.offer(change)

    async def _next_message(self) -> dict[str, Any] | None:
        if not self.watchers:
            # Nothing subscribed: redis-py's cluster pubsub then answers at once, without
            # waiting, and this loop would spin, holding the event loop (and a close()).
            await asyncio.sleep(0.05)
            return None
        if self.cluster:
            got: dict[str, Any] | None = await self._pubsub.get_sharded_message(
                ignore_subscribe_messages=True, timeout=1.0
            )
        else:
            got = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        return got

    async def close(self) -> None:
        """Ends every watch (they see Closing), then the subscription."""
        for watchers in list(self.watchers.values()):
            for watcher in watchers:
                watcher.close()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
