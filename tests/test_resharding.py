"""Moving a location's hash slot to another node while Reserves, Commits, Releases and
reads go on there and elsewhere, on a real local cluster of its own (the session's is left
alone), the two ways an operator can:

- Valkey's atomic slot migration (`CLUSTER MIGRATESLOTS`, watched with
  `CLUSTER GETSLOTMIGRATIONS`): every call is answered as if nothing moved;
- the classic one (`CLUSTER SETSLOT IMPORTING/MIGRATING`, `MIGRATE` of the slot's keys in
  batches, `SETSLOT NODE`), as `valkey-cli --cluster reshard` does it: a hold at the moving
  location is refused (TRYAGAIN: it creates a key, the part of its reservation) until the
  slot has moved, and is retried by the engine within its deadline.

Either way, afterwards: every call that failed failed UNAVAILABLE and succeeds when retried
with the same id, every hold answered HELD is there in the state the test drove it to, and
I1 and I3 hold on every row."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.keys import Keys
from engine.store.localcluster import LocalCluster

from .cluster_helpers import local_cluster, named, on_node
from .conftest import served
from .grpc_helpers import Stubs, line, stock_up
from .invariants import HELD, assert_served_rows_match_holds, read_holds
from .processes import eventually

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
STATES = {
    pb.RESERVATION_STATE_HELD: "HELD",
    pb.RESERVATION_STATE_COMMITTED: "COMMITTED",
    pb.RESERVATION_STATE_RELEASED: "RELEASED",
}
SKUS = ("a", "b", "c")
STOCK = 1_000_000  # per row: no Reserve here falls short
DEADLINE = 5.0  # s, of every call under load
WORKERS = 8
CALLS_PER_WORKER = 400  # the most each worker makes, whatever happens
WARM_UP = 60  # calls answered before the slot starts moving
COOL_DOWN = 60  # calls answered after it has moved
MIGRATE_BATCH = 10  # keys per MIGRATE, as valkey-cli's --cluster-pipeline default


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path / "cluster") as made:
        yield made


# -- the operator -------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Operator:
    """What an operator does to the cluster by hand, on plain connections to its nodes."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.ports = [node.port for node in cluster.nodes]
        self.nodes = [aioredis.Redis(port=port, socket_timeout=5) for port in self.ports]

    async def aclose(self) -> None:
        for node in self.nodes:
            await node.aclose()

    async def node_id(self, index: int) -> str:
        return _text(await self.nodes[index].execute_command("CLUSTER", "MYID"))

    async def owner_as_seen_by(self, index: int, slot: int) -> str | None:
        """The id of the node that owns `slot` in node `index`'s map (CLUSTER SLOTS)."""
        for start, end, primary, *_ in await self.nodes[index].execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return _text(primary[2])
        return None

    async def all_say_owner(self, slot: int, node_id: str) -> bool:
        seen = [await self.owner_as_seen_by(i, slot) for i in range(len(self.nodes))]
        return seen == [node_id] * len(self.nodes)

    async def refusals(self, index: int, kind: str) -> int:
        """How many calls node `index` has refused with `kind` (TRYAGAIN, ASK, MOVED)."""
        stats = await self.nodes[index].info("errorstats")
        return int(stats.get(f"errorstat_{kind}", {}).get("count", 0))

    async def migrations(self, index: int) -> list[dict[str, str]]:
        """CLUSTER GETSLOTMIGRATIONS of node `index`: each job's fields."""
        jobs = await self.nodes[index].execute_command("CLUSTER", "GETSLOTMIGRATIONS")
        out = []
        for job in jobs:
            pairs = job.items() if isinstance(job, dict) else zip(job[::2], job[1::2], strict=True)
            out.append({_text(k): _text(v) for k, v in pairs})
        return out

    async def migrate_atomically(self, source: int, target: int, slot: int) -> str:
        """Valkey 9's atomic slot migration of one slot, from the node that owns it; returns
        the job's final state once the source reports it ended."""
        target_id = await self.node_id(target)
        await self.nodes[source].execute_command(
            "CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", slot, slot, "NODE", target_id
        )
        ranges = f"{slot}-{slot}"
        while True:
            jobs = [
                j
                for j in await self.migrations(source)
                if j["operation"] == "EXPORT" and j["slot_ranges"] == ranges
            ]
            if jobs and jobs[-1]["state"] in ("success", "failed", "cancelled"):
                return jobs[-1]["state"]
            await asyncio.sleep(0.005)

    async def migrate_classically(
        self,
        source: int,
        target: int,
        slot: int,
        when_migrating: Callable[[], Awaitable[None]],
        when_moved: Callable[[], Awaitable[None]],
    ) -> int:
        """SETSLOT IMPORTING on the target, MIGRATING on the source, MIGRATE of the slot's
        keys MIGRATE_BATCH at a time, SETSLOT NODE on the target, the source and the rest
        (valkey-cli's order). `when_migrating` is awaited once the slot is MIGRATING,
        `when_moved` once its last key has moved, both before the slot is given away.
        Returns the number of keys moved."""
        source_id, target_id = await self.node_id(source), await self.node_id(target)
        src, dst = self.nodes[source], self.nodes[target]
        await dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        await when_migrating()
        moved = 0
        while keys := await src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_BATCH):
            port = self.ports[target]
            await src.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        await when_moved()
        order = [target, source, *(i for i in range(len(self.nodes)) if i not in (source, target))]
        for index in order:
            await self.nodes[index].execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved


# -- the load -----------------------------------------------------------------------------


@dataclass
class Load:
    """WORKERS clients, each looping: a Reserve of one unit (every other one at the moving
    location), a read of every row, and every third turn a Commit or a Release of one of its
    own holds. Each call's outcome is kept; a call that failed is kept to be retried."""

    stubs: Stubs
    moving: str
    others: list[str]
    codes: Counter[tuple[str, grpc.StatusCode]] = field(default_factory=Counter)
    driven: dict[str, str] = field(default_factory=dict)  # id -> state the test drove it to
    failed: list[tuple[str, str]] = field(default_factory=list)  # (kind, id), to retry
    answered: int = 0
    at_moving_while_moving: int = 0  # calls at the moving location answered while it moved
    moving_now: bool = False
    slowest: Counter[str] = field(default_factory=Counter)  # kind -> longest call (ms)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def locations(self) -> list[str]:
        return [self.moving, *self.others]

    async def run(self) -> None:
        await asyncio.gather(*(self._worker(w) for w in range(WORKERS)))

    async def _worker(self, w: int) -> None:
        mine: list[str] = []
        for n in range(CALLS_PER_WORKER):
            if self.stop.is_set():
                return
            rid = f"w{w}-{n}"
            where = self.moving if n % 2 == 0 else self.others[(w + n) % len(self.others)]
            if await self._call("reserve", rid, where, self._reserve(rid, where)):
                mine.append(rid)
            await self._call("read", "", self.moving, self._read())
            if n % 3 == 2 and mine:
                rid = mine.pop(0)
                kind = "commit" if n % 2 else "release"
                await self._call(kind, rid, "", self.settle(kind, rid))

    async def _call(self, kind: str, rid: str, where: str, call: Awaitable[None]) -> bool:
        began = time.perf_counter()
        try:
            await call
            code = OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            self.failed.append((kind, rid))
        self.codes[(kind, code)] += 1
        took = round((time.perf_counter() - began) * 1000)
        self.slowest[kind] = max(self.slowest[kind], took)
        self.answered += 1
        if self.moving_now and where == self.moving:
            self.at_moving_while_moving += 1
        return code == OK and kind == "reserve"

    async def _reserve(self, rid: str, where: str) -> None:
        sku = SKUS[len(rid) % len(SKUS)]
        got = await self.stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id=rid, lines=[line(where, sku, 1)], ttl_seconds=600),
            timeout=DEADLINE,
        )
        assert got.reservation.state == pb.RESERVATION_STATE_HELD, got
        self.driven[rid] = "HELD"

    async def _read(self) -> None:
        await self.stubs.availability.GetAvailability(
            pb.GetAvailabilityRequest(skus=list(SKUS), location_ids=self.locations),
            timeout=DEADLINE,
        )

    async def settle(self, kind: str, rid: str) -> None:
        if kind == "commit":
            await self.stubs.reservations.Commit(
                pb.CommitRequest(reservation_id=rid), timeout=DEADLINE
            )
            self.driven[rid] = "COMMITTED"
        else:
            await self.stubs.reservations.Release(
                pb.ReleaseRequest(reservation_id=rid), timeout=DEADLINE
            )
            self.driven[rid] = "RELEASED"

    async def until_answered(self, more: int) -> None:
        """Waits until `more` further calls have been answered (or every worker is done)."""
        goal = self.answered + more
        assert await eventually(lambda: self.answered >= goal, 60.0), "the load stalled"

    async def retry_failed(self) -> list[tuple[str, str, str]]:
        """Each failed call again with its id (a client's retry), after the move: those that
        fail again, as (kind, id, why)."""
        still = []
        for kind, rid in self.failed:
            try:
                if kind == "reserve":
                    await self._reserve(rid, _at(rid, self))
                elif kind == "read":
                    await self._read()
                else:
                    await self.settle(kind, rid)
            except grpc.aio.AioRpcError as exc:
                still.append((kind, rid, f"{exc.code()}: {exc.details()}"))
        return still

    def failures(self) -> Counter[tuple[str, grpc.StatusCode]]:
        return Counter({k: n for k, n in self.codes.items() if k[1] != OK})


# -- the scene ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    moving: str  # the location whose slot moves
    slot: int
    source: int  # index of the node it moves from
    target: int
    others: list[str]  # a location on each node, the source and the target included


def scene(cluster: LocalCluster) -> Scene:
    moving = "moving"
    size = len(cluster.nodes)
    source = next(i for i in range(size) if on_node(cluster, i, Keys.due(moving)))
    target = (source + 1) % size
    slot = key_slot(Keys.due(moving).encode())

    def elsewhere_on(index: int) -> str:
        """A location on node `index`, in a slot other than the moving one."""

        def fits(name: str) -> bool:
            return on_node(cluster, index, Keys.due(name)) and key_slot(name.encode()) != slot

        return named(f"n{index}-", fits, 1)[0]

    return Scene(moving, slot, source, target, [elsewhere_on(i) for i in range(size)])


async def after_the_move(app: Any, stubs: Stubs, load: Load) -> None:
    """What must be true once the slot has moved and the load has stopped: every failed call
    succeeds when retried with its id; every hold answered HELD is in the state the test
    drove it to; I1 (as stored and as served) and I3 on every row."""
    still = await load.retry_failed()
    assert still == [], f"failed again after the move: {still}"
    ids = sorted(load.driven)
    got = await asyncio.gather(
        *(
            stubs.reservations.GetReservation(pb.GetReservationRequest(reservation_id=rid))
            for rid in ids
        )
    )
    states = {rid: STATES.get(r.state, str(r.state)) for rid, r in zip(ids, got, strict=True)}
    wrong = {rid: (load.driven[rid], states[rid]) for rid in ids if states[rid] != load.driven[rid]}
    assert wrong == {}, f"(driven, found): {wrong}"
    holds = await read_holds(app.storage, load.locations)
    for loc in load.locations:
        held_here = {rid for rid, s in load.driven.items() if s == HELD and _at(rid, load) == loc}
        assert held_here <= holds.held_ids(loc), held_here - holds.held_ids(loc)
    await assert_served_rows_match_holds(stubs, app.storage, load.locations, SKUS)
    over = [(row, s) for row, s in holds.rows.items() if s.reserved + s.safety_stock > s.on_hand]
    assert over == [], f"I3 broken: {over}"


def _at(rid: str, load: Load) -> str:
    w, n = (int(p) for p in rid[1:].split("-"))
    return load.moving if n % 2 == 0 else load.others[(w + n) % len(load.others)]


def report(how: str, load: Load, seconds: float, **more: object) -> None:
    answered = sum(load.codes.values())
    print(
        f"\n{how}: moved in {seconds:.3f}s; {answered} calls answered, "
        f"{load.at_moving_while_moving} at the moving location while it moved; "
        f"failures {dict(load.failures())}; slowest call (ms) {dict(load.slowest)}; {more}"
    )


async def _start(stubs: Stubs, where: Scene) -> None:
    locations = [where.moving, *where.others]
    await stock_up(stubs, {(loc, sku): STOCK for loc in locations for sku in SKUS})


# -- the tests ----------------------------------------------------------------------------


async def test_an_atomic_slot_migration_under_load_fails_no_call(cluster: LocalCluster) -> None:
    """Given Reserves, Commits, Releases and reads at a location and at one on each node,
    when Valkey's atomic slot migration moves that location's slot to another node, then
    every call is answered OK, the slot is the target's in every node's map, nothing held
    is lost and I1, I3 hold."""
    where = scene(cluster)
    operator = Operator(cluster)
    try:
        async with served(cluster.url) as (app, stubs):
            await _start(stubs, where)
            load = Load(stubs, where.moving, where.others)
            running = asyncio.ensure_future(load.run())
            await load.until_answered(WARM_UP)
            load.moving_now, began = True, time.perf_counter()
            state = await operator.migrate_atomically(where.source, where.target, where.slot)
            seconds, load.moving_now = time.perf_counter() - began, False
            await load.until_answered(COOL_DOWN)
            load.stop.set()
            await running
            target_id = await operator.node_id(where.target)
            agreed = await eventually(lambda: operator.all_say_owner(where.slot, target_id), 10)
            report("atomic", load, seconds, job=state)

            assert state == "success"
            assert agreed, "the nodes do not all give the slot to the target"
            assert load.at_moving_while_moving > 0  # the load did meet the migration
            assert load.failures() == Counter()
            await after_the_move(app, stubs, load)
    finally:
        await operator.aclose()


async def test_a_classic_slot_migration_under_load_fails_only_unavailable_and_loses_nothing(
    cluster: LocalCluster,
) -> None:
    """Given the same load, when an operator moves the slot the classic way (the slot
    MIGRATING while its keys move in batches, then given to the target), then every call
    the engine could not place within its deadline is answered UNAVAILABLE, never
    INTERNAL/UNKNOWN; retried after the move with the same id each succeeds; nothing held is
    lost and I1, I3 hold. (How many failed is printed: with the engine's retries, none
    while the move is shorter than a call's deadline.)"""
    where = scene(cluster)
    operator = Operator(cluster)
    try:
        async with served(cluster.url) as (app, stubs):
            await _start(stubs, where)
            load = Load(stubs, where.moving, where.others)
            running = asyncio.ensure_future(load.run())
            await load.until_answered(WARM_UP)
            seen: dict[str, int] = {}

            async def refused(index: int, kind: str) -> None:
                """Waits until node `index` has refused one more call with `kind`: the load
                has met this stage of the move."""
                before = await operator.refusals(index, kind)
                grew = await eventually(lambda: _more(operator.refusals(index, kind), before), 10.0)
                assert grew, f"no {kind} from node {index}: the load missed this stage"
                seen[f"{kind}@{index}"] = await operator.refusals(index, kind)

            load.moving_now, began = True, time.perf_counter()
            moved = await operator.migrate_classically(
                where.source,
                where.target,
                where.slot,
                when_migrating=lambda: refused(where.source, "TRYAGAIN"),
                when_moved=lambda: refused(where.source, "ASK"),
            )
            seconds, load.moving_now = time.perf_counter() - began, False
            await load.until_answered(COOL_DOWN)
            load.stop.set()
            await running
            target_id = await operator.node_id(where.target)
            agreed = await eventually(lambda: operator.all_say_owner(where.slot, target_id), 10)
            report("classic", load, seconds, keys_moved=moved, refusals=seen)

            assert agreed, "the nodes do not all give the slot to the target"
            assert {code for _, code in load.failures()} <= {UNAVAILABLE}, load.failures()
            await after_the_move(app, stubs, load)
    finally:
        await operator.aclose()


async def _more(count: Awaitable[int], than: int) -> bool:
    return await count > than


async def test_during_a_classic_migration_a_call_whose_keys_have_moved_is_served_by_the_target(
    cluster: LocalCluster,
) -> None:
    """Given a classic migration paused with every key of the slot on the target and the
    slot not yet given to it (between the last MIGRATE and SETSLOT NODE, where an
    interrupted `valkey-cli --cluster reshard` leaves it), when reads and a Reserve come for
    the moving location, then the reads are answered by the target (ASK: ASKING and the
    command there), at once and within any deadline, never INTERNAL; the Reserve, which
    creates a key there, is answered UNAVAILABLE (TRYAGAIN until the slot is the target's)
    and changes nothing; once the slot is given, its retry is HELD."""
    where = scene(cluster)
    operator = Operator(cluster)
    try:
        async with served(cluster.url) as (_, stubs):
            await _start(stubs, where)
            first = pb.ReserveRequest(
                reservation_id="before", lines=[line(where.moving, "a", 2)], ttl_seconds=600
            )
            await stubs.reservations.Reserve(first, timeout=DEADLINE)
            read = pb.GetAvailabilityRequest(skus=["a"], location_ids=[where.moving])
            late = pb.ReserveRequest(
                reservation_id="during", lines=[line(where.moving, "a", 3)], ttl_seconds=600
            )
            seen: dict[str, Any] = {}

            async def nothing() -> None:
                pass

            async def paused() -> None:
                for deadline in (2.0, 8.0):  # within, then past, the engine's retry time
                    began = time.perf_counter()
                    try:
                        got = await stubs.availability.GetAvailability(read, timeout=deadline)
                        seen[f"read within {deadline}s"] = (OK, got.levels[0].reserved)
                    except grpc.aio.AioRpcError as exc:
                        seen[f"read within {deadline}s"] = (exc.code(), exc.details())
                    seen[f"read within {deadline}s took"] = round(time.perf_counter() - began, 3)
                try:
                    state = await stubs.reservations.GetReservation(
                        pb.GetReservationRequest(reservation_id="before"), timeout=2.0
                    )
                    seen["state"] = STATES.get(state.state)
                except grpc.aio.AioRpcError as exc:
                    seen["state"] = exc.code()
                try:
                    await stubs.reservations.Reserve(late, timeout=1.0)
                    seen["reserve"] = OK
                except grpc.aio.AioRpcError as exc:
                    seen["reserve"] = exc.code()

            await operator.migrate_classically(
                where.source, where.target, where.slot, nothing, paused
            )
            print(f"\npaused classic migration: {seen}")
            assert (
                seen["read within 2.0s"],
                seen["read within 8.0s"],
                seen["state"],
                seen["reserve"],
            ) == ((OK, 2), (OK, 2), "HELD", UNAVAILABLE), seen
            target_id = await operator.node_id(where.target)
            assert await eventually(lambda: operator.all_say_owner(where.slot, target_id), 10)
            got = await stubs.reservations.Reserve(late, timeout=DEADLINE)
            assert got.reservation.state == pb.RESERVATION_STATE_HELD
            after = await stubs.availability.GetAvailability(read, timeout=DEADLINE)
            assert after.levels[0].reserved == 5
    finally:
        await operator.aclose()
