"""The raw limit: Redis driven as fast as a client will drive it, with none of omnistock's
Python in the way, on a private server started like the engine's (engine.store.embedded).

Measured one after the other, each for --duration seconds:

    hold     the engine's own hold script (engine.store.storage.Script("hold")) with exactly the
             KEYS and ARGV the engine sends for a one-line, one-unit, single-location hold
             (built once by Storage.hold_call, with a fresh reservation id per call), on a
             row with stock that never runs out
    GET      a plain GET of one small string
    HINCRBY  a plain HINCRBY of one hash field

each unpipelined (--concurrency callers, one command per round trip) and pipelined
(--pipelines callers, --batch commands per round trip), from --processes client processes
(redis.asyncio through engine.store.connect.redis_client, one event loop each), started together at
every phase by a barrier. At the end the row's reserved must equal the holds answered HELD.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from hdrh.histogram import HdrHistogram

from bench.peers.common import (
    LOCATION,
    SKU,
    Peer,
    install_event_loop,
    latency_ms,
    private_redis,
    run_async,
)
from bench.runner import MAX_LATENCY_US, new_histogram
from engine.app import storage_of
from engine.domain.model import Line, fingerprint
from engine.settings import Settings
from engine.store.codecs import encode_lines
from engine.store.connect import redis_client
from engine.store.storage import Storage

OPS = ("hold", "get", "hincrby")
HUGE_STOCK = 1_000_000_000
HOLD_TTL_MS = 3_600_000
GET_KEY = "{peer}:get"
HINCRBY_KEY = "{peer}:hincrby"
_RID = "<reservation-id>"

Command = tuple[Any, ...]


@dataclass(frozen=True)
class RawConfig:
    url: str
    ops: tuple[str, ...]
    duration: float
    concurrency: int  # unpipelined callers per process
    pipelines: int  # pipelined callers per process
    batch: int  # commands per pipelined round trip
    processes: int

    def phases(self) -> list[tuple[str, bool]]:
        return [(op, pipelined) for op in self.ops for pipelined in (False, True)]


class Commands:
    """The commands of each op; hold commands are the engine's, with a fresh id each."""

    def __init__(self, storage: Storage, prefix: str) -> None:
        lines = (Line(LOCATION, SKU, 1),)
        now = int(time.time() * 1000)
        keys, args, *_ = storage.hold_call(
            _RID, fingerprint(lines), LOCATION, lines, now, now + HOLD_TTL_MS, encode_lines(lines)
        )
        self.template: list[Any] = ["EVALSHA", storage.scripts["hold"].sha, len(keys)]
        self.template += [*keys, *args]
        self.slots = [i for i, v in enumerate(self.template) if isinstance(v, str) and _RID in v]
        self.prefix = prefix
        self.n = 0

    def hold(self) -> Command:
        self.n += 1
        rid = f"{self.prefix}-{self.n}"
        cmd = list(self.template)
        for i in self.slots:
            cmd[i] = cmd[i].replace(_RID, rid)
        return tuple(cmd)

    @staticmethod
    def get() -> Command:
        return ("GET", GET_KEY)

    @staticmethod
    def hincrby() -> Command:
        return ("HINCRBY", HINCRBY_KEY, "n", 1)

    def maker(self, op: str) -> Callable[[], Command]:
        return {"hold": self.hold, "get": self.get, "hincrby": self.hincrby}[op]


def _classify(reply: Any) -> str:
    if isinstance(reply, Exception):
        return type(reply).__name__
    if isinstance(reply, list):  # a hold script's answer: HELD, SHORT, EXISTS, CONFLICT
        return str(reply[0].decode())
    return "ok"


@dataclass
class PhaseResult:
    op: str
    pipelined: bool
    outcomes: dict[str, int]
    elapsed: float
    histogram: bytes  # round-trip latency, microseconds


async def _phase(
    client: aioredis.Redis, make: Callable[[], Command], cfg: RawConfig, op: str, pipelined: bool
) -> PhaseResult:
    hist, tally = new_histogram(), Counter[str]()
    deadline = time.perf_counter() + cfg.duration
    redis: Any = client  # redis-py leaves execute_command untyped

    def record(start: float) -> None:
        micros = int((time.perf_counter() - start) * 1e6)
        hist.record_value(max(1, min(micros, MAX_LATENCY_US)))

    async def single() -> None:
        while time.perf_counter() < deadline:
            cmd, start = make(), time.perf_counter()
            try:
                tally[_classify(await redis.execute_command(*cmd))] += 1
            except Exception as exc:  # counted by type, like a reply that is an error
                tally[_classify(exc)] += 1
            record(start)

    async def batches() -> None:
        while time.perf_counter() < deadline:
            pipe = redis.pipeline(transaction=False)
            for _ in range(cfg.batch):
                pipe.execute_command(*make())
            start = time.perf_counter()
            for reply in await pipe.execute(raise_on_error=False):
                tally[_classify(reply)] += 1
            record(start)

    t0 = time.perf_counter()
    callers = (
        [batches() for _ in range(cfg.pipelines)]
        if pipelined
        else [single() for _ in range(cfg.concurrency)]
    )
    await asyncio.gather(*callers)
    return PhaseResult(op, pipelined, dict(tally), time.perf_counter() - t0, hist.encode())


async def _work(cfg: RawConfig, index: int, barrier: Any) -> list[PhaseResult]:
    settings = Settings()
    client = redis_client(cfg.url, 5.0)
    storage = storage_of(client, settings)
    commands = Commands(storage, f"raw-{uuid.uuid4().hex[:8]}-{index}")
    out = []
    try:
        # open every connection the callers will use before the clock starts
        await asyncio.gather(*(client.ping() for _ in range(max(cfg.concurrency, cfg.pipelines))))
        for op, pipelined in cfg.phases():
            await asyncio.to_thread(barrier.wait)
            out.append(await _phase(client, commands.maker(op), cfg, op, pipelined))
    finally:
        await client.aclose()
    return out


def _worker(cfg: RawConfig, index: int, barrier: Any, results: Any) -> None:
    install_event_loop()
    phases = asyncio.run(_work(cfg, index, barrier))
    results.put((index, [asdict(p) for p in phases]))


def _drive(cfg: RawConfig, interrupted: threading.Event) -> list[list[PhaseResult]]:
    """Runs the client processes to the end; answers each one's phases."""
    spawn = mp.get_context("spawn")
    barrier, results = spawn.Barrier(cfg.processes), spawn.Queue()
    workers = [
        spawn.Process(target=_worker, args=(cfg, i, barrier, results)) for i in range(cfg.processes)
    ]
    for w in workers:
        w.start()
    collected: dict[int, list[PhaseResult]] = {}
    try:
        while len(collected) < len(workers):
            try:
                index, phases = results.get(timeout=0.5)
                collected[index] = [PhaseResult(**p) for p in phases]
            except queue.Empty:
                if interrupted.is_set():
                    raise RuntimeError("interrupted") from None
                if any(w.exitcode not in (None, 0) for w in workers):
                    raise RuntimeError("a client process failed; see its traceback above") from None
    finally:
        for w in workers:
            if interrupted.is_set():
                w.terminate()
            w.join(5)
            if w.is_alive():
                w.terminate()
    return [collected[i] for i in sorted(collected)]


def _merge(per_process: list[list[PhaseResult]], cfg: RawConfig) -> list[dict[str, Any]]:
    merged = []
    for parts in zip(*per_process, strict=True):
        hist, outcomes = new_histogram(), Counter[str]()
        for part in parts:
            hist.add(HdrHistogram.decode(part.histogram))
            outcomes.update(part.outcomes)
        elapsed = max(p.elapsed for p in parts)
        ops = sum(outcomes.values())
        good = outcomes["HELD"] if parts[0].op == "hold" else outcomes["ok"]
        pipelined = parts[0].pipelined
        merged.append(
            {
                "op": parts[0].op,
                "pipelined": pipelined,
                "callers": cfg.processes * (cfg.pipelines if pipelined else cfg.concurrency),
                "batch": cfg.batch if pipelined else 1,
                "ops": ops,
                "elapsed_s": round(elapsed, 3),
                "ops_per_s": round(ops / elapsed, 1) if elapsed else 0.0,
                "errors": ops - good,
                "outcomes": dict(outcomes),
                "round_trip_latency_ms": latency_ms(hist),
            }
        )
    return merged


async def _raw(args: argparse.Namespace) -> dict[str, Any]:
    ops = tuple(op.strip().lower() for op in args.ops.split(","))
    unknown = set(ops) - set(OPS)
    if unknown:
        raise SystemExit(f"unknown op(s) {sorted(unknown)}; choose from {', '.join(OPS)}")
    async with private_redis(args.appendfsync) as redis:
        await redis.seed(HUGE_STOCK)
        await redis.client.set(GET_KEY, "42")
        cfg = RawConfig(
            redis.server.url,
            ops,
            args.duration,
            args.concurrency,
            args.pipelines,
            args.batch,
            args.processes,
        )
        interrupted = threading.Event()
        driving = asyncio.ensure_future(asyncio.to_thread(_drive, cfg, interrupted))
        try:
            per_process = await asyncio.shield(driving)
        except asyncio.CancelledError:
            interrupted.set()  # the thread stops its client processes before the server stops
            with contextlib.suppress(Exception):
                await driving
            raise
        phases = _merge(per_process, cfg)
        row = await redis.hot_row()
        hincrby_total = int(await redis.client.hget(HINCRBY_KEY, "n") or 0)
        info = await redis.client.info("server")
    store = redis.describe() | {"version": info.get("valkey_version") or info.get("redis_version")}
    held = sum(p["outcomes"].get("HELD", 0) for p in phases if p["op"] == "hold")
    hincrby_ok = sum(p["outcomes"].get("ok", 0) for p in phases if p["op"] == "hincrby")
    check = {
        "row_reserved": row.reserved,
        "holds_held": held,
        "reserved_equals_held": row.reserved == held,
        "hincrby_value": hincrby_total,
        "hincrby_equals_calls": hincrby_total == hincrby_ok,
    }
    return {"store": store, "phases": phases, "check": check}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=2.0, help="seconds of each measurement")
    p.add_argument("--ops", default=",".join(OPS), help=f"which of {', '.join(OPS)}")
    p.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="unpipelined callers per process (the engine's pool has 64 connections)",
    )
    p.add_argument("--pipelines", type=int, default=4, help="pipelined callers per process")
    p.add_argument("--batch", type=int, default=100, help="commands per pipelined round trip")
    p.add_argument("--processes", type=int, default=1, help="client processes")
    p.add_argument(
        "--appendfsync",
        choices=("everysec", "always"),
        default="everysec",
        help="AOF fsync of the embedded server (the engine's default: everysec)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    return run_async(_raw(args))


def summary(result: dict[str, Any]) -> str:
    rates = [
        f"{p['op']} {'pipelined' if p['pipelined'] else 'unpipelined'} {p['ops_per_s']:,.0f}/s"
        + (f" ({p['errors']} errors)" if p["errors"] else "")
        for p in result["phases"]
    ]
    check = result["check"]
    verdict = "OK" if check["reserved_equals_held"] and check["hincrby_equals_calls"] else check
    return f"raw-redis ({result['store']['server']}): " + "; ".join(rates) + f"; check {verdict}"


def ok(result: dict[str, Any]) -> bool:
    check = result["check"]
    return bool(check["reserved_equals_held"] and check["hincrby_equals_calls"])


PEERS = [
    Peer(
        "raw-redis",
        "the engine's hold script, GET and HINCRBY straight at a private Redis: the raw limit",
        add_arguments,
        run,
        summary,
        ok,
    )
]
