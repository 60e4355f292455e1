"""python -m bench <scenario> [options]: see bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench.charts import draw
from bench.runner import LoadConfig, run_load
from bench.scenarios import SCENARIOS, Stubs, make_scenario, open_channel
from bench.server import BenchServer, attach_replica
from engine.pb.omnistock.v1 import omnistock_pb2 as pb


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--target", help="host:port of a running server (default: start one)")
    p.add_argument("--mode", choices=("closed", "open"), default="closed")
    p.add_argument("--concurrency", type=int, default=64, help="closed loop: requests in flight")
    p.add_argument("--rate", type=float, default=1000.0, help="open loop: requests per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load measured")
    p.add_argument(
        "--warmup", type=float, default=0.0, help="seconds of the same load before, not measured"
    )
    p.add_argument("--requests", type=int, default=0, help="stop after this many (0: no limit)")
    p.add_argument("--processes", type=int, default=1, help="client processes")
    p.add_argument("--channels", type=int, default=4, help="gRPC connections per process")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="scenario parameter, e.g. --param stores=100",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra flag for the server bench starts, e.g. --server-arg=--appendfsync=always",
    )
    p.add_argument("--out", type=Path, default=Path("bench/out"), help="where results go")
    p.add_argument("--no-charts", action="store_true")
    p.add_argument(
        "--replica",
        action="store_true",
        help="attach a replica to the started server's store (for --durability replica)",
    )
    return p.parse_args(argv)


async def setup(target: str, config: LoadConfig) -> None:
    async with open_channel(target, 0) as channel:
        await make_scenario(config.scenario, config.params).setup(Stubs(channel))


async def check_invariants(target: str, held: dict[str, int]) -> dict[str, Any]:
    """I1 and no oversell, from outside: every row the load holds stock on must show exactly
    what the load still holds as reserved, and never more reserved than on hand."""
    rows = [tuple(key.split("\t")) for key in held]
    mismatched, oversold = [], []
    async with open_channel(target, 0) as channel:
        stubs = Stubs(channel)
        for location in sorted({loc for loc, _ in rows}):
            skus = [sku for loc, sku in rows if loc == location]
            for start in range(0, len(skus), 500):
                resp = await stubs.availability.GetAvailability(
                    pb.GetAvailabilityRequest(
                        skus=skus[start : start + 500], location_ids=[location]
                    )
                )
                for lv in resp.levels:
                    want = held.get(f"{lv.location_id}\t{lv.sku}", 0)
                    if lv.reserved != want:
                        mismatched.append((lv.location_id, lv.sku, lv.reserved, want))
                    if lv.reserved + lv.safety_stock > lv.on_hand:
                        oversold.append((lv.location_id, lv.sku, lv.reserved, lv.on_hand))
    return {
        "rows_checked": len(rows),
        "reserved_equals_held": not mismatched,
        "no_oversell": not oversold,
        "mismatched": mismatched[:10],
        "oversold": oversold[:10],
    }


def machine() -> dict[str, Any]:
    import os

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


def summary(result: dict[str, Any]) -> str:
    load, lat = result["load"], result["load"]["latency_ms"]
    inv = result["invariants"]
    return (
        f"{result['scenario']}: {load['requests']:,} requests in {load['elapsed_s']}s = "
        f"{load['throughput_rps']:,.0f}/s; latency ms p50 {lat['p50']:.2f} p90 {lat['p90']:.2f} "
        f"p99 {lat['p99']:.2f} p99.9 {lat['p99.9']:.2f}; outcomes {load['outcomes']}; "
        f"invariants {'OK' if inv.get('reserved_equals_held') and inv.get('no_oversell') else inv}"
    )


def param_value(text: str) -> int | float | str:
    """A scenario parameter as given: a whole number, a number, or else a word."""
    for kind in (int, float):
        try:
            return kind(text)  # type: ignore[no-any-return]
        except ValueError:
            pass
    return text


def main(argv: list[str]) -> int:
    args = parse(argv)
    params = {k: param_value(v) for k, v in (item.split("=", 1) for item in args.param)}
    server = None if args.target else BenchServer(args.server_arg)
    replica = None
    if server:
        server.start()
        replica = attach_replica(server) if args.replica else None
    target = args.target or server.target  # type: ignore[union-attr]
    try:
        config = LoadConfig(
            scenario=args.scenario,
            target=target,
            mode=args.mode,
            concurrency=args.concurrency,
            rate=args.rate,
            duration=args.duration,
            warmup=args.warmup,
            requests=args.requests,
            processes=args.processes,
            channels=args.channels,
            params=params,
        )
        asyncio.run(setup(target, config))
        load = run_load(config)
        invariants = (
            asyncio.run(check_invariants(target, load["held"]))
            if server
            else {"skipped": "external server: other clients may hold stock"}
        )
    finally:
        if server:
            server.stop()
        if replica:
            replica.stop()
    load.pop("held")
    result = {
        "scenario": args.scenario,
        "command": "python -m bench " + " ".join(argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine(),
        "config": {k: v for k, v in vars(config).items() if k != "target"},
        "load": load,
        "invariants": invariants,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    charts = [] if args.no_charts else draw(result, stem)
    print(summary(result))
    print("results:", stem.with_suffix(".json"), *charts)
    ok = invariants.get("skipped") or (
        invariants["reserved_equals_held"] and invariants["no_oversell"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
