"""The engine, driven side by side with a plain in-memory model of the brief's rules.

A hypothesis state machine sends stock events, reservations, commits, releases, extends,
moves of held lines to other locations (MoveLine, and its retries), safety stock changes and
clock moves (with or without a sweep after them), holds for sales channels under their
rules (a buffer, a share) and ring-fenced pools, and holds of kits
(bundles of the skus, one of which changes its make-up during a run) to the real
engine over a real Redis-compatible server, and the same steps to `Model` below: a few
dicts that say, in the brief's words, what every answer and every stock row must be. After
every step it compares the two and checks the invariants I1-I7 on the engine's own data
(and I10: a kit's hold moved exactly its components, its availability is theirs),
and a listing across a location network (by country, by region and list, by type) for one
channel in turn: each sku's figure the sum over the network's members of what the model
says that channel may hold there, read from Redis and through the network view.

The universe is small on purpose (3 locations, 3 skus, 10 reservation ids, 14 event ids,
2 stock buckets), so that ids, rows, buckets and source times collide, and the clock is
steered to the edges: to a hold's expiry and a millisecond either side, with the sweeper
running or lagging behind; source times at, or a millisecond off, earlier events and
commits of the same row.

A second machine (`SupplyMachine`, issue 17) adds future supply and transfers to every
rule of the first: each row's promise by date against a brute force over the model's
supply, the supply in transit, and the conservation of every unit shipped.

The examples at the end pin down the places where the engine and the model parted ways
while this machine was being written (each was fixed in the engine since).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import hypothesis.strategies as st
import pytest
from hypothesis import event, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from engine.domain.bundles import Bundle
from engine.domain.clock import ManualClock
from engine.domain.errors import AlreadyExists, FailedPrecondition, OmnistockError
from engine.domain.model import (
    EventKind,
    HoldResult,
    Line,
    LocationType,
    Reservation,
    ReservationState,
    StockEvent,
    StockRow,
)
from engine.domain.moves import Move
from engine.domain.networks import Network, Selector
from engine.domain.returns import Return, ReturnLine, ReturnRule
from engine.domain.rules import NO_RULE, ChannelRule, Pool
from engine.domain.states import StockState, row_name, sku_of, state_of
from engine.domain.supply import DAY_MS, Supply
from engine.domain.transfers import Transfer
from engine.metrics import Metrics
from engine.store.connect import connect
from engine.store.keys import Keys
from engine.store.netview import NetworkView
from engine.store.storage import Storage
from engine.usecases.availability import Availability
from engine.usecases.bundles import set_bundles
from engine.usecases.channels import RuleChange
from engine.usecases.locations import LocationRegistry
from engine.usecases.networks import NetworkChange, Networks
from engine.usecases.parts import Timing
from engine.usecases.reservations import Reservations
from engine.usecases.returns import Returns
from engine.usecases.supply import Promises, Supplies
from engine.usecases.sweeper import Sweeper
from engine.usecases.transfers import Transfers

from .conftest import HOUR_MS, ON_BOTH, register, store, sweeper_of
from .invariants import (
    Holds,
    assert_reserved_is_held,
    future_problems,
    in_one_state_problems,
    read_holds,
)
from .supply_model import ModelTransfer, SupplyModel

T = TypeVar("T")

pytestmark = ON_BOTH  # every test runs on one Redis and on a cluster
LOCATIONS = ("loc-a", "loc-b", "loc-c")
SKUS = ("sku-1", "sku-2", "sku-3")
CART_IDS = tuple(f"r{i}" for i in range(6))
POOL_IDS = tuple(f"p{i}" for i in range(4))  # holds at pooled rows: ids of their own
RESERVATION_IDS = CART_IDS + POOL_IDS
# Two ids read like the change log's entries for commits ("c:<reservation>").
EVENT_IDS = (*(f"e{i}" for i in range(12)), "c:r0", "c:r1")
TRANSFER_IDS = ("tr-1", "tr-2")
PAIRS = tuple((loc, sku) for loc in LOCATIONS for sku in SKUS)
# Stock states (issue 17): two of the other states' rows of every sku, as the engine names
# them ("sku#damaged"); an event of units in a state is an event of that row.
STATES = (StockState.DAMAGED, StockState.RETURNED)
STATE_PAIRS = tuple((loc, row_name(sku, s)) for loc, sku in PAIRS for s in STATES)
ROWS = PAIRS + STATE_PAIRS
RETURN_IDS = ("ret-0", "ret-1", "ret-2")
WINDOW_MS = 72 * HOUR_MS
STOCK_BUCKETS = 2  # fewer buckets than skus: rows share bucket hashes and change logs
ACTIONS = ("commit", "release", "extend")
# Sales channels and their rules (issue 16): the web keeps a buffer of 1 unit of every row,
# and of 3 at loc-a; the app may hold at most half of a row's sellable units at loc-b;
# the store's till (and a hold with no channel) has no rule.
CHANNELS = ("", "web", "app", "store")
RULES = {
    ("*", "web"): ChannelRule(buffer=1),
    ("l:loc-a", "web"): ChannelRule(buffer=3),
    ("l:loc-b", "app"): ChannelRule(max_share=0.5),
}

# Bundles (issue 17): kits of the skus, with no rows of their own; kit-2's make-up changes
# during a run, and the holds made keep the components they took (I10).
KITS = ("kit-1", "kit-2")
MAKEUPS: dict[str, tuple[tuple[tuple[str, int], ...], ...]] = {
    "kit-1": ((("sku-1", 2), ("sku-2", 1)),),
    "kit-2": ((("sku-2", 1), ("sku-3", 3)), (("sku-3", 1),)),
}

# Location networks (issue 16): loc-a and loc-b are in GB, loc-a in region "north", loc-c
# in FR; each network's members as the model knows them.
PLACES = {"loc-a": ("GB", "north"), "loc-b": ("GB", ""), "loc-c": ("FR", "")}
NETWORKS = {
    Network("gb", selectors=(Selector(countries=frozenset({"GB"})),)): ("loc-a", "loc-b"),
    Network("north-and-c", frozenset({"loc-c"}), (Selector(regions=frozenset({"north"})),)): (
        "loc-a",
        "loc-c",
    ),
    Network("stores", selectors=(Selector(types=frozenset({LocationType.STORE})),)): LOCATIONS,
}
LISTINGS = tuple((net.name, members, ch) for net, members in NETWORKS.items() for ch in CHANNELS)

# A reservation line as the model sees it: (location, sku, qty).
ModelLine = tuple[str, str, int]
Pair = tuple[str, str]


# -- the model ---------------------------------------------------------------------------


@dataclass
class ModelRow:
    count: tuple[int, int] | None = None  # (source_time, q) of the newest COUNT
    changes: list[tuple[int, int]] = field(default_factory=list)  # (time, signed qty)
    reserved: int = 0
    safety_stock: int = 0

    @property
    def count_time(self) -> int | None:
        return None if self.count is None else self.count[0]

    @property
    def on_hand(self) -> int:
        """The newest count, plus every delta and commit that happened after it."""
        if self.count is None:
            return sum(qty for _, qty in self.changes)
        t, q = self.count
        return q + sum(qty for when, qty in self.changes if when > t)

    @property
    def available(self) -> int:
        return max(0, self.on_hand - self.reserved - self.safety_stock)


@dataclass
class ModelReservation:
    lines: tuple[ModelLine, ...]  # merged by (location, sku), sorted
    state: str
    expires_at: int
    channel: str = ""
    original: tuple[ModelLine, ...] = ()  # the lines as reserved (what a retry sends)
    asked: tuple[ModelLine, ...] = ()  # with kits: the lines as sent (`lines`: as held)
    # the store's reports of sales under this reservation while it was HELD:
    # (location, sku, signed qty, source time)
    echoes: list[tuple[str, str, int, int]] = field(default_factory=list)
    promised: int = 0  # the promise date its line was sent with (a preorder), else 0
    # sku -> (units waiting for supply, promise date or 0 once broken, when held): I9
    future: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def answer(self) -> tuple[Any, ...]:
        """With the units waiting for supply, as Reserve, Extend and GetReservation say."""
        held = self.state == "HELD"
        lines = self.asked or self.lines
        out = ("RESERVATION", self.state, lines, self.expires_at if held else None)
        if self.future:
            loc = self.lines[0][0]
            out += (tuple(sorted((loc, sku, q, p) for sku, (q, p, _) in self.future.items())),)
        return out

    def on_hand(self, sku: str, qty: int) -> int:
        """Of a line of `qty` units of `sku`, those held on hand (not waiting for supply)."""
        return qty - self.future.get(sku, (0, 0, 0))[0]


def merge(lines: list[ModelLine]) -> tuple[ModelLine, ...]:
    merged: dict[Pair, int] = {}
    for loc, sku, qty in lines:
        merged[(loc, sku)] = merged.get((loc, sku), 0) + qty
    return tuple((loc, sku, qty) for (loc, sku), qty in sorted(merged.items()))


@dataclass(frozen=True)
class ModelEvent:
    event_id: str
    kind: str  # "COUNT" | "DELTA" | "MOVE"
    sku: str  # the row: a sku, or a sku's units in a state ("sku#damaged"); a MOVE's from
    qty: int
    source_time: int
    reservation_id: str = ""
    to: str = ""  # a MOVE's row its units enter


class Model:
    """The brief's rules for stock rows and reservations, and nothing else.

    Of the outcomes of a stock event, a duplicate id is recognised first, then the echo
    of a sale under a reservation line (I6), then an event older than the row's count
    (STALE). An echo of a line still HELD changes nothing now; if the reservation is then
    committed, the commit is the sale; if it is released or expires instead, the echo
    counts as the DELTA it is."""

    def __init__(self) -> None:
        self.rows: dict[Pair, ModelRow] = {pair: ModelRow() for pair in PAIRS}
        self.seen: set[tuple[str, str]] = set()  # (location, event id)
        self.reservations: dict[str, ModelReservation] = {}
        # (reservation id, move id) -> the move it made: (location, sku, to, qty)
        self.moves: dict[tuple[str, str], tuple[str, str, str, int]] = {}
        self.pools: dict[Pair, dict[str, tuple[int, bool]]] = {}  # row -> channel -> pool
        self.kits = {kit: makeups[0] for kit, makeups in MAKEUPS.items()}  # kit -> (sku, qty)
        self.rows.update({pair: ModelRow() for pair in STATE_PAIRS})
        # returns: (location, return id) -> (what makes it the same return, its lines);
        # reservation id -> return id -> its fingerprint, and sku -> units returned under it
        self.returns: dict[Pair, tuple[tuple[Any, ...], tuple[ReturnLine, ...]]] = {}
        self.claims: dict[str, dict[str, tuple[Any, ...]]] = {}
        self.returned: dict[str, dict[str, int]] = {}
        self.to_sellable: dict[str, bool] = {}  # return rules by location

    # stock events

    def apply_events(
        self, location: str, events: list[ModelEvent]
    ) -> tuple[list[str], list[tuple[str, int, int]]]:
        outcomes, touched = [], set()
        for ev in events:
            outcome = self._apply(location, ev, touched)
            outcomes.append(outcome)
        short = []
        for sku in sorted(touched):
            row = self.rows[(location, sku)]
            if row.reserved > 0 and row.on_hand < row.reserved:  # a hold at risk
                short.append((sku, row.on_hand, row.reserved))
        return outcomes, short

    def _apply(self, location: str, ev: ModelEvent, touched: set[str]) -> str:
        """touched: gets the rows the event changed."""
        if (location, ev.event_id) in self.seen:
            return "DUPLICATE"
        self.seen.add((location, ev.event_id))
        if ev.kind == "DELTA" and self._is_echo(location, ev):
            return "ECHO"
        if ev.kind == "MOVE":  # a DELTA out of one state and into the other, each by its row
            changed = [
                name
                for name, qty in ((ev.sku, -ev.qty), (ev.to, ev.qty))
                if self._change(location, name, qty, ev.source_time)
            ]
            if len(changed) == 2:  # I10: units moved between states are conserved
                event("a move applied on both sides")
            touched.update(changed)
            return "APPLIED" if changed else "STALE"
        row = self.rows[(location, ev.sku)]
        if ev.kind == "COUNT":
            if row.count is not None and (ev.source_time, ev.qty) <= row.count:
                return "STALE"
            row.count = (ev.source_time, ev.qty)
            touched.add(ev.sku)
            return "APPLIED"
        if not self._change(location, ev.sku, ev.qty, ev.source_time):
            return "STALE"
        touched.add(ev.sku)
        return "APPLIED"

    def _change(self, location: str, name: str, qty: int, t: int) -> bool:
        """A change of a row at t, unless its count (taken at or after t) includes it."""
        row = self.rows[(location, name)]
        if row.count_time is not None and t <= row.count_time:
            return False
        row.changes.append((t, qty))
        return True

    # returns anywhere

    def record_return(self, ret: Return, now: int) -> tuple[Any, ...]:
        """Its answer: ("RETURNED", lines, replayed), or the error's name."""
        skus = tuple(sorted((ln.sku, ln.qty) for ln in ret.lines))
        fp = (ret.location, ret.reservation_id, skus)
        if ret.reservation_id:
            refused = self._claim(ret, fp)
            if refused:
                return refused
        had = self.returns.get((ret.location, ret.return_id))
        if had is not None:
            if had[0] == fp:
                return ("RETURNED", had[1], True)
            if ret.reservation_id and self.claims[ret.reservation_id].get(ret.return_id) == fp:
                self._unclaim(ret)
            return ("AlreadyExists",)
        state = StockState.SELLABLE if self.to_sellable.get(ret.location) else StockState.RETURNED
        lines = tuple(replace(ln, state=state) for ln in ret.lines)
        for ln in lines:
            self._change(ret.location, row_name(ln.sku, state), ln.qty, now)
        self.returns[(ret.location, ret.return_id)] = (fp, lines)
        return ("RETURNED", lines, False)

    def _claim(self, ret: Return, fp: tuple[Any, ...]) -> tuple[Any, ...] | None:
        res = self.reservations.get(ret.reservation_id)
        if res is None:
            return ("NotFound",)
        if res.state != "COMMITTED":
            return ("FailedPrecondition",)
        claims = self.claims.setdefault(ret.reservation_id, {})
        if ret.return_id in claims:
            return None if claims[ret.return_id] == fp else ("AlreadyExists",)
        returned = self.returned.setdefault(ret.reservation_id, {})
        for ln in ret.lines:
            bought = sum(q for _, sku, q in res.lines if sku == ln.sku)
            if ln.qty > bought - returned.get(ln.sku, 0):
                return ("FailedPrecondition",)
        for ln in ret.lines:
            returned[ln.sku] = returned.get(ln.sku, 0) + ln.qty
        claims[ret.return_id] = fp
        return None

    def _unclaim(self, ret: Return) -> None:
        del self.claims[ret.reservation_id][ret.return_id]
        for ln in ret.lines:
            self.returned[ret.reservation_id][ln.sku] -= ln.qty

    def _is_echo(self, location: str, ev: ModelEvent) -> bool:
        res = self.reservations.get(ev.reservation_id) if ev.reservation_id else None
        if res is None or res.state not in ("HELD", "COMMITTED"):
            return False
        if not any(loc == location and sku == ev.sku for loc, sku, _ in res.lines):
            return False
        if res.state == "HELD":
            res.echoes.append((location, ev.sku, ev.qty, ev.source_time))
        return True

    def set_safety_stock(self, location: str, sku: str, qty: int) -> None:
        self.rows[(location, sku)].safety_stock = qty

    # reservations

    def reserve(
        self, rid: str, lines: list[ModelLine], ttl_ms: int, now: int, channel: str = ""
    ) -> tuple[Any, ...]:
        merged = merge(lines)
        existing = self.reservations.get(rid)
        if existing is not None:  # as it is now: its lines may have moved since
            same = existing.original == merged and not existing.promised
            return existing.answer() if same else ("AlreadyExists",)
        held = self.expand(merged)
        offered = {(loc, sku): self.offered(loc, sku, channel) for loc, sku, _ in held}
        short = {
            (loc, sku): offered[(loc, sku)] for loc, sku, qty in held if qty > offered[(loc, sku)]
        }
        if short:
            return ("SHORT", self.short_lines(merged, short))
        for loc, sku, qty in held:
            self.rows[(loc, sku)].reserved += qty
        asked = merged if held != merged else ()
        self.reservations[rid] = ModelReservation(
            held, "HELD", now + ttl_ms, channel, merged, asked
        )
        return self.reservations[rid].answer()

    def expand(self, lines: tuple[ModelLine, ...]) -> tuple[ModelLine, ...]:
        """The rows a hold of `lines` takes: each kit as qty times each of its components."""
        out: list[ModelLine] = []
        for loc, sku, qty in lines:
            parts = self.kits.get(sku, ((sku, 1),))
            out += [(loc, c, qty * n) for c, n in parts]
        return merge(out)

    def short_lines(
        self, lines: tuple[ModelLine, ...], short: dict[Pair, int]
    ) -> tuple[tuple[str, str, int, int], ...]:
        """Each line asked that a short row (-> what may be held of it) touches, with what
        that row alone would let it hold: a kit, whole kits of its short components."""
        out = []
        for loc, sku, qty in lines:
            parts = self.kits.get(sku, ((sku, 1),))
            could = [short[(loc, c)] // n for c, n in parts if (loc, c) in short]
            if could:
                out.append((loc, sku, qty, min(min(could), qty)))
        return tuple(sorted(out))

    def kits_available(self) -> dict[Pair, int]:
        """Each kit at each location: whole kits of its components' available units."""
        return {
            (loc, kit): min(self.rows[(loc, c)].available // n for c, n in parts)
            for loc in LOCATIONS
            for kit, parts in self.kits.items()
        }

    def held_by(self, location: str, sku: str, channel: str) -> int:
        return sum(
            qty
            for res in self.reservations.values()
            if res.state == "HELD" and res.channel == channel
            for loc, s, qty in res.lines
            if (loc, s) == (location, sku)
        )

    def refuses_pool(self, location: str, sku: str, channel: str, units: int) -> bool:
        """Whether a pool of `units` for `channel` would keep free more of the row than no
        other pool keeps, when it keeps more free than before."""
        row = self.rows[(location, sku)]
        pools = self.pools.get((location, sku), {})
        others = sum(
            max(u - self.held_by(location, sku, c), 0)
            for c, (u, _) in pools.items()
            if c != channel
        )
        held = self.held_by(location, sku, channel)
        was = max(pools[channel][0] - held, 0) if channel in pools else 0
        want = max(units - held, 0)
        return want > was and want > max(row.available - others, 0)

    def offered(self, location: str, sku: str, channel: str) -> int:
        """What a channel may hold of a row. No channel: the row's available units. A pool
        keeps free what its channel does not hold of it; another channel sees what no pool
        keeps free, less its buffer, no more than its share of the sellable units less
        what it holds already; a pool's channel sees its free units (no more than are
        there), and with fallback what the others see too."""
        row = self.rows[(location, sku)]
        if not channel:
            return row.available
        pools = self.pools.get((location, sku), {})
        free = {
            c: max(units - self.held_by(location, sku, c), 0) for c, (units, _) in pools.items()
        }
        shared = max(row.available - sum(free.values()), 0)
        rule = RULES.get((f"l:{location}", channel)) or RULES.get(("*", channel)) or NO_RULE
        own = shared - rule.buffer
        if rule.max_share is not None:
            sellable = max(row.on_hand - row.safety_stock, 0)
            own = min(own, int(sellable * rule.max_share) - self.held_by(location, sku, channel))
        own = max(own, 0)
        if channel not in pools:
            return own
        mine = min(free[channel], row.available)
        return mine + own if pools[channel][1] else mine

    def commit(self, rid: str, now: int) -> tuple[Any, ...]:
        res = self.reservations.get(rid)
        if res is None:
            return ("NotFound",)
        if res.state == "COMMITTED":
            return res.answer()
        if res.state != "HELD" or now >= res.expires_at or res.future:
            return ("FailedPrecondition",)  # (units waiting for supply are not committed)
        for loc, sku, qty in res.lines:
            row = self.rows[(loc, sku)]
            row.reserved -= qty
            row.changes.append((now, -qty))
        res.state = "COMMITTED"
        return res.answer()

    def release(self, rid: str) -> tuple[Any, ...]:
        res = self.reservations.get(rid)
        if res is None:
            return ("NotFound",)
        if res.state == "COMMITTED":
            return ("FailedPrecondition",)
        if res.state == "HELD":
            self._give_back(res, "RELEASED")
        return res.answer()

    def extend(self, rid: str, ttl_ms: int, now: int) -> tuple[Any, ...]:
        res = self.reservations.get(rid)
        if res is None:
            return ("NotFound",)
        if res.state != "HELD" or now >= res.expires_at:
            return ("FailedPrecondition",)
        # a reservation with units waiting for supply is not held for less than it was
        res.expires_at = max(res.expires_at, now + ttl_ms) if res.future else now + ttl_ms
        return res.answer()

    def move(self, rid: str, move_id: str, line: ModelLine, to: str, now: int) -> tuple[Any, ...]:
        """MoveLine: a HELD reservation's line (qty 0: whole; else its qty) held at `to`
        instead, if `to` can hold it for the reservation's channel; once per move id (a
        retry answers the reservation as it is now; another move under it is refused)."""
        loc, sku, qty = line
        if to == loc:
            return ("InvalidArgument",)
        res = self.reservations.get(rid)
        if res is None:
            return ("NotFound",)
        done = self.moves.get((rid, move_id))
        if done is not None:
            same = (done[0], done[1], done[2]) == (loc, sku, to) and qty in (0, done[3])
            return res.answer() if same else ("AlreadyExists",)
        if res.asked:  # a reservation of kits: its lines are not moved one by one
            return ("InvalidArgument",)
        held = {(ln[0], ln[1]): ln[2] for ln in res.lines}
        q = held.get((loc, sku))
        if res.state != "HELD" or now >= res.expires_at or q is None or qty not in (0, q):
            return ("FailedPrecondition",)
        if res.future:  # a reservation with units waiting for supply is not moved
            return ("FailedPrecondition",)
        offered = self.offered(to, sku, res.channel)
        if offered < q:
            return ("SHORT", ((to, sku, q, offered),))
        self.rows[(loc, sku)].reserved -= q
        self.rows[(to, sku)].reserved += q
        self._count_echoes(res, [(loc, sku)])
        res.lines = merge([ln for ln in res.lines if ln[:2] != (loc, sku)] + [(to, sku, q)])
        self.moves[(rid, move_id)] = (loc, sku, to, q)
        return res.answer()

    def _count_echoes(self, res: ModelReservation, rows: list[Pair] | None = None) -> None:
        """The store's reports of sales under the reservation at `rows` (all: None), kept
        while it held them, count as the DELTAs they are, unless a later count has them."""
        kept = []
        for loc, sku, qty, t in res.echoes:
            if rows is not None and (loc, sku) not in rows:
                kept.append((loc, sku, qty, t))
                continue
            row = self.rows[(loc, sku)]
            if row.count_time is None or t > row.count_time:
                row.changes.append((t, qty))
        res.echoes = kept

    def expire(self, now: int) -> int:
        """What one sweep does: every hold past its expiry gives its units back (I7).
        Answers how many reservation parts (one per location) expired."""
        parts = 0
        for res in self.reservations.values():
            if res.state == "HELD" and res.expires_at <= now:
                self._give_back(res, "EXPIRED")
                parts += len({loc for loc, _, _ in res.lines})
        return parts

    def _give_back(self, res: ModelReservation, state: str) -> None:
        for loc, sku, qty in res.lines:
            self.rows[(loc, sku)].reserved -= res.on_hand(sku, qty)
        res.future = {}
        self._count_echoes(res)
        res.state = state

    # holds against future supply (I9)

    def futures(self, location: str, sku: str) -> list[tuple[int, int, str, int]]:
        """The row's future holds not broken: (promise, made, reservation id, units), in
        the order they are kept in."""
        return sorted(
            (f[1], f[2], rid, f[0])
            for rid, res in self.reservations.items()
            if res.state == "HELD" and res.lines[0][0] == location and sku in res.future
            if (f := res.future[sku])[1]
        )

    def preorder(
        self,
        rid: str,
        line: ModelLine,
        by: int,
        ttl_ms: int,
        now: int,
        supply: list[tuple[int, int]],
    ) -> tuple[Any, ...]:
        """A Reserve of one line with a promise date: on hand what is available, the rest
        against `supply` ((units, expected) of the row) if it covers that beside every
        future hold of the row by each of their dates (checked date by date)."""
        loc, sku, qty = line
        existing = self.reservations.get(rid)
        if existing is not None:
            same = existing.original == (line,) and existing.promised == by
            return existing.answer() if same else ("AlreadyExists",)
        row = self.rows[(loc, sku)]
        a = row.available
        future: dict[str, tuple[int, int, int]] = {}
        if a < qty:
            holds = [(p, q) for p, _, _, q in self.futures(loc, sku)] + [(by, qty - a)]
            covered = all(
                sum(q for p, q in holds if p <= date) <= sum(u for u, x in supply if x <= date)
                for date, _ in holds
            )
            if not covered:
                return ("SHORT", ((loc, sku, qty, a),))
            future[sku] = (qty - a, by, now)
        row.reserved += qty - sum(f[0] for f in future.values())
        expires = by + ttl_ms if future else now + ttl_ms  # units waiting: until their date
        self.reservations[rid] = ModelReservation(
            (line,), "HELD", expires, original=(line,), promised=by, future=future
        )
        return self.reservations[rid].answer()

    def settle(
        self, location: str, sku: str, supply: list[tuple[int, int]], received: bool
    ) -> list[tuple[str, str, int, int]]:
        """A change of the row's supply (`supply` as it is now): received into, its available
        units go to the future holds, earliest promise first, each taking what it waits for
        or what is left; of the units still waiting, each hold's are kept while the supply
        due by its date covers them with those kept before, else they break. Returns the
        broken: (id, sku, units, promise)."""
        row, holds = self.rows[(location, sku)], self.futures(location, sku)
        if received:
            waiting = []
            for p, made, rid, q in holds:
                take = min(q, row.available)
                row.reserved += take
                if take == q:
                    del self.reservations[rid].future[sku]
                else:
                    self.reservations[rid].future[sku] = (q - take, p, made)
                    waiting.append((p, made, rid, q - take))
            holds = waiting
        broken, kept = [], 0
        for p, made, rid, q in holds:
            if kept + q <= sum(u for u, x in supply if x <= p):
                kept += q
            else:
                self.reservations[rid].future[sku] = (q, 0, made)
                broken.append((rid, sku, q, p))
        return broken

    def held_ids(self) -> list[str]:
        return sorted(rid for rid, res in self.reservations.items() if res.state == "HELD")

    def listing(self, members: tuple[str, ...], channel: str) -> list[tuple[str, int, int]]:
        """Each sku: what the channel may hold of it, summed over the members, and at how
        many of them it may hold some."""
        out = []
        for sku in SKUS:
            offers = [self.offered(loc, sku, channel) for loc in members]
            out.append((sku, sum(offers), sum(1 for a in offers if a > 0)))
        return out


# -- translating engine answers into the model's terms -------------------------------------


@dataclass
class Snapshot:
    """What the engine holds after a step, as the checks read it."""

    rows: dict[Pair, StockRow]
    directory: dict[str, tuple[Line, ...] | None]  # reservation id -> its lines, if known
    holds: Holds  # the parts of every reservation at every location, and what they hold
    kits: dict[Pair, int]  # (location, kit) -> its availability, as GetAvailability reads it
    answers: dict[str, tuple[Any, ...]]  # reservation id -> what `get` answers


# The suite's per-test timeout (120 s) is a guard against a hang; a state machine's run is
# 100 examples of 30 steps over every rule, plus up to a minute of shrinking a failure: on a
# loaded 2-core machine its cluster run took 80-106 s, so it has a guard of its own.
STATE_MACHINE_TIMEOUT = pytest.mark.timeout(300)


def model_lines(lines: tuple[Line, ...]) -> tuple[ModelLine, ...]:
    return tuple((ln.location, ln.sku, ln.qty) for ln in lines)


def reservation_answer(res: Reservation) -> tuple[Any, ...]:
    held = res.state.value == "HELD"
    out = ("RESERVATION", res.state.value, model_lines(res.lines), res.expires_at if held else None)
    if res.future:
        out += (tuple(sorted((f.location, f.sku, f.qty, f.promise_by) for f in res.future)),)
    return out


def error_answer(exc: OmnistockError) -> tuple[Any, ...]:
    return (type(exc).__name__,)


# -- strategies ------------------------------------------------------------------------

locations = st.sampled_from(LOCATIONS)
skus = st.sampled_from(SKUS)
reservation_ids = st.sampled_from(CART_IDS)
ttl_seconds = st.integers(1, 60)
# Clock moves of 1 ms to 90 s, mostly short ones, so that holds live through a few steps.
advances = st.sampled_from([3_000, 3_000, 3_000, 90_000]).flatmap(lambda most: st.integers(1, most))
lines_at_one = st.lists(st.tuples(skus, st.integers(1, 5)), min_size=1, max_size=3)
lines_across = st.lists(
    st.tuples(locations, skus, st.integers(1, 5)), min_size=2, max_size=3
).filter(lambda lines: len({loc for loc, _, _ in lines}) > 1)
counted = st.integers(0, 12).map(lambda q: 12 - q)  # a count of mostly a dozen, sometimes 0
channels = st.sampled_from(CHANNELS)
lines_with_kits = st.lists(
    st.tuples(locations, st.sampled_from(SKUS + KITS), st.integers(1, 3)), min_size=1, max_size=3
).filter(lambda lines: any(sku in KITS for _, sku, _ in lines))
move_ids = st.sampled_from(("m0", "m1", "m2"))  # per reservation: few, so that they collide
# Future supply and transfers (issue 17): few ids, so that they are set again, cancelled,
# retried; due from a day ago (overdue) to past the 30 days of the promise's horizon.
supply_ids = st.sampled_from(("po-1", "po-2", "po-3"))
transfer_ids = st.sampled_from(TRANSFER_IDS)
due_offsets = st.sampled_from([-DAY_MS + 1, 0, 1, DAY_MS, 30 * DAY_MS, 30 * DAY_MS + 1]) | (
    st.integers(-DAY_MS + 1, 40 * DAY_MS)
)
promise_offsets = st.sampled_from([1, DAY_MS, 3 * DAY_MS, 30 * DAY_MS]) | st.integers(
    1, 40 * DAY_MS
)
transfer_lines = st.lists(
    st.tuples(skus, st.integers(1, 4)), min_size=1, max_size=2, unique_by=lambda ln: ln[0]
).map(lambda lines: tuple(sorted(lines)))


# -- the machine -----------------------------------------------------------------------


class StockMachine(RuleBasedStateMachine):
    def __init__(self, redis_url: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = self.run(connect(redis_url, 2.0))
        self.clock = ManualClock()
        self.storage = Storage(
            self.redis,
            stock_buckets=STOCK_BUCKETS,
            retention_ms=WINDOW_MS,
            event_window_ms=WINDOW_MS,
        )
        timing = Timing(default_ttl_ms=60_000, saga_timeout_ms=5_000)
        registry = LocationRegistry(self.storage)
        self.reservations = Reservations(self.storage, registry, self.clock, timing, Metrics())
        self.sweeper = Sweeper(
            self.storage, self.reservations, registry, self.clock, Metrics(), interval_ms=50
        )
        self.model = Model()
        self.times: dict[Pair, set[int]] = {pair: set() for pair in ROWS}  # events, commits
        self.returns = Returns(self.storage, registry, Metrics(), self.clock.now_ms)
        self.attempts: list[tuple[str, list[ModelLine], str]] = []  # every reserve sent
        self.sent_moves: list[tuple[str, str, ModelLine, str]] = []  # every MoveLine sent
        self.swept_at: int | None = None
        self.answers: dict[tuple[str, Any], tuple[Any, ...]] = {}  # raw records -> `get`
        self.run(self.redis.flushall())  # each run starts from an empty store
        self.run(
            registry.upsert(
                [replace(store(loc), country=c, region=r) for loc, (c, r) in PLACES.items()]
            )
        )
        changes = [
            RuleChange(channel, scope.removeprefix("l:") if scope != "*" else "", rule=rule)
            for (scope, channel), rule in RULES.items()
        ]
        self.run(self.reservations.channels.set(changes))
        kits = [(Bundle(kit, makeups[0]), False) for kit, makeups in MAKEUPS.items()]
        self.run(set_bundles(self.reservations.channels, kits))
        self.availability = Availability(
            self.storage, registry, channels=self.reservations.channels
        )
        # listings across networks: through the network view (told of every write, as the
        # service's is), and read from Redis every time
        self.view = NetworkView(self.storage, Metrics(), 10_000, max_lag=0.02, dead_after=2.0)
        self.run(self.view.start())
        self.storage.told = (self.view.wrote,)
        channels = self.reservations.channels
        self.networks = Networks(self.storage, registry, channels, Metrics(), self.view)
        self.exact = Networks(self.storage, registry, channels, Metrics())
        self.run(self.networks.upsert([NetworkChange(net) for net in NETWORKS]))
        self.listed = 0  # the listings are checked in turn, one after each step

    def teardown(self) -> None:
        self.run(self.view.close())
        self.run(self.redis.aclose())
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def answer(self, call: Awaitable[Reservation]) -> tuple[Any, ...]:
        async def go() -> tuple[Any, ...]:
            try:
                return reservation_answer(await call)
            except OmnistockError as exc:
                return error_answer(exc)

        return self.run(go())

    @initialize(counts=st.lists(counted, min_size=len(PAIRS), max_size=len(PAIRS)))
    def stores_count_their_stock(self, counts: list[int]) -> None:
        """Most rows start with some stock, so that holds succeed as often as they fall short."""
        t = self.clock.now - 60_000
        for (loc, sku), qty in zip(PAIRS, counts, strict=True):
            self.send_events(loc, [ModelEvent(f"initial-{sku}", "COUNT", sku, qty, t)])

    # stock events

    def source_times(self, location: str, sku: str) -> st.SearchStrategy[int]:
        """Up to 50 s ago, or at (or a millisecond off) the time of an event or a commit
        of this row: the boundaries of the ordering rules."""
        now = self.clock.now
        fresh = st.integers(1, 50_000).map(lambda ago: now - ago)
        times = self.times[(location, sku)]
        near = sorted({t + d for t in times for d in (-1, 0, 1) if t + d < now})
        return st.one_of(fresh, st.sampled_from(near)) if near else fresh

    def made_event(self, data: st.DataObject, location: str) -> ModelEvent:
        """A COUNT or a DELTA, mostly of sellable units, sometimes of another state's; or a
        MOVE between two states of a sku."""
        eid, sku = data.draw(st.sampled_from(EVENT_IDS)), data.draw(skus)
        name = row_name(sku, data.draw(st.sampled_from([StockState.SELLABLE] * 2 + [*STATES])))
        kind = data.draw(st.sampled_from(["COUNT", "DELTA", "MOVE"]))
        if kind == "MOVE":  # at a time near the events of either of its rows
            others = [n for n in (sku, *(row_name(sku, s) for s in STATES)) if n != name]
            into = data.draw(st.sampled_from(others))
            t = data.draw(self.source_times(location, data.draw(st.sampled_from([name, into]))))
            return ModelEvent(eid, "MOVE", name, data.draw(st.integers(1, 4)), t, to=into)
        t = data.draw(self.source_times(location, name))
        if kind == "COUNT":
            return ModelEvent(eid, "COUNT", name, data.draw(counted), t)
        qty = data.draw(st.integers(-4, 6).filter(bool))
        rid = data.draw(st.just("") | reservation_ids) if name == sku else ""
        return ModelEvent(eid, "DELTA", name, qty, t, rid)

    def send_events(self, location: str, events: list[ModelEvent]) -> None:
        for ev in events:
            for name in (ev.sku, ev.to) if ev.to else (ev.sku,):
                self.times[(location, name)].add(ev.source_time)
        stock_events = [
            StockEvent(
                ev.event_id,
                location,
                sku_of(ev.sku),
                EventKind(ev.kind),
                ev.qty,
                ev.source_time,
                reservation_id=ev.reservation_id,
                state=state_of(ev.sku),
                to_state=state_of(ev.to) if ev.to else StockState.SELLABLE,
            )
            for ev in events
        ]
        got = self.run(self.storage.apply_events(location, stock_events, self.clock.now))
        outcomes, short = self.model.apply_events(location, events)
        for outcome in outcomes:
            event(f"stock event {outcome}")
        assert [o.value for o in got.outcomes] == outcomes
        assert sorted(got.short_rows) == short

    @rule(data=st.data(), location=locations, n=st.integers(1, 3))
    def store_sends_events(self, data: st.DataObject, location: str, n: int) -> None:
        self.send_events(location, [self.made_event(data, location) for _ in range(n)])

    @precondition(lambda self: self.model.reservations)
    @rule(data=st.data())
    def store_reports_a_sale_of_a_reservation(self, data: st.DataObject) -> None:
        """The store's own system reports a sale made under a reservation id: an echo
        when the engine holds or committed that line (I6), an ordinary delta otherwise."""
        rid = data.draw(st.sampled_from(sorted(self.model.reservations)))
        loc, sku, qty = data.draw(st.sampled_from(self.model.reservations[rid].lines))
        if data.draw(st.booleans()):  # or at any row, whether it has a line there or not
            loc, sku = data.draw(locations), data.draw(skus)
        eid = data.draw(st.sampled_from(EVENT_IDS))
        t = data.draw(self.source_times(loc, sku))
        self.send_events(loc, [ModelEvent(eid, "DELTA", sku, -qty, t, rid)])

    @rule(
        location=locations,
        sku=skus,
        channel=st.sampled_from(CHANNELS[1:]),
        units=st.integers(0, 6),
        fallback=st.booleans(),
    )
    def set_a_pool(self, location: str, sku: str, channel: str, units: int, fallback: bool) -> None:
        """Ring-fences units of a row for a channel (0: the pool ends); holds stay. A pool
        may not keep free more than the row has that no other pool keeps (refused), unless
        it keeps no more free than before."""
        pool = Pool(channel, units, fallback)
        got = self.answer_of(self.reservations.channels.set_pools([(location, sku, pool)]))
        refused = self.model.refuses_pool(location, sku, channel, units)
        event(f"pool {'refused' if refused else 'set'}")
        assert got == (("FailedPrecondition",) if refused else ("OK",)), got
        if refused:
            return
        pools = self.model.pools.setdefault((location, sku), {})
        if units:
            pools[channel] = (units, fallback)
        else:
            pools.pop(channel, None)

    def answer_of(self, call: Awaitable[object]) -> tuple[Any, ...]:
        async def go() -> tuple[Any, ...]:
            try:
                await call
            except OmnistockError as exc:
                return error_answer(exc)
            return ("OK",)

        return self.run(go())

    @rule(location=locations, sku=skus, qty=st.integers(0, 4))
    def set_safety_stock(self, location: str, sku: str, qty: int) -> None:
        self.run(self.storage.set_safety_stock(location, [(sku, qty)]))
        self.model.set_safety_stock(location, sku, qty)

    # reservations

    def reserve(self, rid: str, lines: list[ModelLine], ttl: int, channel: str = "") -> None:
        self.attempts.append((rid, lines, channel))
        now, new = self.clock.now, rid not in self.model.reservations
        engine_lines = [Line(loc, sku, qty) for loc, sku, qty in lines]
        got = self.run(self.engine_reserve(rid, engine_lines, ttl, channel))
        expected = self.model.reserve(rid, lines, ttl * 1000, now, channel)
        event(f"reserve at {len({loc for loc, _, _ in lines})} location(s): {got[:2]}")
        event(f"reserve for channel {channel or '(none)'}: {got[0]}")
        assert got == expected
        if new and got[0] == "RESERVATION":
            self.check_no_oversell(self.model.expand(merge(lines)))

    async def engine_reserve(
        self, rid: str, lines: list[Line], ttl: int, channel: str
    ) -> tuple[Any, ...]:
        return await self.hold_answer(self.reservations.reserve(rid, lines, ttl, channel=channel))

    async def hold_answer(self, call: Awaitable[HoldResult]) -> tuple[Any, ...]:
        """A Reserve's or a MoveLine's answer, in the model's terms."""
        try:
            result = await call
        except AlreadyExists:
            return ("AlreadyExists",)
        except OmnistockError as exc:
            return error_answer(exc)
        if result.reservation is not None:
            return reservation_answer(result.reservation)
        short = [(s.location, s.sku, s.requested, s.available) for s in result.shortfalls]
        return ("SHORT", tuple(sorted(short)))

    def check_no_oversell(self, lines: tuple[ModelLine, ...]) -> None:
        """I3: the rows a new hold took from are not held beyond what is there."""
        pairs = [(loc, sku) for loc, sku, _ in lines]
        for row in self.run(self.storage.rows(pairs)):
            assert row.reserved + row.safety_stock <= row.on_hand

    @rule(rid=reservation_ids, location=locations, lines=lines_at_one, ttl=ttl_seconds, ch=channels)
    def reserve_at_one_location(
        self, rid: str, location: str, lines: list[tuple[str, int]], ttl: int, ch: str
    ) -> None:
        self.reserve(rid, [(location, sku, qty) for sku, qty in lines], ttl, ch)

    @rule(rid=reservation_ids, lines=lines_across, ttl=ttl_seconds, ch=channels)
    def reserve_across_locations(self, rid: str, lines: list[ModelLine], ttl: int, ch: str) -> None:
        """A cart with lines at two or three locations: the saga path."""
        self.reserve(rid, lines, ttl, ch)

    @rule(rid=reservation_ids, lines=lines_with_kits, ttl=ttl_seconds, ch=channels)
    def reserve_kits(self, rid: str, lines: list[ModelLine], ttl: int, ch: str) -> None:
        """A cart with a kit or two, beside skus sold alone, at one location or several."""
        self.reserve(rid, lines, ttl, ch)

    @rule(makeup=st.sampled_from(MAKEUPS["kit-2"]))
    def a_kit_changes_its_make_up(self, makeup: tuple[tuple[str, int], ...]) -> None:
        """kit-2 is made of other components from now on: holds made keep theirs."""
        self.run(set_bundles(self.reservations.channels, [(Bundle("kit-2", makeup), False)]))
        self.model.kits["kit-2"] = makeup

    @precondition(lambda self: any(self.model.pools.values()))
    @rule(data=st.data(), rid=st.sampled_from(POOL_IDS), ttl=ttl_seconds, qty=st.integers(1, 8))
    def reserve_from_a_pool(self, data: st.DataObject, rid: str, ttl: int, qty: int) -> None:
        """A channel with a pool holds at that row: its pool first, then (fallback) the
        shared units; or another channel tries the row."""
        pooled = sorted((row, c) for row, by in self.model.pools.items() for c in by)
        (location, sku), channel = data.draw(st.sampled_from(pooled))
        channel = data.draw(st.sampled_from([channel, channel, *CHANNELS]))
        self.reserve(rid, [(location, sku, qty)], ttl, channel)

    @precondition(lambda self: self.attempts)
    @rule(data=st.data(), ttl=ttl_seconds)
    def retry_a_reserve(self, data: st.DataObject, ttl: int) -> None:
        """A client retries an earlier reserve (same id, same lines, any order, any ttl;
        the same channel, or another: the first hold of an id decides its channel)."""
        rid, lines, channel = data.draw(st.sampled_from(self.attempts))
        channel = data.draw(st.sampled_from([channel, *CHANNELS]))
        self.reserve(rid, data.draw(st.permutations(lines)), ttl, channel)

    def describe(self, rid: str) -> str:
        """How the model sees a reservation: for the run's statistics."""
        res = self.model.reservations.get(rid)
        if res is None:
            return "unknown"
        lapsed = (
            " past its expiry" if res.state == "HELD" and res.expires_at <= self.clock.now else ""
        )
        return f"{res.state}{lapsed} at {len({loc for loc, _, _ in res.lines})} location(s)"

    def some_id(self, data: st.DataObject) -> str:
        """Mostly an id the model knows, sometimes any id of the pool: one never reserved,
        or one whose reserve fell short (NOT_FOUND)."""
        known = sorted(self.model.reservations)
        return data.draw(
            st.one_of(st.sampled_from(known), reservation_ids) if known else reservation_ids
        )

    def commit(self, rid: str) -> None:
        now = self.clock.now
        event(f"commit of {self.describe(rid)}")
        got = self.answer(self.reservations.commit(rid))
        assert got == self.model.commit(rid, now)
        if got[0] == "RESERVATION":
            for loc, sku, _ in self.model.reservations[rid].lines:  # the rows it held
                self.times[(loc, sku)].add(now)

    def release(self, rid: str) -> None:
        event(f"release of {self.describe(rid)}")
        assert self.answer(self.reservations.release(rid)) == self.model.release(rid)

    def extend(self, rid: str, ttl: int) -> None:
        now = self.clock.now
        event(f"extend of {self.describe(rid)}")
        got = self.answer(self.reservations.extend(rid, ttl))
        assert got == self.model.extend(rid, ttl * 1000, now)

    def act(self, rid: str, action: str, ttl: int) -> None:
        if action == "commit":
            self.commit(rid)
        elif action == "release":
            self.release(rid)
        else:
            self.extend(rid, ttl)

    @precondition(lambda self: self.attempts)
    @rule(data=st.data())
    def client_commits(self, data: st.DataObject) -> None:
        self.commit(self.some_id(data))

    @precondition(lambda self: self.attempts)
    @rule(data=st.data())
    def client_releases(self, data: st.DataObject) -> None:
        self.release(self.some_id(data))

    @precondition(lambda self: self.attempts)
    @rule(data=st.data(), ttl=ttl_seconds)
    def client_extends(self, data: st.DataObject, ttl: int) -> None:
        self.extend(self.some_id(data), ttl)

    # moves

    def move(self, rid: str, move_id: str, line: ModelLine, to: str) -> tuple[Any, ...]:
        now = self.clock.now
        event(f"move of {self.describe(rid)}")
        got = self.run(self.hold_answer(self.reservations.move_line(rid, move_id, Move(*line, to))))
        made = len(self.model.moves)
        assert got == self.model.move(rid, move_id, line, to, now)
        event(f"move: {got[:2]}")
        if len(self.model.moves) > made:
            self.check_no_oversell(((to, line[1], line[2]),))
        return got

    @precondition(lambda self: self.attempts)
    @rule(data=st.data(), move_id=move_ids)
    def client_moves_a_line(self, data: st.DataObject, move_id: str) -> None:
        """A line of a reservation (mostly a held one; mostly a line it holds; the whole
        line, its qty, or another qty) moved to another location (mostly: or where it is)."""
        holding = self.model.held_ids()
        if holding and data.draw(st.integers(0, 3)):
            rid = data.draw(st.sampled_from(holding))
        else:
            rid = self.some_id(data)
        held = self.model.reservations.get(rid)
        if held is not None and data.draw(st.integers(0, 4)):
            loc, sku, qty = data.draw(st.sampled_from(held.lines))
        else:
            loc, sku, qty = data.draw(locations), data.draw(skus), data.draw(st.integers(1, 5))
        qty = data.draw(st.sampled_from([0, 0, qty, qty + 1]))
        others = [other for other in LOCATIONS if other != loc]
        to = data.draw(st.sampled_from([*others, *others, *others, loc]))
        got = self.move(rid, move_id, (loc, sku, qty), to)
        if got[0] not in ("NotFound", "InvalidArgument"):  # worth sending again
            self.sent_moves.append((rid, move_id, (loc, sku, qty), to))

    @precondition(lambda self: self.sent_moves)
    @rule(data=st.data())
    def retry_a_move(self, data: st.DataObject) -> None:
        """A client sends an earlier MoveLine again (same move id, same line and destination)."""
        self.move(*data.draw(st.sampled_from(self.sent_moves)))

    # returns anywhere

    @rule(
        data=st.data(),
        rid=st.sampled_from(RETURN_IDS),
        location=locations,
        lines=st.lists(
            st.tuples(skus, st.integers(1, 3)), min_size=1, max_size=2, unique_by=lambda x: x[0]
        ),
    )
    def customer_returns(
        self, data: st.DataObject, rid: str, location: str, lines: list[tuple[str, int]]
    ) -> None:
        """A return at any location, naming a reservation (mostly one committed) or none."""
        committed = sorted(
            r for r, res in self.model.reservations.items() if res.state == "COMMITTED"
        )
        named = data.draw(st.sampled_from(["", *committed, *committed, "r5"]))
        ret = Return(rid, location, tuple(ReturnLine(sku, qty) for sku, qty in lines), named)
        now = self.clock.now
        for sku, _ in lines:
            for state in (StockState.SELLABLE, StockState.RETURNED):
                self.times[(location, row_name(sku, state))].add(now)

        async def go() -> tuple[Any, ...]:
            try:
                got = await self.returns.record(ret)
            except OmnistockError as exc:
                return error_answer(exc)
            return ("RETURNED", got.lines, got.replayed)

        want = self.model.record_return(ret, now)
        event(f"return: {want[0]}{' replayed' if want[-1] is True else ''}")
        assert self.run(go()) == want

    @rule(location=locations, to_sellable=st.booleans())
    def set_a_return_rule(self, location: str, to_sellable: bool) -> None:
        self.run(self.returns.set_rules([ReturnRule(location, "", to_sellable)]))
        self.model.to_sellable[location] = to_sellable

    # time

    @rule(data=st.data())
    def time_passes(self, data: st.DataObject) -> None:
        """The clock moves by 1 ms to 90 s, or to a hold's expiry (within the hour) give or
        take a millisecond. Then the sweeper runs, or it lags behind and calls meet holds past
        their expiry: the client of the hold reached commits, releases or extends it."""
        # (not those of preorders days ahead: the clock stays within the event window, whose
        # edge the model does not keep: events, dedupe and change log older are let go)
        now = self.clock.now
        reservations = self.model.reservations
        held = [r for r in self.model.held_ids() if reservations[r].expires_at < now + HOUR_MS]
        reach_expiry = bool(held) and data.draw(st.sampled_from([True, True, False]))
        rid = data.draw(st.sampled_from(held)) if reach_expiry else None
        if rid is None:
            self.clock.advance(data.draw(advances))
            then = data.draw(st.sampled_from(["sweep", "nothing"]))
        else:
            offset = data.draw(st.sampled_from([-1, 0, 1]))
            target = self.model.reservations[rid].expires_at + offset
            self.clock.advance(max(1, target - self.clock.now))
            then = data.draw(st.sampled_from(["sweep", "nothing", *ACTIONS]))
            event(f"the clock reaches an expiry {offset:+d} ms, then: {then}")
        if then == "sweep":
            self.sweep()
        elif rid is not None and then in ACTIONS:
            self.act(rid, then, data.draw(ttl_seconds))

    def sweep(self) -> None:
        expired = self.run(self.sweeper.sweep())
        event(f"sweep expired {min(expired, 2)}{'+' if expired > 2 else ''} part(s)")
        assert expired == self.model.expire(self.clock.now)
        self.swept_at = self.clock.now

    # after every step

    async def engine_snapshot(self) -> Snapshot:
        """Everything the checks read: the rows; every reservation record (the directory,
        and the part at each location of each id any reserve named, with what the HELD
        parts hold: tests/invariants.py); then what `get` answers for each id whose records
        changed since the last step (`get` reads nothing else, so the answers of the others
        are the same as before)."""
        ids = sorted({rid for rid, _, _ in self.attempts})
        rows, directory, holds, kits = await asyncio.gather(
            self.storage.rows(list(ROWS)),
            asyncio.gather(*(self.storage.directory(rid) for rid in ids)),
            read_holds(self.storage, LOCATIONS, ids),
            self.availability.levels(list(KITS), list(LOCATIONS), set(), True),
        )
        levels = {(loc, kit): a for loc, kit, _, a, _, _ in kits}
        snap = Snapshot(dict(zip(ROWS, rows, strict=True)), {}, holds, levels, {})
        snap.answers.update(dict.fromkeys(RESERVATION_IDS, ("NotFound",)))
        for rid, entry in zip(ids, directory, strict=True):
            snap.directory[rid] = entry.lines if entry is not None else None
            seen = (entry, tuple(sorted(holds.parts.get(rid, {}).items())))
            if (rid, seen) not in self.answers:
                self.answers[(rid, seen)] = await self.get(rid)
            snap.answers[rid] = self.answers[(rid, seen)]
        return snap

    async def get(self, rid: str) -> tuple[Any, ...]:
        try:
            return reservation_answer(await self.reservations.get(rid))
        except OmnistockError as exc:
            return error_answer(exc)

    @invariant()
    def engine_matches_the_model_and_keeps_the_invariants(self) -> None:
        snap = self.run(self.engine_snapshot())
        self.rows_match_the_model(snap)
        self.reservations_match_the_model(snap)
        self.reserved_is_the_sum_of_held_parts(snap)
        self.every_part_of_a_reservation_is_in_one_state(snap)
        self.no_hold_outlives_its_expiry_after_a_sweep(snap)
        self.kits_are_as_available_as_their_components(snap)

    @invariant()
    def a_listing_across_a_network_is_the_sum_over_its_members(self) -> None:
        """The next (network, channel) in turn: each sku's figure, from Redis and through
        the view (right after the step, or once its feed has caught up: then it serves what
        no message marked), is what the model says the channel may hold at each member,
        summed."""
        name, members, channel = LISTINGS[self.listed % len(LISTINGS)]
        self.listed += 1
        if self.listed % 2:  # every other time, once its feed has caught up with the writes
            self.run(self.view.caught_up())
        want = self.model.listing(members, channel)
        for networks in (self.networks, self.exact):
            got = self.run(networks.listing(name, SKUS, channel))
            assert got.members == members
            levels = [(lv.sku, lv.available, lv.locations) for lv in got.levels]
            assert levels == want, (name, channel, networks is self.exact)

    def rows_match_the_model(self, snap: Snapshot) -> None:
        got = {
            pair: (r.on_hand, r.reserved, r.safety_stock, r.as_of) for pair, r in snap.rows.items()
        }
        want = {
            pair: (m.on_hand, m.reserved, m.safety_stock, m.count_time or 0)
            for pair, m in self.model.rows.items()
        }
        assert got == want

    def reservations_match_the_model(self, snap: Snapshot) -> None:
        want = {
            rid: res.answer() if (res := self.model.reservations.get(rid)) else ("NotFound",)
            for rid in RESERVATION_IDS
        }
        assert snap.answers == want

    def reserved_is_the_sum_of_held_parts(self, snap: Snapshot) -> None:
        """I1, from the engine's own records: every HELD part, whatever its directory says."""
        assert_reserved_is_held(snap.holds)
        assert set(snap.holds.rows) <= set(PAIRS)

    def every_part_of_a_reservation_is_in_one_state(self, snap: Snapshot) -> None:
        """I2: a reservation the engine knows has a part at each of its locations, and
        all of them in one state."""
        known = {
            rid: [ln.location for ln in lines]
            for rid, lines in snap.directory.items()
            if lines is not None
        }
        problems = in_one_state_problems(snap.holds, known)
        assert not problems, problems

    def kits_are_as_available_as_their_components(self, snap: Snapshot) -> None:
        """A kit's availability, as GetAvailability reads it, is whole kits of its
        components' available units as the model has them; a kit has no row of its own."""
        assert snap.kits == self.model.kits_available()
        assert not any(sku in KITS for _, sku in snap.holds.rows)

    def no_hold_outlives_its_expiry_after_a_sweep(self, snap: Snapshot) -> None:
        """I7: once the sweeper has run at this time, nothing past its expiry is HELD."""
        if self.swept_at != self.clock.now:
            return
        for rid, answer in snap.answers.items():
            if answer[:2] == ("RESERVATION", "HELD"):
                assert answer[3] > self.clock.now, rid


@STATE_MACHINE_TIMEOUT
def test_engine_matches_the_model_step_by_step(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hypothesis shrinks a failure for up to five minutes; a minute finds the short story
    # in practice and reports it inside the suite's per-test timeout.
    # This is Hypothesis' internal setting; if it moves, the cap silently does nothing.
    conjecture_engine = importlib.import_module("hypothesis.internal.conjecture.engine")
    monkeypatch.setattr(conjecture_engine, "MAX_SHRINKING_SECONDS", 60, raising=False)
    run_state_machine_as_test(
        lambda: StockMachine(redis_url),
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            deadline=None,
            report_multiple_bugs=False,  # shrink one failure well rather than several slowly
        ),
    )


# -- future supply and transfers (issue 17) -------------------------------------------------


class SupplyMachine(StockMachine):
    """The machine above (every rule and check of it), with future supply and transfers:
    purchase orders set, set again and cancelled; transfers made, shipped, received (whole,
    in part, or with a sku they do not have) and cancelled, each sent again too; checked
    after every step against tests/supply_model.py. A test of its own, so that the machine
    above keeps its pace within the suite's per-test timeout."""

    def __init__(self, redis_url: str) -> None:
        super().__init__(redis_url)
        registry = self.reservations.locations
        self.supplies = Supplies(self.storage, registry, self.exact, self.clock)
        self.transfers = Transfers(self.storage, registry, self.clock)
        self.supply_model = SupplyModel(self.model.rows)
        self.sent_transfers: list[Transfer] = []  # every CreateTransfer sent
        self.preorders: list[tuple[str, ModelLine, int]] = []  # every preorder sent
        self.broken: list[tuple[str, str, int, int]] = []  # every promise the model broke

    # future supply and transfers (issue 17)

    def supply_answer(self, supply: Supply) -> tuple[Any, ...]:
        async def go() -> tuple[Any, ...]:
            try:
                (outcome,) = await self.supplies.upsert([supply])
                return ("OK", outcome.value)
            except OmnistockError as exc:
                return error_answer(exc)

        return self.run(go())

    def transfer_answer(self, call: Awaitable[Transfer]) -> tuple[Any, ...]:
        async def go() -> tuple[Any, ...]:
            try:
                t = await call
                return ("TRANSFER", t.state.value, t.lines, t.received, t.returned)
            except OmnistockError as exc:
                return error_answer(exc)

        return self.run(go())

    @rule(
        location=locations,
        sku=skus,
        sid=supply_ids,
        qty=st.integers(1, 8),
        offset=due_offsets,
        cancel=st.sampled_from([False, False, False, True]),
    )
    def erp_sets_supply(
        self, location: str, sku: str, sid: str, qty: int, offset: int, cancel: bool
    ) -> None:
        """A purchase order's line set, set again (other qty, date or sku), or cancelled."""
        at = self.clock.now + offset
        got = self.supply_answer(Supply(sid, location, sku, qty, at, cancel=cancel))
        assert got == self.supply_model.upsert(location, sku, sid, qty, at, cancel)
        event(f"supply: {got[-1]}")
        self.settle(location)

    @rule(data=st.data(), location=locations, sku=skus, sid=supply_ids, qty=st.integers(1, 8))
    def erp_receives_supply(
        self, data: st.DataObject, location: str, sku: str, sid: str, qty: int
    ) -> None:
        """A purchase order arrives (mostly one set before, of its sku, with about its
        units), its units on hand; or an id never set, or cancelled, or received already."""
        due = sorted((k, v) for k, v in self.supply_model.due.items() if k[1].startswith("p:"))
        if due and data.draw(st.integers(0, 3)):
            (location, entry), (sku, was, _) = data.draw(st.sampled_from(due))
            sid, qty = entry.removeprefix("p:"), data.draw(st.sampled_from([was, was, 1, was + 2]))
        now = self.clock.now
        got = self.supply_answer(Supply(sid, location, sku, qty, 0, received=True))
        fresh = (location, f"p:{sid}") not in self.supply_model.received_ids
        assert got == self.supply_model.receive_supply(location, sku, sid, qty, now)
        event(f"receive supply: {got[-1]}")
        if fresh and got == ("OK", "RECEIVED"):
            self.times[(location, sku)].add(now)
            self.settle(location, {sku})

    def settle(self, location: str, received: set[str] | frozenset[str] = frozenset()) -> None:
        """A change of the location's supply settles its rows' future holds (a row whose
        supply did not change keeps its holds as they are, each already covered)."""
        for sku in SKUS:
            supply = self.supply_model.supply_of(location, sku)
            self.broken += self.model.settle(location, sku, supply, sku in received)

    @rule(
        data=st.data(),
        rid=reservation_ids,
        qty=st.integers(4, 30),
        offset=promise_offsets,
        ttl=ttl_seconds,
    )
    def a_preorder_is_reserved(
        self, data: st.DataObject, rid: str, qty: int, offset: int, ttl: int
    ) -> None:
        """A line with a promise date (mostly at a row with supply due, mostly for more than
        its stock on hand): on hand first, the rest against supply due by then."""
        due = sorted({(loc, sku) for (loc, _), (sku, _, _) in self.supply_model.due.items()})
        if due and data.draw(st.integers(0, 3)):
            location, sku = data.draw(st.sampled_from(due))
        else:
            location, sku = data.draw(locations), data.draw(skus)
        self.preorders.append((rid, (location, sku, qty), self.clock.now + offset))
        self.preorder(rid, (location, sku, qty), self.clock.now + offset, ttl)

    @rule(
        data=st.data(),
        location=locations,
        sku=skus,
        sid=supply_ids,
        qty=st.integers(5, 20),
        days=st.integers(0, 10),
    )
    def a_launch_is_preordered(
        self, data: st.DataObject, location: str, sku: str, sid: str, qty: int, days: int
    ) -> None:
        """A purchase order due in a few days, and preorders against it at once: for more
        than the row has on hand, promised before, at or after its date."""
        self.erp_sets_supply(location, sku, sid, qty, days * DAY_MS, False)
        for _ in range(data.draw(st.integers(1, 3))):
            rid = data.draw(reservation_ids)
            units = data.draw(st.integers(1, qty)) + self.model.rows[(location, sku)].available
            by = self.clock.now + data.draw(st.integers(max(days - 1, 0), days + 2)) * DAY_MS + 1
            self.preorders.append((rid, (location, sku, units), by))
            self.preorder(rid, (location, sku, units), by, data.draw(ttl_seconds))

    @precondition(lambda self: self.preorders)
    @rule(data=st.data(), ttl=ttl_seconds)
    def a_preorder_is_sent_again(self, data: st.DataObject, ttl: int) -> None:
        rid, line, by = data.draw(st.sampled_from(self.preorders))
        self.preorder(rid, line, by, ttl)

    def preorder(self, rid: str, line: ModelLine, by: int, ttl: int) -> None:
        now = self.clock.now
        self.attempts.append((rid, [line], ""))  # read by every check; sent again without
        # its date by retry_a_reserve: another reservation (AlreadyExists)
        got = self.run(self.hold_answer(self.reservations.reserve(rid, [Line(*line, by)], ttl)))
        if by <= now:
            want: tuple[Any, ...] = ("InvalidArgument",)
        else:
            supply = self.supply_model.supply_of(line[0], line[1])
            want = self.model.preorder(rid, line, by, ttl * 1000, now, supply)
        event(f"preorder: {got[0]}{' waiting' if len(got) > 4 else ''}")
        assert got == want

    @rule(tid=transfer_ids, source=locations, data=st.data(), lines=transfer_lines)
    def a_transfer_is_created(
        self, tid: str, source: str, data: st.DataObject, lines: tuple[tuple[str, int], ...]
    ) -> None:
        to = data.draw(st.sampled_from([loc for loc in LOCATIONS if loc != source]))
        at = self.clock.now + data.draw(due_offsets)
        self.create_transfer(Transfer(tid, source, to, lines, at))

    @rule(tid=transfer_ids, source=locations, data=st.data(), lines=transfer_lines)
    def a_transfer_is_created_and_shipped(
        self, tid: str, source: str, data: st.DataObject, lines: tuple[tuple[str, int], ...]
    ) -> None:
        """The common path, so that many transfers are in transit for the steps after."""
        self.a_transfer_is_created(tid, source, data, lines)
        self.a_transfer_ships(tid)

    @precondition(lambda self: self.sent_transfers)
    @rule(data=st.data())
    def a_transfer_create_is_sent_again(self, data: st.DataObject) -> None:
        self.create_transfer(data.draw(st.sampled_from(self.sent_transfers)))

    def create_transfer(self, t: Transfer) -> None:
        self.sent_transfers.append(t)
        got = self.transfer_answer(self.transfers.create(t))
        mt = ModelTransfer(t.from_location, t.to_location, t.lines, t.expected_at)
        if t.expected_at < self.clock.now - DAY_MS:  # sent again a day after: refused
            assert got == ("InvalidArgument",)
            return
        assert got == self.supply_model.create(t.transfer_id, mt)

    @rule(data=st.data())
    def a_transfer_ships_or_is_shipped_again(self, data: st.DataObject) -> None:
        self.a_transfer_ships(self.some_transfer(data, "CREATED"))

    def a_transfer_ships(self, tid: str) -> None:
        now = self.clock.now
        got = self.transfer_answer(self.transfers.ship(tid))
        assert got == self.supply_model.ship(tid, now)
        event(f"ship: {got[:2]}")
        self.mark_transfer_times(tid, now)
        self.settle_transfer(tid)

    def some_transfer(self, data: st.DataObject, state: str) -> str:
        """Mostly a transfer in that state, if there is one; else any id."""
        those = sorted(t for t, m in self.supply_model.transfers.items() if m.state == state)
        if those and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(those))
        return data.draw(transfer_ids)

    @rule(data=st.data())
    def a_transfer_is_received(self, data: st.DataObject) -> None:
        """Everything shipped (no lines), or some of each line (none, fewer, all, one
        more), or a line of a sku the transfer does not have."""
        now, tid = self.clock.now, self.some_transfer(data, "SHIPPED")
        known = self.supply_model.transfers.get(tid)
        lines: tuple[tuple[str, int], ...] | None = None
        if data.draw(st.booleans()):
            shipped = known.lines if known else ((data.draw(skus), 1),)
            picked = data.draw(st.lists(st.sampled_from(shipped), unique=True))
            lines = tuple((sku, data.draw(st.integers(0, qty + 1))) for sku, qty in picked)
            if data.draw(st.integers(0, 9)) == 0:
                lines += ((data.draw(skus), 1),)
                lines = tuple({sku: q for sku, q in lines}.items())
        was = known.state if known else None
        got = self.transfer_answer(self.transfers.receive(tid, lines))
        assert got == self.supply_model.receive(tid, lines, now)
        event(f"receive: {got[:2]}")
        self.mark_transfer_times(tid, now)
        if known is not None and was == "SHIPPED" and known.state == "RECEIVED":
            self.settle_transfer(tid, {sku for sku, q in known.received if q > 0})

    @rule(data=st.data())
    def a_transfer_is_cancelled(self, data: st.DataObject) -> None:
        tid = self.some_transfer(data, data.draw(st.sampled_from(["SHIPPED", "CREATED"])))
        now = self.clock.now
        got = self.transfer_answer(self.transfers.cancel(tid))
        assert got == self.supply_model.cancel(tid, now)
        event(f"cancel: {got[:2]}")
        self.mark_transfer_times(tid, now)
        self.settle_transfer(tid)

    def settle_transfer(self, tid: str, received: set[str] | frozenset[str] = frozenset()) -> None:
        """A transfer's step changes the supply at its destination (and, received, its
        stock there)."""
        t = self.supply_model.transfers.get(tid)
        if t is not None:
            self.settle(t.to, received)

    def mark_transfer_times(self, tid: str, now: int) -> None:
        """A transfer's stock steps are logged at now, as commits are: their times are
        the boundaries of the ordering rules for later events."""
        t = self.supply_model.transfers.get(tid)
        if t is not None:
            for loc in (t.source, t.to):
                for sku, _ in t.lines:
                    self.times[(loc, sku)].add(now)

    @invariant()
    def promises_and_transfers_match_the_model(self) -> None:
        """Each row's promise over 30 days is the model's brute force over its supply (the
        purchase orders and the transfers in transit) and its future holds; each transfer
        in transit is supply due at its destination and nowhere else; and units are
        conserved: every unit shipped was received, reported missing, brought back, or is
        in transit."""
        now, m = self.clock.now, self.supply_model
        got, transit = self.run(self.engine_promises_and_transit())
        for p in got.promises:
            steps = tuple((s.at, s.units) for s in p.steps)
            answer = (p.available_now, steps, p.incoming, p.overdue, p.future_held)
            futures = [(by, q) for by, _, _, q in self.model.futures(p.location, p.sku)]
            want = m.promise(p.location, p.sku, now, 30, futures)
            assert answer == want, (p.location, p.sku)
        assert transit == {k: v[1] for k, v in m.due.items() if k[1].startswith("t:")}
        assert m.shipped == m.received + m.missing + m.back + sum(transit.values())

    @invariant()
    def future_holds_are_covered_and_none_is_lost_or_named_twice(self) -> None:
        """I9 on the engine's own data (the rows' future holds, the parts, the supply), and
        every promise the engine broke is on the alerts stream once: those the model broke."""
        holds = self.run(read_holds(self.storage, LOCATIONS, RESERVATION_IDS))
        problems = self.run(future_problems(self.storage, holds))
        assert not problems, problems
        alerts = self.run(self.storage.alerts("", 1000))
        named = [
            (d["reservation_id"].decode(), d["sku"].decode(), int(d["qty"]), int(d["promise_by"]))
            for _, d in alerts
            if d.get("kind") == b"promise_broken"
        ]
        assert sorted(named) == sorted(self.broken)

    async def engine_promises_and_transit(self) -> tuple[Promises, dict[tuple[str, str], int]]:
        return await asyncio.gather(
            self.supplies.promise(SKUS, LOCATIONS, horizon_days=30), self.engine_in_transit()
        )

    async def engine_in_transit(self) -> dict[tuple[str, str], int]:
        """(location, entry) -> units of every transfer's supply the engine has due."""
        got: dict[tuple[str, str], int] = {}
        every = await asyncio.gather(
            *(self.redis.hgetall(Keys.supply_ids(loc)) for loc in LOCATIONS)
        )
        for loc, entries in zip(LOCATIONS, every, strict=True):
            for entry, value in entries.items():
                if entry.startswith(b"t:"):
                    got[(loc, entry.decode())] = int(value.split(b"\t")[1])
        return got


@STATE_MACHINE_TIMEOUT
def test_supply_and_transfers_match_the_model_step_by_step(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conjecture_engine = importlib.import_module("hypothesis.internal.conjecture.engine")
    monkeypatch.setattr(conjecture_engine, "MAX_SHRINKING_SECONDS", 60, raising=False)
    run_state_machine_as_test(
        lambda: SupplyMachine(redis_url),
        settings=settings(
            max_examples=50,
            stateful_step_count=30,
            deadline=None,
            report_multiple_bugs=False,
        ),
    )


# -- where the engine and the model parted ways ------------------------------------------


async def stock(storage: Storage, clock: ManualClock, *locations: str) -> None:
    now = clock.now_ms()
    for loc in locations:
        counted = StockEvent(f"count-{loc}", loc, "sku-1", EventKind.COUNT, 5, now - 10)
        await storage.apply_events(loc, [counted], now)


@pytest.mark.parametrize("locations", [("loc-a",), ("loc-a", "loc-b")], ids=["one", "two"])
async def test_a_commit_at_the_expiry_changes_nothing_and_the_sweeper_expires_the_hold(
    storage: Storage, reservations: Reservations, clock: ManualClock, locations: tuple[str, ...]
) -> None:
    # given a hold of one unit at each location, for one second
    await stock(storage, clock, *locations)
    await register(reservations, *locations)
    await reservations.reserve("r1", [Line(loc, "sku-1", 1) for loc in locations], 1)
    # when the client commits at its expiry, before the sweeper has run
    clock.advance(1000)
    with pytest.raises(FailedPrecondition):
        await reservations.commit("r1")
    # then nothing changed (it used to be RELEASED across two locations) ...
    assert (await reservations.get("r1")).state is ReservationState.HELD
    # ... and the sweeper expires it, as any hold
    sweeper = await sweeper_of(storage, reservations, clock, *locations)
    assert await sweeper.sweep() == len(locations)
    assert (await reservations.get("r1")).state is ReservationState.EXPIRED


async def test_a_cart_across_locations_that_fell_short_leaves_its_id_free(
    storage: Storage, reservations: Reservations, clock: ManualClock
) -> None:
    # given stock at loc-a only, and two carts across loc-a and loc-b that fall short there
    await stock(storage, clock, "loc-a")
    await register(reservations, "loc-a", "loc-b")
    cart = [Line("loc-a", "sku-1", 1), Line("loc-b", "sku-1", 1)]
    assert not (await reservations.reserve("r1", cart, 30)).ok
    assert not (await reservations.reserve("r2", cart, 30)).ok
    # when r1 comes back with other lines (it used to answer ALREADY_EXISTS) ...
    assert (await reservations.reserve("r1", [Line("loc-a", "sku-1", 2)], 30)).ok
    # ... and r2 with the same cart once loc-b has stock (it used to answer UNAVAILABLE)
    await stock(storage, clock, "loc-b")
    assert (await reservations.reserve("r2", cart, 30)).ok
