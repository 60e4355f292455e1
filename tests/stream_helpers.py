"""Driving the Redis Streams adapter (adapters/streams.py) as its process does: `drain` runs
a consumer's loop (Consumer.run) until its group has caught up with the stream, then stops
it, which closes its call to the server."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from adapters.streams.consumer import Consumer

from .processes import eventually


async def group_state(redis: aioredis.Redis, stream: str, group: str) -> dict[str, Any]:
    """XINFO GROUPS of one group: pending (delivered, not acknowledged), lag (not delivered)."""
    groups = await redis.xinfo_groups(stream)
    return next(g for g in groups if g["name"] == group.encode())


async def caught_up(redis: aioredis.Redis, stream: str, group: str) -> bool:
    """Every entry of the stream delivered to the group and acknowledged."""
    state = await group_state(redis, stream, group)
    return bool(state["pending"] == 0 and state["lag"] == 0)


async def drain(redis: aioredis.Redis, consumer: Consumer, within: float = 20.0) -> None:
    """Runs the consumer until its group has caught up (within `within` seconds), then stops
    it; fails if the group never does."""
    stream, group = consumer.o.stream, consumer.o.group
    stop = asyncio.Event()
    run = asyncio.create_task(consumer.run(stop))
    try:
        done = await eventually(
            lambda: caught_up(redis, consumer.o.stream, consumer.o.group), within
        )
    finally:
        stop.set()
        await run
    state = await group_state(redis, stream, group)
    assert done, f"the group did not catch up within {within}s: {state}"
