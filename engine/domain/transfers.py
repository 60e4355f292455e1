"""Transfers of stock between two of the retailer's locations: their lines, states and
receipts, checked field by field, and what a receipt finds missing.

    CREATED --ship--> SHIPPED --receive--> RECEIVED
       |                 |
       +--cancel--> CANCELLED <--cancel (the units go back to `from`)--+

Each arrow that moves stock passes through a state of its own while its steps at the two
locations are made (SHIPPING, RECEIVING, CANCELLING: engine/usecases/transfers.py); the
next call on the transfer finishes such a step, so none is left half made.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from engine.domain.errors import InvalidArgument
from engine.domain.model import MAX_LINES, check_id, check_qty, check_size
from engine.domain.supply import check_expected


class TransferState(enum.Enum):
    CREATED = "CREATED"
    SHIPPING = "SHIPPING"
    SHIPPED = "SHIPPED"
    RECEIVING = "RECEIVING"
    RECEIVED = "RECEIVED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True, slots=True)
class Discrepancy:
    sku: str
    shipped: int
    received: int

    @property
    def missing(self) -> int:
        return self.shipped - self.received


@dataclass(frozen=True, slots=True)
class Transfer:
    transfer_id: str
    from_location: str
    to_location: str
    lines: tuple[tuple[str, int], ...]  # (sku, qty), by sku
    expected_at: int
    state: TransferState = TransferState.CREATED
    received: tuple[tuple[str, int], ...] = ()  # once received: (sku, qty) of every line
    returned: bool = False  # cancelled after shipping: its units went back to `from`

    @property
    def fingerprint(self) -> str:
        text = f"{self.from_location}\t{self.to_location}\t{self.expected_at}\n" + lines_text(
            self.lines
        )
        return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()

    @property
    def discrepancies(self) -> list[Discrepancy]:
        """Each line received other than shipped."""
        got = dict(self.received)
        out = [Discrepancy(sku, qty, got.get(sku, 0)) for sku, qty in self.lines]
        return [d for d in out if d.missing != 0]


def lines_text(lines: Sequence[tuple[str, int]]) -> str:
    return "".join(f"{sku}\t{qty}\n" for sku, qty in lines)


def lines_of(text: str) -> tuple[tuple[str, int], ...]:
    out = []
    for row in text.splitlines():
        sku, qty = row.split("\t")
        out.append((sku, int(qty)))
    return tuple(out)


def _lines(lines: Sequence[tuple[str, int]], allow_zero: bool) -> tuple[tuple[str, int], ...]:
    check_size(len(lines), "lines", MAX_LINES)
    seen: set[str] = set()
    for i, (sku, qty) in enumerate(lines):
        check_id(sku, f"lines[{i}].sku")
        check_qty(qty, f"lines[{i}].qty", allow_zero=allow_zero)
        if sku in seen:
            raise InvalidArgument(f"lines[{i}].sku", f"{sku!r} is already in the transfer")
        seen.add(sku)
    return tuple(sorted(lines))


def check_transfer(transfer: Transfer, now: int) -> Transfer:
    check_id(transfer.transfer_id, "transfer_id")
    check_id(transfer.from_location, "from_location_id")
    check_id(transfer.to_location, "to_location_id")
    if transfer.to_location == transfer.from_location:
        raise InvalidArgument("to_location_id", "must not be from_location_id")
    if not transfer.lines:
        raise InvalidArgument("lines", "at least one line is required")
    lines = _lines(transfer.lines, allow_zero=False)
    check_expected(transfer.expected_at, now, "expected_at")
    return Transfer(
        transfer.transfer_id,
        transfer.from_location,
        transfer.to_location,
        lines,
        transfer.expected_at,
    )


def check_receipt(
    transfer: Transfer, lines: Sequence[tuple[str, int]] | None
) -> tuple[tuple[str, int], ...]:
    """What arrived of every line of the transfer: None for everything shipped; a sku not
    listed did not arrive."""
    if lines is None:
        return transfer.lines
    got = dict(_lines(lines, allow_zero=True))
    shipped = dict(transfer.lines)
    for i, (sku, _) in enumerate(lines):
        if sku not in shipped:
            raise InvalidArgument(f"lines[{i}].sku", f"{sku!r} is not in the transfer")
    return tuple((sku, got.get(sku, 0)) for sku, _ in transfer.lines)
