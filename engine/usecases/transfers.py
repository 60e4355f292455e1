"""Transfers (CreateTransfer, ShipTransfer, ReceiveTransfer, CancelTransfer): the record in
its own slot (transfer:{<id>}), and each step a stock change at one location at a time,
never a script across slots.

A step that moves stock first moves the record into a state of its own (SHIPPING,
RECEIVING, CANCELLING), then makes its changes at each location, each once (supply.lua
keeps the steps made at a location, {L}:t), then moves the record on. A crash in between
leaves the record in that state; the next call on the transfer (any of the four, e.g. the
caller's retry) finishes the step first. Meanwhile its units are never counted twice:

    ship:    units leave `from` (logged as a commit is), then are supply due at `to`
    receive: at `to`, in one script, the received units arrive and its supply goes
    cancel:  the supply at `to` goes, then the units come back to `from` (if a ship took
             them: a ship refused short sets the record back to CREATED, and a retry racing
             it may still take them; the cancel's steps also fence off any ship step after
             them, lua/supply.lua)

so between two of these changes the units are counted once or not at all (never promised
twice). Discrepancies of a receipt are put on the alerts stream before the record is
RECEIVED: a crash there may put them on it twice, never not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from engine.domain.clock import Clock
from engine.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from engine.domain.model import check_id
from engine.domain.supply import SupplyKind
from engine.domain.transfers import (
    Transfer,
    TransferState,
    check_receipt,
    check_transfer,
    lines_of,
    lines_text,
)
from engine.metrics import Metrics
from engine.store.storage import Storage
from engine.store.supply import StockStep, SupplyOp, transfer_entry
from engine.store.transfers import Record
from engine.usecases.locations import LocationRegistry
from engine.usecases.supply import settled

S = TransferState
# Says PERMISSION_DENIED, naming the field, unless the caller may act at these locations.
MayAct = Callable[[Iterable[str], str], None]


def _anywhere(locations: Iterable[str], field: str) -> None:
    return None


def _transfer(transfer_id: str, rec: Record) -> Transfer:
    return Transfer(
        transfer_id,
        rec["from"],
        rec["to"],
        lines_of(rec["l"]),
        int(rec["x"]),
        TransferState(rec["s"]),
        lines_of(rec.get("r", "")),
        rec.get("b") == "1",
    )


class Transfers:
    def __init__(
        self,
        storage: Storage,
        locations: LocationRegistry,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.storage = storage
        self.locations = locations
        self.clock = clock
        self.metrics = metrics or Metrics()

    async def create(self, transfer: Transfer, may_act: MayAct = _anywhere) -> Transfer:
        t = check_transfer(transfer, self.clock.now_ms())
        may_act([t.from_location], "from_location_id")
        may_act([t.to_location], "to_location_id")
        await self.locations.require([t.from_location], "from_location_id")
        await self.locations.require([t.to_location], "to_location_id")
        fields: dict[str, str | int] = {
            "s": S.CREATED.value,
            "from": t.from_location,
            "to": t.to_location,
            "l": lines_text(t.lines),
            "x": t.expected_at,
        }
        outcome, rec = await self.storage.create_transfer(t.transfer_id, t.fingerprint, fields)
        if outcome == "CONFLICT":
            self.metrics.transfers.labels("create", "refused").inc()
            raise AlreadyExists(f"transfer_id: {t.transfer_id!r} is a transfer of other lines")
        self.metrics.transfers.labels("create", "done" if outcome == "NEW" else "again").inc()
        return await self._finish(t.transfer_id, rec)

    async def ship(self, transfer_id: str, may_act: MayAct = _anywhere) -> Transfer:
        t = await self._current(transfer_id)
        may_act([t.from_location], "transfer_id")
        if t.state is S.CREATED:
            outcome, rec = await self.storage.move_transfer(
                transfer_id, (S.CREATED.value,), S.SHIPPING.value
            )
            t = await self._finish(transfer_id, rec)
            if outcome == "MOVED":
                self.metrics.transfers.labels("ship", "done").inc()
                return t
        if t.state is S.CANCELLED or t.state is S.CREATED:
            self.metrics.transfers.labels("ship", "refused").inc()
            raise FailedPrecondition(f"transfer_id: {transfer_id!r} is {t.state.value}")
        self.metrics.transfers.labels("ship", "again").inc()
        return t

    async def receive(
        self,
        transfer_id: str,
        lines: Sequence[tuple[str, int]] | None,
        may_act: MayAct = _anywhere,
    ) -> Transfer:
        t = await self._current(transfer_id)
        may_act([t.to_location], "transfer_id")
        received = check_receipt(t, lines)
        if t.state is S.SHIPPED:
            fields = {"r": lines_text(received)}
            outcome, rec = await self.storage.move_transfer(
                transfer_id, (S.SHIPPED.value,), S.RECEIVING.value, fields
            )
            t = await self._finish(transfer_id, rec)
            if outcome == "MOVED":
                self.metrics.transfers.labels("receive", "done").inc()
                return t
        if t.state is not S.RECEIVED:
            self.metrics.transfers.labels("receive", "refused").inc()
            raise FailedPrecondition(f"transfer_id: {transfer_id!r} is {t.state.value}")
        if t.received != received:
            raise AlreadyExists(f"transfer_id: {transfer_id!r} was received with other lines")
        self.metrics.transfers.labels("receive", "again").inc()
        return t

    async def cancel(self, transfer_id: str, may_act: MayAct = _anywhere) -> Transfer:
        t = await self._current(transfer_id)
        may_act([t.from_location, t.to_location], "transfer_id")
        for state in (S.CREATED, S.SHIPPED):
            if t.state is state:
                # from CREATED too through CANCELLING: its steps fence off a ship racing it
                # (and bring back what one took, its record set back after a short try)
                fields: dict[str, str | int] = {} if state is S.CREATED else {"b": "1"}
                outcome, rec = await self.storage.move_transfer(
                    transfer_id, (state.value,), S.CANCELLING.value, fields
                )
                t = await self._finish(transfer_id, rec)
                if outcome == "MOVED":
                    self.metrics.transfers.labels("cancel", "done").inc()
                    return t
        if t.state is not S.CANCELLED:
            self.metrics.transfers.labels("cancel", "refused").inc()
            raise FailedPrecondition(f"transfer_id: {transfer_id!r} is {t.state.value}")
        self.metrics.transfers.labels("cancel", "again").inc()
        return t

    # -- the steps ----------------------------------------------------------------------

    async def _current(self, transfer_id: str) -> Transfer:
        check_id(transfer_id, "transfer_id")
        rec = await self.storage.transfer_record(transfer_id)
        if not rec:
            raise NotFound(f"transfer_id: no transfer {transfer_id!r}")
        return await self._finish(transfer_id, rec)

    async def _finish(self, transfer_id: str, rec: Record) -> Transfer:
        """The transfer, once a step it is in the middle of is made."""
        t = _transfer(transfer_id, rec)
        if t.state is S.SHIPPING:
            t = await self._ship(t)
        elif t.state is S.RECEIVING:
            t = await self._receive(t)
        elif t.state is S.CANCELLING:
            t = await self._cancel(t)
        return t

    async def _move(self, t: Transfer, was: S, to: S) -> Transfer:
        _, rec = await self.storage.move_transfer(t.transfer_id, (was.value,), to.value)
        return _transfer(t.transfer_id, rec)

    async def _ship(self, t: Transfer) -> Transfer:
        now = self.clock.now_ms()
        out = StockStep(t.transfer_id, "S", [(sku, -qty) for sku, qty in t.lines])
        left = await self.storage.change_supply(t.from_location, [], now, out)
        if left.short:
            await self._move(t, S.SHIPPING, S.CREATED)
            self.metrics.transfers.labels("ship", "short").inc()
            short = ", ".join(f"{sku} ({a} available)" for sku, a in sorted(left.short.items()))
            raise FailedPrecondition(
                f"transfer_id: not enough at {t.from_location!r} to ship: {short}"
            )
        due = [
            SupplyOp(
                transfer_entry(t.transfer_id, sku), sku, qty, t.expected_at, SupplyKind.TRANSFER
            )
            for sku, qty in t.lines
        ]
        await self.storage.change_supply(t.to_location, due, now, StockStep(t.transfer_id, "I"))
        return await self._move(t, S.SHIPPING, S.SHIPPED)

    async def _receive(self, t: Transfer) -> Transfer:
        now = self.clock.now_ms()
        gone = [SupplyOp(transfer_entry(t.transfer_id, sku), sku, op="D") for sku, _ in t.lines]
        arrived = StockStep(t.transfer_id, "R", [(sku, q) for sku, q in t.received if q > 0])
        await settled(
            self.storage,
            self.metrics,
            await self.storage.change_supply(t.to_location, gone, now, arrived),
            now,
        )
        alerts = [
            {
                "kind": "transfer_discrepancy",
                "at": str(now),
                "transfer_id": t.transfer_id,
                "location_id": t.to_location,
                "from_location_id": t.from_location,
                "sku": d.sku,
                "shipped": str(d.shipped),
                "received": str(d.received),
                "missing": str(d.missing),
            }
            for d in t.discrepancies
        ]
        await self.storage.publish_alerts(alerts)
        if alerts:
            self.metrics.transfers.labels("receive", "discrepancy").inc()
        return await self._move(t, S.RECEIVING, S.RECEIVED)

    async def _cancel(self, t: Transfer) -> Transfer:
        now = self.clock.now_ms()
        gone = [SupplyOp(transfer_entry(t.transfer_id, sku), sku, op="D") for sku, _ in t.lines]
        dropped = await self.storage.change_supply(
            t.to_location, gone, now, StockStep(t.transfer_id, "D")
        )
        await settled(self.storage, self.metrics, dropped, now)
        back = StockStep(t.transfer_id, "B", list(t.lines))
        await self.storage.change_supply(t.from_location, [], now, back)
        return await self._move(t, S.CANCELLING, S.CANCELLED)
