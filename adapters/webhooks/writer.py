"""The durable write of a delivery's entries to a Redis stream.

All entries of one delivery go to the stream in one MULTI/EXEC (on a Redis Cluster, on a
connection of the stream's node), followed on the same connection by WAITAOF 1 0 <ms>,
which returns once the local append-only file is fsynced past those writes. The receiver
answers 200 only after that, so an acknowledged delivery survives a crash of Redis;
anything less is a 503 and the platform sends it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.exceptions import ConnectionError, MovedError, RedisError, TimeoutError

from adapters.config import KINDS, Follow, entry_fields
from engine.domain.errors import Unavailable
from engine.domain.model import StockEvent
from engine.pb.omnistock.v1 import omnistock_pb2 as pb


def stream_entry(event: StockEvent) -> dict[str, str]:
    return entry_fields(
        pb.StockEvent(
            event_id=event.event_id,
            location_id=event.location,
            sku=event.sku,
            kind=KINDS[event.kind.value],
            qty=event.qty,
            source_time=event.source_time,
            source=event.source,
            sequence=event.sequence,
        )
    )


class StreamWriter:
    """Appends to a Redis stream: one MULTI/EXEC, then (wait_aof) WAITAOF on the same
    connection. Raises Unavailable when Redis does not take it, or does not report the local
    fsync, within the budget."""

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        wait_aof: bool,
        timeout: float,
        follow: Follow | None = None,
    ) -> None:
        """follow: after a failure, a client of the store's new address, if it moved
        (adapters/config.py FollowedStore): the platform's next retry goes there."""
        self.redis = redis
        self.follow = follow
        self._remap = False
        self.wait_aof = wait_aof
        self.timeout = timeout

    async def append(self, stream: str, entries: Sequence[Mapping[str, str | bytes]]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                replies = await self._send(stream, entries)
        except (TimeoutError, RedisError, OSError) as exc:
            moved = await self.follow() if self.follow is not None else None
            if moved is not None:
                self.redis = moved
            raise Unavailable(f"{stream}: {type(exc).__name__}: {exc}") from exc
        written = replies[len(entries) + 1]
        if not isinstance(written, list) or any(isinstance(r, Exception) for r in written):
            raise Unavailable(f"{stream}: the transaction failed: {written!r}")
        if self.wait_aof and int(replies[-1][0]) < 1:
            raise Unavailable(f"{stream}: not fsynced within {self.timeout}s")

    async def _send(self, stream: str, entries: Sequence[Mapping[str, str | bytes]]) -> list[Any]:
        # Not redis-py's transaction pipeline: it hands its connection back after EXEC, and
        # WAITAOF counts the writes of the connection it is sent on. Sent as one pipeline,
        # MULTI ... EXEC WAITAOF share a connection and a round trip.
        commands: list[tuple[Any, ...]] = [("MULTI",)]
        for fields in entries:
            commands.append(("XADD", stream, "*", *(x for kv in fields.items() for x in kv)))
        commands.append(("EXEC",))
        if self.wait_aof:
            commands.append(("WAITAOF", 1, 0, max(1, int(self.timeout * 1000))))
        if isinstance(self.redis, RedisCluster):
            return await self._send_to_node(self.redis, stream, commands)
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute())

    async def _send_to_node(
        self, cluster: RedisCluster, stream: str, commands: list[tuple[Any, ...]]
    ) -> list[Any]:
        """On a cluster: the whole pipeline on one connection of the stream's node. A MOVED
        (the slot moved, a failover) updates the map for the platform's next delivery."""
        if self._remap:
            cluster._initialize = True  # redis-py's own way to ask for a new map
            await cluster.initialize()
            self._remap = False
        node = cluster.get_node_from_key(stream)
        if node is None:
            raise ConnectionError(f"no node serves the slot of {stream}")
        queued = [PipelineCommand(i, *command) for i, command in enumerate(commands)]
        try:
            await node.execute_pipeline(queued)
        except (ConnectionError, TimeoutError, OSError):
            self._remap = True
            raise
        for command in queued:
            if isinstance(command.result, MovedError):
                await cluster.nodes_manager.move_slot(command.result)
            if isinstance(command.result, RedisError):
                raise command.result
        return [command.result for command in queued]


async def appendonly(redis: aioredis.Redis | RedisCluster) -> bool:
    """Whether Redis keeps an append-only file; True when it will not say (CONFIG refused)."""
    try:
        got = await redis.config_get("appendonly")
    except RedisError:
        return True
    return got.get("appendonly") in ("yes", b"yes")
