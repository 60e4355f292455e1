"""python -m bench.curves: scaling curves, one scenario measured at several levels.

    python -m bench.curves concurrency --scenario pos --levels 1 4 16 64 256
    python -m bench.curves rows --scenario storefront --levels 10000 100000 1000000
    python -m bench.curves stores --scenario nearby --levels 100 1000 10000 --param basket=5

`concurrency` runs the closed loop at each level against one server; `rows` starts a fresh
server per level, seeded with that many stock rows (stores x 2,000 skus); `stores` starts a
fresh server per level with that many stores (the scenario's `stores` parameter). Each point
is a full bench run (throughput, p50, p99, invariant check); the curves go to one PNG and
JSON. `--param` passes further scenario parameters, `--concurrency` the in-flight requests
of the rows and stores curves (default 32).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

from bench.__main__ import check_invariants, machine, setup
from bench.runner import LoadConfig, run_load
from bench.server import BenchServer

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SKUS = 2000


def point(server: BenchServer, cfg: LoadConfig, level: int, held: Counter[str]) -> dict[str, Any]:
    """One run; `held` carries what earlier runs on the same server still hold."""
    load = run_load(cfg)
    held.update(load.pop("held"))
    inv = asyncio.run(check_invariants(server.target, dict(held)))
    lat = load["latency_ms"]
    print(
        f"  {level:>9,}: {load['throughput_rps']:>9,.0f}/s  p50 {lat['p50']:.2f} ms  "
        f"p99 {lat['p99']:.2f} ms  invariants {'OK' if inv['reserved_equals_held'] else inv}"
    )
    return {"level": level, "throughput_rps": load["throughput_rps"], "p50_ms": lat["p50"],
            "p99_ms": lat["p99"], "errors": load["errors"], "invariants": inv}  # fmt: skip


def run(
    axis: str,
    scenario: str,
    levels: list[int],
    duration: float,
    extra: dict[str, int],
    in_flight: int,
) -> list[dict[str, Any]]:
    points = []
    server: BenchServer | None = None
    fresh = axis in ("rows", "stores")
    for level in levels:
        params: dict[str, Any] = dict(extra)
        if axis == "rows":
            params |= {"stores": max(1, level // SKUS), "skus": SKUS}
        elif axis == "stores":
            params["stores"] = level
        if server is None or fresh:
            held: Counter[str] = Counter()
            server = BenchServer()
            server.start()
            base = LoadConfig(scenario=scenario, target=server.target, params=params)
            started = time.perf_counter()
            asyncio.run(setup(server.target, base))
            print(f"  seeded in {time.perf_counter() - started:.1f}s", flush=True)
        concurrency = level if axis == "concurrency" else in_flight
        cfg = LoadConfig(scenario=scenario, target=server.target, concurrency=concurrency,
                         duration=duration, params=params)  # fmt: skip
        try:
            points.append(point(server, cfg, level, held))
        finally:
            if fresh:
                server.stop()
    if server is not None:
        server.stop()
    return points


def draw(axis: str, scenario: str, points: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = [p["level"] for p in points]
    ax.plot(xs, [p["p50_ms"] for p in points], marker="o", label="p50")
    ax.plot(xs, [p["p99_ms"] for p in points], marker="o", label="p99")
    ax.set(xscale="log", xlabel=axis, ylabel="latency (ms)", title=f"{scenario} against {axis}")
    ax2 = ax.twinx()
    ax2.plot(xs, [p["throughput_rps"] for p in points], marker="s", color="grey", label="req/s")
    ax2.set_ylabel("requests per second")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.curves", description=__doc__)
    p.add_argument("axis", choices=("concurrency", "rows", "stores"))
    p.add_argument("--scenario", default="pos")
    p.add_argument("--levels", type=int, nargs="+", required=True)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32, help="rows/stores: in flight")
    p.add_argument("--param", action="append", default=[], metavar="NAME=INT")
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    args = p.parse_args()
    print(f"{args.scenario} against {args.axis}:", flush=True)
    extra = {k: int(v) for k, v in (item.split("=", 1) for item in args.param)}
    points = run(args.axis, args.scenario, args.levels, args.duration, extra, args.concurrency)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"curve-{args.scenario}-{args.axis}-{time.strftime('%Y%m%d-%H%M%S')}"
    draw(args.axis, args.scenario, points, stem.with_suffix(".png"))
    levels = " ".join(map(str, args.levels))
    command = f"python -m bench.curves {args.axis} --scenario {args.scenario} --levels {levels}"
    command += f" --duration {args.duration} --concurrency {args.concurrency}"
    command += "".join(f" --param {item}" for item in args.param)
    record = {"command": command, "machine": machine(), "points": points}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print("results:", stem.with_suffix(".json"), stem.with_suffix(".png"))


if __name__ == "__main__":
    main()
