"""The adapters go on across a restart of the server they feed: its embedded store comes
back on the port it ran on (so the URL the adapters read is still right), or, when it had
to move, the adapters read its new URL after their next failure; what is appended to the
ingest stream after each restart is applied, each entry once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from adapters.config import DEFAULT_STREAM, entry_fields
from adapters.webhooks.writer import StreamWriter
from engine.domain.errors import Unavailable
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.loopback import free_port

from . import grpc_helpers
from .grpc_helpers import level, seed, stock_up
from .processes import ServerProcess, connect, eventually
from .stream_helpers import group_state
from .webhook_helpers import SHOPIFY_SECRET, as_body, shopify_headers


async def append(url: str, first: int, n: int) -> None:
    """n DELTAs of +1 at s1 "a", ids first ... first + n - 1, on the ingest stream."""
    now = int(time.time() * 1000)
    async with aioredis.from_url(url) as redis, redis.pipeline(transaction=False) as pipe:
        for i in range(first, first + n):
            event = grpc_helpers.delta(f"e{i}", "s1", "a", 1, now)
            pipe.xadd(DEFAULT_STREAM, entry_fields(event))  # type: ignore[arg-type]
        await pipe.execute()


async def on_hand_is(port: int, units: int) -> bool:
    """Whether s1 "a" has `units` on hand; False while the server is not answering."""
    try:
        async with connect(port) as stubs:
            return (await level(stubs, "s1", "a")).on_hand == units
    except Exception:  # the server is still coming up
        return False


async def stop_with_its_store(service: ServerProcess, state: Path) -> None:
    """Stops the server and waits until its embedded store has stopped too: under load a
    server can outlast the stop's grace and be killed, leaving its store running (a delivery
    meant to meet no store was once taken at once)."""
    port = int((state / "redis.port").read_text())
    assert await service.stop(grace=30) == 0

    async def refused() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return True
        writer.close()
        return False

    assert await eventually(refused, within=10), f"the store on {port} is still up"


async def server_on(spawn: Callable[..., ServerProcess], state: Path) -> ServerProcess:
    """A server on its embedded store in `state`, started, on the same port at each start."""
    service = spawn(
        "--state-dir", str(state), "--sweep-interval-ms", "50", "--metrics-port", "0",
        keep_port=True,
    )  # fmt: skip
    await service.start()
    return service


async def group_from_the_start(state: Path) -> str:
    """Makes the adapter's group read the ingest stream from its start; the store's URL."""
    url = (state / "redis.url").read_text().strip()
    async with aioredis.from_url(url) as redis:
        await redis.xgroup_create(DEFAULT_STREAM, "omnistock", "0", mkstream=True)
    return url


async def test_the_streams_adapter_goes_on_across_a_restart_of_the_server(
    spawn: Callable[..., ServerProcess], tmp_path: Path, project_root: Path
) -> None:
    # given a server on its embedded store, and the Streams adapter reading the store's URL
    # from the state directory, as `make run` and the README's adapter command do
    state = tmp_path / "state"
    service = await server_on(spawn, state)
    async with connect(service.port) as stubs:
        await stock_up(stubs, {("s1", "a"): 0})
    url = await group_from_the_start(state)
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

    try:
        await append(url, 0, 100)
        assert await eventually(lambda: on_hand_is(service.port, 100), within=30), adapter_log()
        # when the server (and its store) is stopped and started again on the same state
        await stop_with_its_store(service, state)
        await service.start()
        assert (state / "redis.url").read_text().strip() == url
        # then what is appended afterwards is applied too, each entry once
        await append(url, 100, 100)
        assert await eventually(lambda: on_hand_is(service.port, 200), within=60), adapter_log()
        # and when it comes back on another port (its own was taken meanwhile, say), the
        # adapter follows the store to it
        await stop_with_its_store(service, state)
        service.args = (*service.args, "--store-port", str(free_port()))
        await service.start()
        moved = (state / "redis.url").read_text().strip()
        assert moved != url
        await append(moved, 200, 100)
        assert await eventually(lambda: on_hand_is(service.port, 300), within=60), adapter_log()
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


async def test_shopify_deliveries_across_a_restart_are_answered_in_their_retries_applied_once(
    spawn: Callable[..., ServerProcess], tmp_path: Path, project_root: Path
) -> None:
    """The webhook receiver and the Streams adapter run as processes beside the server, as
    deployed. A delivery made while the server (and its store) is down is answered 503, and
    Shopify retries it: the retry, once the server is back, is answered 200."""
    state = tmp_path / "state"
    service = await server_on(spawn, state)
    async with connect(service.port) as stubs:
        await seed(stubs, {("s1", "a"): 10})  # counted an hour ago
        ours = {pb.MAPPING_KIND_LOCATION: ("24826418", "s1"), pb.MAPPING_KIND_ITEM: ("271878", "a")}
        await stubs.stock.SetMappings(
            pb.SetMappingsRequest(
                mappings=[
                    pb.Mapping(source="shopify", kind=kind, external_id=theirs, id=mine)
                    for kind, (theirs, mine) in ours.items()
                ]
            )
        )
        before = await level(stubs, "s1", "a")
    url = await group_from_the_start(state)
    hook_port, log = free_port(), (tmp_path / "adapters.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(project_root), "SHOPIFY_WEBHOOK_SECRET": SHOPIFY_SECRET}
    commands = [
        ["-m", "adapters.webhooks", "--listen", f"127.0.0.1:{hook_port}"],
        ["-m", "adapters.streams", "--server", f"127.0.0.1:{service.port}", "--batch", "50"],
    ]
    common = ["--state-dir", str(state), "--metrics-port", "0"]
    adapters = [
        await asyncio.create_subprocess_exec(
            sys.executable, *command, *common, cwd=project_root, stdout=log, stderr=log, env=env
        )
        for command in commands
    ]
    now_s = int(time.time())

    async def deliver(
        session: aiohttp.ClientSession, k: int, available: int, statuses: list[int] | None = None
    ) -> list[int]:
        """Posts delivery k as Shopify does: again, every 0.25 s, until it is answered 200
        (for at most 30 s); the statuses it got."""
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_s - 10 + k))
        payload = {
            "inventory_item_id": 271878, "location_id": 24826418, "available": available,
            "updated_at": at,
        }  # fmt: skip
        body = as_body(payload)
        headers = shopify_headers("inventory_levels/update", body, event_id=f"evt-{k}")
        statuses = [] if statuses is None else statuses
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post(
                    f"http://127.0.0.1:{hook_port}/webhooks/shopify", data=body, headers=headers
                ) as resp:
                    statuses.append(resp.status)
                    if resp.status == 200:
                        return statuses
            await asyncio.sleep(0.25)
        return statuses

    def adapters_log() -> str:
        return (tmp_path / "adapters.log").read_text()[-3000:]

    try:
        async with aiohttp.ClientSession() as session:
            assert await eventually(lambda: _answers(session, hook_port), within=20), adapters_log()
            assert (await deliver(session, 1, 7))[-1] == 200
            assert await eventually(lambda: on_hand_is(service.port, 7), within=30), adapters_log()
            # when the server stops, a delivery is made and answered, and the server starts
            # again (only once the answer came: the receiver waits for the store within its
            # write budget, so a store back within it takes the delivery at once)
            await stop_with_its_store(service, state)
            statuses: list[int] = []
            during = asyncio.ensure_future(deliver(session, 2, 5, statuses))
            assert await eventually(lambda: bool(statuses), within=30), adapters_log()
            await service.start()
            await during
            # then that delivery was refused while the store was away, and taken after
            assert statuses[-1] == 200 and 503 in statuses, statuses
            assert (await deliver(session, 3, 4))[-1] == 200
        assert await eventually(lambda: on_hand_is(service.port, 4), within=60), adapters_log()
        async with connect(service.port) as stubs:
            after = await level(stubs, "s1", "a")
        assert after.version == before.version + 3  # each delivery applied once
        async with aioredis.from_url(url) as redis:
            assert await redis.xlen(f"{DEFAULT_STREAM}:dead") == 0
    finally:
        for adapter in adapters:
            adapter.terminate()
            await adapter.wait()
        log.close()


async def _answers(session: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False
