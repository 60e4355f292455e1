"""Fuzzing the edge: every RPC of omnistock.v1, sent hostile messages over real gRPC to an
in-process server on the real embedded store, and checked after every call.

What is sent. For each RPC, requests built by hypothesis from the proto's own fields
(`message` below walks the descriptor): clean ones (valid values at and inside the bounds,
mostly of a seeded world, so that calls go deep), clean ones but for one field, and wild
ones: ids valid but unknown, or hostile (line breaks, braces, NUL, unicode, empty, 129+
characters); quantities, times and counts at and around every bound the engine draws (0,
1, 10^9, int64's ends, 5 minutes ahead, the 72 h window); doubles NaN, +-inf, -0.0 and
out of range; enum values out of range; repeated fields empty, short, or grown to the
engine's limits and one past them (200 lines, 1,000 skus, 5,000 events), mixing valid and
invalid entries. Then bytes that are not the message: random, or a valid request cut short
or with a bit flipped, sent through the generic channel methods. And sequences of calls
across all RPCs, so that a hold made by one is committed, released or extended by the next.

What is checked, after every call: the status is a defined one (never UNKNOWN, INTERNAL,
CANCELLED or a deadline; an INVALID_ARGUMENT names its field); the server answers a health
check and a small GetAvailability; a refused call (any error status), and a StreamEvents
call whose every event was rejected, changed no key (every key's DUMP and absolute expiry,
before and after; a StreamEvents stream refused after some answers applied exactly the
messages answered: sent alone from the state before, they leave the same keys); I1
(reserved == the sum of the HELD reservation lines, on every row of every location, as
stored and as served: tests/invariants.py) and the availability arithmetic as served. At the
end of each example the server is stopped and a new one started on the same Redis, and I1
and the answers are checked again through it.

Why it is deterministic. The engine's clock is a ManualClock that does not move, and the
sweeper sleeps an hour between passes: so no hold comes due (every example checks that no
HELD part is due at the frozen time, so that if one were the failure would say so), no saga
comes up for recovery, and nothing but the calls sent writes. The one pass a sweeper makes
as its server starts is waited out (Fuzz.start). Each example starts from the same seeded
world, made once through the API and restored from its dumps, so a failure replays and
shrinks. In CI the examples are derandomized: the same ones every run.

Request streams (StreamEvents, ReconcileCount) are sent on a plain channel, the others on
an asyncio one: the asyncio client may report an INTERNAL of its own over the status of a
server that ended a stream before reading all of it (grpc/grpc#36066).

Sizes. By default 15 examples per RPC (8 per RPC of raw bytes, 15 sequences): about 30 s
on a shared two-core machine. A longer run sets OMNISTOCK_FUZZ_EXAMPLES (examples per RPC;
the others scale with it) and draws fresh examples each run:

    OMNISTOCK_FUZZ_EXAMPLES=1000 .venv/bin/python -m pytest tests/test_fuzz.py -q

(200 per RPC take about 6 minutes there, 1000 about 30; a failure prints the
`@reproduce_failure` blob that replays it).
"""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.app import Omnistock, create_server
from engine.domain.clock import ManualClock
from engine.domain.geo import HALF_CIRCUMFERENCE_KM
from engine.domain.model import (
    MAX_EVENTS,
    MAX_ID_LENGTH,
    MAX_LINES,
    MAX_QTY,
    MAX_SKUS,
    MAX_TTL_SECONDS,
)
from engine.domain.supply import DAY_MS
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.keys import ALERTS, Keys

from .conftest import HOUR_MS, settings_for
from .grpc_helpers import LON, Stubs, north
from .invariants import arithmetic_problems, read_holds, reserved_problems, served_levels

EXAMPLES = int(os.environ.get("OMNISTOCK_FUZZ_EXAMPLES", "0"))
LONG_RUN = EXAMPLES > 0
PER_RPC = EXAMPLES or 15
FUZZ = settings(
    max_examples=PER_RPC,
    deadline=None,
    derandomize=not LONG_RUN,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # the server lives across examples; reset in each
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
# the per-test timeout of the suite (120 s) fits CI's sizes; a long run needs more
TIMEOUT = pytest.mark.timeout(max(120, PER_RPC * 3))
CALL_TIMEOUT = 10.0  # s: far above any call here; a hang fails (DEADLINE_EXCEEDED) in time
WATCH_WAIT = 0.1  # s: an accepted watch without send_current says nothing until a change

NOW = ManualClock().now  # the engine's time, frozen
T0 = NOW - HOUR_MS  # when the seeded rows were counted
WINDOW_MS = 72 * HOUR_MS
HELD_TTL = 3600.0

OK = grpc.StatusCode.OK
DEFINED = {
    OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # a message over grpc's 4 MB limit
}
NAMES_A_FIELD = re.compile(r"^[A-Za-z_][\w.\[\]]*: \S")


# -- the seeded world ---------------------------------------------------------------------

# A store, a warehouse, a dark store whose id has every punctuation an id may hold, and an
# inactive store; three skus, one again with every punctuation.
STORE, DC, DARK, CLOSED = "L1", "dc.gb_1", "s:x/y@z+w-v", "closed-1"
LOCATIONS = (STORE, DC, DARK)
SKUS = ("SKU-1", "sku_2", "a.b:c/d@e+f-g")


def seed_locations() -> list[pb.Location]:
    def loc(loc_id: str, km: float, kind: int, **fields: Any) -> pb.Location:
        base = {"pickup_enabled": True, "ship_enabled": True, "active": True}
        base.update(fields)
        return pb.Location(
            id=loc_id, name=loc_id, type=kind, latitude=north(km), longitude=LON, **base
        )

    return [
        loc(STORE, 1, pb.LOCATION_TYPE_STORE, ship_capacity=3, priority=1, country="GB"),
        loc(DC, 30, pb.LOCATION_TYPE_DC, pickup_enabled=False, country="GB", region="north"),
        loc(DARK, 5, pb.LOCATION_TYPE_DARK_STORE, priority=-2),
        loc(CLOSED, 2, pb.LOCATION_TYPE_STORE, active=False),
    ]


def seed_count(loc: str, sku: str, qty: int, t: int = T0) -> pb.StockEvent:
    return pb.StockEvent(
        event_id=f"seed:{loc}:{sku}:{t}",
        location_id=loc,
        sku=sku,
        kind=pb.EVENT_KIND_COUNT,
        qty=qty,
        source_time=t,
    )


def held(rid: str, *lines: tuple[str, str, int]) -> pb.ReserveRequest:
    return pb.ReserveRequest(
        reservation_id=rid,
        lines=[pb.ReservationLine(location_id=loc, sku=sku, qty=q) for loc, sku, q in lines],
        ttl_seconds=HELD_TTL,
    )


async def seed(stubs: Stubs) -> None:
    """Rows of 50 at every location; safety stock; holds HELD at one and at two locations,
    committed (a unit of it returned at another location), released, a held Allocate plan
    taking pick capacity, a row left short by a later count (its hold uncovered); a mapped
    source."""
    s, r = stubs.stock, stubs.reservations
    await s.UpsertLocations(pb.UpsertLocationsRequest(locations=seed_locations()))
    await s.SetMappings(
        pb.SetMappingsRequest(
            mappings=[
                pb.Mapping(
                    source="shop", kind=pb.MAPPING_KIND_LOCATION, external_id="ext-1", id=STORE
                ),
                pb.Mapping(
                    source="shop", kind=pb.MAPPING_KIND_ITEM, external_id="item-9", id="SKU-1"
                ),
            ]
        )
    )
    counts = [seed_count(loc, sku, 50) for loc in (*LOCATIONS, CLOSED) for sku in SKUS]
    await s.ApplyEvents(pb.ApplyEventsRequest(events=counts))
    entry = pb.SafetyStockEntry(location_id=STORE, sku="SKU-1", qty=5)
    await s.SetSafetyStock(pb.SetSafetyStockRequest(entries=[entry]))
    await r.Reserve(held("held-1", (STORE, "SKU-1", 2)))
    await r.Reserve(held("held-2", (STORE, "sku_2", 1), (DC, "SKU-1", 3)))
    await r.Reserve(held("done-1", (STORE, "SKU-1", 1)))
    await r.Commit(pb.CommitRequest(reservation_id="done-1"))
    await s.RecordReturn(
        pb.RecordReturnRequest(
            return_id="ret-1",
            location_id=DC,
            lines=[pb.ReturnLine(sku="SKU-1", qty=1)],
            reservation_id="done-1",
        )
    )
    await r.Reserve(held("gone-1", (DC, "sku_2", 1)))
    await r.Release(pb.ReleaseRequest(reservation_id="gone-1"))
    await stubs.sourcing.Allocate(
        pb.AllocateRequest(
            lines=[pb.BasketLine(sku="sku_2", qty=2)],
            latitude=north(0),
            longitude=LON,
            reserve=True,
            reservation_id="order-1",
            ttl_seconds=HELD_TTL,
            location_types=[pb.LOCATION_TYPE_STORE],
        )
    )
    await s.UpsertNetworks(
        pb.UpsertNetworksRequest(
            networks=[
                pb.Network(name="net-1", selectors=[pb.LocationSelector(countries=["GB"])]),
                pb.Network(name="net-2", location_ids=[STORE, DARK, CLOSED]),
            ]
        )
    )
    await r.Reserve(held("short-1", (DARK, SKUS[2], 40)))
    kit = [pb.BundleComponent(sku="SKU-1", qty=2), pb.BundleComponent(sku="sku_2", qty=1)]
    await s.SetBundles(pb.SetBundlesRequest(bundles=[pb.Bundle(sku="KIT-1", components=kit)]))
    await r.Reserve(held("kit-1", (DC, "KIT-1", 2), (STORE, "KIT-1", 1)))
    await s.ApplyEvents(pb.ApplyEventsRequest(events=[seed_count(DARK, SKUS[2], 10, T0 + 1)]))
    # future supply, and transfers made and in transit (issue 17)
    supply = pb.Supply(supply_id="po-1", location_id=STORE, sku="SKU-1", qty=5)
    supply.expected_at = NOW + 3 * DAY_MS
    await s.UpsertSupply(pb.UpsertSupplyRequest(supplies=[supply]))
    for tid in ("tr-made", "tr-shipped"):
        lines = [pb.TransferLine(sku="SKU-1", qty=2), pb.TransferLine(sku="sku_2", qty=1)]
        transfer = pb.CreateTransferRequest(
            transfer_id=tid, from_location_id=DC, to_location_id=STORE, lines=lines
        )
        transfer.expected_at = NOW + DAY_MS
        await s.CreateTransfer(transfer)
    await s.ShipTransfer(pb.ShipTransferRequest(transfer_id="tr-shipped"))


# -- values ---------------------------------------------------------------------------------
#
# Each field has two strategies: `clean`, valid values at and inside the engine's bounds
# (mostly of the seeded world, so that calls go deep), and `wild`, which adds valid but
# unknown values and hostile ones.


@dataclass(frozen=True)
class Pool:
    clean: st.SearchStrategy[Any]
    wild: st.SearchStrategy[Any]


def pool(clean: st.SearchStrategy[Any], *wild: st.SearchStrategy[Any]) -> Pool:
    return Pool(clean, st.one_of(clean, *wild))


VALID_ID = st.from_regex(r"[A-Za-z0-9._:/@+-]{1,20}", fullmatch=True)
TEXT = st.characters(codec="utf-8")  # any unicode that protobuf can carry
HOSTILE_TEXT = st.one_of(
    st.sampled_from(
        [
            "", " ", "\n", "L1\n", "\nL1", "L1\r\n", "L1\x00", "\x00", "L1 ", "\t", "\u2028",
            "{L1}", "{", "}", "L1}:s:0", "res:{held-1}", "{omnistock}:locations", "a|b",
            "é", "日本", "🙂", "\ufeffL1", "%s%d", "*", "?", "[a]", "\\", "'", '"', "..",
            "x" * MAX_ID_LENGTH, "x" * (MAX_ID_LENGTH + 1),
        ]
    ),
    st.text(TEXT, max_size=30),
    st.text(TEXT, min_size=120, max_size=400),
)  # fmt: skip


def ids(*known: str, clean: st.SearchStrategy[str] | None = None) -> Pool:
    """Clean: ids the world knows; wild: also valid unknown ids, and hostile strings."""
    return pool(st.sampled_from(known) if clean is None else clean, VALID_ID, HOSTILE_TEXT)


RESERVATION_IDS = (
    "held-1",
    "held-2",
    "done-1",
    "gone-1",
    "order-1",
    "short-1",
    "kit-1",
    "fresh-1",
    "fresh-2",
)
EVENT_IDS = st.sampled_from([f"seed:{STORE}:SKU-1:{T0}", "e-1", "e-2", "c:done-1"])
STRINGS: dict[str, Pool] = {
    "location": ids(*LOCATIONS, CLOSED),
    "sku": ids(*SKUS, "SKU-new", "item-9", "KIT-1"),
    "reservation_id": ids(*RESERVATION_IDS),
    "move_id": ids("move-1", "move-2"),
    "return_id": ids(clean=st.one_of(st.sampled_from(["ret-1", "ret-2"]), VALID_ID)),
    "omnistock.v1.RecordReturnRequest.reservation_id": ids("", "", *RESERVATION_IDS),
    # a new hold and a new plan also need ids no one holds yet; an event, often none
    "omnistock.v1.ReserveRequest.reservation_id": ids(
        clean=st.one_of(st.sampled_from(RESERVATION_IDS), VALID_ID)
    ),
    "omnistock.v1.AllocateRequest.reservation_id": ids(
        clean=st.one_of(st.sampled_from(RESERVATION_IDS), VALID_ID)
    ),
    "omnistock.v1.StockEvent.reservation_id": ids("", "", *RESERVATION_IDS),
    "event_id": ids(clean=st.one_of(EVENT_IDS, VALID_ID)),
    "source": pool(st.sampled_from(["", "", "till-1"]), st.just("shop"), HOSTILE_TEXT),
    "omnistock.v1.Mapping.source": ids("shop", "till-1", "square"),
    "count_id": ids(clean=st.one_of(st.sampled_from(["count-1", "count-2"]), VALID_ID)),
    "external_id": ids("ext-1", "item-9", "ext-new"),
    "omnistock.v1.Mapping.id": ids(STORE, DC, "SKU-1", "sku_2", ""),
    "omnistock.v1.Location.id": ids(*LOCATIONS, CLOSED, "new-1", "new-2"),
    "omnistock.v1.Network.name": ids("net-1", "net-2", "net-new"),
    "network": ids("net-1", "net-2"),
    "supply_id": ids("po-1", "po-2", "po-new"),
    "transfer_id": ids("tr-made", "tr-shipped", "tr-new"),
    "country": pool(st.sampled_from(["GB", "FR", "US", ""]), st.sampled_from(["UK", "gb", "G"])),
    "countries": pool(st.sampled_from(["GB", "FR", "US"]), st.sampled_from(["UK", "gb", ""])),
    "region": ids("north", "london", ""),
    "regions": ids("north", "london"),
    "name": pool(
        st.sampled_from(["", "Shop", "x" * 200, "Café \u2013 Straße 日本 🙂"]),
        st.sampled_from(["x" * 201, "Shop\nfront", "\x7f", "\u2028"]),
        st.text(TEXT, max_size=60),
    ),
}

INT64_EDGES = [0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63)]
INT64 = st.integers(-(2**63), 2**63 - 1)
QTY_EDGES = [*INT64_EDGES, MAX_QTY + 1, -MAX_QTY, -MAX_QTY - 1]
QTY = pool(st.one_of(st.integers(1, 60), st.just(MAX_QTY)), st.sampled_from(QTY_EDGES), INT64)
COUNTED = pool(st.one_of(st.integers(0, 60), st.just(MAX_QTY)), st.sampled_from(QTY_EDGES), INT64)
DELTA = pool(
    st.one_of(st.integers(-60, 60), st.sampled_from([MAX_QTY, -MAX_QTY])),
    st.sampled_from(QTY_EDGES),
    INT64,
)
TIME = pool(
    st.one_of(
        st.integers(T0 - 10, T0 + 10),
        st.integers(T0 - HOUR_MS, NOW + 300_000),
        st.sampled_from([NOW, NOW + 300_000, NOW - WINDOW_MS + 1]),
    ),
    st.sampled_from([*INT64_EDGES, NOW + 300_001, NOW - WINDOW_MS, NOW + HOUR_MS]),
    INT64,
)
INTS: dict[str, Pool] = {
    "omnistock.v1.StockEvent.qty": DELTA,
    "omnistock.v1.SafetyStockEntry.qty": COUNTED,
    "omnistock.v1.CountLine.qty": COUNTED,
    "qty": QTY,
    "source_time": TIME,
    "counted_at": TIME,
    # a supply's or a transfer's expected time: around now, a day back, two years ahead
    "expected_at": pool(
        st.integers(NOW - DAY_MS, NOW + 60 * DAY_MS),
        st.sampled_from([*INT64_EDGES, NOW - DAY_MS - 1, NOW + 2 * 366 * DAY_MS + 1]),
        INT64,
    ),
}


def uint32(high: int) -> Pool:
    return pool(
        st.integers(0, high),
        st.sampled_from([high + 1, 2**31, 2**32 - 1]),
        st.integers(0, 2**32 - 1),
    )


UINT32S = {"limit": uint32(100), "max_shipments": uint32(10), "ship_capacity": uint32(5)}
INT32 = pool(
    st.integers(-5, 5), st.sampled_from([2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1)
)
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1e308, -1e308]


def floats(low: float, high: float, *edges: float) -> Pool:
    """Clean: within [low, high] and at its ends; wild: the edges given, NaN, +-inf, -0.0,
    the smallest and largest doubles, any double."""
    return pool(
        st.one_of(st.floats(low, high), st.sampled_from([low, high])),
        st.sampled_from([*edges, *SPECIAL_FLOATS]),
        st.floats(allow_nan=True, allow_infinity=True),
    )


EDGE_KM = HALF_CIRCUMFERENCE_KM
FLOATS = {
    "latitude": floats(51.4, 51.9, 90.0, -90.0, 90.000001, -90.000001),
    "longitude": floats(-0.3, 0.1, 180.0, -180.0, 180.000001, -180.000001),
    "radius_km": floats(0.001, 100.0, 0.0, EDGE_KM, EDGE_KM + 1e-6),
    "max_distance_km": floats(0.0, 100.0, EDGE_KM, EDGE_KM + 1e-6),
    "ttl_seconds": floats(
        0.0, 7200.0, 1e-300, 0.0004, 0.001, MAX_TTL_SECONDS, MAX_TTL_SECONDS + 1e-3
    ),
}


# -- messages from the proto's fields ---------------------------------------------------------


def named(table: dict[str, Pool], f: FieldDescriptor, default: Pool) -> Pool:
    return table.get(f.full_name) or table.get(f.name) or default


def enums(f: FieldDescriptor) -> Pool:
    return pool(
        st.sampled_from([v.number for v in f.enum_type.values]), st.integers(-(2**31), 2**31 - 1)
    )


def strings(f: FieldDescriptor) -> Pool:
    return named(STRINGS, f, STRINGS["location"] if "location" in f.name else STRINGS["sku"])


BY_TYPE: dict[int, Callable[[FieldDescriptor], Pool]] = {
    FieldDescriptor.TYPE_STRING: strings,
    FieldDescriptor.TYPE_DOUBLE: lambda f: named(FLOATS, f, floats(0.0, 10.0)),
    FieldDescriptor.TYPE_BOOL: lambda f: Pool(st.booleans(), st.booleans()),
    FieldDescriptor.TYPE_ENUM: enums,
    FieldDescriptor.TYPE_INT64: lambda f: named(INTS, f, QTY),
    FieldDescriptor.TYPE_INT32: lambda f: INT32,
    FieldDescriptor.TYPE_UINT32: lambda f: named(UINT32S, f, uint32(5)),
    FieldDescriptor.TYPE_MESSAGE: lambda f: Pool(clean(f.message_type), message(f.message_type)),
}

# Sizes a repeated field is grown to, beyond the few entries drawn: the engine's bounds.
BIG = [MAX_LINES, MAX_LINES + 1, MAX_SKUS, MAX_SKUS + 1, 3000, MAX_EVENTS, MAX_EVENTS + 1]
SIZES = st.one_of(st.none(), st.none(), st.none(), st.none(), st.sampled_from(BIG))


def values(f: FieldDescriptor) -> Pool:
    """The field's strategies; a repeated field's are lists of its values, short or grown
    to one of the sizes in BIG: clean ones of clean values; wild ones either clean but for
    one entry, or of any values (empty too)."""
    one = BY_TYPE[f.type](f)
    if not f.is_repeated:
        return one
    unique = None
    if f.message_type is not None and set(f.message_type.fields_by_name) == {"sku", "qty"}:
        unique = attrgetter("sku")  # a basket or a count lists each sku once
    clean_list = st.lists(one.clean, min_size=1, max_size=4, unique_by=unique)
    odd = st.builds(with_one, clean_list, one.wild, st.integers(0, 3))
    # A list of messages that hold lists themselves (networks of selectors of countries) is
    # not grown: the lists inside are, and grown both ways they would be billions of values.
    sizes = st.none() if _holds_lists(f) else SIZES
    return Pool(
        st.builds(grow, clean_list, sizes),
        st.builds(grow, st.one_of(odd, st.lists(one.wild, max_size=6)), sizes),
    )


def _holds_lists(f: FieldDescriptor) -> bool:
    return f.message_type is not None and any(sub.is_repeated for sub in f.message_type.fields)


def with_one(items: list[Any], odd: Any, at: int) -> list[Any]:
    """`items` with `odd` in place of one of them."""
    return [odd if i == at % len(items) else item for i, item in enumerate(items)]


def grow(items: list[Any], size: int | None) -> list[Any]:
    """`items` repeated up to `size` entries, each copy's ids suffixed ".<n>" so that the
    copies are distinct (skus, event ids) rather than refused as repeats."""
    if size is None or not items:
        return items
    out = list(items)
    while len(out) < size:
        n = len(out)
        out.append(distinct(items[n % len(items)], n))
    return out


def distinct(item: Any, n: int) -> Any:
    if isinstance(item, str):
        return f"{item}.{n}"
    if isinstance(item, Message):
        copy = type(item)()
        copy.CopyFrom(item)
        for name in ("sku", "event_id"):
            if name in copy.DESCRIPTOR.fields_by_name and getattr(copy, name):
                setattr(copy, name, f"{getattr(copy, name)}.{n}")
        return copy
    return item


def clean(descriptor: Descriptor) -> st.SearchStrategy[Message]:
    """A valid-looking message: every field set to a clean value (a field with presence,
    such as an optional cost, may be left unset)."""
    cls = getattr(pb, descriptor.name)
    required = {f.name: values(f).clean for f in descriptor.fields if not f.has_presence}
    optional = {f.name: values(f).clean for f in descriptor.fields if f.has_presence}
    made = st.fixed_dictionaries(required, optional=optional).map(lambda v: build(cls, v))
    return made.map(FIXES.get(descriptor.name, lambda m: m))


def fix_event(event: Message) -> Message:
    """A clean stock event: a COUNT counts at least 0 units, a DELTA moves at least one."""
    if event.kind == pb.EVENT_KIND_COUNT:
        event.qty = abs(event.qty)
    elif event.qty == 0:
        event.qty = -1
    return event


FIXES: dict[str, Callable[[Message], Message]] = {"StockEvent": fix_event}


@st.composite
def one_off(draw: st.DrawFn, descriptor: Descriptor) -> Message:
    """A clean message but for one field, wild or unset: the bad value behind good ones."""
    cls = getattr(pb, descriptor.name)
    fields = {f.name: values(f) for f in descriptor.fields}
    got = {name: draw(v.clean, label=name) for name, v in fields.items()}
    if not fields:  # a message of no fields has no odd one
        return build(cls, got)
    odd = draw(st.sampled_from(sorted(fields)), label="the odd field")
    if draw(st.booleans(), label="unset"):
        del got[odd]
    else:
        got[odd] = draw(fields[odd].wild, label=odd)
    return build(cls, got)


def wild(descriptor: Descriptor) -> st.SearchStrategy[Message]:
    """Any message: each field unset or set to a wild value."""
    cls = getattr(pb, descriptor.name)
    fields = {f.name: values(f).wild for f in descriptor.fields}
    return st.fixed_dictionaries({}, optional=fields).map(lambda v: build(cls, v))


def message(descriptor: Descriptor) -> st.SearchStrategy[Message]:
    """A message of this type, built from its fields: clean, clean but for one, or wild."""
    return st.deferred(lambda: st.one_of(clean(descriptor), one_off(descriptor), wild(descriptor)))


def build(cls: type[Message], values: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        f = cls.DESCRIPTOR.fields_by_name[name]
        if f.is_repeated:
            getattr(msg, name).extend(value)
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(msg, name).CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


# -- the RPCs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    path: str
    method: MethodDescriptor

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def kind(self) -> str:
        request = "stream" if self.method.client_streaming else "unary"
        response = "stream" if self.method.server_streaming else "unary"
        return f"{request}_{response}"

    @property
    def request(self) -> type[Message]:
        return getattr(pb, self.method.input_type.name)  # type: ignore[no-any-return]

    @property
    def response(self) -> type[Message]:
        return getattr(pb, self.method.output_type.name)  # type: ignore[no-any-return]


RPCS = {
    m.name: Rpc(f"/{service.full_name}/{m.name}", m)
    for service in pb.DESCRIPTOR.services_by_name.values()
    for m in service.methods
}


@st.composite
def counts(draw: st.DrawFn) -> list[Message]:
    """A ReconcileCount stream: clean (a header first, each sku once, the last message
    marked end), clean but for a hostile header or lines and a missing end, or any
    messages in any order."""
    mode = draw(st.sampled_from(["clean", "clean", "one off", "wild"]), label="count")
    if mode == "wild":
        return draw(st.lists(message(pb.ReconcileCountRequest.DESCRIPTOR), max_size=4))
    lines = values(pb.ReconcileCountRequest.DESCRIPTOR.fields_by_name["lines"])
    if mode == "clean":
        header, counted = clean(pb.CountHeader.DESCRIPTOR), lines.clean
    else:
        header, counted = message(pb.CountHeader.DESCRIPTOR), st.one_of(lines.clean, lines.wild)
    got = draw(counted, label="lines")
    cuts = sorted(draw(st.lists(st.integers(0, len(got)), max_size=2), label="messages"))
    stream = [
        pb.ReconcileCountRequest(lines=got[a:b])
        for a, b in zip([0, *cuts], [*cuts, len(got)], strict=True)
    ]
    stream[0].header.CopyFrom(draw(header, label="header"))
    stream[-1].end = mode == "clean" or draw(st.booleans(), label="end")
    return stream


def payloads(rpc: Rpc) -> st.SearchStrategy[Any]:
    """What one call of `rpc` sends: a message, or a list of them for a client stream."""
    if rpc.name == "ReconcileCount":
        return counts()
    one = message(rpc.request.DESCRIPTOR)
    return st.lists(one, max_size=4) if rpc.method.client_streaming else one


def serialized(rpc: Rpc) -> st.SearchStrategy[bytes]:
    """Bytes that are not a well-formed request: random, a valid one cut short, bit-flipped."""
    valid = message(rpc.request.DESCRIPTOR).map(lambda m: m.SerializeToString())
    return st.one_of(
        st.binary(min_size=1, max_size=300),
        st.tuples(valid, st.integers(0, 2**16)).map(lambda v: v[0][: v[1] % (len(v[0]) + 1)]),
        st.tuples(valid, st.integers(0, 2**16), st.integers(0, 7)).map(flip),
    )


def flip(value: tuple[bytes, int, int]) -> bytes:
    data, at, bit = value
    if not data:
        return b"\xff"
    i = at % len(data)
    return data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :]


def raw_payloads(rpc: Rpc) -> st.SearchStrategy[Any]:
    one = serialized(rpc)
    return st.lists(one, min_size=1, max_size=3) if rpc.method.client_streaming else one


# -- calling --------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str = ""
    answers: list[Any] = field(default_factory=list)


def generic(channel: grpc.Channel | grpc.aio.Channel, rpc: Rpc, raw: bool) -> Any:
    """The channel's generic method for `rpc`: typed requests, or raw bytes."""
    return getattr(channel, rpc.kind)(
        rpc.path,
        request_serializer=None if raw else rpc.request.SerializeToString,
        response_deserializer=rpc.response.FromString,
    )


async def invoke(channel: grpc.aio.Channel, rpc: Rpc, payload: Any, raw: bool) -> Outcome:
    """One call of a unary request, on the asyncio channel."""
    method = generic(channel, rpc, raw)
    try:
        if rpc.kind == "unary_stream":
            return await watch(method(payload, timeout=CALL_TIMEOUT))
        return Outcome(OK, answers=[await method(payload, timeout=CALL_TIMEOUT)])
    except grpc.aio.AioRpcError as err:
        return Outcome(err.code(), err.details() or "")


def invoke_streaming(channel: grpc.Channel, rpc: Rpc, payload: Any, raw: bool) -> Outcome:
    """One call of a request stream, on a plain (thread) channel: when a server ends a
    stream it has not read to the end, the asyncio client may report its own INTERNAL
    ("Internal error from Core") over the server's status (grpc/grpc#36066; the server
    answered as it should, and the plain client reports that). Every answer is kept, also
    those before the status that ended the stream."""
    got = Outcome(OK)
    try:
        if rpc.kind == "stream_unary":
            got.answers.append(generic(channel, rpc, raw)(iter(payload), timeout=CALL_TIMEOUT))
        else:
            for answer in generic(channel, rpc, raw)(iter(payload), timeout=CALL_TIMEOUT):
                got.answers.append(answer)
    except grpc.RpcError as err:
        got.code, got.details = err.code(), err.details() or ""
    return got


async def watch(call: Any) -> Outcome:
    """A watch answers its opening state (if asked) at once, then only changes: read what
    comes until it falls silent, then hang up. A refused watch ends with its status."""
    answers = []
    while True:
        try:
            answer = await asyncio.wait_for(call.read(), WATCH_WAIT)
        except TimeoutError:
            call.cancel()
            return Outcome(OK, answers=answers)  # open and waiting for changes: accepted
        if answer is grpc.aio.EOF:
            break
        answers.append(answer)
    code = await call.code()
    return Outcome(code, await call.details() or "", answers)


State = dict[bytes, tuple[bytes, int]]
# Every key's DUMP and absolute expiry (-1: none), read in one step (tests only: a script
# that names keys it was not given runs on one Redis, never on a cluster).
SNAPSHOT = """
local out = {}
for _, key in ipairs(redis.call('KEYS', '*')) do
  out[#out + 1] = {key, redis.call('DUMP', key), redis.call('PEXPIRETIME', key)}
end
return out
"""


async def snapshot(redis: aioredis.Redis) -> State:
    """Every key with its serialized value and absolute expiry: equal snapshots, equal data
    (tests/test_edge.py's snapshot, with the expiry too: a refused call may not move it)."""
    return {key: (value, expires_at) for key, value, expires_at in await redis.eval(SNAPSHOT, 0)}


def without_shortages(state: State) -> State:
    return {key: value for key, value in state.items() if key != ALERTS.encode()}


async def shortage_events(redis: aioredis.Redis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(ALERTS)]


def diff(before: State, after: State) -> dict[str, list[bytes]]:
    return {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k]),
    }


# -- the harness ------------------------------------------------------------------------------


class Fuzz:
    """A server on the real embedded store, with the checks every call is put through."""

    def __init__(self, redis: aioredis.Redis, url: str) -> None:
        self.redis = redis
        self.url = url
        self.clock = ManualClock(NOW)
        self.starts = 0

    async def start(self) -> None:
        """A server on the store as it is; returns once the pass its sweeper makes on
        starting is over (then the sweeper sleeps an hour): from then on nothing writes
        but the calls sent. The sign: a saga due now, of an id that names nothing, is put
        in the sagas index; the sweeper's pass ends by recovering the sagas due, which for
        this one is taking it off the index (so it leaves no trace)."""
        self.starts += 1
        probe = f"fuzz-probe-{self.starts}"
        await self.redis.zadd(Keys.sagas(probe), {probe: self.clock.now - 1})
        # The store is restored from snapshots by hand (RESTORE publishes no row change):
        # a read cache could not see it, so reads here go to Redis (README, read cache);
        # so do a network's (the network view follows the same messages).
        settings_ = settings_for(
            self.url, sweep_interval_ms=HOUR_MS, read_cache_rows=0, network_view_rows=0
        )
        self.app: Omnistock = create_server(settings_, self.clock)
        await self.app.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.app.port}")
        self.streaming = grpc.insecure_channel(f"127.0.0.1:{self.app.port}")
        self.stubs = Stubs(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        async with asyncio.timeout(CALL_TIMEOUT):  # polled: the sign is in Redis
            while True:
                if await self.redis.zscore(Keys.sagas(probe), probe) is None:
                    return
                await asyncio.sleep(0.001)

    async def stop(self) -> None:
        self.streaming.close()
        await self.channel.close()
        await self.app.stop(grace=1.0)

    async def restart(self) -> None:
        """A new server process on the same Redis, as after a crash or a deploy."""
        await self.stop()
        await self.start()

    async def seed(self) -> None:
        """The seeded world, made once through the API and kept as its keys' dumps."""
        await self.redis.flushall()
        await seed(self.stubs)
        await self.invariants()
        self.seeded = await snapshot(self.redis)

    async def restore(self, state: State) -> None:
        """The store as it was in `state`, and the server's locations and networks
        reloaded."""
        await self.redis.flushall()
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, (value, expires_at) in state.items():
                ttl = max(expires_at, 0)  # RESTORE ... ABSTTL with 0: no expiry
                pipe.restore(key, ttl, value, absttl=True)
            await pipe.execute()
        await self.app.locations.reload()
        await self.app.networks.reload()

    async def reset(self) -> None:
        """The seeded world and nothing else. The server (started on the last example's
        data, its sweeper's pass over) reloads its location cache; its mapping cache is
        still unread since it started, so it reads this world's mappings on first use."""
        await self.restore(self.seeded)

    async def call(self, rpc: Rpc, payload: Any, raw: bool) -> Outcome:
        if rpc.method.client_streaming:
            return await asyncio.to_thread(invoke_streaming, self.streaming, rpc, payload, raw)
        return await invoke(self.channel, rpc, payload, raw)

    async def send(self, rpc: Rpc, payload: Any, raw: bool = False) -> Outcome:
        """One call, and every check after it."""
        before = await snapshot(self.redis)
        got = await self.call(rpc, payload, raw)
        event(f"{rpc.name}: {got.code.name}")
        assert got.code in DEFINED, f"{rpc.name} answered {got.code.name}: {got.details}"
        if got.code == grpc.StatusCode.INVALID_ARGUMENT:
            assert NAMES_A_FIELD.match(got.details), f"{rpc.name}: no field named: {got.details!r}"
        if got.code != OK or every_event_rejected(rpc, got):
            await self.refusal_wrote_nothing(rpc, payload, raw, before, got)
        await asyncio.gather(self.alive(), self.invariants())
        return got

    async def refusal_wrote_nothing(
        self, rpc: Rpc, payload: Any, raw: bool, before: State, got: Outcome
    ) -> None:
        after = await snapshot(self.redis)
        if got.answers and rpc.kind == "stream_stream":
            await self.only_answered_messages_wrote(rpc, payload, raw, before, after, got)
            return
        refused = f"refused {rpc.name} ({got.code.name}: {got.details})"
        assert after == before, f"{refused} wrote: {diff(before, after)}"

    async def only_answered_messages_wrote(
        self, rpc: Rpc, payload: Any, raw: bool, before: State, after: State, got: Outcome
    ) -> None:
        """A StreamEvents stream refused after some answers: the messages answered were
        applied (each answer acknowledges one), the refused one and what followed it were
        not. So the store is as after a stream of just the messages answered: sent again
        from the state before, they must leave every key as the refused stream did. (The
        shortage events are compared by content: their stream ids are Redis' own clock.)"""
        answered = payload[: len(got.answers)]
        shortages = await shortage_events(self.redis)
        await self.restore(before)
        again = await self.call(rpc, answered, raw)
        assert again.code == OK and len(again.answers) == len(answered), again
        replayed = await snapshot(self.redis)
        refused = f"refused {rpc.name} ({got.code.name}: {got.details})"
        assert without_shortages(replayed) == without_shortages(after), (
            f"{refused} after {len(answered)} answers wrote more than those messages: "
            f"{diff(replayed, after)}"
        )
        assert await shortage_events(self.redis) == shortages, refused

    async def alive(self) -> None:
        """The server answers health and a small read."""
        status = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        read = pb.GetAvailabilityRequest(skus=["SKU-1"], location_ids=[STORE])
        got = await self.stubs.availability.GetAvailability(read, timeout=CALL_TIMEOUT)
        assert [(lv.location_id, lv.sku) for lv in got.levels] == [(STORE, "SKU-1")]

    async def invariants(self) -> None:
        """I1 on every row of every location (stored, and as served for the seeded rows), no
        HELD part due at the frozen time (so nothing moves in the background), and the
        availability arithmetic of the seeded rows as served."""
        storage = self.app.storage
        locations = sorted(await storage.load_locations())
        holds = await read_holds(storage, locations)
        due = await storage.due(locations, self.clock.now, limit=100)
        levels = await served_levels(self.stubs, LOCATIONS, SKUS)
        served = {row: level.reserved for row, level in levels.items()}
        problems = reserved_problems(holds, served) + arithmetic_problems(levels)
        assert not problems, "\n".join(problems)
        assert not due, f"HELD parts due at the frozen time {self.clock.now}: {due}"

    async def after_restart(self) -> None:
        """The example's end: a new server on the same data keeps I1 and answers."""
        await self.restart()
        await asyncio.gather(self.alive(), self.invariants())


def every_event_rejected(rpc: Rpc, got: Outcome) -> bool:
    """A StreamEvents call whose every event was rejected changes nothing either."""
    if rpc.name != "StreamEvents" or got.code != OK:
        return False
    acks = [ack for answer in got.answers for ack in answer.acks]
    return bool(acks) and all(a.outcome == pb.EVENT_OUTCOME_REJECTED for a in acks)


@pytest.fixture(autouse=True)
def bounded_shrinking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hypothesis shrinks a failure for up to five minutes; a minute finds the short story
    (as in tests/test_model.py; this is Hypothesis' internal setting)."""
    conjecture_engine = importlib.import_module("hypothesis.internal.conjecture.engine")
    monkeypatch.setattr(conjecture_engine, "MAX_SHRINKING_SECONDS", 60, raising=False)


@pytest.fixture
async def fuzz(redis: aioredis.Redis, one_redis_url: str) -> AsyncIterator[Fuzz]:
    harness = Fuzz(redis, one_redis_url)
    await harness.start()
    await harness.seed()
    yield harness
    await harness.stop()


async def example(fuzz: Fuzz, calls: Iterable[tuple[Rpc, Any]], raw: bool = False) -> None:
    await fuzz.reset()
    for rpc, payload in calls:
        await fuzz.send(rpc, payload, raw)
    await fuzz.after_restart()


# -- the tests ------------------------------------------------------------------------------

NAMES = sorted(RPCS)


def test_every_rpc_of_the_proto_is_fuzzed() -> None:
    services = {s.name for s in pb.DESCRIPTOR.services_by_name.values()}
    assert services == {
        "AvailabilityService", "ReservationService", "SourcingService", "StockService",
        "OperatorService",
    }  # fmt: skip
    assert len(NAMES) == 37, NAMES


@TIMEOUT
@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
async def test_hostile_messages_get_a_defined_answer_and_a_refusal_writes_nothing(
    fuzz: Fuzz, name: str, data: st.DataObject
) -> None:
    # given the seeded world, and a request of this RPC built from hostile field values
    rpc = RPCS[name]
    payload = data.draw(payloads(rpc), label="request")
    again = data.draw(st.booleans(), label="sent twice")
    # when it is sent (and again: a retry), then every check holds after each call
    await example(fuzz, [(rpc, payload)] * (2 if again else 1))


@TIMEOUT
@pytest.mark.parametrize("name", NAMES)
@settings(FUZZ, max_examples=max(8, PER_RPC // 2))
@given(data=st.data())
async def test_bytes_that_are_not_the_message_get_a_defined_answer(
    fuzz: Fuzz, name: str, data: st.DataObject
) -> None:
    # given bytes that are random, or a valid request cut short or with a bit flipped
    rpc = RPCS[name]
    payload = data.draw(raw_payloads(rpc), label="bytes")
    # when they are sent as the request, then every check holds
    await example(fuzz, [(rpc, payload)], raw=True)


def sequences() -> st.SearchStrategy[list[tuple[str, Any]]]:
    step = st.sampled_from(NAMES).flatmap(
        lambda name: st.tuples(st.just(name), payloads(RPCS[name]))
    )
    return st.lists(step, min_size=2, max_size=6)


@TIMEOUT
@FUZZ
@given(calls=sequences())
async def test_sequences_of_hostile_calls_keep_the_invariants(
    fuzz: Fuzz, calls: Sequence[tuple[str, Any]]
) -> None:
    # given the seeded world, when a few hostile calls of any RPCs follow each other (a
    # hold made by one committed, released or extended by the next), then every check
    # holds after each, and after a restart
    await example(fuzz, [(RPCS[name], payload) for name, payload in calls])
