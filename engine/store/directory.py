"""The reservation directory (res:{<id>}: what an id means, who made it, its saga field)
and the sagas index (what recovery must look at, and when)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.domain.model import Line
from engine.domain.moves import Move
from engine.store.base import Base
from engine.store.codecs import (
    DirEntry,
    MoveRecord,
    decode_dir_lines,
    decode_move,
    encode_lines,
    encode_move,
)
from engine.store.keys import SAGAS, Keys
from engine.store.replies import (
    MOVING,
    Claim,
    ClaimReply,
    MoveClaim,
    MoveClaimReply,
    claim_reply,
    move_claim_reply,
)


class Directory(Base):
    """The directory and the sagas index (see engine/store/storage.py)."""

    async def directory(self, reservation_id: str, move_id: str = "") -> DirEntry | None:
        """The reservation's entry; with a move id, also what that MoveLine moved, if it did."""
        key = Keys.directory(reservation_id)
        fields = ["f", "l", "g", "o", "u", "n", "m", *([f"d:{move_id}"] if move_id else [])]
        raw = await self.command(lambda p: p.hmget(key, fields))
        got = [v.decode() if v is not None else None for v in raw]
        f, lines, g, o, u, n, m = got[:7]
        if f is None or lines is None:
            return None
        saga = g or ""
        moving = None
        if m and saga.startswith(MOVING):
            move_id_of, move = m.split("\t", 1)
            moving = MoveRecord(move_id_of, decode_move(move), saga.removeprefix(MOVING))
        done = decode_move(got[7]) if move_id and got[7] else None
        held, asked = decode_dir_lines(lines)
        return DirEntry(f, held, saga, o or "", u or "", int(n or 0), moving, done, asked)

    async def claim(
        self,
        reservation_id: str,
        fp: str,
        lines: str,
        owner: str,
        ttl_ms: int,
        recover_at: int,
        made_by: str = "",
    ) -> ClaimReply:
        """Opens a saga: the sagas index entry and the directory entry, in one round trip.
        The index entry goes first (a crash after it leaves recovery a trace), and only if
        the id has none (NX: a retry never postpones the recovery of an earlier attempt);
        a claim refused (CONFLICT, or the id's saga under way) takes back the entry it
        added, so a refused call leaves nothing behind."""

        def build(pipe: Any) -> None:
            pipe.zadd(Keys.sagas(reservation_id), {reservation_id: recover_at}, nx=True)
            args = [fp, lines, owner, ttl_ms, made_by]
            self.evalsha(pipe, "claim", [Keys.directory(reservation_id)], args)

        added, answer = await self.pipeline(build)
        claimed = claim_reply(answer)
        if claimed.reply is not Claim.NEW and added:
            await self.unschedule_saga(reservation_id)
        return claimed

    async def place(
        self, reservation_id: str, fp: str, lines: str, ttl_ms: int, made_by: str
    ) -> ClaimReply:
        """On a cluster: the directory entry of a reservation at one location, made beside
        its hold (place.lua); NEW counts this attempt in, until `unplace`."""
        args = [fp, lines, ttl_ms, made_by]
        return claim_reply(await self.call("place", [Keys.directory(reservation_id)], args))

    async def unplace(self, reservation_id: str, fp: str) -> None:
        """An attempt counted in by `place` whose hold failed counts itself out."""
        await self.call("unplace", [Keys.directory(reservation_id)], [fp])

    async def settle(
        self,
        reservation_id: str,
        expected: str,
        new: str,
        ttl_ms: int = 0,
        generation: int | None = None,
    ) -> bool:
        """Moves the saga field from `expected` to `new` (settle.lua); with a generation,
        only while the lines are still the ones of that generation (no MoveLine since)."""
        args = [expected, new, ttl_ms, "" if generation is None else generation]
        return bool(await self.call("settle", [Keys.directory(reservation_id)], args))

    async def schedule_saga(self, reservation_id: str, recover_at: int) -> None:
        key = Keys.sagas(reservation_id)
        await self.command(lambda p: p.zadd(key, {reservation_id: recover_at}))

    async def unschedule_saga(self, reservation_id: str) -> None:
        await self.command(lambda p: p.zrem(Keys.sagas(reservation_id), reservation_id))

    async def sagas_due(self, now: int, limit: int) -> list[str]:
        """Ids whose recovery time has come, earliest first: every shard, one round trip."""
        due = await self._due_in(SAGAS, now, limit)
        return [rid for rid, _ in due[:limit]]

    async def open_sagas(self) -> list[str]:
        """Every id with a saga under way or not yet recovered (for operators and tests)."""
        return [rid for rid, _ in await self._due_in(SAGAS, float("inf"), -1)]

    async def _due_in(self, keys: Sequence[str], now: float, limit: int) -> list[tuple[str, int]]:
        """(member, score) of every key's members scored at most `now` (at most `limit` of
        each; -1: all), merged, lowest score first."""

        def build(pipe: Any) -> None:
            for key in keys:
                pipe.zrangebyscore(key, "-inf", now, start=0, num=limit, withscores=True)

        got = await self.pipeline(build)
        merged = [(member.decode(), int(score)) for rows in got for member, score in rows]
        return sorted(merged, key=lambda item: item[1])

    async def drop_directory(self, reservation_id: str, saga: str) -> bool:
        """Forgets a reservation that never took effect, if its saga field is still `saga`."""
        return bool(await self.call("drop", [Keys.directory(reservation_id)], [saga]))

    # -- MoveLine (engine/usecases/moves.py) ------------------------------------------

    async def claim_move(
        self,
        reservation_id: str,
        generation: int,
        move_id: str,
        token: str,
        move: Move,
        recover_at: int,
    ) -> MoveClaimReply:
        """Opens a move (move_claim.lua), the sagas index entry first, as `claim` does (and
        taken back, if this call added it, when the move is refused)."""

        def build(pipe: Any) -> None:
            pipe.zadd(Keys.sagas(reservation_id), {reservation_id: recover_at}, nx=True)
            args = [generation, move_id, token, encode_move(move)]
            self.evalsha(pipe, "move_claim", [Keys.directory(reservation_id)], args)

        added, answer = await self.pipeline(build)
        claimed = move_claim_reply(answer)
        if claimed.reply is not MoveClaim.NEW and added:
            await self.unschedule_saga(reservation_id)
        return claimed

    async def settle_move(
        self, reservation_id: str, token: str, lines: Sequence[Line] | None
    ) -> bool:
        """Ends the move `token` in the directory (move_settle.lua): made, with the lines
        after it, or not made (None)."""
        text = "" if lines is None else encode_lines(lines)
        return bool(await self.call("move_settle", [Keys.directory(reservation_id)], [token, text]))
