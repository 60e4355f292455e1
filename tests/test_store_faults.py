"""Faults of the embedded store under a real `python server.py` started without REDIS_URL:
the store frozen (SIGSTOP) and thawed, the store killed (SIGKILL). The service must say so
on its health check, answer UNAVAILABLE at once while the store is known down (not at the
call's deadline), restart a dead store on the same port and data, reap it, and carry on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2

from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.embedded import EmbeddedRedis, PortTaken
from engine.store.loopback import free_port

from .conftest import BUCKETS
from .grpc_helpers import Stubs, level, line, stock_up
from .processes import (
    ServerProcess,
    connect,
    eventually,
    health_status,
    redis_pid,
    redis_port,
    timed,
)

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def embedded_service(spawn: Callable[..., ServerProcess], state: Path, *args: str) -> ServerProcess:
    """A service on its embedded store (no --redis-url: spawn passes no REDIS_URL either)."""
    return spawn(
        "--state-dir", str(state),
        "--sweep-interval-ms", "50",
        "--stock-buckets", str(BUCKETS),
        *args,
    )  # fmt: skip


async def health_is(port: int, status: int) -> bool:
    return await health_status(port) == status


async def availability(stubs: Stubs, deadline: float) -> tuple[grpc.StatusCode, float]:
    request = pb.GetAvailabilityRequest(skus=["a"], location_ids=["s1"])
    return await timed(stubs.availability.GetAvailability(request, timeout=deadline))


async def answers(stubs: Stubs) -> bool:
    code, _ = await availability(stubs, deadline=1.0)
    return code == OK


def process_state(pid: int) -> str | None:
    """The state letter of a process in /proc (Z: a zombie), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def lines_with(text: str, needle: str) -> list[str]:
    return [ln for ln in text.splitlines() if needle in ln]


async def test_frozen_store_turns_health_not_serving_and_calls_fail_fast_until_it_thaws(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # given a service on its embedded store, with stock, whose socket timeout (10 s) is
    # longer than the calls' deadline: only the circuit can answer a call early
    state = tmp_path / "state"
    service = embedded_service(spawn, state, "--metrics-port", "0", "--redis-timeout-seconds", "10")
    await service.start()
    store = redis_pid(state)
    async with connect(service.port) as stubs:
        await stock_up(stubs, {("s1", "a"): 10})
        # when the store freezes (SIGSTOP: its socket accepts, nothing answers)
        os.kill(store, signal.SIGSTOP)
        try:
            # then health turns NOT_SERVING within 2 s
            down = await eventually(lambda: health_is(service.port, NOT_SERVING), within=2)
            assert down, "health still not NOT_SERVING 2 s after the store froze"
            # and a call with a 5 s deadline is answered UNAVAILABLE at once, not at its deadline
            code, took = await availability(stubs, deadline=5.0)
            assert code == UNAVAILABLE, code.name
            assert took < 1.0, f"answered after {took:.2f}s of a 5 s deadline"
        finally:
            os.kill(store, signal.SIGCONT)
        # when it thaws, then health is SERVING again within 2 s, and calls are answered
        up = await eventually(lambda: health_is(service.port, SERVING), within=2)
        assert up, "health not SERVING 2 s after the store thawed"
        assert await answers(stubs)
        row = await level(stubs, "s1", "a")
        assert (row.on_hand, row.available) == (10, 10)
    assert len(lines_with(service.log_tail(100_000), "sweep failed")) <= 1, service.log_tail()


async def test_killed_store_is_reaped_and_restarted_on_its_port_with_its_data(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # given a service on its embedded store, with stock and a hold
    state = tmp_path / "state"
    metrics_port = free_port()
    service = embedded_service(spawn, state, "--metrics-port", str(metrics_port))
    await service.start()
    old_pid = redis_pid(state)
    old_port = redis_port(old_pid)
    async with connect(service.port) as stubs:
        await stock_up(stubs, {("s1", "a"): 10})
        held = await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id="r1", lines=[line("s1", "a", 3)], ttl_seconds=600)
        )
        assert held.reservation.state == pb.RESERVATION_STATE_HELD

        # when the store is killed
        os.kill(old_pid, signal.SIGKILL)

        # then a new store process is started (it writes its pid file) on the same port
        async def restarted() -> bool:
            try:
                pid = redis_pid(state)
            except (OSError, ValueError):
                return False
            return pid != old_pid and process_state(pid) not in (None, "Z")

        assert await eventually(restarted, within=15), service.log_tail()
        assert redis_port(redis_pid(state)) == old_port
        # and the old process was reaped: no zombie is left behind
        assert process_state(old_pid) != "Z", f"pid {old_pid} left a zombie"
        # and calls are answered again, on the data written before the kill
        assert await eventually(lambda: answers(stubs), within=10), service.log_tail()
        row = await level(stubs, "s1", "a")
        assert (row.on_hand, row.reserved, row.available) == (10, 3, 7)
        got = await stubs.reservations.GetReservation(pb.GetReservationRequest(reservation_id="r1"))
        assert got.state == pb.RESERVATION_STATE_HELD
        assert await eventually(lambda: health_is(service.port, SERVING), within=2)
    # and the restart is counted, and logged once, as is the death
    metrics = await asyncio.to_thread(scrape, metrics_port)
    assert "omnistock_store_restarts_total 1.0" in metrics, lines_with(metrics, "restarts")
    logs = service.log_tail(100_000)
    assert len(lines_with(logs, "died after")) == 1, logs
    assert len(lines_with(logs, "embedded store restarted")) == 1, logs
    assert len(lines_with(logs, "sweep failed")) <= 1, logs


def test_a_store_still_loading_its_data_is_not_taken_for_ready(tmp_path: Path) -> None:
    # given a store with data, restarted so that reading it back takes about a second
    store = EmbeddedRedis(tmp_path / "store")
    store.start()
    try:
        client = redis.Redis.from_url(store.url)
        for i in range(100):
            client.set(f"{{x}}:{i}", i)
        client.close()
        store.stop()
        with store.conffile.open("a") as conf:
            conf.write("key-load-delay 10000\n")  # 10 ms a key as the AOF is read back
        # when it is started again
        store.start()
        # then start returns once it serves: a script can be loaded at once (not LOADING)
        client = redis.Redis.from_url(store.url)
        assert client.script_load("return 1")
        assert client.dbsize() == 100
        client.close()
    finally:
        store.stop()


def test_a_port_taken_before_the_first_start_is_replaced_and_kept_after(tmp_path: Path) -> None:
    # given a cluster node whose chosen ports another process binds before it starts
    store = EmbeddedRedis(tmp_path / "store", cluster=True, password=False)
    taken = {store.port, store.cluster_port}
    squatters = []
    for port in taken:
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        squatters.append(squatter)
    try:
        # when it starts
        store.start()
        try:
            # then it serves on other ports, and keeps them when it is started again
            assert not taken & {store.port, store.cluster_port}
            chosen = (store.port, store.cluster_port)
            store.stop()
            store.start()
            assert (store.port, store.cluster_port) == chosen
            assert redis.Redis(port=store.port).ping()
        finally:
            store.stop()
    finally:
        for squatter in squatters:
            squatter.close()


def test_a_port_another_store_answers_on_is_not_taken_for_this_ones(tmp_path: Path) -> None:
    """CI once saw a local cluster with two nodes on one port: two free_port() calls gave
    the same port, and the second node's readiness check (PING) was answered by the first
    while the second, unable to bind, had not yet exited."""
    # given a store serving, and a cluster node whose chosen port is that store's
    other = EmbeddedRedis(tmp_path / "other", password=False)
    other.start()
    try:
        node = EmbeddedRedis(tmp_path / "node", cluster=True, password=False)
        node.port = other.port
        # when the node starts, then it serves on a port of its own, and it is what answers
        node.start()
        try:
            assert node.port != other.port
            assert redis.Redis(port=node.port).info("cluster")["cluster_enabled"] == 1
        finally:
            node.stop()
    finally:
        other.stop()


def test_a_port_given_by_the_caller_is_never_replaced(tmp_path: Path) -> None:
    # given a store told its port, which another process holds
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        store = EmbeddedRedis(tmp_path / "store", port=port)
        # when it starts, then it says why it cannot, on that port
        with pytest.raises(PortTaken, match="Address already in use"):
            store.start()
        assert store.port == port


def test_a_store_started_again_in_its_state_dir_keeps_its_port_and_url(tmp_path: Path) -> None:
    """The adapters read redis.url once: after a restart of the service (a new store object
    on the same state directory) the URL must be the one they have."""
    state = tmp_path / "store"
    first = EmbeddedRedis(state)
    first.start()
    url = first.url
    first.stop()
    again = EmbeddedRedis(state)
    again.start()
    try:
        assert again.url == url
        assert (state / "redis.url").read_text().strip() == url
        assert redis.Redis.from_url(url).ping()
    finally:
        again.stop()
    # unless another process holds that port by then: it moves, and remembers the new one
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", again.port))
        squatter.listen()
        moved = EmbeddedRedis(state)
        moved.start()
        try:
            assert moved.port != again.port and redis.Redis.from_url(moved.url).ping()
        finally:
            moved.stop()
    assert EmbeddedRedis(state).port == moved.port
