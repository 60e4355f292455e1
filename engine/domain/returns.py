"""Returns anywhere (issue 17): a customer brings units back to any location, wherever they
were sold; they land in `returned` (awaiting inspection) or, where the retailer's return
rules say so, straight in `sellable`. Pure: the values and their checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.domain.errors import InvalidArgument
from engine.domain.model import MAX_LINES, check_id, check_qty, check_size
from engine.domain.states import StockState

MAX_RETURN_RULES = 10_000


@dataclass(frozen=True, slots=True)
class ReturnLine:
    sku: str
    qty: int
    state: StockState = StockState.RETURNED  # where its units land (in an answer)


@dataclass(frozen=True, slots=True)
class Return:
    return_id: str
    location: str
    lines: tuple[ReturnLine, ...]
    reservation_id: str = ""  # the reservation the units were bought under, if named

    def fingerprint(self) -> str:
        """What makes two returns of one id the same return: where, what, and under what."""
        text = "".join(f"{ln.sku}\t{ln.qty}\n" for ln in sorted(self.lines, key=_sku))
        text = f"{self.location}\n{self.reservation_id}\n{text}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ReturnRule:
    """Where returned units land at a location ('' any), of a sku ('' any)."""

    location: str
    sku: str
    to_sellable: bool = False
    remove: bool = False


@dataclass(frozen=True, slots=True)
class Returned:
    """A return's answer: each line with where its units landed; replayed when this return
    id was recorded before (nothing changed now)."""

    return_id: str
    lines: tuple[ReturnLine, ...]
    replayed: bool = False


def _sku(line: ReturnLine) -> str:
    return line.sku


def check_return(ret: Return) -> Return:
    check_id(ret.return_id, "return_id")
    check_id(ret.location, "location_id")
    if ret.reservation_id:
        check_id(ret.reservation_id, "reservation_id")
    if not ret.lines:
        raise InvalidArgument("lines", "at least one line is required")
    check_size(len(ret.lines), "lines", MAX_LINES)
    seen: set[str] = set()
    for i, ln in enumerate(ret.lines):
        check_id(ln.sku, f"lines[{i}].sku")
        check_qty(ln.qty, f"lines[{i}].qty")
        if ln.sku in seen:
            raise InvalidArgument(f"lines[{i}].sku", f"{ln.sku!r} twice: one line a sku")
        seen.add(ln.sku)
    return ret


def check_rules(rules: Sequence[ReturnRule]) -> None:
    if not rules:
        raise InvalidArgument("rules", "at least one rule is required")
    check_size(len(rules), "rules", MAX_RETURN_RULES)
    seen: set[tuple[str, str]] = set()
    for i, rule in enumerate(rules):
        if rule.location:
            check_id(rule.location, f"rules[{i}].location_id")
        if rule.sku:
            check_id(rule.sku, f"rules[{i}].sku")
        if (rule.location, rule.sku) in seen:
            raise InvalidArgument(f"rules[{i}]", "names the same location and sku as another")
        seen.add((rule.location, rule.sku))


def rule_fields(location: str, sku: str) -> tuple[str, str, str, str]:
    """The rules that could apply to a sku returned at a location, most specific first."""
    return (f"{location}\t{sku}", f"{location}\t", f"\t{sku}", "\t")


def landing(rules: Mapping[str, bool], location: str, sku: str) -> StockState:
    """Where a returned sku's units land at a location: the most specific rule's say
    (rules: field -> to sellable), by default `returned`."""
    for name in rule_fields(location, sku):
        if name in rules:
            return StockState.SELLABLE if rules[name] else StockState.RETURNED
    return StockState.RETURNED
