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


Command = tuple[Any, ...]
_Queued = tuple[str, Sequence[str], Sequence[Any], Command | None, "asyncio.Future[Any]"]


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
    """A write the primary made that too few replicas acknowledged in time: whether it would
    survive a failover is unknown, so its caller is answered UNAVAILABLE (a retry with the
    same id is safe: every script is idempotent)."""


@dataclass(frozen=True, slots=True)
class Replication:
    """A batch holding a write is followed, on the same connection, by WAIT `replicas`
    `timeout_ms`; its writes are answered only when that many replicas have them."""

    replicas: int
    timeout_ms: int
    reads: frozenset[str]  # SHAs of the scripts that write nothing (no WAIT for them)


class AutoPipeline:
    """Script calls made at about the same time by one process, sent together: one round
    trip and one connection for many. A call made while fewer than `max_inflight` batches
    are under way is sent at once (on the next turn of the event loop); others join the
    next batch. Each call gets its own answer or error. One batch in flight at a time made
    the most Reserves per second over gRPC (bench/RESULTS.md: +15% against four)."""

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
        self.queue: list[_Queued] = []
        self.inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def evalsha(
        self, sha: str, keys: Sequence[str], args: Sequence[Any], then: Command | None = None
    ) -> Any:
        """Runs the script; `then`, a command sent right behind it in the same batch (its
        answer is not wanted), runs after it on one Redis."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.append((sha, keys, args, then, future))
        if self.inflight < self.max_inflight:
            self.inflight += 1
            task = asyncio.ensure_future(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    def fail_queued(self, reason: str) -> None:
        """Answers every call not yet sent with a ConnectionError; they are never sent."""
        queued, self.queue = self.queue, []
        for *_, future in queued:
            if not future.done():
                future.set_exception(rexc.ConnectionError(reason))

    async def _drain(self) -> None:
        try:
            while self.queue:
                batch = self.queue[: self.max_batch]
                del self.queue[: self.max_batch]
                # A call given up before it was sent (deadline, circuit) is not sent at all:
                # it was answered UNAVAILABLE (or its caller left), so it must change nothing.
                batch = [queued for queued in batch if not queued[-1].done()]
                if batch:
                    await self._send(batch)
        finally:
            self.inflight -= 1

    async def _send(self, batch: list[_Queued]) -> None:
        try:
            results = await self._execute(batch)
        except BaseException as exc:  # every caller of the batch learns why
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # the caller gave up (deadline); the script ran or not, idempotently
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, batch: list[_Queued]) -> list[Any]:
        """One pipeline for the batch; the script replies, in order. With replication, a
        batch that writes ends with WAIT, and its writes fail if too few replicas have them."""
        pipe = self.redis.pipeline(transaction=False)
        for sha, keys, args, then, _ in batch:
            evalsha_into(pipe, sha, keys, args)
            if then is not None:
                pipe.execute_command(*then)
        wait = self.replication
        writes = wait is not None and any(q[0] not in wait.reads for q in batch)
        if wait is not None and writes:
            pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
        replies = iter(await pipe.execute(raise_on_error=False))
        results = []
        for *_, then, _future in batch:
            results.append(next(replies))
            if then is not None:
                next(replies)  # the follow-up's own reply is not wanted
        if wait is not None and writes:
            acked = next(replies)
            if isinstance(acked, Exception) or int(acked) < wait.replicas:
                late = NotReplicated(
                    f"the write was not acknowledged by {wait.replicas} replica(s) within "
                    f"{wait.timeout_ms} ms (got {acked}); it may be lost at a failover: retry"
                )
                results = [
                    r if q[0] in wait.reads else late for q, r in zip(batch, results, strict=True)
                ]
        return results


def evalsha_into(pipe: Any, sha: str, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queues one script call. (redis-py's cluster pipeline blocks its `evalsha` method, yet
    routes the command itself by its keys, all of one slot here.)"""
    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)


def decoded(value: Any) -> list[Any]:
    return [v.decode() if isinstance(v, bytes) else v for v in value]
