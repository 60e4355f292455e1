"""A reservation across locations (and every reservation on a Redis Cluster) is a saga: its
parts are held, committed or released one location at a time, and the directory's saga
field decides between racing calls and tells recovery what to finish. The whole story is
in engine/usecases/reservations.py."""

from __future__ import annotations

import asyncio
import time
import uuid

from engine.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    Unavailable,
)
from engine.domain.model import (
    HoldResult,
    Line,
    Reservation,
    ReservationState,
    Shortfall,
    by_location,
    fingerprint,
)
from engine.store.codecs import DirEntry, PickCapacity, encode_dir_lines
from engine.store.replies import (
    PENDING,
    Claim,
    HoldReply,
    PartReply,
    ReleaseMode,
    Reply,
    Saga,
)
from engine.usecases.parts import (
    ABORTED,
    COMMITTED,
    COMMITTING,
    RELEASED,
    RELEASING,
    SETTLED_AS,
    Holds,
    LinesMoved,
    ReservationParts,
    saga_word,
)


class Sagas(ReservationParts):
    """The saga steps of Reserve, Commit and Release, and their recovery."""

    async def _reserve_saga(
        self,
        rid: str,
        lines: tuple[Line, ...],
        groups: dict[str, list[Line]],
        ttl_ms: int,
        caps: dict[str, PickCapacity],
        holds: Holds,
        owner: str,
        asked: tuple[Line, ...] = (),
    ) -> HoldResult:
        for _ in range(3):
            result = await self._try_saga(rid, lines, groups, ttl_ms, caps, holds, owner, asked)
            if result is not None:
                return result
        raise Unavailable(f"reservation {rid} keeps being placed and rolled back; retry")

    async def _try_saga(
        self,
        rid: str,
        lines: tuple[Line, ...],
        groups: dict[str, list[Line]],
        ttl_ms: int,
        caps: dict[str, PickCapacity],
        holds: Holds,
        made_by: str,
        asked: tuple[Line, ...] = (),
    ) -> HoldResult | None:
        """One attempt; None when a concurrent attempt with this id fell short meanwhile.
        asked: the lines as sent, when bundles made `lines` (those held) other."""
        now = self.clock.now_ms()
        fp, owner = fingerprint(asked or lines, made_by), uuid.uuid4().hex
        ttl = ttl_ms + self.storage.retention_ms
        recover_at = now + self.timing.saga_timeout_ms
        claimed = await self.storage.claim(
            rid, fp, encode_dir_lines(lines, asked), owner, ttl, recover_at, made_by
        )
        if claimed.reply is Claim.CONFLICT:
            raise AlreadyExists(f"reservation {rid} exists with other lines")
        if claimed.reply is Claim.SAGA:
            settled = await self._settled(rid, claimed.saga)
            return None if settled is None else HoldResult(settled)
        calls = [
            self.storage.hold_call(
                rid, fp, loc, part, now, now + ttl_ms, None, caps.get(loc), "", holds.get(loc)
            )
            for loc, part in groups.items()
        ]
        answers = await self.storage.hold(calls)
        held = [loc for loc, a in zip(groups, answers, strict=True) if a.reply is Reply.HELD]
        if len(held) == len(calls):
            if not await self.storage.settle(rid, PENDING + owner, ""):
                # recovery rolled it back meanwhile: so is this, and the id reads RELEASED
                await self._release_parts(rid, groups, held, ReleaseMode.TOMBSTONE)
                return HoldResult(await self.get(rid))
            await self.storage.unschedule_saga(rid)
            return HoldResult(Reservation(rid, asked or lines, ReservationState.HELD, now + ttl_ms))
        shortfalls: list[Shortfall] = []
        for loc, answer in zip(groups, answers, strict=True):
            shortfalls += shortfalls_of(loc, answer)
        full = tuple(loc for loc, a in zip(groups, answers, strict=True) if a.reply is Reply.FULL)
        if shortfalls or full:
            # It never took effect: forget every part held, then the id itself.
            await self._release_parts(rid, groups, held, ReleaseMode.FORGET, fp=fp)
            await self.storage.drop_directory(rid, PENDING + owner)
            await self.storage.unschedule_saga(rid)
            return HoldResult(None, tuple(shortfalls), full)
        # A part is there already in another state: this id's earlier life, rolled back
        # by recovery (its tombstones) or settled. The id is spent: what was held now is
        # let go, the attempt is decided ABORTED if still its own, and the call answers as
        # the id reads (RELEASED, once recovery has rolled it back).
        await self._release_parts(rid, groups, held, ReleaseMode.TOMBSTONE)
        if await self.storage.settle(rid, PENDING + owner, ABORTED):
            await self.storage.unschedule_saga(rid)
        return HoldResult(await self.get(rid))

    async def _settled(self, rid: str, saga: str) -> Reservation | None:
        """Another call owns this saga: wait for it to settle, then answer as it did.
        None: it fell short and forgot the id, so this call may place it anew."""
        deadline = time.monotonic() + self.timing.saga_timeout_ms / 1000
        while saga.startswith(PENDING) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            entry = await self.storage.directory(rid)
            if entry is None:
                return None
            saga = entry.saga
        if saga.startswith(PENDING):
            raise Unavailable(f"reservation {rid} is still being placed; retry")
        return await self.get(rid)

    async def _commit_saga(self, rid: str, entry: DirEntry, groups: dict[str, list[Line]]) -> None:
        saga, generation = entry.saga, entry.generation
        if not saga:
            pinned = await self._pin(rid, groups)
            if len(pinned) < len(groups):
                now = await self._entry(rid)
                if now.moving is not None or now.generation != generation:
                    raise LinesMoved  # a part left by a move is not HELD: read them again
                saga = now.saga
                if saga not in (COMMITTING, COMMITTED):
                    if pinned:  # parts lapsed unevenly (clock skew): let none outlive the rest
                        await self._release_saga(rid, groups, entry.owner, generation=generation)
                    raise FailedPrecondition(f"reservation {rid} is no longer HELD")
            else:
                await self._decide(rid, "", COMMITTING, generation)
                saga = COMMITTING
        if saga == COMMITTING:
            await self._commit_parts(rid, groups, True, entry.owner)
            await self.storage.settle(rid, COMMITTING, COMMITTED)
            await self.storage.unschedule_saga(rid)

    async def _decide(self, rid: str, expected: str, new: Saga, generation: int) -> None:
        """Moves the saga field by compare-and-set, on the lines of `generation` only; on
        losing, says who won (unless the winner made the same decision: then this call helps
        finish it), or, if a MoveLine won, has the caller read the moved lines (LinesMoved)."""
        await self.storage.schedule_saga(rid, self.clock.now_ms() + self.timing.saga_timeout_ms)
        if await self.storage.settle(rid, expected, new, generation=generation):
            return
        entry = await self._entry(rid)
        if entry.moving is not None or entry.generation != generation:
            raise LinesMoved
        if entry.saga not in (new, SETTLED_AS[new]):
            raise FailedPrecondition(f"reservation {rid} is {saga_word(entry.saga)}, not HELD")

    async def _release_saga(
        self,
        rid: str,
        groups: dict[str, list[Line]],
        owner: str,
        decided: bool = False,
        generation: int = 0,
    ) -> list[PartReply]:
        if not decided:
            await self._decide(rid, "", RELEASING, generation)
        answers = await self._release_parts(rid, groups, list(groups), ReleaseMode.RELEASE, owner)
        await self.storage.settle(rid, RELEASING, RELEASED)
        await self.storage.unschedule_saga(rid)
        return answers

    async def recover(self, rid: str) -> str:
        """Finishes or rolls back a saga whose owner did not; returns what it did."""
        entry = await self.storage.directory(rid)
        action = "none"
        if entry is not None:
            groups = by_location(entry.lines)
            if entry.saga.startswith(PENDING) and await self.storage.settle(
                rid, entry.saga, ABORTED
            ):
                await self._release_parts(
                    rid, groups, list(groups), ReleaseMode.TOMBSTONE, entry.owner
                )
                action = "rolled_back"
            elif entry.saga == COMMITTING:
                await self._commit_parts(rid, groups, True, entry.owner)
                await self.storage.settle(rid, COMMITTING, COMMITTED)
                action = "committed"
            elif entry.saga == RELEASING:
                await self._release_parts(
                    rid, groups, list(groups), ReleaseMode.RELEASE, entry.owner
                )
                await self.storage.settle(rid, RELEASING, RELEASED)
                action = "released"
        await self.storage.unschedule_saga(rid)
        if action != "none":
            self.metrics.sagas_recovered.labels(action).inc()
        return action


def shortfalls_of(location: str, answer: HoldReply) -> tuple[Shortfall, ...]:
    return tuple(Shortfall(location, *short) for short in answer.short)
