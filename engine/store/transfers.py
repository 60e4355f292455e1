"""Transfers' records in Redis: one hash per transfer in its own slot (transfer:{<id>}),
created once and moved from state to state by transfer.lua. Their stock steps at either
location are supply.lua's (engine/store/supply.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.store.base import Base
from engine.store.keys import Keys

Record = dict[str, str]


def _record(flat: list[bytes]) -> Record:
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def _pairs(fields: Mapping[str, str | int]) -> list[Any]:
    return [x for kv in fields.items() for x in kv]


class TransferStore(Base):
    async def create_transfer(
        self, transfer_id: str, fingerprint: str, fields: Mapping[str, str | int]
    ) -> tuple[str, Record]:
        """NEW, SAME (one of that fingerprint is there) or CONFLICT, and the record."""
        args = ["CREATE", fingerprint, *_pairs(fields)]
        outcome, flat = await self.call("transfer", [Keys.transfer(transfer_id)], args)
        return outcome.decode(), _record(flat)

    async def move_transfer(
        self,
        transfer_id: str,
        states: tuple[str, ...],
        to: str,
        fields: Mapping[str, str | int] | None = None,
    ) -> tuple[str, Record]:
        """MOVED (it was in one of `states`, and now is in `to`), STATE (it was not:
        unchanged) or MISSING, and the record."""
        args = ["MOVE", "," + ",".join(states) + ",", to, *_pairs(fields or {})]
        outcome, flat = await self.call("transfer", [Keys.transfer(transfer_id)], args)
        return outcome.decode(), _record(flat)

    async def transfer_record(self, transfer_id: str) -> Record:
        got = await self.command(lambda p: p.hgetall(Keys.transfer(transfer_id)))
        return {k.decode(): v.decode() for k, v in got.items()}
