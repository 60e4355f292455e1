"""The sourcing optimiser (engine/domain/sourcing.py), pure: the plans it makes on hand-made
networks, and two properties: every plan is feasible, and on small instances it costs what
the exhaustive optimum (a brute force over every assignment, written here) costs."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain.model import BasketLine, Location, LocationType
from engine.domain.sourcing import (
    Candidate,
    Constraints,
    CostModel,
    Plan,
    Unfillable,
    plan_order,
    price,
)

MODEL = CostModel(shipment_cost=5.0, cost_per_km=0.01, priority_cost=0.1, buffer_units=2,
                  buffer_penalty=2.0)  # fmt: skip


def site(loc_id: str, kind: LocationType = LocationType.STORE, priority: int = 0) -> Location:
    return Location(loc_id, loc_id, kind, 0.0, 0.0, priority=priority)


def cand(loc_id: str, km: float, *available: int, **fields: object) -> Candidate:
    kind = fields.pop("kind", LocationType.STORE)
    priority = fields.pop("priority", 0)
    location = site(loc_id, kind, priority)  # type: ignore[arg-type]
    return Candidate(location, km, available, **fields)  # type: ignore[arg-type]


def order(*lines: tuple[str, int]) -> list[BasketLine]:
    return [BasketLine(sku, qty) for sku, qty in lines]


def shipped(plan: Plan) -> dict[str, dict[str, int]]:
    return {s.location.id: {ln.sku: ln.qty for ln in s.lines} for s in plan.shipments}


def test_one_location_with_everything_ships_it_all() -> None:
    # given a near store with one of two lines, and a farther one with both
    candidates = [cand("near", 5, 9, 0), cand("far", 40, 9, 9)]
    # when the order asks for both
    plan = plan_order(order(("a", 1), ("b", 1)), candidates, MODEL, Constraints())
    # then one shipment from the store that has both
    assert shipped(plan) == {"far": {"a": 1, "b": 1}}
    assert plan.unfilled == () and plan.exact


def test_an_order_splits_only_when_no_one_location_can_fill_it() -> None:
    candidates = [cand("x", 5, 9, 0), cand("y", 6, 0, 9)]
    plan = plan_order(order(("a", 1), ("b", 1)), candidates, MODEL, Constraints())
    assert shipped(plan) == {"x": {"a": 1}, "y": {"b": 1}}
    # a third location with both lines, a little farther, is worth one shipment less
    candidates.append(cand("z", 100, 9, 9))
    plan = plan_order(order(("a", 1), ("b", 1)), candidates, MODEL, Constraints())
    assert shipped(plan) == {"z": {"a": 1, "b": 1}}


def test_never_more_shipments_than_allowed() -> None:
    # given three lines, each at a different location only
    candidates = [cand("x", 5, 9, 0, 0), cand("y", 6, 0, 9, 0), cand("z", 7, 0, 0, 9)]
    lines = order(("a", 1), ("b", 2), ("c", 1))
    # when at most two shipments are allowed
    plan = plan_order(lines, candidates, MODEL, Constraints(max_shipments=2))
    # then two ship (the ones with the most units), and the rest is unfilled, and why
    assert set(shipped(plan)) == {"y", "x"} or set(shipped(plan)) == {"y", "z"}
    assert len(plan.shipments) == 2
    assert [(u.qty, u.reason) for u in plan.unfilled] == [(1, Unfillable.MAX_SHIPMENTS)]


def test_a_line_splits_across_locations_only_when_allowed() -> None:
    candidates = [cand("x", 5, 3), cand("y", 6, 3)]
    whole = plan_order(order(("a", 5)), candidates, MODEL, Constraints())
    assert whole.shipments == () and whole.unfilled[0].reason is Unfillable.SPLIT
    split = plan_order(order(("a", 5)), candidates, MODEL, Constraints(allow_split=True))
    assert sum(q for s in shipped(split).values() for q in s.values()) == 5
    assert split.unfilled == ()


def test_the_buffer_penalty_keeps_a_stores_last_units_for_walk_in_shoppers() -> None:
    # given a near store with exactly 2 units (both within its buffer of 2), and a DC 300 km
    # away with plenty: taking the store's last 2 costs 2 x 2.0 = 4 more; the DC's 300 km
    # cost 3.0 more than the store's 10 km (0.1 km cost 0.01 each)
    near = cand("store", 10, 2)
    dc = cand("dc", 310, 50, kind=LocationType.DC)
    plan = plan_order(order(("a", 2)), [near, dc], MODEL, Constraints())
    assert shipped(plan) == {"dc": {"a": 2}}
    # without the penalty, the near store wins
    cheap = CostModel(buffer_penalty=0.0)
    assert shipped(plan_order(order(("a", 2)), [near, dc], cheap, Constraints())) == {
        "store": {"a": 2}
    }


def test_priority_costs_a_step_per_level_below_the_highest() -> None:
    # same distance: the higher-priority location ships
    low, high = cand("low", 10, 9, priority=0), cand("high", 10, 9, priority=3)
    plan = plan_order(order(("a", 1)), [low, high], MODEL, Constraints())
    assert shipped(plan) == {"high": {"a": 1}}
    assert plan.cost == 5.0 + 0.1  # its own cost: no priority step below the highest


def test_a_location_with_no_pick_capacity_left_is_never_chosen() -> None:
    full = cand("full", 1, 9, capacity_left=0)
    spare = cand("spare", 50, 9, capacity_left=1)
    plan = plan_order(order(("a", 1)), [full, spare], MODEL, Constraints())
    assert shipped(plan) == {"spare": {"a": 1}}
    alone = plan_order(order(("a", 1)), [full], MODEL, Constraints())
    assert alone.unfilled[0].reason is Unfillable.CAPACITY


def test_not_enough_anywhere_is_no_stock() -> None:
    plan = plan_order(order(("a", 5)), [cand("x", 1, 2)], MODEL, Constraints(allow_split=True))
    assert shipped(plan) == {"x": {"a": 2}}
    assert [(u.sku, u.qty, u.reason) for u in plan.unfilled] == [("a", 3, Unfillable.NO_STOCK)]


def test_the_same_input_gives_the_same_plan() -> None:
    rng = random.Random(3)
    candidates = [
        cand(f"s{i}", rng.uniform(1, 500), *(rng.choice([0, 1, 2, 5]) for _ in range(4)))
        for i in range(60)
    ]
    lines = order(("a", 1), ("b", 2), ("c", 1), ("d", 1))
    plans = {plan_order(lines, candidates, MODEL, Constraints()) for _ in range(3)}
    assert len(plans) == 1


def test_a_large_order_is_searched_within_bounds_and_says_so() -> None:
    rng = random.Random(5)
    width = 30
    candidates = [
        cand(f"s{i}", rng.uniform(1, 900), *(rng.choice([0, 0, 1, 3]) for _ in range(width)))
        for i in range(400)
    ]
    lines = order(*((f"k{j}", 1) for j in range(width)))
    plan = plan_order(lines, candidates, MODEL, Constraints(max_shipments=4, allow_split=True))
    assert not plan.exact
    check_feasible(plan, lines, candidates, Constraints(max_shipments=4, allow_split=True))


def test_a_repeated_sku_is_refused_rather_than_planned_twice_from_one_stock() -> None:
    with pytest.raises(ValueError, match="once"):
        plan_order(order(("a", 1), ("a", 1)), [cand("x", 1, 1, 1)], MODEL, Constraints())


def test_price_costs_a_given_plan_as_the_optimiser_would() -> None:
    candidates = [cand("x", 5, 9, 0), cand("y", 6, 0, 9), cand("z", 100, 9, 9)]
    lines = order(("a", 1), ("b", 1))
    best = plan_order(lines, candidates, MODEL, Constraints())
    again = price(lines, candidates, MODEL, Constraints(), shipped(best))
    assert again.cost == best.cost and shipped(again) == shipped(best)
    worse = price(lines, candidates, MODEL, Constraints(), {"x": {"a": 1}, "y": {"b": 1}})
    assert worse.cost > best.cost


# -- properties ---------------------------------------------------------------------------


def check_feasible(
    plan: Plan, lines: list[BasketLine], candidates: list[Candidate], rules: Constraints
) -> None:
    """No line over-allocated, no location over its stock, the constraints met."""
    by_id = {c.location.id: c for c in candidates}
    units: Counter[str] = Counter()
    assert len(plan.shipments) <= rules.max_shipments
    locations_of: dict[str, int] = Counter()
    for s in plan.shipments:
        c = by_id[s.location.id]
        assert c.capacity_left is None or c.capacity_left > 0
        for ln in s.lines:
            i = next(j for j, x in enumerate(lines) if x.sku == ln.sku)
            assert 0 < ln.qty <= c.available[i]
            units[ln.sku] += ln.qty
            locations_of[ln.sku] += 1
    for ln in lines:
        missing = sum(u.qty for u in plan.unfilled if u.sku == ln.sku)
        assert units[ln.sku] + missing == ln.qty
        if not rules.allow_split:
            assert locations_of[ln.sku] <= 1 and units[ln.sku] in (0, ln.qty)


def exhaustive(
    lines: list[BasketLine], candidates: list[Candidate], model: CostModel, rules: Constraints
) -> tuple[int, float]:
    """(units unfilled, cost) of the best plan, by trying every assignment of every unit
    group: each line goes whole to one candidate or nowhere (without split), or each of its
    units to any candidate or nowhere (with split)."""
    usable = [c for c in candidates if c.capacity_left is None or c.capacity_left > 0]
    top = max((c.location.priority for c in candidates), default=0)
    choices = range(-1, len(usable))  # -1: not planned
    if rules.allow_split:
        slots = [(i, 1) for i, ln in enumerate(lines) for _ in range(ln.qty)]
    else:
        slots = [(i, ln.qty) for i, ln in enumerate(lines)]
    best = (sum(ln.qty for ln in lines) + 1, 0.0)
    for pick in itertools.product(choices, repeat=len(slots)):
        taken: dict[tuple[int, int], int] = Counter()
        for (line, qty), where in zip(slots, pick, strict=True):
            if where >= 0:
                taken[(where, line)] += qty
        used = {where for where, _ in taken}
        if len(used) > rules.max_shipments:
            continue
        if any(q > usable[w].available[line] for (w, line), q in taken.items()):
            continue
        cost = 0.0
        for w in used:
            c = usable[w]
            cost += model.shipment_cost + model.cost_per_km * c.distance_km
            cost += model.priority_cost * (top - c.location.priority)
        for (w, line), q in taken.items():
            c = usable[w]
            buffer = model.buffer_units if c.location.type is LocationType.STORE else 0
            free = max(0, c.available[line] - buffer)
            cost += model.buffer_penalty * max(0, q - free)
        unfilled = sum(ln.qty for ln in lines) - sum(taken.values())
        if (unfilled, round(cost, 6)) < (best[0], round(best[1], 6)):
            best = (unfilled, cost)
    return best


@st.composite
def instances(draw: st.DrawFn) -> tuple[list[BasketLine], list[Candidate], Constraints]:
    split = draw(st.booleans())
    width = draw(st.integers(1, 3))
    lines = [BasketLine(f"k{i}", draw(st.integers(1, 2 if split else 3))) for i in range(width)]
    n = draw(st.integers(1, 4 if not split else 3))
    candidates = [
        Candidate(
            site(f"l{j}", draw(st.sampled_from(list(LocationType))), draw(st.integers(0, 2))),
            draw(st.floats(0, 800, allow_nan=False)),
            tuple(draw(st.integers(0, 4)) for _ in range(width)),
            draw(st.sampled_from([None, None, 0, 3])),
        )
        for j in range(n)
    ]
    return lines, candidates, Constraints(draw(st.integers(1, 3)), split)


@settings(max_examples=150, deadline=None)
@given(instances())
def test_every_plan_is_feasible_and_as_cheap_as_the_exhaustive_optimum(
    instance: tuple[list[BasketLine], list[Candidate], Constraints],
) -> None:
    lines, candidates, rules = instance
    plan = plan_order(lines, candidates, MODEL, rules)
    check_feasible(plan, lines, candidates, rules)
    unfilled, cost = exhaustive(lines, candidates, MODEL, rules)
    assert plan.exact
    assert plan.units_unfilled == unfilled
    assert abs(plan.cost - cost) < 1e-6, (plan, cost)
