"""One pub/sub connection of the read cache (engine/store/rowcache.py) to one Redis node: it
sends the cache's (un)subscriptions as they come and a PING every beat, and hands up, in
the order Redis sent them, every row-change message and what each reply confirms. Redis
answers commands in order, so each reply (not a message) answers the oldest command
still pending; a reply that does not fit it means the link is out of step (an unsubscribe
Redis sent of itself: the slot moved), and the link ends. So does a PING unanswered for
`dead_after`. A link never reconnects: the cache drops every location it served and opens
a new one (a reconnected connection would be subscribed to nothing)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from redis import exceptions as rexc

from engine.store.keys import EPOCH, Keys
from engine.store.scripts import REDIS_DOWN

if TYPE_CHECKING:
    from engine.store.storage import Storage

log = logging.getLogger(__name__)
_NONE = ("", "", 0, 0.0)  # what a reply answers when nothing was asked


class LinkGone(Exception):
    """A cache connection met something it cannot vouch for; its locations are dropped."""


class Listener(Protocol):
    """What a link tells its cache."""

    def on_message(self, channel: bytes, data: bytes) -> None: ...

    def on_live(self, location: str, serial: int) -> None:
        """Redis confirmed the subscription `serial` of `location`."""

    def on_refused(self, location: str, serial: int, error: Exception) -> None:
        """Redis refused the subscription `serial` of `location` (MOVED, ACL)."""

    def on_pong(self) -> None: ...

    def on_gone(self, link: Link) -> None:
        """The link has ended (its connection failed, closed, or went out of step)."""


class Link:
    """One connection, read by its reader task and written only by its writer task."""

    def __init__(
        self,
        node: str,
        conn: Any,
        listener: Listener,
        beat: float,
        dead_after: float,
        owner: str = "read cache",
    ) -> None:
        self.node = node
        self.owner = owner  # who reads the messages (for the log)
        self.conn = conn
        self.listener = listener
        self.beat = beat
        self.dead_after = dead_after
        self.fresh_at = -math.inf  # send time of the newest PING answered
        # what each reply will answer: sub|unsub|ping, the location and its serial, when sent
        self.pending: deque[tuple[str, str, int, float]] = deque()
        self.outbox: list[tuple[str, str, int]] = []  # sub|unsub, where, which subscription
        self.ping_asked = False  # a PING with the next send, not a beat from now
        self.wake = asyncio.Event()
        self.locations: set[str] = set()  # the cache's locations followed here
        self.task = asyncio.create_task(self._run())

    def ping_soon(self) -> None:
        """Asks for a PING now rather than at the next beat: a write of this process was
        just answered, and reads of its location wait for a PING sent after it."""
        self.ping_asked = True
        self.wake.set()

    def send(self, kind: str, location: str, serial: int) -> None:
        """Asks for a (kind 'sub') subscription of the location's channel or its end ('unsub')."""
        self.outbox.append((kind, location, serial))
        self.wake.set()

    async def _run(self) -> None:
        try:
            await self.conn.connect()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read())
                group.create_task(self._write())
        except* (*REDIS_DOWN, rexc.RedisError, LinkGone) as exc:
            log.warning("%s: connection to %s lost: %s", self.owner, self.node, exc.exceptions[0])
        finally:
            self.listener.on_gone(self)
            with contextlib.suppress(Exception):
                await self.conn.disconnect(nowait=True)

    async def _read(self) -> None:
        while True:
            try:
                reply = await self.conn.read_response(timeout=math.inf)
            except rexc.ResponseError as exc:  # a SSUBSCRIBE refused: MOVED, ACL
                self._refused(exc)
                continue
            if not isinstance(reply, list) or len(reply) < 2:
                raise LinkGone(f"unexpected reply {reply!r}")
            kind = reply[0]
            if kind == b"smessage":
                self.listener.on_message(reply[1], reply[2])
            else:
                self._answered(kind, reply[1])

    def _answered(self, kind: bytes, what: bytes) -> None:
        """A reply to the command at the head of `pending`, or the link is out of step."""
        expected, arg, serial, sent_at = self.pending.popleft() if self.pending else _NONE
        if kind == b"pong" and expected == "ping":
            self.fresh_at = sent_at
            self.listener.on_pong()
            return
        name = what.decode() if isinstance(what, bytes) else ""
        if expected == "sub" and kind == b"ssubscribe" and name == Keys.changes(arg):
            self.listener.on_live(arg, serial)
            return
        if expected == "unsub" and kind == b"sunsubscribe" and name == Keys.changes(arg):
            return
        raise LinkGone(f"{kind!r} {name} out of step (expected {expected} {arg})")

    def _refused(self, exc: Exception) -> None:
        expected, arg, serial, _ = self.pending.popleft() if self.pending else _NONE
        if expected != "sub":
            raise LinkGone(f"{exc} (expected {expected})")
        self.listener.on_refused(arg, serial, exc)

    async def _write(self) -> None:
        """Sends the (un)subscriptions as they come, and a PING every beat."""
        next_ping = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_ping - time.monotonic())):
                    await self.wake.wait()
            self.wake.clear()
            now = time.monotonic()
            commands: list[tuple[str, ...]] = []
            for kind, location, serial in self.outbox:
                self.pending.append((kind, location, serial, now))
                verb = "SSUBSCRIBE" if kind == "sub" else "SUNSUBSCRIBE"
                commands.append((verb, Keys.changes(location)))
            self.outbox.clear()
            if now >= next_ping or self.ping_asked:
                self.ping_asked = False
                self._check_answered(now)
                self.pending.append(("ping", "", 0, now))
                commands.append(("PING",))
                next_ping = now + self.beat
            if commands:
                if not self.conn.is_connected:  # never reconnect: it would subscribe nothing
                    raise LinkGone("connection closed")
                await self.conn.send_packed_command(
                    self.conn.pack_commands(commands), check_health=False
                )

    def _check_answered(self, now: float) -> None:
        oldest = next((at for kind, _, _, at in self.pending if kind == "ping"), None)
        if oldest is not None and now - oldest > self.dead_after:
            raise LinkGone(f"no PONG for {now - oldest:.1f}s")


def node_of(storage: Storage, location: str) -> str | None:
    """The node whose connection follows `location`'s change channel ("redis" on one)."""
    if not storage.cluster:
        return "redis"
    node = storage.redis.get_node_from_key(Keys.changes(location))
    return None if node is None else str(node.name)


def open_link(
    storage: Storage,
    node: str,
    location: str,
    listener: Listener,
    beat: float,
    dead_after: float,
    owner: str,
) -> Link:
    """A new connection to `node` (the one of `location`'s change channel), of its own:
    never from a pool, never reconnected (see the module docstring)."""
    if storage.cluster:
        target = storage.redis.get_node_from_key(Keys.changes(location))
        cls, kwargs = target.connection_class, target.connection_kwargs
    else:
        pool = storage.redis.connection_pool
        cls, kwargs = pool.connection_class, pool.connection_kwargs
    kwargs = {**kwargs, "protocol": 2, "health_check_interval": 0, "retry": None}
    return Link(node, cls(**kwargs), listener, beat, dead_after, owner)


EPOCH_CHECK = 1.0  # seconds between two looks at the epoch key (a FLUSHALL is found so)


class Follower:
    """What the read cache (rowcache.py) and the network view's feeds (feeds.py) share: the
    store's epoch, learnt at start and looked at every EPOCH_CHECK seconds (a flushed store
    says nothing on the channels; its epoch key disappears, or another process's replaces
    it: `flushed` is then told), and their end, every task cancelled."""

    storage: Storage
    links: dict[str, Link]
    what = "a follower"  # for the log

    def __init__(self) -> None:
        self.epoch: bytes | None = None
        self._epoch_task: asyncio.Task[None] | None = None
        self._closed = False

    def on_flush(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
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
            log.warning("%s: the store's epoch changed (flushed?): all it kept dropped", self.what)
            self.on_flush()
        self.epoch = seen

    async def close(self) -> None:
        self._closed = True
        tasks = {t for t in (self._epoch_task, *(lk.task for lk in self.links.values())) if t}
        while tasks:  # Python 3.11's wait_for can swallow a cancel (gh-86296): send it again
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=0.5)
