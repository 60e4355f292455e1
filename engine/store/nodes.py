"""Batches on a Redis Cluster, node by node, so that a failure stays on its shard.

Each primary gets auto-pipelines of its own (lanes: one for small calls, one for heavy
ones, as engine/store/scripts.py Lanes): a call goes to a lane of its key's slot's node,
and a lane sends its batch on one of that node's connections, ending with WAIT
when the deployment waits for replicas. So a node that is down or frozen delays and fails
only the calls for its own slots: the other lanes go on, and nothing closes the whole
client (redis-py's cluster pipeline, by contrast, sends one batch to every node at once,
waits for the slowest, and on a connection error closes every node's connections).

What a node answers is handled per call:
- refused before it ran (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, MASTERDOWN, READONLY, a slot
  not covered): the call is sent again, to the node the cluster now names, with a short
  backoff, for up to RETRY_FOR seconds and never past its caller's deadline (the caller
  stops waiting; a call whose caller has gone is not sent again); one still refused when
  that time is up is answered UNAVAILABLE, a redirect included;
- ASK (its slot is moving and its keys have left the owner): the call is sent at once to
  the node the ASK names, preceded by ASKING, in that node's batch (the owner would answer
  ASK again until the move ends: tests/test_resharding.py);
- a connection lost or timed out: whether the commands ran is unknown, so they fail
  (UNAVAILABLE: a retry with the same id is safe, every script is idempotent), and the
  cluster's map of slots is read again before the next call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from redis import exceptions as rexc
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.cluster import get_node_name
from redis.crc import key_slot

from engine.store.scripts import HEAVY_ARGS, AutoPipeline, Call, Command, Replication

log = logging.getLogger(__name__)

# Answers that mean the command did not run and may run elsewhere or a moment later.
REFUSED = (
    rexc.MovedError,
    rexc.AskError,
    rexc.TryAgainError,
    rexc.ClusterDownError,
    rexc.MasterDownError,
    rexc.ReadOnlyError,
    rexc.SlotNotCoveredError,
)
# Of those, the ones after which the map of slots is stale.
_MAP_STALE = (
    rexc.ClusterDownError,
    rexc.MasterDownError,
    rexc.ReadOnlyError,
    rexc.SlotNotCoveredError,
)
RETRY_FOR = 5.0  # seconds a refused call is retried (a failover takes about node-timeout)
_BACKOFF = (0.01, 0.2)  # first and longest pause between two tries
_REMAP_EVERY = 0.25  # seconds between two reads of the map of slots


def key_of(command: Command) -> Any:
    """The key a command is routed by: the first key of a script, else its first argument
    (every command the engine sends names its key first)."""
    return command[3] if command[0] == "EVALSHA" else command[1]


class Lane(AutoPipeline):
    """An auto-pipeline of one node: its small calls, or its heavy ones one at a time."""

    def __init__(self, router: NodeBatches, name: str, heavy: bool) -> None:
        super().__init__(
            router.cluster, max_batch=1 if heavy else 256, replication=router.replication
        )
        self.router = router
        self.name = name

    async def _execute(self, batch: list[Call]) -> list[Any]:
        asking = [self.router.asked(call) for call in batch]
        node = self.router.node(self.name)
        if node is not None:
            self.router.used.add(node)
        if node is None:  # the node left the cluster: the map says where its slots went
            raise rexc.SlotNotCoveredError(f"node {self.name} is no longer in the cluster")
        commands: list[PipelineCommand] = []
        positions = []  # of each call's own command among `commands`
        for call, asked in zip(batch, asking, strict=True):
            if asked:  # ASKING opens the importing node to the one command after it
                commands.append(PipelineCommand(len(commands), "ASKING"))
            positions.append(len(commands))
            commands.append(PipelineCommand(len(commands), *call.args, **call.kwargs))
        wait = self._wait(batch)
        if wait is not None:
            commands.append(PipelineCommand(len(commands), *wait))
        try:
            try:
                await node.execute_pipeline(commands)
            except AttributeError as exc:  # redis-py: a connection closed under the send
                raise rexc.ConnectionError(f"connection closed while sending: {exc}") from exc
        except (rexc.ConnectionError, rexc.TimeoutError, OSError):
            node.update_active_connections_for_reconnect()
            await node.disconnect_free_connections()
            self.router.remap(self.name)
            raise
        results = [commands[i].result for i in positions]
        return self._replicated(batch, results, commands[-1].result if wait else None)

    def _answer(self, call: Call, result: Any) -> None:
        if isinstance(result, REFUSED) and self.router.retry(call, result):
            return
        if isinstance(result, rexc.AskError):  # MOVED too: still redirected, time is up
            result = rexc.ClusterError(f"still redirected when its time was up: {result}")
        call.answer(result)
        if call.then is not None and not isinstance(result, BaseException):
            self.router.follow_up(call.then)


class NodeBatches:
    """Routes each call to the lane of its node (see the module docstring)."""

    def __init__(self, cluster: RedisCluster, replication: Replication | None = None) -> None:
        self.cluster = cluster
        self.replication = replication
        self.lanes: dict[tuple[str, bool], Lane] = {}  # (node, heavy) -> its lane
        self._remapping: asyncio.Task[None] | None = None
        self._remapped_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._asking: set[Call] = set()  # calls to send after ASKING (answered ASK)
        # every node object a lane sent on: redis-py drops a node's object from its map
        # when the node fails or moves, with the connections open; closed in aclose
        self.used: set[ClusterNode] = set()
        self.closed = False

    def node(self, name: str) -> ClusterNode | None:
        node: ClusterNode | None = self.cluster.nodes_manager.nodes_cache.get(name)
        return node

    async def evalsha(
        self, sha: str, keys: Any, args: Any, then: Command | None = None, heavy: bool = False
    ) -> Any:
        writes = self.replication is None or sha not in self.replication.reads
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        return await self.run(command, {}, writes, then, heavy=heavy or len(args) >= HEAVY_ARGS)

    async def run(
        self,
        command: Command,
        options: dict[str, Any],
        writes: bool,
        then: Command | None = None,
        heavy: bool = False,
    ) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        until = time.monotonic() + RETRY_FOR
        self.submit(Call(command, options, future, writes, then, until, heavy=heavy))
        return await future

    def submit(self, call: Call, to: str | None = None) -> None:
        """Sends the call to its slot's node, or to node `to`."""
        if self.closed:
            call.answer(rexc.ConnectionError("the store is closing"))
            return
        try:
            slot = key_slot(_encoded(key_of(call.args)))
            name = to or self.cluster.nodes_manager.get_node_from_slot(slot).name
        except rexc.SlotNotCoveredError as exc:
            if not self.retry(call, exc):
                call.answer(exc)
            return
        lane = self.lanes.get((name, call.heavy))
        if lane is None:
            lane = self.lanes[(name, call.heavy)] = Lane(self, name, call.heavy)
        lane.submit(call)

    def follow_up(self, command: Command) -> None:
        """Sends a command whose answer is not wanted (a failure is only logged)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_log_failure)
        self.submit(Call(command, {}, future, True, None, time.monotonic() + RETRY_FOR))

    def retry(self, call: Call, refusal: BaseException) -> bool:
        """Sends a refused call again after a pause, if its time allows; False if not."""
        now = time.monotonic()
        if call.future.done() or now >= call.retry_until:
            return False
        if isinstance(refusal, _MAP_STALE):
            self.remap(None)
        pause = min(_BACKOFF[0] * 2**call.tries, _BACKOFF[1], call.retry_until - now)
        call.tries += 1
        self._spawn(self._again(call, refusal, pause))
        return True

    async def _again(self, call: Call, refusal: BaseException, pause: float) -> None:
        if isinstance(refusal, rexc.MovedError):
            await self.cluster.nodes_manager.move_slot(refusal)  # the slot's new owner
        elif isinstance(refusal, rexc.AskError) and not call.future.done():
            self._asking.add(call)  # the importing node, once, at once
            call.future.add_done_callback(lambda _: self._asking.discard(call))
            self.submit(call, to=get_node_name(refusal.host, refusal.port))
            return
        else:
            await asyncio.sleep(pause)
        if not call.future.done():
            self.submit(call)

    def asked(self, call: Call) -> bool:
        """Whether the call goes after ASKING (this once: the next refusal routes it anew)."""
        if call in self._asking:
            self._asking.discard(call)
            return True
        return False

    def remap(self, failed: str | None) -> None:
        """Reads the cluster's map of slots again (once at a time, at most every
        _REMAP_EVERY seconds), trying the node that failed last."""
        if self._remapping is not None and not self._remapping.done():
            return
        self._remapping = self._spawn(self._remap(failed))

    async def _remap(self, failed: str | None) -> None:
        await asyncio.sleep(max(0.0, self._remapped_at + _REMAP_EVERY - time.monotonic()))
        try:
            if failed is not None:
                self.cluster.nodes_manager.move_node_to_end_of_cached_nodes(failed)
            self.cluster._initialize = True  # redis-py's own way to ask for a new map
            await self.cluster.initialize()
        except (rexc.RedisError, OSError) as exc:
            log.warning("could not read the cluster's map of slots: %s", exc)
        finally:
            self._remapped_at = time.monotonic()

    def fail_queued(self, reason: str) -> None:
        for lane in self.lanes.values():
            lane.fail_queued(reason)

    async def aclose(self) -> None:
        """Takes no call from now on, stops the batches, retries and map reads under way
        (a follow-up sent late would open a connection again), and closes every connection
        a lane opened (also those of nodes that have left redis-py's map)."""
        self.closed = True
        for lane in self.lanes.values():
            lane.fail_queued("the store is closing")
        tasks = [*self._tasks, *(task for lane in self.lanes.values() for task in lane.tasks)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(node.disconnect() for node in self.used), return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("a follow-up command failed: %s", future.exception())


def _encoded(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()
