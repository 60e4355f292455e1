"""The baselines of bench/peers/routing.py make the plans their products' documented rules
make, and the exhaustive optimum agrees with engine.domain.sourcing.plan_order on small orders."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from bench.peers.routing import (
    STRATEGIES,
    TooLarge,
    distance,
    exhaustive,
    fewest_splits,
    most_stock,
    priority,
)
from engine.domain.model import BasketLine, Location, LocationType
from engine.domain.sourcing import (
    Candidate,
    Constraints,
    CostModel,
    Plan,
    Unfillable,
    plan_order,
)

MODEL = CostModel()
Case = tuple[list[BasketLine], list[Candidate], CostModel, Constraints]
WHOLE = Constraints(max_shipments=3, allow_split=False)


def place(
    name: str,
    km: float,
    *available: int,
    kind: LocationType = LocationType.STORE,
    rank: int = 0,
    capacity: int | None = None,
) -> Candidate:
    location = Location(name, name, kind, 0.0, 0.0, priority=rank)
    return Candidate(location, km, available, capacity)


def dc(name: str, km: float, *available: int, capacity: int | None = None) -> Candidate:
    return place(name, km, *available, kind=LocationType.DC, rank=10, capacity=capacity)


def shipped(plan: Plan) -> dict[str, dict[str, int]]:
    return {s.location.id: {ln.sku: ln.qty for ln in s.lines} for s in plan.shipments}


def lines(*qty: int) -> list[BasketLine]:
    return [BasketLine(f"SKU-{n}", q) for n, q in enumerate(qty)]


def test_priority_takes_from_the_higher_priority_source_even_when_farther() -> None:
    # given a store nearby and a distribution centre (higher priority) far away, both full
    candidates = [place("store", 3.0, 9), dc("dc", 400.0, 9)]
    # when Magento's Source Priority and Distance Priority plan one line
    by_priority = priority(lines(2), candidates, MODEL, WHOLE)
    by_distance = distance(lines(2), candidates, MODEL, WHOLE)
    # then the first ships from the distribution centre, the second from the store
    assert shipped(by_priority) == {"dc": {"SKU-0": 2}}
    assert shipped(by_distance) == {"store": {"SKU-0": 2}}


def test_priority_splits_a_line_down_the_source_order_whatever_the_constraints() -> None:
    # given the top source holds 1 of the 3 units ordered, and splits are not allowed
    candidates = [place("near", 1.0, 2), place("far", 50.0, 5), dc("dc", 300.0, 1)]
    # when Source Priority plans it
    plan = priority(lines(3), candidates, MODEL, WHOLE)
    # then it takes that unit, then the rest from the next sources by priority, then nearest
    assert shipped(plan) == {"dc": {"SKU-0": 1}, "near": {"SKU-0": 2}}
    assert not plan.unfilled


def test_distance_ignores_max_shipments() -> None:
    # given three lines, each only at its own store, and at most one shipment allowed
    candidates = [place("a", 1.0, 5, 0, 0), place("b", 2.0, 0, 5, 0), place("c", 3.0, 0, 0, 5)]
    one = Constraints(max_shipments=1, allow_split=False)
    # when Distance Priority plans it
    plan = distance(lines(1, 1, 1), candidates, MODEL, one)
    # then it ships all three, as Magento knows no shipment limit
    assert set(shipped(plan)) == {"a", "b", "c"}


def test_fewest_splits_prefers_one_farther_location_over_two_near_ones() -> None:
    # given two near stores with one line each and a farther one with both
    candidates = [place("a", 2.0, 5, 0), place("b", 3.0, 0, 5), place("far", 60.0, 5, 5)]
    # when Shopify's routing plans the order
    plan = fewest_splits(lines(1, 1), candidates, MODEL, WHOLE)
    # then the one location that fills it all ships everything
    assert shipped(plan) == {"far": {"SKU-0": 1, "SKU-1": 1}}


def test_fewest_splits_takes_the_pair_of_least_total_distance() -> None:
    # given no single location fills the order, and two pairs do
    candidates = [
        place("a", 1.0, 5, 0),
        place("b", 30.0, 0, 5),
        place("c", 10.0, 5, 0),
        place("d", 12.0, 0, 5),
    ]
    plan = fewest_splits(lines(1, 1), candidates, MODEL, WHOLE)
    # then the pair nearest in total (a + d = 13 km) ships it
    assert shipped(plan) == {"a": {"SKU-0": 1}, "d": {"SKU-1": 1}}


def test_fewest_splits_falls_back_to_the_closest_whole_location_per_line() -> None:
    # given no one location fills the order and one shipment allowed
    candidates = [place("a", 1.0, 5, 0), place("b", 2.0, 0, 5), place("c", 9.0, 5, 0)]
    plan = fewest_splits(lines(1, 1), candidates, MODEL, Constraints(1, False))
    # then each line goes whole to the closest location having it (two shipments)
    assert shipped(plan) == {"a": {"SKU-0": 1}, "b": {"SKU-1": 1}}


def test_fewest_splits_never_splits_a_line() -> None:
    # given two stores with one of the two units each, splitting allowed
    candidates = [place("a", 1.0, 1), place("b", 2.0, 1)]
    plan = fewest_splits(lines(2), candidates, MODEL, Constraints(3, True))
    # then the line is left unfilled: no one location has it whole
    assert plan.shipments == ()
    assert [(u.qty, u.reason) for u in plan.unfilled] == [(2, Unfillable.SPLIT)]


def test_most_stock_takes_the_fullest_first() -> None:
    # given a near store with 4 units and farther ones with 9 and 6
    candidates = [place("near", 1.0, 4), place("mid", 20.0, 6), place("far", 80.0, 9)]
    # when Saleor's PRIORITIZE_HIGH_STOCK allocates 12 units
    plan = most_stock(lines(12), candidates, MODEL, WHOLE)
    # then it takes everything from the fullest, then from the next fullest
    assert shipped(plan) == {"far": {"SKU-0": 9}, "mid": {"SKU-0": 3}}


@pytest.mark.parametrize("name", [*STRATEGIES, "exhaustive"])
def test_a_location_without_capacity_left_is_never_used(name: str) -> None:
    # given the nearest, fullest, highest-priority location has no pick capacity left
    candidates = [dc("full", 1.0, 50, 50, capacity=0), place("open", 5.0, 5, 5, capacity=1)]
    strategy = exhaustive if name == "exhaustive" else STRATEGIES[name]
    plan = strategy(lines(1, 1), candidates, MODEL, WHOLE)
    # then the plan ships from the other
    assert shipped(plan) == {"open": {"SKU-0": 1, "SKU-1": 1}}


def test_a_baseline_plan_costs_what_the_optimisers_cost_model_says() -> None:
    # given a store 100 km away with 3 units, and a distribution centre with none
    candidates = [place("store", 100.0, 3), dc("dc", 50.0, 0)]
    plan = distance(lines(2), candidates, MODEL, WHOLE)
    # then: shipment 5 + 100 km x 0.01 + priority (10 - 0) x 0.1, and the second unit
    # comes from the store's last 2 units: one buffer penalty of 2
    assert plan.cost == pytest.approx(5.0 + 1.0 + 1.0 + 2.0)


def test_exhaustive_honours_max_shipments_and_whole_lines() -> None:
    # given each line at its own near store, both at a farther one, one shipment allowed
    candidates = [place("a", 1.0, 5, 0), place("b", 1.0, 0, 5), place("c", 500.0, 5, 5)]
    plan = exhaustive(lines(1, 1), candidates, MODEL, Constraints(1, False))
    assert shipped(plan) == {"c": {"SKU-0": 1, "SKU-1": 1}}
    # and with splits allowed, a line split over two stores when none has it whole
    split = [place("a", 1.0, 4), place("b", 2.0, 4)]
    plan = exhaustive(lines(5), split, MODEL, Constraints(2, True))
    assert plan.units_unfilled == 0 and len(plan.shipments) == 2


def test_exhaustive_refuses_a_large_order() -> None:
    many = [place(f"s{i}", float(i), *[5] * 6) for i in range(20)]
    with pytest.raises(TooLarge):
        exhaustive(lines(1, 1, 1, 1, 1, 1), many, MODEL, WHOLE)


@st.composite
def small_orders(draw: st.DrawFn) -> Case:
    order = lines(*draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    candidates = []
    for n in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(LocationType))
        rank = draw(st.sampled_from([0, 5, 10]))
        location = Location(f"loc-{n}", f"loc {n}", kind, 0.0, 0.0, priority=rank)
        km = draw(st.sampled_from([0.0, 4.0, 12.5, 40.0, 300.0]))  # repeats: ties
        available = tuple(draw(st.integers(0, 5)) for _ in order)
        capacity = draw(st.sampled_from([None, None, 0, 1, 4]))
        candidates.append(Candidate(location, km, available, capacity))
    candidates.sort(key=lambda c: c.distance_km)  # as the engine gives them: nearest first
    model = CostModel(
        shipment_cost=draw(st.sampled_from([0.0, 5.0])),
        cost_per_km=draw(st.sampled_from([0.0, 0.01, 0.1])),
        priority_cost=draw(st.sampled_from([0.0, 0.1, 1.0])),
        buffer_units=draw(st.sampled_from([0, 2])),
        buffer_penalty=draw(st.sampled_from([0.0, 2.0, 50.0])),
    )
    constraints = Constraints(draw(st.integers(1, 3)), draw(st.booleans()))
    return order, candidates, model, constraints


@settings(max_examples=100, deadline=None)
@given(small_orders())
def test_the_optimiser_finds_the_exhaustive_optimum_on_small_orders(
    case: Case,
) -> None:
    order, candidates, model, constraints = case
    best = exhaustive(order, candidates, model, constraints)
    plan = plan_order(order, candidates, model, constraints)
    assert plan.units_unfilled == best.units_unfilled
    assert plan.cost == pytest.approx(best.cost, abs=1e-6)
    assert len(plan.shipments) <= constraints.max_shipments
