"""Returns anywhere (RecordReturn, SetReturnRules). A return at a location L, optionally
naming the reservation its units were bought under, is at most two atomic steps:

1. naming a reservation: the reservation must exist and be COMMITTED (a state it never
   leaves, so checking it first is safe); then the return claims its lines in the
   reservation's directory (claim_return.lua), which refuses a return that would take any
   sku past what the reservation bought, counting every return before it; concurrent
   returns of one reservation are one script each on the directory's slot, so the count is
   exact. The claim is remembered by return id (same lines: SAME, no second claim).
2. the units land at L (record_return.lua): in `returned`, or `sellable` where the return
   rules say so, recorded by return id at L ("{L}:n:<id>").

A return whose claim was made but whose landing did not happen (a crash between the two)
is completed by sending it again: both steps answer "already done" for what they did. Two
returns of one id with other lines meet at the claim or at L (ALREADY_EXISTS); the one that
claimed and then met the other at L takes its claim back first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace

from engine.domain import auth
from engine.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from engine.domain.model import ReservationState
from engine.domain.returns import (
    Return,
    Returned,
    ReturnRule,
    check_return,
    check_rules,
    landing,
)
from engine.metrics import Metrics
from engine.store.replies import Saga
from engine.store.storage import Storage
from engine.usecases.locations import LocationRegistry
from engine.usecases.parts import overall_state


class Returns:
    def __init__(
        self,
        storage: Storage,
        locations: LocationRegistry,
        metrics: Metrics,
        now_ms: Callable[[], int],
        bundles: Callable[[], Awaitable[Mapping[str, object]]] | None = None,
    ) -> None:
        """bundles: the bundle skus (SetBundles), whose units are their components'."""
        self.storage = storage
        self.locations = locations
        self.metrics = metrics
        self.now_ms = now_ms
        self.bundles = bundles

    async def record(self, ret: Return) -> Returned:
        check_return(ret)
        kits = await self.bundles() if self.bundles is not None else {}
        for i, ln in enumerate(ret.lines):
            if ln.sku in kits:
                raise InvalidArgument(
                    f"lines[{i}].sku",
                    f"{ln.sku} is a bundle (SetBundles), with no stock of its own: return its "
                    "components",
                )
        auth.current().require_locations([ret.location], "location_id")
        await self.locations.require([ret.location], "location_id")
        rules = await self.storage.return_rules(ret.location, [ln.sku for ln in ret.lines])
        lines = tuple(replace(ln, state=landing(rules, ret.location, ln.sku)) for ln in ret.lines)
        fp = ret.fingerprint()
        if ret.reservation_id:
            await self._claim(ret, fp)
        landed = await self.storage.record_return(
            ret.location, ret.return_id, fp, lines, self.now_ms()
        )
        if landed.outcome == "CONFLICT":
            if ret.reservation_id:
                await self.storage.claim_return(
                    ret.reservation_id, ret.return_id, fp, ret.lines, undo=True
                )
            self._refused("already_exists")
            raise AlreadyExists(f"return {ret.return_id} was recorded with other lines")
        replayed = landed.outcome == "SAME"
        self.metrics.returns.labels("replayed" if replayed else "recorded").inc()
        if not replayed:
            for ln in landed.lines:
                self.metrics.returned_units.labels(ln.state.value).inc(ln.qty)
        return Returned(ret.return_id, landed.lines, replayed)

    async def _claim(self, ret: Return, fp: str) -> None:
        state = await self._state_of(ret.reservation_id)
        if state is not ReservationState.COMMITTED:
            self._refused("not_committed")
            raise FailedPrecondition(
                f"reservation_id: reservation {ret.reservation_id} is {state.value}, not"
                " COMMITTED: only bought units come back"
            )
        claim = await self.storage.claim_return(ret.reservation_id, ret.return_id, fp, ret.lines)
        if claim.outcome == "MISSING":
            self._refused("not_found")
            raise NotFound(f"reservation {ret.reservation_id} not found")
        if claim.outcome == "CONFLICT":
            self._refused("already_exists")
            raise AlreadyExists(f"return {ret.return_id} was recorded with other lines")
        if claim.outcome == "OVER":
            self._refused("over_bought")
            raise FailedPrecondition(
                f"lines: reservation {ret.reservation_id} may return {claim.left} more of"
                f" {claim.sku} (what it bought, less its returns so far)"
            )

    async def _state_of(self, rid: str) -> ReservationState:
        """The reservation's state, whoever made it: a return may come back anywhere."""
        entry = await self.storage.directory(rid)
        if entry is None:
            self._refused("not_found")
            raise NotFound(f"reservation {rid} not found")
        if entry.saga in (Saga.COMMITTING, Saga.COMMITTED):
            return ReservationState.COMMITTED
        parts = await self.storage.parts(rid, sorted({ln.location for ln in entry.lines}))
        return overall_state({p.state for p in parts})

    def _refused(self, outcome: str) -> None:
        self.metrics.returns.labels(outcome).inc()

    async def set_rules(self, rules: Sequence[ReturnRule]) -> int:
        """Sets every rule of the call at once; answers the rules' new version."""
        check_rules(rules)
        named = [r.location for r in rules if r.location]
        if named:
            await self.locations.require(list(dict.fromkeys(named)), "rules[].location_id")
        changes: dict[tuple[str, str], bool | None] = {
            (r.location, r.sku): None if r.remove else r.to_sellable for r in rules
        }
        return await self.storage.set_return_rules(changes)
