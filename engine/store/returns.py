"""Returns anywhere: a return's claim on the reservation it names (claim_return.lua), its
units landing at the location it was brought to (record_return.lua), and the return
rules, in one versioned hash of their own slot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.domain.returns import ReturnLine, rule_fields
from engine.domain.states import StockState, row_name
from engine.store.base import Base
from engine.store.keys import RETURN_RULES, RETURN_RULES_VERSION, KeyList, Keys
from engine.store.scripts import decoded


@dataclass(frozen=True, slots=True)
class Claim:
    """claim_return.lua's answer: outcome CLAIMED, SAME, CONFLICT, MISSING, OVER or UNDONE;
    of OVER, the sku and the units of it the reservation may still return."""

    outcome: str
    sku: str = ""
    left: int = 0


@dataclass(frozen=True, slots=True)
class Landed:
    """record_return.lua's answer: RECORDED, SAME (recorded before) or CONFLICT."""

    outcome: str
    lines: tuple[ReturnLine, ...]


def _lines(text: str) -> tuple[ReturnLine, ...]:
    out = []
    for row in text.splitlines():
        sku, qty, state = row.split("\t")
        out.append(ReturnLine(sku, int(qty), StockState(state)))
    return tuple(out)


class ReturnStore(Base):
    async def claim_return(
        self,
        reservation_id: str,
        return_id: str,
        fingerprint: str,
        lines: Sequence[ReturnLine],
        undo: bool = False,
    ) -> Claim:
        args: list[Any] = [return_id, fingerprint, "1" if undo else "0", len(lines)]
        for ln in lines:
            args += [ln.sku, ln.qty]
        got = decoded(await self.call("claim_return", [Keys.directory(reservation_id)], args))
        if got[0] == "OVER":
            return Claim("OVER", got[1], int(got[2]))
        return Claim(got[0])

    async def record_return(
        self, location: str, return_id: str, fingerprint: str, lines: Sequence[ReturnLine], now: int
    ) -> Landed:
        """Each line's units land in the row of its state (returned or sellable)."""
        keys = KeyList(Keys.returned(location, return_id), Keys.full_count(location))
        args: list[Any] = [return_id, fingerprint, now, self.retention_ms, len(lines)]
        for ln in lines:
            stock = keys.add(self.keys.stock(location, ln.sku))
            log = keys.add(self.keys.log(location, ln.sku))
            args += [ln.sku, row_name(ln.sku, ln.state), ln.qty, ln.state.value, stock, log]
        args.append(Keys.changes(location))
        outcome, text = decoded(await self.call("record_return", keys.keys, args))
        return Landed(outcome, _lines(text))

    async def return_rules(self, location: str, skus: Sequence[str]) -> dict[str, bool]:
        """The return rules that could apply to these skus at the location: field -> to
        sellable (engine/domain/returns.py rule_fields), read in one command."""
        names = list(dict.fromkeys(f for sku in skus for f in rule_fields(location, sku)))
        got = await self.command(lambda p: p.hmget(RETURN_RULES, names))
        return {name: v == b"1" for name, v in zip(names, got, strict=True) if v is not None}

    async def set_return_rules(self, rules: Mapping[tuple[str, str], bool | None]) -> int:
        """Sets (None: removes) the rule of each (location, sku), all at once; answers the
        rules' new version."""
        fields = {
            f"{loc}\t{sku}": None if to is None else ("1" if to else "0")
            for (loc, sku), to in rules.items()
        }
        return await self.set_versioned(RETURN_RULES, fields, RETURN_RULES_VERSION)
