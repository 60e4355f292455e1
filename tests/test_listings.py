"""GetAvailability's answers built from levels encoded once (Listings), and the read
cache's rows kept out of the garbage collector's sight: what lets a 50-row listing cost a
look-up per row and no full collection walk the cache (issue 14's storefront)."""

from __future__ import annotations

import asyncio
import gc

import grpc
import hypothesis.strategies as st
from hypothesis import given

from engine.api.availability import Listings
from engine.api.convert import level
from engine.app import Omnistock
from engine.domain.model import StockRow
from engine.domain.rules import StockStatus
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.usecases.availability import Offered

from .grpc_helpers import Stubs, seed

rows = st.builds(
    StockRow,
    on_hand=st.integers(0, 3),
    reserved=st.integers(0, 2),
    safety_stock=st.integers(0, 1),
    version=st.integers(0, 2),
    as_of=st.integers(0, 1),
)
offered = st.tuples(
    st.sampled_from(["L1", "L2"]),
    st.sampled_from(["a", "b", "c"]),
    rows,
    st.integers(0, 3),
    st.sampled_from(list(StockStatus)),
    st.sampled_from([(), (0, 0, 0), (1, 0, 2)]),
)


def built(found: list[Offered]) -> pb.GetAvailabilityResponse:
    """The answer as a message built level by level, as it was before Listings."""
    return pb.GetAvailabilityResponse(levels=[level(*each) for each in found])


@given(st.sampled_from([0, 1, 3, 100]), st.lists(st.lists(offered, max_size=5), max_size=12))
def test_an_answer_from_encoded_levels_is_the_message_built_anew(
    most: int, answers: list[list[Offered]]
) -> None:
    # given one Listings answering call after call, rows changing in any field between
    # them (and kept for at most `most` rows), each answer is the one built from scratch
    listings = Listings(most)
    for found in answers:
        assert listings.answer(found) == built(found)
        assert listings.kept <= most


def test_what_listings_keep_is_out_of_the_collectors_sight() -> None:
    listings = Listings(10)
    listings.answer([("L1", "a", StockRow(5, 1, 0, 3, 0), 4, StockStatus.IN_STOCK, ())])
    gc.collect()  # untracks the row's tuple, then the next pass the entry holding it
    gc.collect()
    kept = [entry for at in listings._known.values() for entry in at.values()]
    assert kept and not any(gc.is_tracked(entry) for entry in kept)


async def test_the_read_caches_rows_are_out_of_the_collectors_sight(
    server: Omnistock, channel: grpc.aio.Channel
) -> None:
    # given rows listed until the read cache keeps them
    stubs = Stubs(channel)
    await seed(stubs, {("L1", sku): 5 for sku in ("a", "b", "c")})
    cache = server.cache
    assert cache is not None
    request = pb.GetAvailabilityRequest(skus=["a", "b", "c"], location_ids=["L1"])
    for _ in range(200):
        answer = await stubs.availability.GetAvailability(request)
        if all(cache.kept("L1", sku) is not None for sku in "abc"):
            break
        await asyncio.sleep(0.01)
    assert [lv.available for lv in answer.levels] == [5, 5, 5]
    # when a full collection has passed, then none of the kept rows is tracked: a full
    # collection's walk does not grow with the cache
    gc.collect()
    kept = list(cache.locations["L1"].rows.values())
    assert len(kept) == 3 and not any(gc.is_tracked(row) for row in kept)


async def test_each_pass_of_the_collector_is_timed_by_generation(server: Omnistock) -> None:
    def passes(generation: str) -> float:
        sample = server.metrics.registry.get_sample_value(
            "omnistock_gc_pause_seconds_count", {"generation": generation}
        )
        return sample or 0.0

    before = passes("2")
    gc.collect()
    assert passes("2") == before + 1
