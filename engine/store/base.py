"""The plumbing every part of the store shares: the clients, the scripts, the circuit that
fails calls at once while the store is known down, and Redis errors turned into ours."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.commands import AsyncCoreCommands
from redis.crc import key_slot

from engine.domain.errors import Unavailable
from engine.store.keys import Keys
from engine.store.nodes import NodeBatches
from engine.store.scripts import (
    READ_COMMANDS,
    REDIS_DOWN,
    Command,
    Lanes,
    NotReplicated,
    Replication,
    Script,
    evalsha_into,
    refuses_writes,
)
from engine.throttle import Turns

T = TypeVar("T")
# Reads of more rows than this (a long order's candidates, a wide GetAvailability or watch
# opening) are made one at a time in a process: a few of them at once fill the pipeline
# that every other call waits behind (bench/RESULTS.md, "Abuse": a one-event write went
# from 400 to 40 ms at p50 beside four 20,000-row Allocates).
BIG_READ = 2000


class Base:
    """The clients and scripts of the store, and how every exchange with Redis is made."""

    SCRIPTS = (
        "hold",
        "commit",
        "release",
        "expire",
        "extend",
        "claim",
        "place",
        "unplace",
        "drop",
        "settle",
        "move_claim",
        "move_settle",
        "move_in",
        "move_out",
        "apply_events",
        "set_safety_stock",
        "set_pools",
        "read_rows",
        "read_offers",
        "read_network",
        "disarm",
        "budget",
        "band_check",
        "band_publish",
        "lease",
        "supply",
        "read_promise",
        "transfer",
        "claim_return",
        "record_return",
    )
    READ_ONLY = (
        "read_rows",
        "read_offers",
        "read_network",
        "read_promise",
    )  # the scripts that write nothing

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        stock_buckets: int,
        retention_ms: int,
        event_window_ms: int,
        gap_grace_ms: int = 60_000,
        probe: aioredis.Redis | RedisCluster | None = None,
        probe_timeout: float = 0.5,
        replicas: int = 0,
        replica_timeout_ms: int = 1000,
        fsync: bool = False,
    ) -> None:
        """gap_grace_ms: a gap in a numbered source's events is reported once open this long.
        probe: a client of its own for `probe()` (default: `client`). replicas: a write is
        answered only once this many replicas (of its node, on a cluster) have it, else
        UNAVAILABLE; fsync: only once it is on the primary's disk."""
        # redis-py types its replies as wide unions; this seam decodes them itself.
        self.redis: Any = client
        self.probe_client: Any = probe or client
        self.probe_timeout = probe_timeout
        self.down: str | None = None  # why the circuit is open (open_circuit)
        self.nodes_down: list[str] = []  # on a cluster: the primaries the probe last missed
        self.cluster = isinstance(client, RedisCluster)
        self.keys = Keys(stock_buckets)
        self.retention_ms = retention_ms
        self.event_window_ms = event_window_ms
        self.gap_grace_ms = gap_grace_ms
        self.scripts = {name: Script(name) for name in self.SCRIPTS}
        self.replication: Replication | None = None
        if replicas or fsync:
            reads = frozenset(self.scripts[name].sha for name in self.READ_ONLY)
            self.replication = Replication(replicas, replica_timeout_ms, reads, fsync)
        self.batcher: Lanes | NodeBatches = (
            NodeBatches(client, self.replication)
            if isinstance(client, RedisCluster)
            else Lanes(client, self.replication)
        )
        self._wide_reads = Turns(1, light=BIG_READ)
        self._load_lock = asyncio.Lock()
        self._loaded_at = 0.0

    # -- plumbing ---------------------------------------------------------------------

    async def guard(self, make: Callable[[], Awaitable[T]]) -> T:
        """Runs one Redis exchange; a cold script cache is filled and the exchange rerun.
        While the circuit is open it fails at once (`open_circuit`)."""
        if self.down is not None:
            raise Unavailable(f"redis unreachable: {self.down}")
        try:
            try:
                return await make()
            except rexc.NoScriptError:
                await self._reload_scripts()
                return await make()
        except NotReplicated as exc:
            raise Unavailable(str(exc)) from exc
        except REDIS_DOWN as exc:
            raise Unavailable(f"redis unreachable: {exc}") from exc
        except rexc.ResponseError as exc:
            if not refuses_writes(exc):
                raise
            raise Unavailable(f"redis refuses writes: {exc}") from exc

    def open_circuit(self, reason: str) -> None:
        """The store is known down (engine/store/probe.py): until `close_circuit`, every call fails
        at once with Unavailable instead of waiting on a frozen socket until its deadline.
        Script calls still queued behind a batch that waits on the store are answered so
        now too; they were never sent, so they change nothing. (What was sent already waits
        for its answer, its deadline or the socket timeout: whether it ran is unknown.)"""
        self.down = reason
        self.batcher.fail_queued(f"not sent: {reason}")

    def close_circuit(self) -> None:
        self.down = None

    async def aclose(self) -> None:
        """Closes what the store opened beside its client (a cluster's lanes)."""
        if isinstance(self.batcher, NodeBatches):
            await self.batcher.aclose()

    async def load_scripts(self) -> None:
        for script in self.scripts.values():
            await self.redis.script_load(script.source)
        self._loaded_at = time.monotonic()

    async def set_versioned(
        self, key: str, fields: Mapping[str, str | bytes | None], version: str
    ) -> int:
        """Sets the fields of hash `key` (None: removes) and moves the counter `version`, in
        one transaction (both in the {omnistock} slot); answers the new version."""
        put = {f: v for f, v in fields.items() if v is not None}
        drop = [f for f, v in fields.items() if v is None]

        async def run() -> int:
            async with self.redis.pipeline(transaction=True) as pipe:
                if put:
                    pipe.hset(key, mapping=put)
                if drop:
                    pipe.hdel(key, *drop)
                pipe.incr(version)
                got = await pipe.execute()
            return int(got[-1])

        return await self.guard(run)

    async def _reload_scripts(self) -> None:
        """After a Redis restart every call in flight meets NOSCRIPT at once: one of them
        loads the scripts, the others wait for it instead of loading them again."""
        seen = self._loaded_at
        async with self._load_lock:
            if self._loaded_at == seen:
                await self.load_scripts()

    async def probe(self) -> None:
        """Pings the store past the circuit, on the probe's own connection (so that a busy
        pool is not taken for a store that is down), within `probe_timeout` seconds. On a
        cluster it pings every primary: the store is down only when none answers, and the
        ones that do not are in `nodes_down` (a degraded shard is not a store down)."""
        if not self.cluster:
            await self._ping(self.probe_client.ping)
            return
        nodes = self.probe_client.get_primaries()
        answers = await asyncio.gather(
            *(self._ping(functools.partial(node.execute_command, "PING")) for node in nodes),
            return_exceptions=True,
        )
        self.nodes_down = sorted(
            n.name for n, a in zip(nodes, answers, strict=True) if a is not None
        )
        if nodes and len(self.nodes_down) == len(nodes):
            raise Unavailable(f"redis unreachable: no primary answered ({answers[0]})")

    async def _ping(self, ping: Callable[[], Awaitable[Any]]) -> None:
        """ping is called here, inside the timeout: a probe cancelled before its turn leaves
        no coroutine made and never awaited."""
        try:
            async with asyncio.timeout(self.probe_timeout):
                await ping()
        except (*REDIS_DOWN, rexc.RedisError) as exc:
            late = isinstance(exc, TimeoutError | rexc.TimeoutError)
            why = f"no answer within {self.probe_timeout}s" if late else str(exc)
            raise Unavailable(f"redis unreachable: {why}") from exc

    async def call(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[Any],
        then: Command | None = None,
        heavy: bool = False,
    ) -> Any:
        """heavy: one of the many calls of a big read, sent in the lane of big calls (one at a
        time), so that small calls never wait behind a batch of them (scripts.py Lanes)."""
        sha = self.scripts[name].sha
        return await self.guard(lambda: self.batcher.evalsha(sha, keys, args, then, heavy))

    async def pipeline(self, build: Callable[[Any], object]) -> list[Any]:
        """One round trip for several commands (on a cluster, one per node, each node's
        commands in its own batch: engine/store/nodes.py). With replication, writes among
        them are answered once replicas have them. It is run again only after NOSCRIPT,
        which only a pipeline holding a script call can meet: such pipelines hold
        idempotent commands only."""
        recorder = _Recorder()
        build(recorder)
        commands = recorder.commands

        async def run() -> list[Any]:
            if isinstance(self.batcher, NodeBatches):
                results = await asyncio.gather(
                    *(self.batcher.run(c, kw, self._writes(c)) for c, kw in commands),
                    return_exceptions=True,
                )
            else:
                results = await self._one_trip(commands)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return results

        return await self.guard(run)

    async def command(self, build: Callable[[Any], object]) -> Any:
        """One command, made like a pipeline's (`build` calls one redis-py method)."""
        (result,) = await self.pipeline(build)
        return result

    async def _one_trip(self, commands: list[tuple[Command, dict[str, Any]]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for command, options in commands:
            pipe.execute_command(*command, **options)
        wait = self.replication
        if wait is not None and not any(self._writes(c) for c, _ in commands):
            wait = None
        if wait is not None:
            pipe.execute_command(*wait.wait)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        if wait is None:
            return results
        late = wait.missed(results.pop())
        if late is not None:
            raise late
        return results

    def _writes(self, command: Command) -> bool:
        name = str(command[0]).upper()
        if name == "EVALSHA":
            return self.replication is None or command[1] not in self.replication.reads
        return name not in READ_COMMANDS

    def evalsha(self, pipe: Any, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        evalsha_into(pipe, self.scripts[name].sha, keys, args)

    def _slot(self, location: str) -> int:
        """The cluster hash slot of a location's keys; 0 for all of them on one Redis."""
        return key_slot(location.encode()) if self.cluster else 0


class _Recorder(AsyncCoreCommands):
    """Takes the commands redis-py's methods make (with the options their replies are
    parsed by) instead of sending them: what Base.pipeline's `build` calls."""

    _event_dispatcher: Any = None  # abstract in redis-py's mixin; never used here

    def __init__(self) -> None:
        self.commands: list[tuple[Command, dict[str, Any]]] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append((args, options))
        return self
