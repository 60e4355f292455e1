"""Clients of the store: one Redis or a whole Redis Cluster (the server at the URL is asked
which it is), failing fast when it is away, and the health probe's own connection."""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException, RedisError


class _PackedByHiredis:
    """Packs commands with hiredis (C) instead of redis-py's Python loop, which otherwise
    costs more than anything else in a read of many rows (bench/RESULTS.md)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str) and " " in first:  # 'CLUSTER INFO' and the like
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]


def redis_client(
    url: str, timeout: float, max_connections: int = 128, retries: int = 1
) -> aioredis.Redis:
    """Fails fast when Redis is away (UNAVAILABLE within the deadline), retrying `retries`
    times (once): every script is idempotent, so a retried call never applies twice."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 1.0),
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries),
        health_check_interval=30,
    )
    base = pool.connection_class  # plain, TLS or unix socket, as the url says
    pool.connection_class = type(f"Packed{base.__name__}", (_PackedByHiredis, base), {})
    return aioredis.Redis.from_pool(pool)


async def connect(
    url: str, socket_timeout: float, max_connections: int = 128, retries: int = 1
) -> aioredis.Redis | RedisCluster:
    """A client for the server at `url`, or for its whole cluster when it is a node of a
    Redis Cluster (any node will do as the seed): the server is asked which it is."""
    timeout = socket_timeout
    client = redis_client(url, timeout, max_connections, retries)
    info = await client.info("cluster")
    if not info.get("cluster_enabled"):
        return client
    await client.aclose()
    cluster = cluster_client(url, timeout, max_connections, retries)
    await cluster.initialize()
    return cluster


def cluster_client(url: str, timeout: float, max_connections: int, retries: int) -> RedisCluster:
    return RedisCluster.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 1.0),
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries),
        health_check_interval=30,
    )


PROBE_START_TRIES = 3


async def probe_client(url: str, like: aioredis.Redis | RedisCluster, wait: float) -> Any:
    """The health probe's own connection (per node), of the kind of `like`, not retried:
    its timeout (`wait`) is the verdict. A cluster's learns its primaries here, at start, while the
    node of the URL answers: a probe that had to learn them later from that node alone
    would take it frozen for the whole store down."""
    if isinstance(like, RedisCluster):
        cluster = cluster_client(url, wait, max_connections=1, retries=0)
        # Learning the slots (CLUSTER SLOTS, then COMMAND: tens of KB) is start-up, not a
        # verdict: a node slow to answer it within `wait` once is asked again.
        for attempt in range(PROBE_START_TRIES):
            try:
                await cluster.initialize()
                break
            except (RedisError, RedisClusterException, OSError):
                if attempt == PROBE_START_TRIES - 1:
                    raise
        return cluster
    return redis_client(url, wait, max_connections=1, retries=0)
