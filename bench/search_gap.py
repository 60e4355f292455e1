"""`python -m bench.search_gap`: what the optimiser's bounded search gives up, measured.

    python -m bench.search_gap --orders 300 --candidates 40 --lines 6 --cells 100000

engine.domain.sourcing scores every set of candidates while the sets of a size fit its budget
(SEARCH_CELLS numbers scored); past it, sets of that size are drawn from a pool of the best
candidates per line and overall, and the plan says exact=False. Orders in the demo bench
never reach the budget, so here the budget is set low (`--cells`) on orders built to need
it: many candidates, each with a few of the lines, lines that may split, up to 4 shipments.
Each order is planned twice: with the low budget, and with one large enough to be exact
(`--exact-cells`). Prints how often the bounded plan was inexact, its cost and units
filled against the exact plan (mean and worst), and the time of each.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.__main__ import machine
from engine.domain import sourcing
from engine.domain.model import BasketLine, Location, LocationType
from engine.domain.sourcing import Candidate, Constraints, CostModel, Plan, plan_order


def instance(rng: random.Random, n: int, width: int) -> tuple[list[BasketLine], list[Candidate]]:
    lines = [BasketLine(f"k{j}", rng.choice([1, 1, 2, 3])) for j in range(width)]
    kinds = [LocationType.STORE] * 8 + [LocationType.DARK_STORE, LocationType.DC]
    candidates = [
        Candidate(
            Location(f"l{i:03d}", f"l{i}", rng.choice(kinds), 0.0, 0.0, priority=rng.randint(0, 2)),
            rng.uniform(1, 600),
            tuple(rng.choice([0] * 7 + [1, 2, 4]) for _ in range(width)),
        )
        for i in range(n)
    ]
    candidates.sort(key=lambda c: (c.distance_km, c.location.id))
    return lines, candidates


def timed(cells: int, *args: Any) -> tuple[Plan, float]:
    sourcing.SEARCH_CELLS = cells
    sourcing._combinations.cache_clear()  # each side pays for its own index arrays
    t = time.perf_counter()
    plan = plan_order(*args)
    return plan, (time.perf_counter() - t) * 1000


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.search_gap", description=__doc__)
    p.add_argument("--orders", type=int, default=300)
    p.add_argument("--candidates", type=int, default=40)
    p.add_argument("--lines", type=int, default=6)
    p.add_argument("--max-shipments", type=int, default=4)
    p.add_argument("--cells", type=int, default=100_000, help="the bounded search's budget")
    p.add_argument("--exact-cells", type=int, default=50_000_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    args = p.parse_args()
    rng, rules, model = random.Random(args.seed), Constraints(args.max_shipments, True), CostModel()
    default = sourcing.SEARCH_CELLS
    ratios, missed, inexact, t_bounded, t_exact = [], [], 0, [], []
    try:
        for n in range(args.orders):
            lines, candidates = instance(rng, args.candidates, args.lines)
            bounded, tb = timed(args.cells, lines, candidates, model, rules)
            exact, te = timed(args.exact_cells, lines, candidates, model, rules)
            assert exact.exact, "raise --exact-cells: the reference must be exact"
            inexact += not bounded.exact
            missed.append(bounded.units_unfilled - exact.units_unfilled)
            if bounded.units_unfilled == exact.units_unfilled and exact.cost > 0:
                ratios.append(bounded.cost / exact.cost)
            t_bounded.append(tb)
            t_exact.append(te)
            print(f"\r{n + 1:,}/{args.orders:,} orders", end="", flush=True)
    finally:
        sourcing.SEARCH_CELLS = default
    r = np.array(ratios)
    result = {
        "orders": args.orders,
        "bounded_inexact_share": inexact / args.orders,
        "same_units_filled_share": sum(m == 0 for m in missed) / args.orders,
        "units_filled_worse_orders": sum(m > 0 for m in missed),
        "cost_ratio_mean": float(r.mean()),
        "cost_ratio_max": float(r.max()),
        "cost_equal_share": float(np.mean(r < 1 + 1e-9)),
        "bounded_ms": {"p50": float(np.percentile(t_bounded, 50)),
                       "p99": float(np.percentile(t_bounded, 99))},
        "exact_ms": {"p50": float(np.percentile(t_exact, 50)),
                     "p99": float(np.percentile(t_exact, 99))},
    }  # fmt: skip
    print(
        f"\nbounded search ({args.cells:,} cells) inexact on {result['bounded_inexact_share']:.0%}"
        f" of orders; same units filled on {result['same_units_filled_share']:.1%}; cost / "
        f"exact: mean {result['cost_ratio_mean']:.4f}, max {result['cost_ratio_max']:.4f}, "
        f"equal on {result['cost_equal_share']:.1%}; p50/p99 {result['bounded_ms']['p50']:.1f}/"
        f"{result['bounded_ms']['p99']:.1f} ms against exact {result['exact_ms']['p50']:.1f}/"
        f"{result['exact_ms']['p99']:.1f} ms"
    )
    command = (
        f"python -m bench.search_gap --orders {args.orders} --candidates {args.candidates} "
        f"--lines {args.lines} --max-shipments {args.max_shipments} --cells {args.cells}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"search-gap-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"command": command, "machine": machine(), **result}, indent=2))
    print("results:", path)


if __name__ == "__main__":
    main()
