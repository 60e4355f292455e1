"""The Python client's calls of future supply, promises and transfers (issue 17), mixed into
OmnistockClient (engine/client.py). Every call a retry may repeat carries the same ids, so
a retry is safe: supply is set by id, each transfer step made once by transfer id."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from engine.api.convert import SUPPLY_KINDS as KINDS
from engine.api.convert import SUPPLY_OUTCOMES as OUTCOMES
from engine.api.convert import TRANSFER_STATES as STATES
from engine.domain.supply import Promise, PromiseStep, Supply, SupplyOutcome
from engine.domain.transfers import Discrepancy, Transfer
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

T = TypeVar("T")
_KIND_PB = {kind: number for number, kind in KINDS.items() if number}
_OUTCOME = {number: outcome for outcome, number in OUTCOMES.items()}
_STATE = {number: state for state, number in STATES.items()}


def _promise(msg: pb.Promise) -> Promise:
    steps = tuple(PromiseStep(s.at, s.units) for s in msg.steps)
    return Promise(
        msg.location_id,
        msg.sku,
        msg.available_now,
        steps,
        msg.incoming,
        msg.overdue,
        msg.future_held,
    )


def _transfer(msg: pb.Transfer) -> tuple[Transfer, list[Discrepancy]]:
    t = Transfer(
        msg.transfer_id,
        msg.from_location_id,
        msg.to_location_id,
        tuple((ln.sku, ln.qty) for ln in msg.lines),
        msg.expected_at,
        _STATE[msg.state],
        tuple((ln.sku, ln.qty) for ln in msg.received),
        msg.returned,
    )
    return t, [Discrepancy(d.sku, d.shipped, d.received) for d in msg.discrepancies]


class SupplyCalls:
    _call: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
    _stock: Any
    _availability: Any
    _opts: dict[str, Any]

    async def upsert_supply(self, supplies: Sequence[Supply]) -> list[SupplyOutcome]:
        """Sets (or, with cancel, cancels; with received, receives) each supply by its id at
        its location."""
        request = pb.UpsertSupplyRequest(
            supplies=[
                pb.Supply(
                    supply_id=s.supply_id,
                    location_id=s.location,
                    sku=s.sku,
                    qty=s.qty,
                    expected_at=s.expected_at,
                    kind=_KIND_PB[s.kind],
                    cancel=s.cancel,
                    received=s.received,
                )
                for s in supplies
            ]
        )
        resp = await self._call(lambda: self._stock.UpsertSupply(request, **self._opts))
        return [_OUTCOME[o] for o in resp.outcomes]

    async def promise(
        self,
        skus: Sequence[str],
        *,
        location_ids: Sequence[str] = (),
        network: str = "",
        horizon_days: int = 0,
    ) -> tuple[list[Promise], list[Promise]]:
        """Each row's promise (now, and by each date supply is due), and with a network its
        totals per sku."""
        request = pb.GetPromiseRequest(
            skus=skus, location_ids=location_ids, network=network, horizon_days=horizon_days
        )
        resp = await self._call(lambda: self._availability.GetPromise(request, **self._opts))
        return [_promise(p) for p in resp.promises], [_promise(p) for p in resp.network_totals]

    async def create_transfer(self, transfer: Transfer) -> Transfer:
        request = pb.CreateTransferRequest(
            transfer_id=transfer.transfer_id,
            from_location_id=transfer.from_location,
            to_location_id=transfer.to_location,
            lines=[pb.TransferLine(sku=sku, qty=qty) for sku, qty in transfer.lines],
            expected_at=transfer.expected_at,
        )
        resp = await self._call(lambda: self._stock.CreateTransfer(request, **self._opts))
        return _transfer(resp)[0]

    async def ship_transfer(self, transfer_id: str) -> Transfer:
        request = pb.ShipTransferRequest(transfer_id=transfer_id)
        resp = await self._call(lambda: self._stock.ShipTransfer(request, **self._opts))
        return _transfer(resp)[0]

    async def receive_transfer(
        self, transfer_id: str, lines: Sequence[tuple[str, int]] | None = None
    ) -> tuple[Transfer, list[Discrepancy]]:
        """lines: (sku, qty) of what arrived (None: everything shipped); answers the
        transfer and each line received other than shipped."""
        request = pb.ReceiveTransferRequest(
            transfer_id=transfer_id,
            lines=[pb.TransferLine(sku=sku, qty=qty) for sku, qty in lines or ()],
        )
        resp = await self._call(lambda: self._stock.ReceiveTransfer(request, **self._opts))
        return _transfer(resp)

    async def cancel_transfer(self, transfer_id: str) -> Transfer:
        request = pb.CancelTransferRequest(transfer_id=transfer_id)
        resp = await self._call(lambda: self._stock.CancelTransfer(request, **self._opts))
        return _transfer(resp)[0]
