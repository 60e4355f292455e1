"""`server.py --workers 2` as a real process tree: two server processes on one port, each
serving some of the connections, sharing one embedded store (what one writes, the other
reads), and a worker that dies started again by the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import uvloop

from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.workers import catches

from .grpc_helpers import Stubs, level, line, location, stock_up
from .processes import SERVING, ServerProcess, eventually, health_status

CHANNELS = 24  # connections, each reaching one worker (the kernel picks)


def two_free_ports() -> int:
    """A port p such that p and p + 1 are both free (worker i serves metrics on p + i)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", port + 1))
            return port
    raise AssertionError("no two free ports in a row")


def calls_served(port: int) -> float | None:
    """GetAvailability calls a worker answered OK, from its metrics (None: not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    wanted = 'omnistock_rpc_seconds_count{code="OK",method="GetAvailability"}'
    for row in text.splitlines():
        if row.startswith(wanted):
            return float(row.split()[-1])
    return 0.0


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


async def test_two_workers_share_one_port_and_one_store(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    metrics = two_free_ports()
    server = spawn(
        "--workers", "2", "--state-dir", str(tmp_path / "state"), "--metrics-port", str(metrics)
    )  # fmt: skip
    await server.start(within=60.0)
    assert await eventually(lambda: calls_served(metrics + 1) is not None, 60.0)
    own = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own per channel
    target = f"127.0.0.1:{server.port}"
    channels = [grpc.aio.insecure_channel(target, options=own) for _ in range(CHANNELS)]
    try:
        # given a row written through one connection
        await stock_up(Stubs(channels[0]), {("L1", "S1"): 7})
        # when every connection reads it
        request = pb.GetAvailabilityRequest(skus=["S1"], location_ids=["L1"])
        answers = [await Stubs(ch).availability.GetAvailability(request) for ch in channels]
        # then each read it as written, whichever worker served it ...
        assert {a.levels[0].on_hand for a in answers} == {7}
        # ... and both workers served some of them
        served = [calls_served(metrics), calls_served(metrics + 1)]
        assert sum(n or 0 for n in served) == CHANNELS
        assert all(n for n in served), f"one worker served every connection: {served}"
    finally:
        for ch in channels:
            await ch.close()
    # and a worker that dies is started again
    workers = children_of(server.pid)
    assert len(workers) >= 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    await asyncio.sleep(0.5)
    assert await eventually(
        lambda: len([p for p in children_of(server.pid) if p not in workers[-1:]]) >= 2, 30.0
    )


def metric(port: int, name: str) -> float:
    """A counter's value at a worker's metrics port (0 when it has not moved)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        rows = resp.read().decode().splitlines()
    return sum(float(row.split()[-1]) for row in rows if row.startswith(name + " "))


async def test_two_workers_on_a_cluster_expire_each_hold_once(
    spawn: Callable[..., ServerProcess], cluster_url: str
) -> None:
    """Two server processes on a Redis Cluster, each with its sweeper: holds made through
    both, at one location and across locations (sagas), expire once each, wherever they
    were made, and leave nothing reserved and no saga open."""
    metrics = two_free_ports()
    server = spawn("--workers", "2", "--redis-url", cluster_url, "--metrics-port", str(metrics))
    await server.start(within=60.0)
    assert await eventually(lambda: calls_served(metrics + 1) is not None, 60.0)
    stores = ["w-s1", "w-s2", "w-s3"]
    own = [("grpc.use_local_subchannel_pool", 1)]
    target = f"127.0.0.1:{server.port}"
    channels = [grpc.aio.insecure_channel(target, options=own) for _ in range(CHANNELS)]
    try:
        first = Stubs(channels[0])
        await first.stock.UpsertLocations(
            pb.UpsertLocationsRequest(locations=[location(s) for s in stores])
        )
        await stock_up(first, {(s, "a"): 100 for s in stores})
        before = sum(metric(metrics + i, "omnistock_expiries_total") for i in range(2))
        holds = 0
        for i, ch in enumerate(channels):
            lines = [line(stores[i % 3], "a", 1)]
            if i % 2:
                lines.append(line(stores[(i + 1) % 3], "a", 1))  # a saga across nodes
            got = await Stubs(ch).reservations.Reserve(
                pb.ReserveRequest(reservation_id=f"w{i}", lines=lines, ttl_seconds=0.5)
            )
            assert got.reservation.state == pb.RESERVATION_STATE_HELD
            holds += len(lines)

        async def all_back() -> bool:
            rows = [await level(first, s, "a") for s in stores]
            return all(r.reserved == 0 and r.available == 100 for r in rows)

        assert await eventually(all_back, 30.0)

        def expired() -> float:
            return sum(metric(metrics + i, "omnistock_expiries_total") for i in range(2)) - before

        # a sweeper counts a part once its script has answered, which can be after another
        # process has read the units back: wait for the count, then check it is not over
        assert await eventually(lambda: expired() >= holds, 30.0)
        assert expired() == holds  # each part once, by one sweeper or the other
        for i, ch in enumerate(channels):
            got = await Stubs(ch).reservations.GetReservation(
                pb.GetReservationRequest(reservation_id=f"w{i}")
            )
            assert got.state == pb.RESERVATION_STATE_EXPIRED
    finally:
        for ch in channels:
            await ch.close()


async def test_the_tests_run_on_the_event_loop_the_server_runs_on() -> None:
    # server.py serves on uvloop: so does every in-process server of the tests
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_sighup_as_the_workers_start_reloads_and_ends_none(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # given a supervisor starting two workers (a worker that has not yet taken SIGHUP as its
    # own would be ended by it: its default action)
    server = spawn("--workers", "2", "--state-dir", str(tmp_path / "state"), "--metrics-port", "0")
    server.launch()
    assert await eventually(lambda: catches(server.pid, signal.SIGHUP), 30.0)
    # when SIGHUP is sent every 20 ms from then until 3 s after it serves (worker 1 starts
    # once worker 0 serves)
    loop = asyncio.get_running_loop()
    deadline, serving = loop.time() + 60.0, False
    while loop.time() < deadline:
        assert server.process is not None and server.process.poll() is None, server.log_tail()
        server.signal(signal.SIGHUP)
        if not serving and await health_status(server.port, within=0.05) == SERVING:
            deadline, serving = loop.time() + 3.0, True
        await asyncio.sleep(0.02)
    assert serving, "not serving within 60 s"
    # then both workers run, and neither was ended and started again
    assert await eventually(lambda: len(children_of(server.pid)) >= 3, 30.0)  # and the store
    assert "exited" not in server.log_tail(100_000)
