"""The share of this process that one kind of heavy work may take, so that no caller's
heavy calls starve the others (health and small reads above all) of the event loop, of
memory, or of Redis: turns that heavy work waits for (light work never does), a budget
refused past its size, a rate per principal, a conversion that gives the event loop a turn
every few hundred items, a client stream cut when it goes silent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar

from engine.domain import auth
from engine.domain.errors import ResourceExhausted

T = TypeVar("T")
YIELD_EVERY = 100  # items converted between two turns given back to the event loop


class Turns:
    """A few slots for heavy work, shared fairly between principals (the callers'
    identities, engine/domain/auth.py). Heavy work (more than `light` items) waits for a
    slot. A slot set free goes to a waiting principal that holds none, if there is one,
    and of those to the one whose last turn is the oldest: waiting principals are served
    in turn, each its oldest waiter first. So a principal
    with a hundred heavy calls under way gets no more turns than one with a single call,
    and at most `slots` pieces of heavy work ever run beside the light work, which never
    waits: it must never queue behind the heavy."""

    def __init__(self, slots: int, light: int) -> None:
        self.slots = slots
        self.light = light
        self.holding: Counter[str] = Counter()  # principal -> slots it holds
        self._given = 0  # slots given so far ...
        self._last: dict[str, int] = {}  # ... and when each principal holding or waiting got one
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}  # principal -> oldest first

    def take(self, size: int) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._turn() if size > self.light else contextlib.nullcontext()

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        who = auth.current().name
        await self._acquire(who)
        try:
            yield
        finally:
            self._release(who)

    async def _acquire(self, who: str) -> None:
        if not self._waiting and sum(self.holding.values()) < self.slots:
            self._give(who)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(who, deque()).append(granted)
        self._grant()
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                self._release(who)  # granted, then cancelled before it could run
            else:
                self._forget(who, granted)
            raise

    def _give(self, who: str) -> None:
        self.holding[who] += 1
        self._given += 1
        self._last[who] = self._given

    def _release(self, who: str) -> None:
        self.holding[who] -= 1
        if self.holding[who] <= 0:
            del self.holding[who]
            if who not in self._waiting:
                del self._last[who]
        self._grant()

    def _grant(self) -> None:
        """Gives free slots to waiting principals: first to those holding none, and of
        those to the one whose last turn is the oldest."""
        while self._waiting and sum(self.holding.values()) < self.slots:
            who = min(self._waiting, key=lambda p: (self.holding[p] > 0, self._last.get(p, 0)))
            waiters = self._waiting[who]
            granted = waiters.popleft()
            if not waiters:
                del self._waiting[who]
            self._give(who)
            granted.set_result(None)

    def _forget(self, who: str, granted: asyncio.Future[None]) -> None:
        waiters = self._waiting.get(who)
        if waiters is not None and granted in waiters:
            waiters.remove(granted)
            if not waiters:
                del self._waiting[who]
                if who not in self.holding:
                    self._last.pop(who, None)


class Budget:
    """A quantity (count lines held in memory) shared by every call of this process;
    a call that would pass it is refused, not queued."""

    def __init__(self, size: int, what: str) -> None:
        self.size = size
        self.used = 0
        self.what = what

    def take(self, n: int) -> None:
        if self.used + n > self.size:
            raise ResourceExhausted(
                f"{self.what}: this would make {self.used + n} held in this process, over its "
                f"{self.size}; retry later"
            )
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


class Rate:
    """So many a second for each principal, from a bucket that holds one second's worth."""

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second  # 0: no limit
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (level, at)

    def try_take(self, name: str, n: int = 1) -> bool:
        """Takes n, or nothing and False when the bucket holds fewer."""
        if self.per_second <= 0:
            return True
        level = self._level(name)
        if level < n:
            return False
        self._buckets[name] = (level - n, time.monotonic())
        return True

    async def take(self, name: str, n: int) -> float:
        """Takes n, leaving the bucket in debt if need be, and waits until the debt is
        paid off: a principal sending faster is slowed down, each of its callers in turn.
        The seconds it waited."""
        if self.per_second <= 0:
            return 0.0
        level = self._level(name) - n
        self._buckets[name] = (level, time.monotonic())
        wait = max(0.0, -level / self.per_second)
        if wait:
            await asyncio.sleep(wait)
        return wait

    def _level(self, name: str) -> float:
        now = time.monotonic()
        level, at = self._buckets.get(name, (self.per_second, now))
        return min(self.per_second, level + (now - at) * self.per_second)


async def gently(items: Iterable[T]) -> AsyncIterator[T]:
    """The items, giving the event loop a turn every YIELD_EVERY of them."""
    for i, item in enumerate(items, 1):
        yield item
        if i % YIELD_EVERY == 0:
            await asyncio.sleep(0)


async def next_within(stream: AsyncIterator[T], seconds: float, what: str) -> T:
    """The stream's next item; a caller silent for longer is cut (TimeoutError)."""
    try:
        async with asyncio.timeout(seconds):
            return await anext(stream)
    except TimeoutError:
        raise IdleStream(f"{what}: nothing received for {seconds:g} s") from None


async def drain(stream: AsyncIterator[object], seconds: float) -> None:
    """Reads and drops what the stream sends, until it ends or `seconds` have passed."""
    with contextlib.suppress(TimeoutError, StopAsyncIteration):
        async with asyncio.timeout(seconds):
            async for _ in stream:
                pass


class IdleStream(ResourceExhausted):
    """A client stream left silent: its slot is given to others."""
