"""The plain model of future supply and transfers (issue 17) the state machine
(tests/test_model.py) drives beside the engine: what each UpsertSupply and each transfer
step must answer, the supply each location has due, the promise of each row, and the
stock each step moves (as changes of the rows of tests/test_model.py's model, at the time
of the step, as a commit is)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.domain.supply import DAY_MS

Pair = tuple[str, str]
TLines = tuple[tuple[str, int], ...]


@dataclass
class ModelTransfer:
    source: str
    to: str
    lines: TLines  # by sku
    expected_at: int
    state: str = "CREATED"
    received: TLines = ()
    returned: bool = False

    def answer(self) -> tuple[Any, ...]:
        return ("TRANSFER", self.state, self.lines, self.received, self.returned)


@dataclass
class SupplyModel:
    rows: dict[Pair, Any]
    # (location, entry) -> (sku, qty, expected): "p:<id>" supply, "t:<transfer>|<sku>" transit
    due: dict[tuple[str, str], tuple[str, int, int]] = field(default_factory=dict)
    cancelled: dict[tuple[str, str], str] = field(default_factory=dict)  # -> its sku
    received_ids: dict[tuple[str, str], str] = field(default_factory=dict)  # -> its sku
    transfers: dict[str, ModelTransfer] = field(default_factory=dict)
    shipped: int = 0  # units that left a location on a transfer
    received: int = 0  # units that arrived
    missing: int = 0  # reported missing on receipt (shipped - received, per line)
    back: int = 0  # units that came back (cancelled after shipping)

    def upsert(
        self, loc: str, sku: str, sid: str, qty: int, at: int, cancel: bool
    ) -> tuple[Any, ...]:
        key = (loc, f"p:{sid}")
        if key in self.received_ids:
            return ("OK", "RECEIVED")
        if key in self.cancelled:
            return ("OK", "CANCELLED")
        if cancel:
            was = self.due.pop(key, None)
            self.cancelled[key] = was[0] if was else sku
            return ("OK", "CANCELLED")
        was = self.due.get(key)
        if was is not None and was[0] != sku:
            return ("InvalidArgument",)
        self.due[key] = (sku, qty, at)
        if was is None:
            return ("OK", "CREATED")
        return ("OK", "UNCHANGED" if was == (sku, qty, at) else "UPDATED")

    def receive_supply(self, loc: str, sku: str, sid: str, qty: int, now: int) -> tuple[Any, ...]:
        """A supply received: its qty lands on hand (at now, as a commit is logged), once."""
        key = (loc, f"p:{sid}")
        if key in self.received_ids:
            return ("OK", "RECEIVED")
        if key in self.cancelled:
            return ("FailedPrecondition",)
        was = self.due.get(key)
        if was is not None and was[0] != sku:
            return ("InvalidArgument",)
        self.due.pop(key, None)
        self.received_ids[key] = sku
        self.rows[(loc, sku)].changes.append((now, qty))
        return ("OK", "RECEIVED")

    def supply_of(self, loc: str, sku: str) -> list[tuple[int, int]]:
        """(units, expected) of every supply of the row, purchase orders and transit."""
        return [(q, at) for (lo, _), (s, q, at) in self.due.items() if (lo, s) == (loc, sku)]

    def promise(
        self, loc: str, sku: str, now: int, days: int, futures: list[tuple[int, int]]
    ) -> tuple[Any, ...]:
        """Brute force: at each time t supply is due within the horizon (before now: at
        now), what on-hand less holds and safety stock leaves, plus the most units a new
        future hold promised by t could take beside the row's future holds (`futures`:
        (promise, units)), found by trying one more unit at a time until the supply due by
        some promise date no longer covers the holds promised by then."""
        row = self.rows[(loc, sku)]
        base = row.on_hand - row.reserved - row.safety_stock
        end = now + days * DAY_MS
        supply = self.supply_of(loc, sku)

        def covered(holds: list[tuple[int, int]]) -> bool:
            return all(
                sum(q for p, q in holds if p <= d) <= sum(u for u, x in supply if x <= d)
                for d, _ in holds
            )

        def most(t: int) -> int:
            k = 0
            while covered([*futures, (t, k + 1)]):
                k += 1
            return k

        live = [(q, at) for q, at in supply if at <= end]
        times = sorted({max(at, now) for _, at in live})
        steps = tuple((t, max(0, base + most(t))) for t in times)
        overdue = sum(q for q, at in live if at < now)
        held = sum(q for _, q in futures)
        return (max(0, base), steps, sum(q for q, _ in live), overdue, held)

    # transfers

    def create(self, tid: str, t: ModelTransfer) -> tuple[Any, ...]:
        have = self.transfers.get(tid)
        if have is None:
            self.transfers[tid] = t
            return t.answer()
        same = (have.source, have.to, have.lines, have.expected_at) == (
            t.source,
            t.to,
            t.lines,
            t.expected_at,
        )
        return have.answer() if same else ("AlreadyExists",)

    def ship(self, tid: str, now: int) -> tuple[Any, ...]:
        t = self.transfers.get(tid)
        if t is None:
            return ("NotFound",)
        if t.state == "CREATED":
            if any(self.rows[(t.source, sku)].available < qty for sku, qty in t.lines):
                return ("FailedPrecondition",)
            for sku, qty in t.lines:
                self.rows[(t.source, sku)].changes.append((now, -qty))
                self.due[(t.to, f"t:{tid}|{sku}")] = (sku, qty, t.expected_at)
                self.shipped += qty
            t.state = "SHIPPED"
        elif t.state == "CANCELLED":
            return ("FailedPrecondition",)
        return t.answer()

    def receive(self, tid: str, lines: TLines | None, now: int) -> tuple[Any, ...]:
        t = self.transfers.get(tid)
        if t is None:
            return ("NotFound",)
        shipped = dict(t.lines)
        if lines is not None and any(sku not in shipped for sku, _ in lines):
            return ("InvalidArgument",)
        got = t.lines if lines is None else tuple((s, dict(lines).get(s, 0)) for s, _ in t.lines)
        if t.state == "SHIPPED":
            for sku, qty in got:
                if qty:
                    self.rows[(t.to, sku)].changes.append((now, qty))
                self.due.pop((t.to, f"t:{tid}|{sku}"))
                self.received += qty
                self.missing += shipped[sku] - qty
            t.state, t.received = "RECEIVED", got
            return t.answer()
        if t.state != "RECEIVED":
            return ("FailedPrecondition",)
        return t.answer() if t.received == got else ("AlreadyExists",)

    def cancel(self, tid: str, now: int) -> tuple[Any, ...]:
        t = self.transfers.get(tid)
        if t is None:
            return ("NotFound",)
        if t.state == "CREATED":
            t.state = "CANCELLED"
        elif t.state == "SHIPPED":
            for sku, qty in t.lines:
                self.due.pop((t.to, f"t:{tid}|{sku}"))
                self.rows[(t.source, sku)].changes.append((now, qty))
                self.back += qty
            t.state, t.returned = "CANCELLED", True
        elif t.state == "RECEIVED":
            return ("FailedPrecondition",)
        return t.answer()

    def in_transit(self) -> int:
        return sum(q for (_, e), (_, q, _) in self.due.items() if e.startswith("t:"))
