"""Sourcing: which locations should ship which lines of an order. Pure: numpy in, a plan out.

The cost of a plan (CostModel; every figure can be changed per call or in configuration):

    each shipment:   shipment_cost + cost_per_km x great-circle km to the destination
                     + priority_cost x (highest priority among the candidates - its priority)
    each unit taken from a store below its buffer: buffer_penalty
                     (the store's last `buffer_units` available units stay for walk-in
                     shoppers; warehouses and dark stores have no buffer)

A plan first fills as many units as the constraints allow, then costs least. Ties go to
fewer shipments, then to the candidates' order (as given: nearest first), so the same
input always gives the same plan.

The search. Once the set S of shipping locations is fixed, the best plan for S follows line
by line: without split each line goes whole to the member of S that takes it at the least
penalty; with split a line draws first on units above the stores' buffers. So the search is
over sets of at most max_shipments candidates, scored in numpy many at a time. Two exact
reductions come first: candidates with nothing the order needs are dropped, and without
split so is a candidate dominated by another (no cheaper to ship from, and no worse for any
line). If the sets left still exceed SEARCH_CELLS, sets of that size are drawn from a pool
of the candidates best for each line and those covering most of the order; the plan then
says `exact=False`. bench/RESULTS.md measures the gap against the exhaustive optimum.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from engine.domain.model import BasketLine, Line, Location, LocationType

SEARCH_CELLS = 2_000_000  # numbers scored per set size (sets x size x lines) before pooling
MAX_SHIPMENTS = 10
DOMINANCE_CELLS = 20_000_000  # candidates^2 x lines above which dominance is not checked
_TIE = 1e-9

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class CostModel:
    shipment_cost: float = 5.0
    cost_per_km: float = 0.01
    priority_cost: float = 0.1
    buffer_units: int = 2
    buffer_penalty: float = 2.0


COST_FIELDS = tuple(f.name for f in dataclasses.fields(CostModel))


@dataclass(frozen=True, slots=True)
class Constraints:
    max_shipments: int = 3
    allow_split: bool = False  # may one line come from several locations


@dataclass(frozen=True, slots=True)
class Candidate:
    """A location that may ship this order, as it stands for it."""

    location: Location
    distance_km: float
    available: tuple[int, ...]  # per order line
    capacity_left: int | None = None  # orders it may still pick today; None = unlimited


class Unfillable(enum.StrEnum):
    NO_STOCK = "NO_STOCK"  # not enough of it at any allowed location
    CAPACITY = "CAPACITY"  # only locations with no pick capacity left today have it
    SPLIT = "SPLIT"  # no one location has all of it, and splitting is not allowed
    MAX_SHIPMENTS = "MAX_SHIPMENTS"  # filling it too needs more shipments than allowed


@dataclass(frozen=True, slots=True)
class UnfilledLine:
    sku: str
    qty: int  # units not planned
    reason: Unfillable


@dataclass(frozen=True, slots=True)
class Shipment:
    location: Location
    lines: tuple[BasketLine, ...]
    distance_km: float
    cost: float  # the shipment's own cost plus the buffer penalties of its units


@dataclass(frozen=True, slots=True)
class Plan:
    shipments: tuple[Shipment, ...]
    unfilled: tuple[UnfilledLine, ...]
    cost: float
    exact: bool  # every set of candidates was scored (or ruled out exactly)
    candidates: int  # candidates the search started from

    @property
    def units_unfilled(self) -> int:
        return sum(u.qty for u in self.unfilled)

    def reservation_lines(self) -> list[Line]:
        return [Line(s.location.id, ln.sku, ln.qty) for s in self.shipments for ln in s.lines]


@dataclass(frozen=True)
class _Problem:
    """The order against its usable candidates, as arrays (candidates x lines)."""

    lines: tuple[BasketLine, ...]
    candidates: tuple[Candidate, ...]
    qty: Ints  # (L,)
    stock: Ints  # (N, L) available, capped at the line's qty
    free: Ints  # (N, L) of that, units above the buffer
    base: Floats  # (N,) cost of a shipment from each
    penalty: Floats  # (N, L) buffer penalty of the whole line from each; inf if it lacks it
    buffer_penalty: float
    split: bool

    @classmethod
    def build(
        cls,
        lines: Sequence[BasketLine],
        candidates: Sequence[Candidate],
        model: CostModel,
        split: bool,
        top: int,
    ) -> _Problem:
        """top: the highest priority among all the order's candidates, usable or not."""
        n, width = len(candidates), len(lines)
        qty = np.array([ln.qty for ln in lines], dtype=np.int64)
        raw = np.array([c.available for c in candidates], dtype=np.int64).reshape(n, width)
        stock = np.minimum(np.maximum(raw, 0), qty)
        is_store = np.array([c.location.type is LocationType.STORE for c in candidates])
        buffer = np.where(is_store, model.buffer_units, 0).astype(np.int64)
        free = np.minimum(np.maximum(raw - buffer[:, None], 0), qty)
        priority = np.array([c.location.priority for c in candidates], dtype=np.float64)
        distance = np.array([c.distance_km for c in candidates], dtype=np.float64)
        base = model.shipment_cost + model.cost_per_km * distance
        base = base + model.priority_cost * (top - priority)
        penalty = model.buffer_penalty * (qty - free).astype(np.float64)
        penalty = np.where(raw >= qty, penalty, np.inf)
        return cls(
            tuple(lines), tuple(candidates), qty, stock, free, base, penalty,
            model.buffer_penalty, split,
        )  # fmt: skip

    def keep(self, idx: Ints) -> _Problem:
        return _Problem(
            self.lines, tuple(self.candidates[i] for i in idx), self.qty, self.stock[idx],
            self.free[idx], self.base[idx], self.penalty[idx], self.buffer_penalty, self.split,
        )  # fmt: skip

    def score(self, sets: Ints) -> tuple[Ints, Floats]:
        """(units unfilled, cost) of each set of candidates (rows of indices)."""
        base = self.base[sets].sum(axis=1)
        if self.split:
            filled = np.minimum(self.stock[sets].sum(axis=1), self.qty)
            below = np.maximum(filled - self.free[sets].sum(axis=1), 0)
            unfilled = (self.qty - filled).sum(axis=1)
            return unfilled, base + self.buffer_penalty * below.sum(axis=1)
        best = self.penalty[sets].min(axis=1)
        missing = np.isinf(best)
        unfilled = (missing * self.qty).sum(axis=1)
        return unfilled, base + np.where(missing, 0.0, best).sum(axis=1)


def plan_order(
    lines: Sequence[BasketLine],
    candidates: Sequence[Candidate],
    model: CostModel,
    constraints: Constraints,
) -> Plan:
    """The cheapest plan that fills the most units of `lines` (each sku once: a repeated
    sku would be planned twice from the same stock) from `candidates`."""
    if len({ln.sku for ln in lines}) != len(lines):
        raise ValueError("each sku may be in an order's lines once; merge repeats first")
    usable = [c for c in candidates if c.capacity_left is None or c.capacity_left > 0]
    problem = _reduce(
        _Problem.build(lines, usable, model, constraints.allow_split, _top(candidates))
    )
    chosen, exact = _search(problem, constraints.max_shipments)
    shipments, left = _assign(problem, chosen)
    return _plan(lines, candidates, constraints, shipments, left, exact)


def price(
    lines: Sequence[BasketLine],
    candidates: Sequence[Candidate],
    model: CostModel,
    constraints: Constraints,
    taken: Mapping[str, Mapping[str, int]],
) -> Plan:
    """A plan made elsewhere (location id -> sku -> units), costed by the same model: for
    the baselines in bench/, and for an Allocate retried after its plan was held."""
    problem = _Problem.build(lines, candidates, model, constraints.allow_split, _top(candidates))
    where = {c.location.id: i for i, c in enumerate(candidates)}
    line_of = {ln.sku: i for i, ln in enumerate(lines)}
    shipments, left = [], [ln.qty for ln in lines]
    for location, skus in taken.items():
        takes = [(line_of[sku], qty) for sku, qty in skus.items() if qty > 0]
        for line, qty in takes:
            left[line] -= qty
        if takes:
            shipments.append(_shipment(problem, where[location], takes))
    return _plan(lines, candidates, constraints, shipments, left, exact=False)


def _top(candidates: Sequence[Candidate]) -> int:
    return max((c.location.priority for c in candidates), default=0)


def _plan(
    lines: Sequence[BasketLine],
    candidates: Sequence[Candidate],
    constraints: Constraints,
    shipments: list[Shipment],
    left: list[int],
    exact: bool,
) -> Plan:
    unfilled = tuple(
        UnfilledLine(ln.sku, int(missing), _why(i, ln, candidates, constraints))
        for i, (ln, missing) in enumerate(zip(lines, left, strict=True))
        if missing > 0
    )
    cost = round(sum(s.cost for s in shipments), 6)
    return Plan(tuple(shipments), unfilled, cost, exact, len(candidates))


def _reduce(problem: _Problem) -> _Problem:
    """Drops candidates no best plan needs (an exact reduction)."""
    if problem.split:
        useful = problem.stock.sum(axis=1) > 0
    else:
        useful = np.isfinite(problem.penalty).any(axis=1)
    problem = problem.keep(np.flatnonzero(useful))
    n, width = problem.stock.shape
    if problem.split or n * n * max(width, 1) > DOMINANCE_CELLS:
        return problem
    return problem.keep(np.flatnonzero(~_dominated(problem.base, problem.penalty)))


def _dominated(base: Floats, penalty: Floats) -> NDArray[np.bool_]:
    """Candidate j is dominated when some i ships no dearer and is no worse on any line,
    and is strictly better somewhere or comes first (so of equals, the first stays)."""
    n = len(base)
    no_worse = (base[:, None] <= base[None, :] + _TIE) & np.all(
        penalty[:, None, :] <= penalty[None, :, :], axis=2
    )
    better = (base[:, None] < base[None, :] - _TIE) | np.any(
        penalty[:, None, :] < penalty[None, :, :], axis=2
    )
    first = np.arange(n)[:, None] < np.arange(n)[None, :]
    beats = no_worse & (better | first)
    np.fill_diagonal(beats, False)
    return np.asarray(beats.any(axis=0))


def _search(problem: _Problem, max_shipments: int) -> tuple[tuple[int, ...], bool]:
    """The best set of candidates (indices into problem), and whether the search was exact."""
    n, width = problem.stock.shape
    largest = min(max_shipments, n) if problem.split else min(max_shipments, n, width)
    best: tuple[int, float] = (int(problem.qty.sum()), 0.0)
    chosen: tuple[int, ...] = ()
    exact = True
    order: Ints | None = None
    for size in range(1, largest + 1):
        if best[0] == 0 and size * float(problem.base.min()) >= best[1] - _TIE:
            break  # every larger set costs more in shipments alone
        pool = _pool_size(n, size, width)
        if pool < n:
            exact = False
            order = _pool_order(problem) if order is None else order
            members = order[:pool]
        else:
            members = np.arange(n)
        sets = members[_combinations(len(members), size)]
        unfilled, cost = problem.score(sets)
        i = int(np.lexsort((np.round(cost / _TIE) * _TIE, unfilled))[0])
        if (unfilled[i], cost[i]) < (best[0], best[1] - _TIE):
            best, chosen = (int(unfilled[i]), float(cost[i])), tuple(int(x) for x in sets[i])
    return tuple(sorted(chosen)), exact


def _pool_size(n: int, size: int, width: int) -> int:
    """How many candidates the sets of this size may be drawn from, within SEARCH_CELLS."""
    if math.comb(n, size) * size * width <= SEARCH_CELLS:
        return n
    pool = size
    while math.comb(pool + 1, size) * size * width <= SEARCH_CELLS:
        pool += 1
    return pool


def _pool_order(problem: _Problem) -> Ints:
    """Candidates in the order a bounded search takes them: in turn, the next best at
    covering the order, and the next best for each line on its own."""
    cheapest = problem.base[:, None] + np.where(np.isfinite(problem.penalty), problem.penalty, 0.0)
    covered = (problem.stock * (problem.stock >= problem.qty)).sum(axis=1)
    rankings = [np.lexsort((problem.base, -covered))]
    for line in range(problem.stock.shape[1]):
        has = problem.stock[:, line]
        rankings.append(np.lexsort((cheapest[:, line], -has)))
    seen: dict[int, None] = {}
    for row in zip(*rankings, strict=True):
        for i in row:
            seen.setdefault(int(i), None)
    return np.fromiter(seen, dtype=np.int64)


@functools.lru_cache(maxsize=128)
def _combinations(n: int, size: int) -> Ints:
    flat = itertools.chain.from_iterable(itertools.combinations(range(n), size))
    out = np.fromiter(flat, dtype=np.int64, count=math.comb(n, size) * size)
    out = out.reshape(-1, size)
    out.setflags(write=False)
    return out


def _assign(problem: _Problem, chosen: tuple[int, ...]) -> tuple[list[Shipment], list[int]]:
    """The lines each chosen candidate ships, and the units of each line left unplanned."""
    takes: dict[int, list[tuple[int, int]]] = {i: [] for i in chosen}  # cand -> (line, qty)
    left = [int(q) for q in problem.qty]
    for line in range(len(problem.lines)):
        for cand, qty in _draw(problem, chosen, line):
            takes[cand].append((line, qty))
            left[line] -= qty
    shipments = [_shipment(problem, c, takes[c]) for c in chosen if takes[c]]
    return shipments, left


def _shipment(problem: _Problem, cand: int, takes: list[tuple[int, int]]) -> Shipment:
    """What candidate `cand` ships, (line, units) each, and what it costs."""
    c = problem.candidates[cand]
    below = sum(max(0, q - int(problem.free[cand, line])) for line, q in takes)
    return Shipment(
        c.location,
        tuple(BasketLine(problem.lines[line].sku, q) for line, q in takes),
        c.distance_km,
        round(float(problem.base[cand]) + problem.buffer_penalty * below, 6),
    )


def _draw(problem: _Problem, chosen: tuple[int, ...], line: int) -> list[tuple[int, int]]:
    """Where one line's units come from among the chosen candidates."""
    if not chosen:
        return []
    if not problem.split:
        penalties = [problem.penalty[c, line] for c in chosen]
        best = int(np.argmin(penalties))
        if math.isinf(penalties[best]):
            return []
        return [(chosen[best], int(problem.qty[line]))]
    need, drawn = int(problem.qty[line]), dict.fromkeys(chosen, 0)
    # units above the buffers first, then below; the largest source first (fewer parcels)
    for layer in (problem.free[:, line], problem.stock[:, line] - problem.free[:, line]):
        for c in sorted(chosen, key=lambda c: (-int(layer[c]), c)):
            take = min(need, int(layer[c]))
            drawn[c] += take
            need -= take
    return [(c, q) for c, q in drawn.items() if q > 0]


def _why(
    line: int, order_line: BasketLine, candidates: Sequence[Candidate], constraints: Constraints
) -> Unfillable:
    """Why some of a line could not be planned."""
    usable = [c for c in candidates if c.capacity_left is None or c.capacity_left > 0]
    total = sum(max(0, c.available[line]) for c in usable)
    if total == 0 and any(c.available[line] > 0 for c in candidates):
        return Unfillable.CAPACITY
    if total < order_line.qty:
        return Unfillable.NO_STOCK
    if not constraints.allow_split and all(c.available[line] < order_line.qty for c in usable):
        return Unfillable.SPLIT
    return Unfillable.MAX_SHIPMENTS
