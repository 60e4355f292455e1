"""How the engine talks to Redis: its Lua scripts, run by SHA, and the auto-pipeline that
sends the script calls of one moment together."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rexc

# Redis errors that mean the store is away (or moving): the call is answered UNAVAILABLE.
REDIS_DOWN = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.BusyLoadingError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
    rexc.SlotNotCoveredError,
    rexc.ClusterError,  # "TTL exhausted": redirected too often while slots move
    rexc.ReadOnlyError,  # a write reached a node that a failover just made a replica
    rexc.MasterDownError,
    OSError,
)


def refuses_writes(exc: rexc.ResponseError) -> bool:
    """A primary that takes no writes for now: past its maxmemory (OOM), or with fewer
    replicas in reach than its min-replicas-to-write (NOREPLICAS). Nothing was written; the
    call is answered UNAVAILABLE, and reads go on."""
    text = str(exc)
    return isinstance(exc, rexc.OutOfMemoryError) or "NOREPLICAS" in text or "OOM " in text


Command = tuple[Any, ...]
# A script call with this many arguments or more (a part of a wide read: 128 rows; a batch
# of 32 events or more) is heavy: it goes in a lane of its own (Lanes).
HEAVY_ARGS = 256
# Commands that write nothing: a batch of only these is not followed by WAIT.
READ_COMMANDS = frozenset(
    {"GET", "HGET", "HMGET", "HGETALL", "ZRANGE", "ZRANGEBYSCORE", "ZSCORE", "ZCARD", "PING"}
)


@dataclass(slots=True, eq=False)
class Call:
    """One command of a batch. Its answer goes to `future`; `then`, a command sent right
    behind it whose answer is not wanted, runs after it on one Redis (on a cluster it is
    sent once the call has succeeded, to its own node)."""

    args: Command
    kwargs: dict[str, Any]
    future: asyncio.Future[Any]
    writes: bool
    then: Command | None = None
    retry_until: float = 0.0  # on a cluster: until when a refusal may be retried
    tries: int = 0
    heavy: bool = False  # sent in the lane of big calls (Lanes)

    def answer(self, result: Any) -> None:
        if self.future.done():
            return  # the caller gave up (deadline); the command ran or not, idempotently
        if isinstance(result, BaseException):
            self.future.set_exception(result)
        else:
            self.future.set_result(result)


class Script:
    """A Lua file from engine/store/lua, prefixed with the shared helpers, run by SHA."""

    _prelude: str | None = None

    def __init__(self, name: str) -> None:
        files = importlib.resources.files("engine.store") / "lua"
        if Script._prelude is None:
            Script._prelude = (files / "_prelude.lua").read_text()
        self.name = name
        self.source = Script._prelude + "\n" + (files / f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


class NotReplicated(rexc.RedisError):
    """A write the primary made that too few replicas acknowledged in time (or that did not
    reach its disk): whether it would survive a failover or a power loss is unknown, so its
    caller is answered UNAVAILABLE (a retry with the same id is safe: every script is
    idempotent)."""


@dataclass(frozen=True, slots=True)
class Replication:
    """A batch holding a write is followed, on the same connection, by WAIT `replicas`
    `timeout_ms` (that many replicas have its writes, in memory); with `fsync`, by WAITAOF
    1 0 `timeout_ms` instead (the primary's AOF has them on disk). Its writes are answered
    only when that is so. (Not WAITAOF with replicas: after a script, Valkey 9 answered it
    only at the replica's next one-second acknowledgement, even with appendfsync always
    there: docs/operations.md.)"""

    replicas: int  # 0 with fsync
    timeout_ms: int
    reads: frozenset[str]  # SHAs of the scripts that write nothing (no wait for them)
    fsync: bool = False

    @property
    def wait(self) -> Command:
        if self.fsync:
            return ("WAITAOF", 1, 0, self.timeout_ms)
        return ("WAIT", self.replicas, self.timeout_ms)

    def missed(self, acked: Any) -> NotReplicated | None:
        """What the wait's answer makes of the writes before it: None when they are where
        they were asked to be, else the error their callers are answered with."""
        if isinstance(acked, Exception):
            return NotReplicated(f"the write may not be durable: {acked}; retry")
        if self.fsync:
            if int(acked[0]) >= 1:
                return None
            return NotReplicated(
                f"the write did not reach the primary's disk within {self.timeout_ms} ms; "
                "it may be lost: retry"
            )
        if int(acked) >= self.replicas:
            return None
        return NotReplicated(
            f"the write was not acknowledged by {self.replicas} replica(s) within "
            f"{self.timeout_ms} ms (got {acked}); it may be lost at a failover: retry"
        )


class AutoPipeline:
    """Commands made at about the same time by one process, sent together: one round trip
    and one connection for many. A call made while fewer than `max_inflight` batches are
    under way is sent at once (on the next turn of the event loop); others join the next
    batch. Each call gets its own answer or error. One batch in flight at a time made the
    most Reserves per second over gRPC (bench/RESULTS.md: +15% against four).

    This one sends to one Redis; engine/store/nodes.py keeps one per node of a cluster."""

    def __init__(
        self,
        client: Any,
        max_batch: int = 256,
        max_inflight: int = 1,
        replication: Replication | None = None,
    ) -> None:
        self.redis = client
        self.replication = replication
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.queue: list[Call] = []
        self.inflight = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def evalsha(
        self, sha: str, keys: Sequence[str], args: Sequence[Any], then: Command | None = None
    ) -> Any:
        """Runs the script; `then` (see Call) goes right behind it."""
        writes = self.replication is None or sha not in self.replication.reads
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        return await self.run(command, {}, writes, then)

    async def run(
        self, command: Command, options: dict[str, Any], writes: bool, then: Command | None = None
    ) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.submit(Call(command, options, future, writes, then))
        return await future

    def submit(self, call: Call) -> None:
        self.queue.append(call)
        if self.inflight < self.max_inflight:
            self.inflight += 1
            task = asyncio.ensure_future(self._drain())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def fail_queued(self, reason: str) -> None:
        """Answers every call not yet sent with a ConnectionError; they are never sent."""
        queued, self.queue = self.queue, []
        for call in queued:
            call.answer(rexc.ConnectionError(reason))

    async def _drain(self) -> None:
        try:
            while self.queue:
                batch = self.queue[: self.max_batch]
                del self.queue[: self.max_batch]
                # A call given up before it was sent (deadline, circuit) is not sent at all:
                # it was answered UNAVAILABLE (or its caller left), so it must change nothing.
                batch = [call for call in batch if not call.future.done()]
                if batch:
                    await self._send(batch)
        finally:
            self.inflight -= 1

    async def _send(self, batch: list[Call]) -> None:
        try:
            results = await self._execute(batch)
        except BaseException as exc:  # every caller of the batch learns why
            self._failed(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for call, result in zip(batch, results, strict=True):
            self._answer(call, result)

    def _failed(self, batch: list[Call], exc: BaseException) -> None:
        for call in batch:
            self._answer(call, exc)

    def _answer(self, call: Call, result: Any) -> None:
        call.answer(result)

    async def _execute(self, batch: list[Call]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for call in batch:
            pipe.execute_command(*call.args, **call.kwargs)
            if call.then is not None:
                pipe.execute_command(*call.then)
        wait = self._wait(batch)
        if wait is not None:
            pipe.execute_command(*wait)
        replies = iter(await pipe.execute(raise_on_error=False))
        results = []
        for call in batch:
            results.append(next(replies))
            if call.then is not None:
                next(replies)  # the follow-up's own reply is not wanted
        return self._replicated(batch, results, next(replies) if wait is not None else None)

    def _wait(self, batch: Sequence[Call]) -> Command | None:
        """With replication, a batch that writes ends with WAIT, on the same connection."""
        if self.replication is None or not any(call.writes for call in batch):
            return None
        return self.replication.wait

    def _replicated(self, batch: Sequence[Call], results: list[Any], acked: Any) -> list[Any]:
        """The results, each write's replaced by NotReplicated if too few replicas have it."""
        late = None if self.replication is None or acked is None else self.replication.missed(acked)
        if late is None:
            return results
        return [
            late if call.writes and not isinstance(r, Exception) else r  # a refusal stays
            for call, r in zip(batch, results, strict=True)
        ]


class Lanes:
    """The script calls to one Redis, in two lanes on connections of their own: small calls
    batched together, and heavy ones (HEAVY_ARGS arguments or more) one at a time. Redis
    serves its connections in turn, so a small call waits behind at most the one big script
    that is running, never behind a batch of them (bench/RESULTS.md, "Heavy work in its
    lane"). engine/store/nodes.py keeps the same two lanes per node."""

    def __init__(self, client: Any, replication: Replication | None = None) -> None:
        self.light = AutoPipeline(client, replication=replication)
        self.heavy = AutoPipeline(client, max_batch=1, replication=replication)

    async def evalsha(
        self,
        sha: str,
        keys: Sequence[str],
        args: Sequence[Any],
        then: Command | None = None,
        heavy: bool = False,
    ) -> Any:
        """heavy: the call is one of many that make a big read (HEAVY_ARGS arguments or
        more make any call heavy)."""
        lane = self.heavy if heavy or len(args) >= HEAVY_ARGS else self.light
        return await lane.evalsha(sha, keys, args, then)

    def fail_queued(self, reason: str) -> None:
        self.light.fail_queued(reason)
        self.heavy.fail_queued(reason)


def evalsha_into(pipe: Any, sha: str, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queues one script call. (redis-py's cluster pipeline blocks its `evalsha` method, yet
    routes the command itself by its keys, all of one slot here.)"""
    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)


def decoded(value: Any) -> list[Any]:
    return [v.decode() if isinstance(v, bytes) else v for v in value]
