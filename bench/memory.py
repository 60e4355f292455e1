"""python -m bench.memory: bytes per stock row in Redis at realistic sizes.

Loads rows the way stock enters omnistock (COUNT events through the storage layer) into a
private embedded server with the engine's defaults, then measures every stock bucket key
with MEMORY USAGE (key, value and Redis' per-key overhead) and, apart, the event ids the
dedupe window keeps. Also reports INFO used_memory before and after.

With --reservations N, then makes N one-line reservations through the Reservations use case
(spread over the locations, with the engine's default 72 h retention) and measures what one
costs while HELD (its part, its directory entry, its place in the expiry index) and once
COMMITTED (the part and directory entry kept for the retention, the commit's entry in the
row's change log), each by MEMORY USAGE of those keys and by INFO used_memory.

With --numbered N, then sends N stock DELTAs twice over, on a store of its own: once told
apart by event id (the dedupe window remembers each id), once numbered by their source
(tills, --tills a location), one in every 100 arriving after the next one; and measures
what each way keeps: the ids ({L}:e) against the watermarks ({L}:q) and open gaps ({L}:g:*).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.__main__ import machine
from engine.domain.clock import SystemClock
from engine.domain.model import EventKind, Line, Location, LocationType, StockEvent
from engine.metrics import Metrics
from engine.store.connect import redis_client
from engine.store.embedded import EmbeddedRedis
from engine.store.storage import Storage
from engine.usecases.locations import LocationRegistry
from engine.usecases.parts import Timing
from engine.usecases.reservations import Reservations

HOUR_MS = 3_600_000
RETENTION_MS = 72 * HOUR_MS  # the engine's default --retention-hours


async def _sum_usage(client: Any, pattern: str) -> tuple[int, int]:
    """MEMORY USAGE summed over every key matching `pattern` (and how many), 1,000 a trip."""
    total = keys = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) == 1000:
            total, keys = total + await _usage(client, batch), keys + len(batch)
            batch = []
    return total + await _usage(client, batch), keys + len(batch)


async def _usage(client: Any, keys: list[bytes]) -> int:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(n or 0 for n in await pipe.execute()) if keys else 0


async def _used(client: Any) -> int:
    return int((await client.info("memory"))["used_memory"])


# The kinds of key a reservation adds to, by pattern (engine/store/keys.py).
RESERVATION_KEYS = {
    "part": "*:r:*",  # {L}:r:<id>
    "directory": "res:*",  # res:{<id>}
    "expiry_index": "*}:x",  # {L}:x
    "change_log": "*:d:*",  # {L}:d:<b>
}


async def _usage_by_kind(client: Any) -> dict[str, int]:
    return {
        kind: (await _sum_usage(client, pattern))[0] for kind, pattern in RESERVATION_KEYS.items()
    }


async def measure_reservations(
    client: Any, storage: Storage, n: int, locations: int, skus_per_location: int
) -> dict[str, Any]:
    """N one-line reservations of 1 unit, held and then committed: bytes per reservation."""
    registry = LocationRegistry(storage)
    await registry.upsert([_location(loc) for loc in range(locations)])
    timing = Timing(default_ttl_ms=900_000, saga_timeout_ms=10_000)
    reservations = Reservations(storage, registry, SystemClock(), timing, Metrics())
    ids = [f"order-{i:08d}" for i in range(n)]
    base, used = await _usage_by_kind(client), await _used(client)
    await _each(
        ids, lambda i, rid: reservations.reserve(rid, [_line(i, locations, skus_per_location)])
    )
    held, used_held = await _usage_by_kind(client), await _used(client)
    await _each(ids, lambda _, rid: reservations.commit(rid))
    committed, used_committed = await _usage_by_kind(client), await _used(client)
    return {
        "reservations": n,
        "held_bytes_each": {k: round((held[k] - base[k]) / n, 1) for k in base},
        "held_used_memory_each": round((used_held - used) / n, 1),
        "committed_bytes_each": {k: round((committed[k] - base[k]) / n, 1) for k in base},
        "committed_used_memory_each": round((used_committed - used) / n, 1),
    }


def _location(loc: int) -> Location:
    return Location(f"store-{loc:05d}", f"Store {loc}", LocationType.STORE, 51.5, -0.12)


def _line(i: int, locations: int, skus_per_location: int) -> Line:
    """A row of its own, with stock: the loader counts sku j as j % 97 units, so the m-th
    row of a location with stock is sku m + m // 96 + 1."""
    m = i // locations
    j = m + m // 96 + 1
    if j >= skus_per_location:
        raise SystemExit(f"--reservations: more than the {locations * m} rows with stock")
    return Line(f"store-{i % locations:05d}", f"SKU-{j:07d}", 1)


async def _held(reservations: Reservations, rid: str, line: Line) -> None:
    if not (await reservations.reserve(rid, [line])).ok:
        raise RuntimeError(f"{rid} was not held: {line}")


async def _each(ids: list[str], call: Any, at_once: int = 500) -> None:
    for start in range(0, len(ids), at_once):
        chunk = range(start, min(start + at_once, len(ids)))
        await asyncio.gather(*(call(i, ids[i]) for i in chunk))


@contextlib.asynccontextmanager
async def private_store(buckets: int) -> AsyncIterator[tuple[Any, Storage]]:
    """An embedded server of its own, a client, and the storage layer on it (the event
    window long enough that no event id is pruned while measured)."""
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="omnistock-memory-")))
    server.start()
    client = redis_client(server.url, 10.0)
    try:
        storage = Storage(
            client, stock_buckets=buckets, retention_ms=RETENTION_MS, event_window_ms=10**9
        )
        await storage.load_scripts()
        yield client, storage
    finally:
        await client.aclose()
        server.stop()


async def measure(
    rows: int, skus_per_location: int, buckets: int, reservations: int = 0
) -> dict[str, Any]:
    async with private_store(buckets) as (client, storage):
        before = (await client.info("memory"))["used_memory"]
        now, started = int(time.time() * 1000), time.perf_counter()
        locations = max(1, rows // skus_per_location)
        for loc in range(locations):
            location = f"store-{loc:05d}"
            events = [
                StockEvent(f"m-{loc}-{i}", location, f"SKU-{i:07d}", EventKind.COUNT, i % 97, now)
                for i in range(skus_per_location)
            ]
            for start in range(0, len(events), 2000):
                await storage.apply_events(location, events[start : start + 2000], now)
            if loc % max(1, locations // 10) == 0:
                print(f"  {loc * skus_per_location:,} of {rows:,} rows", flush=True)
        load_s = time.perf_counter() - started
        after = (await client.info("memory"))["used_memory"]
        row_bytes, row_keys = await _sum_usage(client, "*:s:*")
        id_bytes, _ = await _sum_usage(client, "*:e")
        n = locations * skus_per_location
        held = (
            await measure_reservations(client, storage, reservations, locations, skus_per_location)
            if reservations
            else {}
        )
        return held | {
            "rows": n,
            "locations": locations,
            "skus_per_location": skus_per_location,
            "stock_buckets": buckets,
            "bucket_keys": row_keys,
            "bytes_per_row": round(row_bytes / n, 1),
            "bytes_per_event_id": round(id_bytes / n, 1),
            "used_memory_per_row_incl_event_ids": round((after - before) / n, 1),
            "load_seconds": round(load_s, 1),
        }


async def measure_numbered(events: int, locations: int, tills: int) -> dict[str, Any]:
    """The same DELTAs by event id and numbered by their till: what each keeps."""
    async with private_store(256) as (client, storage):
        now = int(time.time() * 1000)
        each = events // (locations * tills)  # events of one till at one location
        for numbered in (False, True):
            for loc in range(locations):
                location = f"{'n' if numbered else 'i'}-store-{loc:04d}"
                sent = [
                    StockEvent(
                        f"sale-{till}-{k}",
                        location,
                        f"SKU-{k % 500:05d}",
                        EventKind.DELTA,
                        -1,
                        now + k,
                        source=f"till-{till}",
                        sequence=k if numbered else 0,
                    )
                    for k in range(1, each + 1)
                    for till in range(tills)
                ]
                for k in range(0, len(sent) - 1, 100):  # one in 100 after the next
                    sent[k], sent[k + 1] = sent[k + 1], sent[k]
                for start in range(0, len(sent), 1000):
                    await storage.apply_events(location, sent[start : start + 1000], now)
        ids, _ = await _sum_usage(client, "{i-store-*}:e")
        marks, mark_keys = await _sum_usage(client, "{n-store-*}:q")
        gaps, gap_keys = await _sum_usage(client, "{n-store-*}:g:*")
        pairs = locations * tills
        return {
            "numbered_events": each * pairs,
            "locations": locations,
            "tills_per_location": tills,
            "bytes_per_event_id": round(ids / (each * pairs), 1),
            "event_id_bytes_total": ids,
            "bytes_per_till_watermark": round((marks + gaps) / pairs, 1),
            "watermark_bytes_total": marks + gaps,
            "watermark_keys": mark_keys,
            "gap_keys_left": gap_keys,
        }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    p.add_argument(
        "--rows", type=int, nargs="*", default=[100_000, 1_000_000], help="none: rows not measured"
    )
    p.add_argument("--skus-per-location", type=int, default=5000)
    p.add_argument("--buckets", type=int, default=256, help="the engine's default: 256")
    p.add_argument(
        "--reservations", type=int, default=0, help="then hold and commit this many (0: none)"
    )
    p.add_argument(
        "--numbered", type=int, default=0, help="also: this many DELTAs by id and numbered"
    )
    p.add_argument("--numbered-locations", type=int, default=20)
    p.add_argument("--tills", type=int, default=5, help="numbered sources per location")
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    args = p.parse_args()
    results = []
    if args.numbered:
        print(
            f"{args.numbered:,} DELTAs by event id, then numbered by {args.tills} tills a "
            f"location at {args.numbered_locations} locations:",
            flush=True,
        )
        got = asyncio.run(measure_numbered(args.numbered, args.numbered_locations, args.tills))
        print(
            f"  {got['bytes_per_event_id']} bytes per remembered event id "
            f"({got['event_id_bytes_total']:,} in all); {got['bytes_per_till_watermark']} bytes "
            f"per till's watermark at a location ({got['watermark_bytes_total']:,} in all, "
            f"{got['gap_keys_left']} gap keys left)"
        )
        results.append(got)
    for rows in args.rows:
        print(f"{rows:,} rows:", flush=True)
        got = asyncio.run(measure(rows, args.skus_per_location, args.buckets, args.reservations))
        print(
            f"  {got['bytes_per_row']} bytes per stock row; {got['bytes_per_event_id']} per "
            f"remembered event id; used_memory {got['used_memory_per_row_incl_event_ids']} per "
            f"row with the ids; loaded in {got['load_seconds']}s"
        )
        if args.reservations:
            print(
                f"  a reservation: HELD {got['held_used_memory_each']} bytes (used_memory), "
                f"by key {got['held_bytes_each']}; COMMITTED "
                f"{got['committed_used_memory_each']}, by key {got['committed_bytes_each']}"
            )
        results.append(got)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    command = "python -m bench.memory " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k != "out"
    )
    out.write_text(json.dumps({"command": command, "machine": machine(), "results": results}))
    print("results:", out)


if __name__ == "__main__":
    main()
