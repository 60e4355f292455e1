"""The adapters go on across a restart of the server they feed: its embedded store comes
back on the port it ran on (so the URL the adapters read is still right), or, when it had
to move, the adapters read its new URL after their next failure; what is appended to the
ingest stream after each restart is applied, each entry once."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from adapters.config import DEFAULT_STREAM, entry_fields
from adapters.webhooks.writer import StreamWriter
from engine.domain.errors import Unavailable
from engine.store.embedded import free_port

from . import grpc_helpers
from .grpc_helpers import level, stock_up
from .processes import ServerProcess, connect, eventually
from .stream_helpers import group_state


async def append(url: str, first: int, n: int) -> None:
    """n DELTAs of +1 at s1 "a", ids first ... first + n - 1, on the ingest stream."""
    now = int(time.time() * 1000)
    async with aioredis.from_url(url) as redis, redis.pipeline(transaction=False) as pipe:
        for i in range(first, first + n):
            event = grpc_helpers.delta(f"e{i}", "s1", "a", 1, now)
            pipe.xadd(DEFAULT_STREAM, entry_fields(event))  # type: ignore[arg-type]
        await pipe.execute()


async def test_the_streams_adapter_goes_on_across_a_restart_of_the_server(
    spawn: Callable[..., ServerProcess], tmp_path: Path, project_root: Path
) -> None:
    # given a server on its embedded store, and the Streams adapter reading the store's URL
    # from the state directory, as `make run` and the README's adapter command do
    state = tmp_path / "state"
    service = spawn(
        "--state-dir", str(state), "--sweep-interval-ms", "50", "--metrics-port", "0",
        keep_port=True,
    )  # fmt: skip
    await service.start()
    async with connect(service.port) as stubs:
        await stock_up(stubs, {("s1", "a"): 0})
    url = (state / "redis.url").read_text().strip()
    async with aioredis.from_url(url) as redis:  # the group reads the stream from its start
        await redis.xgroup_create(DEFAULT_STREAM, "omnistock", "0", mkstream=True)
    log = (tmp_path / "adapter.log").open("wb")
    adapter = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adapters.streams",
        "--state-dir", str(state), "--server", f"127.0.0.1:{service.port}",
        "--batch", "50", "--metrics-port", "0",
        cwd=project_root,
        stdout=log,
        stderr=log,
        env={**os.environ, "PYTHONPATH": str(project_root)},
    )  # fmt: skip

    def adapter_log() -> str:
        return (tmp_path / "adapter.log").read_text()[-3000:]

    async def on_hand_is(units: int) -> bool:
        try:
            async with connect(service.port) as stubs:
                return (await level(stubs, "s1", "a")).on_hand == units
        except Exception:  # the server is still coming up
            return False

    try:
        await append(url, 0, 100)
        assert await eventually(lambda: on_hand_is(100), within=30), adapter_log()
        # when the server (and its store) is stopped and started again on the same state
        await service.stop()
        await service.start()
        assert (state / "redis.url").read_text().strip() == url
        # then what is appended afterwards is applied too, each entry once
        await append(url, 100, 100)
        assert await eventually(lambda: on_hand_is(200), within=60), adapter_log()
        # and when it comes back on another port (its own was taken meanwhile, say), the
        # adapter follows the store to it
        await service.stop()
        service.args = (*service.args, "--store-port", str(free_port()))
        await service.start()
        moved = (state / "redis.url").read_text().strip()
        assert moved != url
        await append(moved, 200, 100)
        assert await eventually(lambda: on_hand_is(300), within=60), adapter_log()
        assert "the store moved" in adapter_log()
        async with aioredis.from_url(moved) as redis:
            group = await group_state(redis, DEFAULT_STREAM, "omnistock")
        assert group["pending"] == 0 and group["lag"] == 0, group
        assert adapter.returncode is None  # it never gave up
    finally:
        adapter.terminate()
        await adapter.wait()
        log.close()


async def test_the_webhook_writer_follows_the_store_after_a_failure(
    redis: aioredis.Redis, one_redis_url: str
) -> None:
    """A delivery that fails because the store moved is answered 503 (the platform retries
    it); the writer has meanwhile followed the store, so the retry is written."""
    gone = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    store = aioredis.from_url(one_redis_url)
    moves = [store]

    async def follow() -> aioredis.Redis | None:
        return moves.pop() if moves else None

    writer = StreamWriter(gone, wait_aof=False, timeout=2.0, follow=follow)
    entry = {"event_id": "w1"}
    with pytest.raises(Unavailable):
        await writer.append(DEFAULT_STREAM, [entry])
    await writer.append(DEFAULT_STREAM, [entry])  # the platform's retry
    assert await redis.xlen(DEFAULT_STREAM) == 1
    await gone.aclose()
    await store.aclose()
