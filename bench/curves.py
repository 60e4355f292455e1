"""python -m bench.curves: scaling curves, one scenario measured at several levels.

    python -m bench.curves concurrency --scenario pos --levels 1 4 16 64 256
    python -m bench.curves rows --scenario storefront --levels 10000 100000 1000000

`concurrency` runs the closed loop at each level against one server; `rows` starts a fresh
server per level, seeded with that many stock rows (stores x 2,000 skus). Each point is a
full bench run (throughput, p50, p99, invariant check); the curves go to one PNG and JSON.
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


def run(axis: str, scenario: str, levels: list[int], duration: float) -> list[dict[str, Any]]:
    points = []
    server: BenchServer | None = None
    for level in levels:
        params = {"stores": max(1, level // SKUS), "skus": SKUS} if axis == "rows" else {}
        if server is None or axis == "rows":
            held: Counter[str] = Counter()
            server = BenchServer()
            server.start()
            base = LoadConfig(scenario=scenario, target=server.target, params=params)
            started = time.perf_counter()
            asyncio.run(setup(server.target, base))
            print(f"  seeded in {time.perf_counter() - started:.1f}s", flush=True)
        concurrency = level if axis == "concurrency" else 32
        cfg = LoadConfig(scenario=scenario, target=server.target, concurrency=concurrency,
                         duration=duration, params=params)  # fmt: skip
        try:
            points.append(point(server, cfg, level, held))
        finally:
            if axis == "rows":
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
    p.add_argument("axis", choices=("concurrency", "rows"))
    p.add_argument("--scenario", default="pos")
    p.add_argument("--levels", type=int, nargs="+", required=True)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    args = p.parse_args()
    print(f"{args.scenario} against {args.axis}:", flush=True)
    points = run(args.axis, args.scenario, args.levels, args.duration)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"curve-{args.scenario}-{args.axis}-{time.strftime('%Y%m%d-%H%M%S')}"
    draw(args.axis, args.scenario, points, stem.with_suffix(".png"))
    levels = " ".join(map(str, args.levels))
    command = f"python -m bench.curves {args.axis} --scenario {args.scenario} --levels {levels}"
    command += f" --duration {args.duration}"
    record = {"command": command, "machine": machine(), "points": points}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print("results:", stem.with_suffix(".json"), stem.with_suffix(".png"))


if __name__ == "__main__":
    main()
