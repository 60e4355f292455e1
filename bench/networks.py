"""python -m bench.networks: GetNetworkAvailability's latency curve, a listing of 50 skus
over networks of 10, 100 and 1,000 stores, at half the most it answers a second.

    python -m bench.networks                                   # 10, 100, 1,000 members
    python -m bench.networks --members 500 --view-rows 0       # every listing read from Redis

For each size: a fresh server (`server.py`, its own embedded store, `--network-view-rows`
as given), the `networks` scenario's data (that many stores carrying 60% of a catalogue of
`--skus` skus, the web's buffer, the network of them all), one listing of every 50 skus so
that the network view holds them (a storefront's listings are few and asked again and
again; the first listing of a sku costs what `--view-rows 0` shows every time), then the
closed loop (`--concurrency` in flight, `--duration` s) for the most listings a second,
then the open loop at half that rate for p50 and p99 (each measured from when it was due),
each after `--warmup` s of the same load, not measured (a new client's connections and the
server's first answers to them: 0 measures from the first request).
With `--writes`, that share of requests are holds at a member (released or committed), so
listings meet rows changed since they were kept. With `--baseline`, the same is measured on
the same server for the same listing at one of the stores (GetAvailability, from the read
cache): the floor of a 50-sku answer over gRPC on this machine. Prints each point, writes
JSON with the command and the machine.

    python -m bench.networks --script-cost                     # Redis' time a listing

What a listing costs Redis when it reads every row, each way, on a private embedded store
(rows of 60% of 500 skus at each location, 256 buckets): the engine's read_network.lua,
ROWS_PER_CALL rows a call (what a listing of rows the view does not keep sends), and the
read-time design considered first, one script summing the figures of every member at once
(the hold's channel_available, as read_network.lua runs it) and counting those with some.
Each is timed by Redis itself (SLOWLOG: the scripts' own run, without the time to read their
arguments) and end to end by the caller, for 50 skus over `--members` locations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.__main__ import machine
from bench.runner import LoadConfig, run_load
from bench.scenarios import Stubs, open_channel
from bench.scenarios.common import sku_id
from bench.scenarios.networks import NETWORK, Networks
from bench.server import BenchServer
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

LISTING = 50


async def prepare(target: str, params: dict[str, Any], skus: int, channel: str) -> float:
    """Seeds the data; lists every 50 skus once. Answers the seconds the first listing (of
    rows never read) took."""
    async with open_channel(target, 0) as ch:
        stubs = Stubs(ch)
        await Networks(**params).setup(stubs)
        cold = 0.0
        for first in range(0, skus, LISTING):
            started = time.perf_counter()
            await stubs.availability.GetNetworkAvailability(
                pb.GetNetworkAvailabilityRequest(
                    network=NETWORK,
                    skus=[sku_id(k) for k in range(first, min(first + LISTING, skus))],
                    channel=channel,
                ),
                timeout=60,
            )
            cold = cold or time.perf_counter() - started
        return cold


def measure(members: int, args: argparse.Namespace) -> dict[str, Any]:
    """The network's listing, and (with --baseline) the same listing at one store, on one
    server, one after the other."""
    server = BenchServer(["--network-view-rows", str(args.view_rows)])
    server.start()
    params = {"members": members, "skus": args.skus, "channel": args.channel,
              "writes": args.writes}  # fmt: skip
    try:
        started = time.perf_counter()
        cold = asyncio.run(prepare(server.target, params, args.skus, args.channel))
        print(f"  {members} members: seeded and listed in {time.perf_counter() - started:.0f}s")
        point: dict[str, Any] = {"members": members, "first_listing_ms": round(cold * 1000, 1)}
        point |= at_half_rate(server.target, params, args, "network")
        if args.baseline:
            point["one_store"] = at_half_rate(server.target, params | {"read": "store"}, args, "")
    finally:
        server.stop()
    return point


def at_half_rate(
    target: str, params: dict[str, Any], args: argparse.Namespace, what: str
) -> dict[str, Any]:
    """The most requests a second (closed loop), then p50 and p99 at half that (open)."""
    base = LoadConfig(scenario="networks", target=target, params=params,
                      duration=args.duration, processes=args.processes)  # fmt: skip
    load_before = os.getloadavg()[0]
    most = run_load(_with(base, mode="closed", concurrency=args.concurrency, warmup=args.warmup))
    rate = most["throughput_rps"] / 2
    half = run_load(_with(base, mode="open", rate=rate, warmup=args.warmup))
    lat = half["latency_ms"]
    label = f"{params['members']:>6,} {what or 'one store'}"
    print(
        f"  {label}: max {most['throughput_rps']:>7,.0f}/s; at {rate:>6,.0f}/s "
        f"p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms (load average {load_before:.1f})",
        flush=True,
    )
    return {
        "max_rps": most["throughput_rps"],
        "max_p99_ms": most["latency_ms"]["p99"],
        "half_rate_rps": round(rate, 1),
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "p99_9_ms": lat["p99.9"],
        "errors": most["errors"] + half["errors"],
        "outcomes": half["outcomes"],
        # the machine's 1-minute load average before and after: a shared machine's other
        # work shows here
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "half_rate_p99_by_second_ms": [t["p99_ms"] for t in half["timeline"]],
    }


# The read-time design considered first (not the engine's): for all the members at once,
# the sum of what the channel may hold of each sku and the count of members with some.
# ARGV: channel, buffer, share, n, the n skus, then for each member its held and pools key
# indexes and the n stock key indexes.
SUMMING = """
local ch, buffer, share, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local sums, some = {}, {}
for j = 1, n do sums[j] = 0; some[j] = 0 end
local p = 5 + n
while p <= #ARGV do
  local held, pools = KEYS[tonumber(ARGV[p])], KEYS[tonumber(ARGV[p + 1])]
  for j = 1, n do
    local sku = ARGV[4 + j]
    local a = channel_available(read_row(KEYS[tonumber(ARGV[p + 1 + j])], sku), held, pools,
      sku, ch, buffer, share)
    sums[j] = sums[j] + a
    if a > 0 then some[j] = some[j] + 1 end
  end
  p = p + 2 + n
end
local out = {}
for j = 1, n do out[#out + 1] = sums[j]; out[#out + 1] = some[j] end
return out
"""


async def script_cost(members: list[int]) -> list[dict[str, Any]]:
    """Redis' time (SLOWLOG) and the caller's, a listing of 50 skus read row by row."""
    import tempfile

    from engine.store.connect import connect
    from engine.store.embedded import EmbeddedRedis
    from engine.store.storage import Storage

    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="omnistock-netcost-")))
    await asyncio.to_thread(server.start)
    points = []
    try:
        redis = await connect(server.url, 30.0)
        storage = Storage(redis, stock_buckets=256, retention_ms=1, event_window_ms=10**9)
        await storage.load_scripts()
        await redis.config_set("slowlog-log-slower-than", 0)
        await redis.config_set("slowlog-max-len", 100_000)
        placed = 0
        for size in members:
            await _seed(storage, range(placed, size))
            placed = size
            point = {"members": size, "rows": size * LISTING} | await _both_ways(storage, size)
            print(f"  {size:>5,} members: {point}", flush=True)
            points.append(point)
        await redis.aclose()
    finally:
        await asyncio.to_thread(server.stop)
    return points


async def _seed(storage: Any, members: range) -> None:
    from engine.domain.model import EventKind, StockEvent

    now = int(time.time() * 1000)
    for i in members:
        events = [
            StockEvent(f"c{k}", f"m{i}", sku_id(k), EventKind.COUNT, k % 21, now - 1)
            for k in range(500)
            if (i * 7 + k * 13) % 10 < 6
        ]
        await storage.apply_events(f"m{i}", events, now)


async def _both_ways(storage: Any, size: int) -> dict[str, Any]:
    """The read of 50 skus at `size` members by read_network.lua, and by one summing call."""
    from engine.domain.rules import NO_RULE
    from engine.store.keys import KeyList, Keys
    from engine.store.networks import MemberRead
    from engine.store.scripts import Script

    redis = storage.redis
    prelude = Script("read_rows").source.split("\n-- read_rows")[0]
    summing = await redis.script_load(prelude + SUMMING)
    skus, locations = [sku_id(k) for k in range(LISTING)], [f"m{i}" for i in range(size)]
    keys, args = KeyList(), ["web", 0, 1_000_000, LISTING, *skus]
    for loc in locations:
        args += [keys.add(Keys.channel_holds(loc)), keys.add(Keys.pools(loc))]
        args += [keys.add(storage.keys.stock(loc, sku)) for sku in skus]
    reads = [MemberRead(loc, NO_RULE, skus) for loc in locations]
    return {
        "read_network": await _timed(redis, storage.network_rows, "web", reads),
        "one summing script": await _timed(
            redis, redis.evalsha, summing, len(keys.keys), *keys.keys, *args
        ),
    }


async def _timed(redis: Any, call: Any, *args: Any) -> dict[str, float]:
    """The median of 5 calls: Redis' own time running the scripts, and the caller's."""
    walls, in_redis = [], []
    for _ in range(5):
        await redis.slowlog_reset()
        started = time.perf_counter()
        await call(*args)
        walls.append(time.perf_counter() - started)
        log = await redis.slowlog_get(100_000)
        scripts = [e["duration"] for e in log if e["command"].startswith(b"EVALSHA")]
        in_redis.append(sum(scripts) / 1000)
    return {
        "redis_ms": round(sorted(in_redis)[2], 1),
        "caller_ms": round(sorted(walls)[2] * 1e3, 1),
    }


def _with(cfg: LoadConfig, **changes: Any) -> LoadConfig:
    return LoadConfig(**(cfg.__dict__ | changes))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.networks", description=__doc__)
    p.add_argument("--members", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--skus", type=int, default=500, help="the catalogue's skus")
    p.add_argument("--channel", default="web", help="the channel listing ('' : none)")
    p.add_argument("--writes", type=float, default=0.0, help="share of requests that hold")
    p.add_argument("--view-rows", type=int, default=2_000_000, help="--network-view-rows")
    p.add_argument("--concurrency", type=int, default=16, help="closed loop: in flight")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before each, not measured")
    p.add_argument("--processes", type=int, default=1, help="client processes")
    p.add_argument(
        "--baseline", action="store_true", help="also the same listing at one store, same server"
    )
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    p.add_argument("--script-cost", action="store_true", help="Redis' time a listing, each way")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.script_cost:
        points = asyncio.run(script_cost(args.members))
        members = " ".join(map(str, args.members))
        command = f"python -m bench.networks --script-cost --members {members}"
        path = args.out / f"networks-script-cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
        record = {"command": command, "machine": machine(), "points": points}
        path.write_text(json.dumps(record))
        print("results:", path)
        return
    print(f"GetNetworkAvailability, {LISTING} skus, channel {args.channel!r}:", flush=True)
    points = [measure(m, args) for m in args.members]
    command = (
        f"python -m bench.networks --members {' '.join(map(str, args.members))} --skus "
        f"{args.skus} --channel '{args.channel}' --writes {args.writes} --view-rows "
        f"{args.view_rows} --concurrency {args.concurrency} --duration {args.duration} "
        f"--warmup {args.warmup} "
        f"--processes {args.processes}" + (" --baseline" if args.baseline else "")
    )
    path = args.out / f"networks-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"command": command, "machine": machine(), "points": points}))
    print("results:", path)


if __name__ == "__main__":
    main()
