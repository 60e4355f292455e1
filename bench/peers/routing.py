"""The allocation rules a retailer would otherwise use, to compare omnistock's sourcing
optimiser (engine.domain.sourcing.plan_order) against, and the exhaustive optimum that checks it on
small orders. Each is a pure function with plan_order's signature returning a Plan whose
shipments are costed by engine.domain.sourcing.price (the optimiser's own cost model), so that the
plans compare.

    priority       Magento MSI "Source Priority" source selection: sources in priority order
                   (here the higher `location.priority` first; ties nearest, then id); each
                   line takes min(still needed, available) from each source in turn, so a line
                   is split across sources when the first lacks units.
    distance       Magento MSI "Distance Priority": the same deduction, sources nearest first.
    fewest_splits  Shopify's default order routing ("minimize split fulfillment", then "ship
                   from the closest location"): the fewest locations that together hold every
                   line whole, tried as single locations, then pairs, then triples (up to
                   max_shipments; least total distance wins), each line from the closest of
                   them that has it whole. No set fills the order: each line goes whole to the
                   closest location that has it whole (however many shipments that makes).
    most_stock     Saleor's PRIORITIZE_HIGH_STOCK allocation: per line, the warehouses with
                   the most available units of that sku first (ties: nearest), taking as much
                   as each has.
    exhaustive     Every assignment of the order's units to the candidates, honouring
                   max_shipments and allow_split: the optimum, for small orders only (it
                   raises TooLarge above EXHAUSTIVE_LIMIT assignments). Written apart from
                   engine.domain.sourcing's search, so that it checks it.

All of them skip candidates with capacity_left == 0 (no pick capacity left today). What the
real products have no notion of, the baselines ignore as those products do: Magento and
Saleor have no limit on shipments per order and always split a line across sources (they
ignore max_shipments and allow_split); Shopify never splits a line and, when no few locations
fill the order, ships from as many as it takes (fewest_splits ignores allow_split, and
max_shipments in its fallback). Where a line cannot be filled, Saleor raises
InsufficientStock and allocates nothing for the whole order; most_stock still plans the lines
it can fill, so that units unfilled compare, and its orders with an unfilled line are the
orders Saleor would reject.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from numpy.typing import NDArray

from engine.domain.model import BasketLine, LocationType
from engine.domain.sourcing import Candidate, Constraints, CostModel, Plan, price

EXHAUSTIVE_LIMIT = 100_000  # assignments of an order beyond which exhaustive refuses it
_CHUNK = 8192  # assignments scored at once
_TIE = 1e-9

Strategy = Callable[[Sequence[BasketLine], Sequence[Candidate], CostModel, Constraints], Plan]
Draws = dict[int, list[int]]  # candidate index -> units it ships of each order line
Ints = NDArray[np.int64]


class TooLarge(ValueError):
    """The order has more assignments than exhaustive enumerates."""


def usable(candidates: Sequence[Candidate]) -> list[int]:
    """Indices of the candidates with pick capacity left today."""
    return [i for i, c in enumerate(candidates) if c.capacity_left is None or c.capacity_left > 0]


def _priced(
    lines: Sequence[BasketLine],
    candidates: Sequence[Candidate],
    model: CostModel,
    constraints: Constraints,
    draws: Draws,
) -> Plan:
    """The plan shipping `draws` (in their order), costed by engine.domain.sourcing's own cost
    model; `constraints` only tell why a line is left unfilled."""
    taken = {
        candidates[i].location.id: {ln.sku: q for ln, q in zip(lines, units, strict=True)}
        for i, units in draws.items()
    }
    return price(lines, candidates, model, constraints, taken)


def _deduct(
    lines: Sequence[BasketLine],
    candidates: Sequence[Candidate],
    model: CostModel,
    constraints: Constraints,
    ranking: Callable[[int], Sequence[int]],
) -> Plan:
    """Each line takes min(still needed, available) from its ranked candidates in turn; the
    rule splits lines and knows no shipment limit, so constraints only explain shortfalls."""
    draws: Draws = {}
    for n, ln in enumerate(lines):
        need = ln.qty
        for i in ranking(n):
            take = min(need, max(0, candidates[i].available[n]))
            if take > 0:
                draws.setdefault(i, [0] * len(lines))[n] += take
                need -= take
            if need == 0:
                break
    splitting = Constraints(constraints.max_shipments, allow_split=True)
    return _priced(lines, candidates, model, splitting, draws)


def _nearest(candidates: Sequence[Candidate]) -> list[int]:
    """Usable candidates, nearest first (ties by id)."""
    pool = usable(candidates)
    return sorted(pool, key=lambda i: (candidates[i].distance_km, candidates[i].location.id))


# The baselines.


def priority(
    lines: Sequence[BasketLine],
    candidates: Sequence[Candidate],
    model: CostModel,
    constraints: Constraints,
) -> Plan:
    """Magento MSI Source Priority: ignores max_shipments and allow_split."""
    order = sorted(_nearest(candidates), key=lambda i: -candidates[i].location.priority)
    return _deduct(lines, candidates, model, constraints, lambda _: order)


def distance(
    lines: Sequence[BasketLine],
    candidates: Sequence[Candidate],
    model: CostModel,
    constraints: Constraints,
) -> Plan:
    """Magento MSI Distance Priority: ignores max_shipments and allow_split."""
    order = _nearest(candidates)
    return _deduct(lines, candidates, model, constraints, lambda _: order)


def most_stock(
    lines: Sequence[BasketLine],
    candidates: Sequence[Candidate],
    model: CostModel,
    constraints: Constraints,
) -> Plan:
    """Saleor PRIORITIZE_HIGH_STOCK: ignores max_shipments and allow_split."""
    pool = _nearest(candidates)

    def fullest(line: int) -> list[int]:
        return sorted(pool, key=lambda i: -candidates[i].available[line])  # stable: nearest

    return _deduct(lines, candidates, model, constraints, fullest)


def fewest_splits(
    lines: Sequence[BasketLine],
    candidates: Sequence[Candidate],
    model: CostModel,
    constraints: Constraints,
) -> Plan:
    """Shopify's default routing: never splits a line; its fallback may exceed max_shipments."""
    pool = _nearest(candidates)
    whole = {i: _whole_lines(lines, candidates[i]) for i in pool}
    chosen = _fewest_locations(pool, whole, len(lines), constraints.max_shipments, candidates)
    members = pool if chosen is None else chosen
    draws: Draws = {}
    for n, ln in enumerate(lines):
        i = next((i for i in members if whole[i] >> n & 1), None)
        if i is not None:
            draws.setdefault(i, [0] * len(lines))[n] = ln.qty
    whole_lines = Constraints(constraints.max_shipments, allow_split=False)
    return _priced(lines, candidates, model, whole_lines, draws)


def _whole_lines(lines: Sequence[BasketLine], candidate: Candidate) -> int:
    """Bit n set when the candidate has order line n whole."""
    return sum(1 << n for n, ln in enumerate(lines) if candidate.available[n] >= ln.qty)


def _fewest_locations(
    pool: list[int],
    whole: dict[int, int],
    width: int,
    most: int,
    candidates: Sequence[Candidate],
) -> list[int] | None:
    """The fewest candidates (at most `most`) that hold every line whole between them, the
    least total distance of those; None if there are none. `pool` is nearest first."""
    full = (1 << width) - 1
    keep = _undominated(pool, whole)
    for size in range(1, most + 1):
        best: tuple[float, tuple[int, ...]] | None = None
        for group in itertools.combinations(keep, size):
            if _union(whole, group) == full:
                km = sum(candidates[i].distance_km for i in group)
                if best is None or km < best[0] - _TIE:
                    best = (km, group)
        if best is not None:
            return sorted(best[1], key=pool.index)
    return None


def _union(whole: dict[int, int], group: Sequence[int]) -> int:
    covered = 0
    for i in group:
        covered |= whole[i]
    return covered


def _undominated(pool: list[int], whole: dict[int, int]) -> list[int]:
    """Drops a candidate when a nearer (or as near and earlier) one holds every line it
    holds: the search over sets loses nothing by it."""
    keep: list[int] = []
    for i in pool:  # nearest first, so any candidate that could dominate i is already seen
        if whole[i] and not any(whole[i] & ~whole[j] == 0 for j in keep):
            keep.append(i)
    return keep


# The exhaustive optimum.


def exhaustive(
    lines: Sequence[BasketLine],
    candidates: Sequence[Candidate],
    model: CostModel,
    constraints: Constraints,
) -> Plan:
    """The best plan over every assignment of the order's units to usable candidates: most
    units filled, then least cost. Raises TooLarge above EXHAUSTIVE_LIMIT assignments."""
    pool = usable(candidates)
    split = constraints.allow_split
    caps = [
        [min(max(0, candidates[i].available[n]), ln.qty) for i in pool]
        for n, ln in enumerate(lines)
    ]
    count = math.prod(_option_count(c, ln.qty, split) for c, ln in zip(caps, lines, strict=True))
    if count > EXHAUSTIVE_LIMIT:
        raise TooLarge(f"{count:,} assignments > {EXHAUSTIVE_LIMIT:,}")
    options = []
    for c, ln in zip(caps, lines, strict=True):
        ways = list(_options(c, ln.qty, split))
        options.append(np.array(ways, dtype=np.int64).reshape(len(ways), len(pool)))
    top = max((c.location.priority for c in candidates), default=0)
    scoring = _Scoring(options, [candidates[i] for i in pool], model, top)
    choice = scoring.best(constraints.max_shipments)
    draws: Draws = {}
    for i, k in enumerate(pool):  # candidates in their given order
        units = [int(options[n][opt][i]) for n, opt in enumerate(choice)]
        if any(units):
            draws[k] = units
    return _priced(lines, candidates, model, constraints, draws)


def _option_count(caps: list[int], qty: int, split: bool) -> int:
    """How many ways one line can be drawn: nothing, or whole from one candidate; with
    split, any units from each candidate (up to what it has) totalling at most qty."""
    if not split:
        return 1 + sum(c >= qty for c in caps)
    ways = [1] + [0] * qty  # ways[s]: draws totalling s units so far
    for cap in caps:
        ways = [sum(ways[s - t] for t in range(min(cap, s) + 1)) for s in range(qty + 1)]
    return sum(ways)


def _options(caps: list[int], qty: int, split: bool) -> Iterator[tuple[int, ...]]:
    """Every way to draw one line: the units taken from each candidate."""
    if split:
        yield from _bounded(caps, qty)
        return
    yield (0,) * len(caps)
    for k, cap in enumerate(caps):
        if cap >= qty:
            yield tuple(qty if j == k else 0 for j in range(len(caps)))


def _bounded(caps: list[int], most: int) -> Iterator[tuple[int, ...]]:
    if not caps:
        yield ()
        return
    for take in range(min(caps[0], most) + 1):
        for rest in _bounded(caps[1:], most - take):
            yield (take, *rest)


class _Scoring:
    """Every assignment (one way to draw each line), scored in chunks with numpy."""

    def __init__(
        self, options: list[Ints], pool: list[Candidate], model: CostModel, top: float
    ) -> None:
        self.shape = tuple(len(opt) for opt in options)
        self.ships = [opt > 0 for opt in options]  # (ways, candidates): who ships
        self.units = [opt.sum(axis=1) for opt in options]
        # the cost model as its docstring states it, computed here apart from the optimiser
        distance = np.array([c.distance_km for c in pool], dtype=np.float64).reshape(len(pool))
        rank = np.array([c.location.priority for c in pool], dtype=np.float64).reshape(len(pool))
        self.base = model.shipment_cost + model.cost_per_km * distance
        self.base = self.base + model.priority_cost * (top - rank)
        buffer = [model.buffer_units if c.location.type is LocationType.STORE else 0 for c in pool]
        self.penalty = []
        for n, opt in enumerate(options):
            free = [max(0, c.available[n] - b) for c, b in zip(pool, buffer, strict=True)]
            below = np.maximum(opt - np.array(free, dtype=np.int64).reshape(1, -1), 0)
            self.penalty.append(model.buffer_penalty * below.sum(axis=1).astype(np.float64))

    def best(self, max_shipments: int) -> tuple[int, ...]:
        """The way of each line in the assignment with the most units filled, then the
        least cost (the first of equals), among those within max_shipments."""
        total = math.prod(self.shape)
        if not self.shape:
            return ()
        best = (-1, math.inf, 0)  # (units, cost, assignment)
        for start in range(0, total, _CHUNK):
            picks = np.unravel_index(np.arange(start, min(start + _CHUNK, total)), self.shape)
            ships = np.zeros((len(picks[0]), len(self.base)), dtype=bool)
            units = np.zeros(len(picks[0]), dtype=np.int64)
            cost = np.zeros(len(picks[0]), dtype=np.float64)
            for n, pick in enumerate(picks):
                ships |= self.ships[n][pick]
                units += self.units[n][pick]
                cost += self.penalty[n][pick]
            cost += ships @ self.base
            within = ships.sum(axis=1) <= max_shipments
            best = _better(best, units, cost, within, start)
        return tuple(int(x) for x in np.unravel_index(best[2], self.shape))


def _better(
    best: tuple[int, float, int],
    units: Ints,
    cost: NDArray[np.float64],
    within: NDArray[np.bool_],
    start: int,
) -> tuple[int, float, int]:
    """The best so far against one chunk: most units, then least cost, then first."""
    if not within.any():
        return best
    most = int(units[within].max())
    pick = np.flatnonzero(within & (units == most))
    k = int(pick[np.argmin(cost[pick])])
    if (most, -float(cost[k])) > (best[0], -(best[1] - _TIE)):
        return most, float(cost[k]), start + k
    return best


STRATEGIES: dict[str, Strategy] = {
    "priority": priority,
    "distance": distance,
    "fewest_splits": fewest_splits,
    "most_stock": most_stock,
}
