"""Future supply in Redis: each location's supply by sku and by id in its own hash slot
(keys.py: {L}:u, {L}:ui), changed by supply.lua (with a transfer's stock step at that
location, when there is one) and read with the rows by read_promise.lua."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.domain.model import StockRow
from engine.domain.supply import (
    MAX_SUPPLY_PER_ROW,
    BrokenPromise,
    Incoming,
    SupplyKind,
    SupplyOutcome,
)
from engine.store.base import Base
from engine.store.codecs import parse_row
from engine.store.keys import KeyList, Keys

# Transfers' own supply is never refused for a full row: their units have already left.
NO_LIMIT = 1_000_000_000


@dataclass(frozen=True, slots=True)
class SupplyOp:
    """One change of a location's supply: set (qty, expected_at, kind), cancel (kept as
    cancelled) or drop (forgotten: a transfer's supply, received or cancelled)."""

    entry: str  # "p:<supply id>", or "t:<transfer id>|<sku>"
    sku: str
    qty: int = 0
    expected_at: int = 0
    kind: SupplyKind = SupplyKind.PURCHASE_ORDER
    op: str = "S"  # S set, X cancel, D drop, R received (qty: units received)


@dataclass(frozen=True, slots=True)
class StockStep:
    """A transfer's step at one location: its units leave (negative qty) or arrive."""

    transfer_id: str
    step: str  # S shipped out, I in transit in, R received, D in transit dropped, B back
    lines: Sequence[tuple[str, int]] = ()


@dataclass(frozen=True, slots=True)
class SupplyChanged:
    outcomes: list[SupplyOutcome | None]  # None: dropped
    refused: tuple[int, str, str] | None = None  # (supply index, SKU | FULL, its sku)
    short: dict[str, int] | None = None  # sku -> available, for lines taking more
    done: bool = False  # the step was made before: nothing changed
    converted: list[tuple[str, str, int]] = field(default_factory=list)  # (id, sku, qty)
    broken: list[BrokenPromise] = field(default_factory=list)


def supply_entry(supply_id: str) -> str:
    return f"p:{supply_id}"


def transfer_entry(transfer_id: str, sku: str) -> str:
    return f"t:{transfer_id}|{sku}"


def parse_supply(text: bytes | None) -> list[Incoming]:
    out = []
    for line in (text or b"").decode().splitlines():
        _, qty, expected, kind = line.split("\t")
        out.append(Incoming(int(qty), int(expected), SupplyKind(kind)))
    return out


class SupplyStore(Base):
    async def change_supply(
        self,
        location: str,
        ops: Sequence[SupplyOp],
        now: int,
        step: StockStep | None = None,
        dry: bool = False,
    ) -> SupplyChanged:
        """Changes a location's supply, and with a transfer's step its stock, at once; with
        dry, only says what it would refuse."""
        keys = KeyList(Keys.supply(location), Keys.supply_ids(location))
        keys.add(Keys.transfer_steps(location))
        transfer = step is not None and step.transfer_id
        most = NO_LIMIT if transfer else MAX_SUPPLY_PER_ROW
        args: list[Any] = [now, most, "1" if dry else "0"]
        args += [f"{step.transfer_id}\t{step.step}", f"t:{step.transfer_id}"] if step else ["", ""]
        args.append(len(ops))
        for op in ops:
            args += [op.entry, op.sku, op.qty, op.expected_at, op.kind.value, op.op]
        lines = step.lines if step else ()
        args.append(len(lines))
        for sku, qty in lines:
            stock, log = (
                keys.add(self.keys.stock(location, sku)),
                keys.add(self.keys.log(location, sku)),
            )
            args += [sku, qty, stock, log]
        received = [op.sku for op in ops if op.op == "R"]
        if step is not None and step.step == "R":
            received += [sku for sku, _ in lines]
        received = list(dict.fromkeys(received))
        args.append(len(received))
        for sku in received:
            args += [sku, keys.add(self.keys.stock(location, sku))]
            args.append(keys.add(self.keys.log(location, sku)))
        args.append(Keys.changes(location))
        got = await self.call("supply", keys.keys, args)
        head = got[0].decode()
        if head == "DONE":
            return SupplyChanged([], done=True)
        if head == "REFUSED":
            return SupplyChanged([], refused=(int(got[1]) - 1, got[2].decode(), got[3].decode()))
        if head == "SHORT":
            pairs = got[1:]
            return SupplyChanged(
                [], short={pairs[i].decode(): int(pairs[i + 1]) for i in range(0, len(pairs), 2)}
            )
        outcomes = [None if o == b"DROPPED" else SupplyOutcome(o.decode()) for o in got[1]]
        if len(got) < 4:  # a dry run
            return SupplyChanged(outcomes)
        c, b = [x.decode() if isinstance(x, bytes) else x for x in got[2]], got[3]
        return SupplyChanged(
            outcomes,
            converted=[(c[i], c[i + 1], int(c[i + 2])) for i in range(0, len(c), 3)],
            broken=[
                BrokenPromise(
                    b[i].decode(), location, b[i + 1].decode(), int(b[i + 2]), int(b[i + 3])
                )
                for i in range(0, len(b), 4)
            ],
        )

    async def promise_rows(
        self, location: str, skus: Sequence[str]
    ) -> list[tuple[StockRow, list[Incoming], list[tuple[int, int]]]]:
        """Each sku's row at a location, its supply and what its future holds promise
        ((units, by): the units promised within each span of the row's supply, by the span's
        start), read at one instant."""
        keys = KeyList(Keys.supply(location))
        args: list[Any] = []
        for sku in skus:
            stock = keys.add(self.keys.stock(location, sku))
            args += [sku, stock, keys.add(Keys.future_holds(location, sku))]
        got = await self.call("read_promise", keys.keys, args, heavy=len(args) > 384)
        return [
            (parse_row(got[i]), parse_supply(got[i + 1]), parse_future(got[i + 2]))
            for i in range(0, len(got), 3)
        ]


def parse_future(text: bytes | None) -> list[tuple[int, int]]:
    """A row's future holds' span totals (field '=' of {L}:uf:<sku>): (units, by) of each."""
    out = []
    for line in (text or b"").decode().splitlines():
        by, units = line.split("\t")
        out.append((int(units), int(by)))
    return out
