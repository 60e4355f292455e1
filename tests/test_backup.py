"""The backup and restore of docs/operations.md, run as an operator runs it: a server with its
embedded store holds stock and reservations; `python -m tools.backup snapshot` takes a
snapshot; the server and its state directory are lost; `python -m tools.backup restore`
makes a new state directory from the snapshot; `python server.py --state-dir` serves on it.
Every row and reservation is then as it was at the snapshot, the invariants hold, and the
engine serves: a hold that lapsed meanwhile is swept, new holds and commits work, an event
applied before the snapshot is still a duplicate. What was written after the snapshot is
gone, as the doc says."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.settings import Settings
from engine.store.connect import connect as connect_store
from engine.store.storage import Storage

from .conftest import BUCKETS
from .grpc_helpers import Stubs, count, line, stock_up
from .invariants import (
    Holds,
    assert_all_or_nothing,
    assert_reserved_is_held,
    assert_served_rows_match_holds,
    read_holds,
)
from .processes import ROOT, ServerProcess, connect, eventually

LOCATIONS = ("L1", "L2")
SKUS = ("S1", "S2", "S3")
STOCK = {("L1", "S1"): 10, ("L1", "S2"): 5, ("L2", "S1"): 7, ("L2", "S2"): 3, ("L2", "S3"): 4}
LAPSING_TTL = 8.0  # s: HELD in the snapshot, past its expiry once the restored server runs
STATE = pb.ReservationState


def server_args(state_dir: Path) -> tuple[str, ...]:
    return (
        *("--state-dir", str(state_dir), "--stock-buckets", str(BUCKETS)),
        *("--sweep-interval-ms", "50", "--metrics-port", "0"),
    )


def tool(*args: str) -> str:
    """Runs `python -m tools.backup ARGS` as an operator would; its summary line."""
    done = subprocess.run(
        [sys.executable, "-m", "tools.backup", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@asynccontextmanager
async def store_of(state_dir: Path) -> AsyncIterator[Storage]:
    """The store a server with this state directory runs, read through the engine's seam."""
    url = (state_dir / "redis.url").read_text().strip()
    client = await connect_store(url, 2.0)
    try:
        settings = Settings(stock_buckets=BUCKETS)
        yield Storage(
            client,
            stock_buckets=BUCKETS,
            retention_ms=settings.retention_ms,
            event_window_ms=settings.event_window_ms,
        )
    finally:
        await client.aclose()


async def reserve(stubs: Stubs, rid: str, *lines: pb.ReservationLine, ttl: float = 3600) -> None:
    answer = await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id=rid, lines=list(lines), ttl_seconds=ttl)
    )
    assert answer.reservation.state == STATE.RESERVATION_STATE_HELD, answer


async def states(stubs: Stubs, ids: list[str]) -> dict[str, int | None]:
    """Each reservation's state as served; None: NOT_FOUND."""
    out: dict[str, int | None] = {}
    for rid in ids:
        try:
            got = await stubs.reservations.GetReservation(
                pb.GetReservationRequest(reservation_id=rid)
            )
            out[rid] = got.state
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
            out[rid] = None
    return out


async def fill(stubs: Stubs) -> float:
    """Stock, safety stock and reservations in every state; when the lapsing hold expires."""
    await stock_up(stubs, STOCK)
    await stubs.stock.SetSafetyStock(
        pb.SetSafetyStockRequest(entries=[pb.SafetyStockEntry(location_id="L1", sku="S1", qty=1)])
    )
    await reserve(stubs, "held", line("L1", "S1", 2))
    await reserve(stubs, "across", line("L1", "S1", 1), line("L2", "S1", 2))
    await reserve(stubs, "committed", line("L1", "S2", 1))
    await stubs.reservations.Commit(pb.CommitRequest(reservation_id="committed"))
    await reserve(stubs, "released", line("L2", "S1", 1))
    await stubs.reservations.Release(pb.ReleaseRequest(reservation_id="released"))
    await reserve(stubs, "lapsing", line("L2", "S2", 1), ttl=LAPSING_TTL)
    return time.time() + LAPSING_TTL


IDS = ["held", "across", "committed", "released", "lapsing"]
AT_SNAPSHOT = {
    "held": STATE.RESERVATION_STATE_HELD,
    "across": STATE.RESERVATION_STATE_HELD,
    "committed": STATE.RESERVATION_STATE_COMMITTED,
    "released": STATE.RESERVATION_STATE_RELEASED,
    "lapsing": STATE.RESERVATION_STATE_HELD,
}


def without(holds: Holds, rid: str) -> Holds:
    """The holds but one reservation (the lapsing one, which the restored server sweeps)."""
    rows = {row: r for row, r in holds.rows.items() if row != ("L2", "S2")}
    return Holds(rows, {k: v for k, v in holds.parts.items() if k != rid}, holds.by_channel)


async def test_a_state_directory_restored_from_a_snapshot_serves_as_at_the_snapshot(
    tmp_path: Path, spawn: Callable[..., ServerProcess]
) -> None:
    # given a server whose store holds stock and reservations in every state
    first_state, snapshot = tmp_path / "state", tmp_path / "backups" / "omnistock.rdb"
    first = spawn(*server_args(first_state))
    await first.start()
    async with connect(first.port) as stubs:
        lapses_at = await fill(stubs)
        assert await states(stubs, IDS) == AT_SNAPSHOT
        async with store_of(first_state) as storage:
            before = await read_holds(storage, LOCATIONS)
        assert_reserved_is_held(before)
        # when the operator takes a snapshot (with the store's admin URL, as the doc says)
        url = (first_state / "redis.url").read_text().strip()
        taken = tool("snapshot", "--redis-url", url, "--to", str(snapshot))
        saved_at = int(taken.split("saved_at ")[1].split(",")[0])
        assert saved_at + 1 < lapses_at, "the lapsing hold must be HELD in the snapshot"
        # ... and a hold is made after it, which the restore cannot bring back
        await reserve(stubs, "after-snapshot", line("L2", "S3", 1))
    await first.stop()
    shutil.rmtree(first_state)  # the store is lost

    # and restores it into a new state directory, and starts the server on it
    second_state = tmp_path / "restored"
    restored = tool("restore", "--from", str(snapshot), "--state-dir", str(second_state))
    keys, from_aof = (int(restored.split(f"{k} ")[1].split(",")[0]) for k in ("keys", "from_aof"))
    assert keys == from_aof > 0
    second = spawn(*server_args(second_state))
    await second.start()

    # then every row and reservation is as it was at the snapshot
    async with connect(second.port) as stubs, store_of(second_state) as storage:
        after = await read_holds(storage, LOCATIONS)
        assert without(after, "lapsing") == without(before, "lapsing")
        assert after.rows[("L2", "S2")].on_hand == before.rows[("L2", "S2")].on_hand
        assert await states(stubs, ["after-snapshot"]) == {"after-snapshot": None}
        assert_all_or_nothing(after, {"across": LOCATIONS})
        await assert_served_rows_match_holds(stubs, storage, LOCATIONS, SKUS)
        # and the hold that lapsed while the store was down is swept by the restored server
        await check_swept(stubs, lapses_at)
        # and the engine serves on the restored store
        await check_serves(stubs, storage)


async def check_swept(stubs: Stubs, lapses_at: float) -> None:
    async def expired() -> bool:
        got = await states(stubs, ["lapsing"])
        return got["lapsing"] == STATE.RESERVATION_STATE_EXPIRED

    assert await eventually(expired, max(0.0, lapses_at - time.time()) + 5.0)
    level = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=["S2"], location_ids=["L2"])
    )
    assert level.levels[0].reserved == 0 and level.levels[0].available == 3


async def check_serves(stubs: Stubs, storage: Storage) -> None:
    """A new hold, a commit of a restored hold, an old event still known as a duplicate."""
    await reserve(stubs, "after-restore", line("L1", "S1", 1))
    committed = await stubs.reservations.Commit(pb.CommitRequest(reservation_id="held"))
    assert committed.state == STATE.RESERVATION_STATE_COMMITTED
    again = await stubs.stock.ApplyEvents(
        pb.ApplyEventsRequest(events=[count("seed:L1:S1", "L1", "S1", 99)])
    )
    assert list(again.outcomes) == [pb.EVENT_OUTCOME_DUPLICATE]
    levels = await assert_served_rows_match_holds(stubs, storage, LOCATIONS, SKUS)
    # L1/S1: 10 counted, 2 sold ("held"), 1 held by "across", 1 by "after-restore", 1 safety
    row = levels[("L1", "S1")]
    assert (row.on_hand, row.reserved, row.safety_stock, row.available) == (8, 2, 1, 5)
    holds = await read_holds(storage, LOCATIONS)
    assert_reserved_is_held(holds)
