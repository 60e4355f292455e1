"""The share of this process that one kind of heavy work may take, so that no caller's
heavy calls starve the others (health and small reads above all) of the event loop, of
memory, or of Redis: turns that heavy work waits for (light work never does), a budget
refused past its size, a rate per principal, a conversion that gives the event loop a turn
every few hundred items, a client stream cut when it goes silent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar

from engine.domain.errors import ResourceExhausted

T = TypeVar("T")
YIELD_EVERY = 500  # items converted between two turns given back to the event loop


class Turns:
    """A few slots for heavy work, which waits its turn for one; light work (at most
    `light` items) does not wait: it must never queue behind the heavy."""

    def __init__(self, slots: int, light: int) -> None:
        self._gate = asyncio.Semaphore(slots)
        self.light = light

    def take(self, size: int) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._gate if size > self.light else contextlib.nullcontext()


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
