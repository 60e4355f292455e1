"""python -m bench.sourcing: omnistock's ship-from-store plans against the rules a retailer
would otherwise use (bench/peers/routing.py), over the same orders on the demo network.

    python -m bench.sourcing --orders 10000
    python -m bench.sourcing --orders 10000 --split --seed 3

The network is the demo data set (engine.demo): its stores, dark stores and distribution
centres with their stock and daily pick capacity. Orders: 1 line most often, a geometric tail
up to 10 lines, quantities mostly 1, skus drawn by popularity (engine.demo.popularity, without
repeats in one order), shipped to a point up to 30 km from a city drawn by population. An
order's candidates are the engine's own (every active, ship-enabled location, nearest first,
engine.usecases.index) in the destination's country, with its available units of each line and the
orders it may still pick today. The country scope is how each product compared is set up:
Magento ships from the sources of the website's stock, Shopify's default routing keeps an
order within its destination market, Saleor allocates from the warehouses whose shipping
zones cover the destination country. `--cross-border` offers every location instead.

Every strategy plans the same orders in the same sequence on its own copy of the stock and
capacity, and its plans are applied as it goes (units taken leave stock, each shipment uses
one order of its location's capacity). Measured per strategy: total cost (the optimiser's
cost model for every plan), shipments per order, orders and units left unfilled, km per
shipment, orders over max_shipments, lines split over locations, and the time to compute one
plan (the call alone). The exhaustive optimum is computed beside omnistock, on the same
candidates at the same moment, for the orders small enough for it (at most
EXHAUSTIVE_LIMIT assignments), and omnistock's gap to it is reported on exactly those.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.__main__ import machine
from bench.peers.routing import EXHAUSTIVE_LIMIT, STRATEGIES, Strategy, TooLarge, exhaustive
from engine.demo import (
    CITIES,
    DC_SITES,
    demo_locations,
    demo_skus,
    demo_stock,
    offset_km,
    popularity,
)
from engine.domain.geo import HALF_CIRCUMFERENCE_KM, Fulfilment, distance_km
from engine.domain.model import BasketLine, Location
from engine.domain.sourcing import Candidate, Constraints, CostModel, Plan, plan_order
from engine.usecases.index import LocationIndex

MAX_LINES = 10
LINES_P = 0.55  # lines per order ~ geometric: 55% one line, 25% two, 11% three, ...
QTY_P = 0.8  # units per line ~ geometric: 80% one, 16% two, ...
MAX_UNITS = 6
JITTER_KM = 30.0
STRATEGY_NAMES = ("omnistock", *STRATEGIES)


@dataclass(frozen=True)
class Network:
    locations: list[Location]
    skus: list[str]
    stock: np.ndarray  # (locations, skus) available units
    capacity: list[int | None]  # orders each location may pick today
    country: list[str]  # of each location


@dataclass(frozen=True)
class Order:
    lines: tuple[BasketLine, ...]
    sku_index: tuple[int, ...]
    where: list[int]  # candidate locations (indices into Network.locations), nearest first
    km: list[float]


def build_network(seed: int, stores: int, skus: int) -> Network:
    locations = demo_locations(seed, stores)
    names = demo_skus(skus)
    row = {loc.id: i for i, loc in enumerate(locations)}
    col = {sku: i for i, sku in enumerate(names)}
    stock = np.zeros((len(locations), len(names)), dtype=np.int64)
    for location, sku, on_hand in demo_stock(locations, names, seed):
        stock[row[location], col[sku]] = on_hand
    capacity = [loc.ship_capacity for loc in locations]
    return Network(locations, names, stock, capacity, [country_of(loc) for loc in locations])


def country_of(location: Location) -> str:
    """The demo places each location at a DC site or within ~21 km of its city's centre."""
    sites = [(c.latitude, c.longitude, c.country) for c in CITIES]
    sites += [(lat, lon, country) for country, (_, lat, lon) in DC_SITES.items()]
    _, country = min(
        (distance_km(location.latitude, location.longitude, lat, lon), country)
        for lat, lon, country in sites
    )
    return country


def make_orders(network: Network, count: int, seed: int, cross_border: bool) -> list[Order]:
    """`count` orders, each with its candidates (nearest first) and their distances."""
    rng = np.random.default_rng([seed, 5])
    index = LocationIndex({loc.id: loc for loc in network.locations})
    row = {loc.id: i for i, loc in enumerate(network.locations)}
    people = np.array([c.population_k for c in CITIES], dtype=np.float64)
    orders = []
    for _ in range(count):
        lines, picked = draw_lines(rng, network.skus)
        city = CITIES[int(rng.choice(len(CITIES), p=people / people.sum()))]
        lat, lon = destination(rng, city.latitude, city.longitude)
        found = [
            (km, row[loc.id])
            for km, loc in index.within(lat, lon, HALF_CIRCUMFERENCE_KM, set(), Fulfilment.SHIP)
            if cross_border or network.country[row[loc.id]] == city.country
        ]
        orders.append(Order(lines, picked, [i for _, i in found], [km for km, _ in found]))
    return orders


def draw_lines(
    rng: np.random.Generator, skus: list[str]
) -> tuple[tuple[BasketLine, ...], tuple[int, ...]]:
    """An order's lines (distinct skus, by popularity) and the skus' indices."""
    width = min(int(rng.geometric(LINES_P)), MAX_LINES, len(skus))
    picked = rng.choice(len(skus), size=width, replace=False, p=popularity(len(skus)))
    qty = np.minimum(rng.geometric(QTY_P, size=width), MAX_UNITS)
    lines = tuple(BasketLine(skus[s], int(q)) for s, q in zip(picked, qty, strict=True))
    return lines, tuple(int(s) for s in picked)


def destination(rng: np.random.Generator, latitude: float, longitude: float) -> tuple[float, float]:
    """A point uniformly within JITTER_KM of (latitude, longitude)."""
    km, bearing = JITTER_KM * float(np.sqrt(rng.random())), float(rng.uniform(0, 2 * np.pi))
    return offset_km(latitude, longitude, km * float(np.cos(bearing)), km * float(np.sin(bearing)))


class World:
    """One strategy's copy of the stock and capacity, changed by the plans it makes."""

    def __init__(self, network: Network) -> None:
        self.locations = network.locations
        self.row = {loc.id: i for i, loc in enumerate(network.locations)}
        self.col = {sku: i for i, sku in enumerate(network.skus)}
        self.stock = network.stock.copy()
        self.capacity = list(network.capacity)

    def candidates(self, order: Order) -> list[Candidate]:
        units = self.stock[np.ix_(order.where, order.sku_index)].tolist()
        return [
            Candidate(self.locations[i], km, tuple(have), self.capacity[i])
            for i, km, have in zip(order.where, order.km, units, strict=True)
        ]

    def apply(self, plan: Plan) -> None:
        for shipment in plan.shipments:
            i = self.row[shipment.location.id]
            for line in shipment.lines:
                self.stock[i, self.col[line.sku]] -= line.qty
                if self.stock[i, self.col[line.sku]] < 0:
                    raise AssertionError(f"{shipment.location.id} oversold {line.sku}")
            left = self.capacity[i]
            if left is not None:
                if left <= 0:
                    raise AssertionError(f"{shipment.location.id} shipped beyond its capacity")
                self.capacity[i] = left - 1


@dataclass
class Tally:
    """What one strategy's plans added up to."""

    max_shipments: int
    orders: int = 0
    cost: float = 0.0
    shipments: int = 0
    km: float = 0.0
    orders_unfilled: int = 0
    units_unfilled: int = 0
    orders_over_max: int = 0
    split_lines: int = 0
    inexact: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, plan: Plan, seconds: float) -> None:
        self.orders += 1
        self.cost += plan.cost
        self.shipments += len(plan.shipments)
        self.km += sum(s.distance_km for s in plan.shipments)
        self.orders_unfilled += bool(plan.unfilled)
        self.units_unfilled += plan.units_unfilled
        self.orders_over_max += len(plan.shipments) > self.max_shipments
        shipped = Counter(ln.sku for s in plan.shipments for ln in s.lines)
        self.split_lines += sum(n > 1 for n in shipped.values())
        self.inexact += not plan.exact
        self.seconds.append(seconds)

    def figures(self) -> dict[str, Any]:
        ms = np.array(self.seconds) * 1000
        return {
            "orders": self.orders,
            "total_cost": round(self.cost, 3),
            "shipments_per_order": self.shipments / max(1, self.orders),
            "orders_unfilled": self.orders_unfilled,
            "units_unfilled": self.units_unfilled,
            "km_per_shipment": self.km / max(1, self.shipments),
            "orders_over_max_shipments": self.orders_over_max,
            "split_lines": self.split_lines,
            "inexact_plans": self.inexact,
            "latency_ms": {
                "p50": float(np.percentile(ms, 50)) if len(ms) else 0.0,
                "p99": float(np.percentile(ms, 99)) if len(ms) else 0.0,
            },
        }


@dataclass
class Gap:
    """omnistock against the exhaustive optimum, on the orders small enough for it."""

    orders: int = 0
    refused: int = 0
    equal: int = 0
    fewer_units: int = 0  # omnistock filled fewer units than the optimum (must stay 0)
    ratios: list[float] = field(default_factory=list)
    lines: Counter[int] = field(default_factory=Counter)
    tally: Tally = field(default_factory=lambda: Tally(0))

    def add(self, order: Order, plan: Plan, best: Plan) -> None:
        self.orders += 1
        self.lines[len(order.lines)] += 1
        if plan.units_unfilled > best.units_unfilled:
            self.fewer_units += 1
            return
        nothing = 1.0 if plan.cost == 0 else float("inf")  # when the optimum ships nothing
        self.ratios.append(plan.cost / best.cost if best.cost > 0 else nothing)
        self.equal += abs(plan.cost - best.cost) <= 1e-6

    def figures(self) -> dict[str, Any]:
        ratios = np.array(self.ratios or [1.0])
        return {
            "which": f"orders with at most {EXHAUSTIVE_LIMIT:,} assignments of their units "
            "to the candidates (each line: no location, or one of those able to ship it; with "
            "--split every way to spread it)",
            "orders": self.orders,
            "orders_refused": self.refused,
            "orders_by_lines": dict(sorted(self.lines.items())),
            "cost_ratio_mean": float(ratios.mean()),
            "cost_ratio_max": float(ratios.max()),
            "cost_ratio_min": float(ratios.min()),  # below 1: the "optimum" is not one
            "equal_share": self.equal / max(1, self.orders),
            "omnistock_fills_fewer_units": self.fewer_units,
            "exhaustive_latency_ms": self.tally.figures()["latency_ms"],
        }


def timed(strategy: Strategy, order: Order, cands: list[Candidate], model: CostModel,
          constraints: Constraints) -> tuple[Plan, float]:  # fmt: skip
    start = time.perf_counter()
    plan = strategy(order.lines, cands, model, constraints)
    return plan, time.perf_counter() - start


def run(
    name: str,
    network: Network,
    orders: Sequence[Order],
    model: CostModel,
    constraints: Constraints,
    gap: Gap | None = None,
) -> Tally:
    """One strategy over every order, in sequence, on its own copy of the network."""
    strategy: Strategy = plan_order if name == "omnistock" else STRATEGIES[name]
    world, tally = World(network), Tally(constraints.max_shipments)
    progress = Progress(name, len(orders))
    for n, order in enumerate(orders):
        cands = world.candidates(order)
        plan, seconds = timed(strategy, order, cands, model, constraints)
        tally.add(plan, seconds)
        if gap is not None:
            check(gap, order, cands, plan, model, constraints)
        world.apply(plan)
        progress.show(n + 1)
    progress.done()
    return tally


def check(gap: Gap, order: Order, cands: list[Candidate], plan: Plan, model: CostModel,
          constraints: Constraints) -> None:  # fmt: skip
    try:
        best, seconds = timed(exhaustive, order, cands, model, constraints)
    except TooLarge:
        gap.refused += 1
        return
    gap.tally.add(best, seconds)
    gap.add(order, plan, best)


class Progress:
    """A live line on stderr: strategy, orders planned, seconds."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total = name, total
        self.start = self.shown = time.monotonic()

    def show(self, done: int) -> None:
        now = time.monotonic()
        if now - self.shown >= 0.2 or done == self.total:
            self.shown = now
            print(
                f"\r{self.name:>14}: {done:>7,}/{self.total:,} orders  {now - self.start:6.1f} s",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def done(self) -> None:
        print(file=sys.stderr, flush=True)


def table(results: dict[str, dict[str, Any]], gap: dict[str, Any], max_shipments: int) -> str:
    head = (
        f"{'strategy':<14}{'total cost':>12}{'ship/order':>11}{'unfilled':>9}{'units':>7}"
        f"{'km/ship':>9}{f'>{max_shipments} ship':>9}{'split':>7}{'p50 ms':>9}{'p99 ms':>9}"
    )
    rows = [head]
    for name, r in results.items():
        rows.append(
            f"{name:<14}{r['total_cost']:>12,.1f}{r['shipments_per_order']:>11.3f}"
            f"{r['orders_unfilled']:>9,}{r['units_unfilled']:>7,}{r['km_per_shipment']:>9.1f}"
            f"{r['orders_over_max_shipments']:>9,}{r['split_lines']:>7,}"
            f"{r['latency_ms']['p50']:>9.3f}{r['latency_ms']['p99']:>9.3f}"
        )
    rows.append(
        f"exhaustive optimum on {gap['orders']:,} small orders (lines: "
        f"{gap['orders_by_lines']}; {gap['orders_refused']:,} too large): omnistock cost / "
        f"optimum mean {gap['cost_ratio_mean']:.4f}, max {gap['cost_ratio_max']:.4f}, equal "
        f"on {gap['equal_share']:.1%}, fewer units filled on {gap['omnistock_fills_fewer_units']}"
        f"; exhaustive p50 {gap['exhaustive_latency_ms']['p50']:.3f} ms"
    )
    return "\n".join(rows)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.sourcing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--orders", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=7, help="of the demo network and the orders")
    p.add_argument("--stores", type=int, default=240, help="demo stores")
    p.add_argument("--skus", type=int, default=2000, help="demo catalogue size")
    p.add_argument("--max-shipments", type=int, default=3)
    p.add_argument("--split", action="store_true", help="allow a line from several locations")
    p.add_argument(
        "--cross-border",
        action="store_true",
        help="candidates in every country, not only the destination's",
    )
    p.add_argument("--out", type=Path, default=Path("bench/out"), help="where results go")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    model = CostModel()
    constraints = Constraints(max_shipments=args.max_shipments, allow_split=args.split)
    network = build_network(args.seed, args.stores, args.skus)
    orders = make_orders(network, args.orders, args.seed, args.cross_border)
    gap = Gap()
    results = {
        name: run(
            name, network, orders, model, constraints, gap if name == "omnistock" else None
        ).figures()
        for name in STRATEGY_NAMES
    }
    exhaustive_gap = gap.figures()
    record = {
        "command": shlex.join(["python", "-m", "bench.sourcing", *argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cost_model": vars_of(model),
        "constraints": vars_of(constraints),
        "network": describe(network, orders),
        "strategies": results,
        "exhaustive": exhaustive_gap,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"sourcing-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2))
    print(table(results, exhaustive_gap, args.max_shipments))
    print("results:", path)
    return 0


def vars_of(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def describe(network: Network, orders: Sequence[Order]) -> dict[str, Any]:
    kinds = Counter(str(loc.type) for loc in network.locations)
    return {
        "locations": dict(kinds),
        "skus": len(network.skus),
        "units": int(network.stock.sum()),
        "orders": len(orders),
        "orders_by_lines": dict(sorted(Counter(len(o.lines) for o in orders).items())),
        "units_ordered": sum(ln.qty for o in orders for ln in o.lines),
        "candidates_per_order": float(np.mean([len(o.where) for o in orders])),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
