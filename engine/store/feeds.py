"""The locations a process follows, on connections of its own (engine/store/cachelink.py, one
per node), and how far it may trust what it keeps of each: the network view's feeds
(engine/store/netview.py).

A location is followed once asked for (its channel `{L}:w`, on which every script that
writes a row publishes it), and live once Redis has confirmed the subscription: from then on
every write there reaches this process, as a message, in the order Redis ran them. What was
read of a location may be served while it is live, while its connection has answered a PING
sent at most `max_lag` ago, and (after a write there through this process) once a PING sent
after that write has come back: `unsure` names the others. A connection that fails, closes,
goes out of step or leaves a PING unanswered is lost with every location it followed; a
flushed store is found by the epoch key `{omnistock}:epoch` (set when missing, as the read
cache does), looked at every EPOCH_CHECK seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.store.cachelink import Follower, Link, node_of, open_link
from engine.store.keys import Keys
from engine.store.storage import Storage

log = logging.getLogger(__name__)
RETRY_AFTER = 0.5  # seconds a node whose connection failed is left alone

_serials = itertools.count(1)


@dataclass(eq=False)
class _Followed:
    name: str
    link: Link
    serial: int = field(default_factory=lambda: next(_serials))


class Feeds(Follower):
    """What a process follows (module docstring). It tells its owner of each row changed
    (`changed(location, sku)`), of the locations a lost connection followed (`lost`), and of
    a flush (`flushed`)."""

    def __init__(
        self,
        storage: Storage,
        owner: str,
        max_lag: float,
        dead_after: float,
        changed: Callable[[str, str], None],
        lost: Callable[[list[str]], None],
        flushed: Callable[[], None],
    ) -> None:
        super().__init__()
        self.storage = storage
        self.owner = self.what = owner
        self.max_lag = max_lag
        self.beat = max_lag / 4
        self.dead_after = max(dead_after, 2 * max_lag)
        self.changed, self.lost, self.flushed = changed, lost, flushed
        self.followed: dict[str, _Followed] = {}
        self.live: set[str] = set()  # followed, and the subscription confirmed
        # location -> when this process's last write there was answered (until a PING
        # sent after it comes back)
        self.written: dict[str, float] = {}
        self.links: dict[str, Link] = {}
        self.retry_at: dict[str, float] = {}
        self.unconfirmed: set[int] = set()  # subscriptions sent and not yet answered
        self._heard = asyncio.Event()

    def follow(self, name: str, now: float) -> None:
        """Subscribes the location's channel (unless followed, or its node just failed)."""
        if name in self.followed or self._closed:
            return
        node = node_of(self.storage, name)
        if node is None or now < self.retry_at.get(node, 0.0):
            return
        link = self.links.get(node)
        if link is None:
            link = open_link(self.storage, node, name, self, self.beat, self.dead_after, self.owner)
            self.links[node] = link
        followed = self.followed[name] = _Followed(name, link)
        link.locations.add(name)
        self.unconfirmed.add(followed.serial)
        link.send("sub", name, followed.serial)

    def unfollow(self, name: str) -> None:
        followed = self.followed.pop(name, None)
        self.live.discard(name)
        self.written.pop(name, None)
        if followed is None:
            return
        link = followed.link
        link.locations.discard(name)
        if self.links.get(link.node) is link:
            link.send("unsub", name, followed.serial)

    def unsure(self, names: frozenset[str], now: float) -> set[str]:
        """Those of `names` whose kept reads may not be served now: not followed live, on a
        connection not fresh, or written through this process since their connection's last
        answered PING. In sets, not one by one (500 locations a listing). Those not followed
        are followed again (after a refusal or a gap)."""
        if self.epoch is None:  # not looked at yet: a flush before it would go unseen
            return set(names)
        out = set(names - self.live)
        for name in out:
            self.follow(name, now)
        out |= self._fenced() & names
        late = {link for link in self.links.values() if now - link.fresh_at > self.max_lag}
        if late:
            out |= {n for n in names - out if self.followed[n].link in late}
        return out

    def _fenced(self) -> set[str]:
        for name, at in list(self.written.items()):
            followed = self.followed.get(name)
            if followed is None or followed.link.fresh_at > at:
                del self.written[name]
        return set(self.written)

    def wrote(self, location: str) -> None:
        """A write at `location` was just answered to this process (Storage.told): a PING
        is sent at once, as the read cache does."""
        followed = self.followed.get(location)
        if followed is not None:
            self.written[location] = time.monotonic()
            followed.link.ping_soon()

    async def confirmed(self, within: float) -> None:
        """Waits, `within` seconds at most, until Redis has answered every subscription
        sent."""
        deadline = time.monotonic() + within
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

    # -- what the links tell (cachelink.Listener) -----------------------------------------

    def on_message(self, channel: bytes, data: bytes) -> None:
        location = Keys.location_of_changes(channel.decode())
        self.changed(location, data.split(b"\t", 1)[0].decode())

    def on_live(self, location: str, serial: int) -> None:
        self._answered(serial)
        followed = self.followed.get(location)
        if followed is not None and followed.serial == serial:
            self.live.add(location)

    def on_refused(self, location: str, serial: int, error: Exception) -> None:
        self._answered(serial)
        followed = self.followed.get(location)
        if followed is not None and followed.serial == serial:
            del self.followed[location]
            self.live.discard(location)
            followed.link.locations.discard(location)
        log.info("%s: %s not subscribed: %s", self.owner, location, error)

    def _answered(self, serial: int) -> None:
        self.unconfirmed.discard(serial)
        self._heard.set()

    def on_pong(self) -> None:
        self._heard.set()

    def on_gone(self, link: Link) -> None:
        """A gap on `link`: every location it followed is lost."""
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
            self.live.discard(name)
            self.written.pop(name, None)
        self.lost(names)
        self._heard.set()

    def on_flush(self) -> None:
        self.flushed()
