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
then the open loop at half that rate for p50 and p99 (each measured from when it was due).
With `--writes`, that share of requests are holds at a member (released or committed), so
listings meet rows changed since they were kept. With `--baseline`, the same is measured on
the same server for the same listing at one of the stores (GetAvailability, from the read
cache): the floor of a 50-sku answer over gRPC on this machine. Prints each point, writes
JSON with the command and the machine.
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
    most = run_load(_with(base, mode="closed", concurrency=args.concurrency))
    rate = most["throughput_rps"] / 2
    half = run_load(_with(base, mode="open", rate=rate))
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
    p.add_argument("--processes", type=int, default=1, help="client processes")
    p.add_argument(
        "--baseline", action="store_true", help="also the same listing at one store, same server"
    )
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    args = p.parse_args()
    print(f"GetNetworkAvailability, {LISTING} skus, channel {args.channel!r}:", flush=True)
    points = [measure(m, args) for m in args.members]
    command = (
        f"python -m bench.networks --members {' '.join(map(str, args.members))} --skus "
        f"{args.skus} --channel '{args.channel}' --writes {args.writes} --view-rows "
        f"{args.view_rows} --concurrency {args.concurrency} --duration {args.duration} "
        f"--processes {args.processes}" + (" --baseline" if args.baseline else "")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"networks-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"command": command, "machine": machine(), "points": points}))
    print("results:", path)


if __name__ == "__main__":
    main()
