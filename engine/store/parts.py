"""Reservation parts in Redis: holds, commits, releases, extends, and the expiry of holds
(the sweeper's reads and writes). The directory and the sagas index: engine/store/directory.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from engine.domain.model import Line
from engine.domain.supply import waiting_until
from engine.store.codecs import (
    PART_STATE_FIELDS,
    ChannelHold,
    HoldCall,
    PartState,
    PickCapacity,
    part_lines,
    part_state,
)
from engine.store.directory import Directory
from engine.store.keys import OLD_SAGAS, OLD_WAKE, WAKES, KeyList, Keys
from engine.store.replies import (
    HoldReply,
    PartReply,
    ReleaseMode,
    Reply,
    hold_reply,
    part_reply,
)
from engine.store.scripts import Command


class Parts(Directory):
    """Reservation parts and expiry (see engine/store/storage.py)."""

    # -- reservation parts ------------------------------------------------------------

    def _line_keys(self, keys: KeyList, location: str, skus: Iterable[str]) -> list[Any]:
        """(sku, stock key index, change log key index) for each sku, the keys added."""
        args: list[Any] = []
        for sku in skus:
            stock = keys.add(self.keys.stock(location, sku))
            args += [sku, stock, keys.add(self.keys.log(location, sku))]
        return args

    def hold_call(
        self,
        reservation_id: str,
        fp: str,
        location: str,
        lines: Sequence[Line],
        now: int,
        expires_at: int,
        directory_lines: str | None,
        capacity: PickCapacity | None = None,
        owner: str = "",
        channel: ChannelHold | None = None,
    ) -> HoldCall:
        """A hold script call; with directory_lines it also writes the directory (on one
        Redis only: on a cluster the directory is in another slot); with capacity it takes
        one order of the location's daily pick capacity, or answers FULL; with a channel,
        it holds no more than the channel's rules at the location let it."""
        keys = KeyList(
            Keys.part(location, reservation_id),
            Keys.due(location),
            Keys.channel_holds(location),
            Keys.pools(location),
        )
        triples: list[Any] = []
        for line in lines:
            stock = keys.add(self.keys.stock(location, line.sku))
            triples += [line.sku, line.qty, stock, line.promise_by]
        supply = 0  # {L}:u, for lines with a promise date
        if any(line.promise_by for line in lines):
            supply = keys.add(Keys.supply(location))
        cap: list[Any] = [0, 0, "", ""]
        if capacity is not None:
            cap = [keys.add(Keys.capacity(location)), *capacity]
        with_dir = directory_lines is not None
        if with_dir:  # last: hold.lua reads them as KEYS[#KEYS-1] and KEYS[#KEYS]
            keys.add(Keys.wake(location))
            keys.add(Keys.directory(reservation_id))
        args = [reservation_id, fp, now, expires_at, self.retention_ms]
        args += ["1" if with_dir else "0", directory_lines or "", len(lines), *triples, *cap]
        rule = channel or ChannelHold()
        waits = waiting_until(lines, now, expires_at - now)  # the expiry of a part that waits
        args += [location, owner, rule.channel, rule.buffer, rule.share_ppm, supply, waits]
        args.append(Keys.changes(location))
        return HoldCall(keys.keys, args, location, expires_at, with_dir)

    async def hold(self, calls: Sequence[HoldCall]) -> list[HoldReply]:
        """Holds parts at one or more locations; the auto-pipeline sends them together.
        Right behind each hold goes the wake-up of its location's sweep (see wake), unless
        the script sets it itself."""

        def one(c: HoldCall) -> Awaitable[Any]:
            then = None if c.wakes else _wake_at(c.location, c.expires_at)
            return self.call("hold", c.keys, c.args, then=then)

        if len(calls) == 1:  # the common case: no task for gather to make
            return [hold_reply(await one(calls[0]))]
        return [hold_reply(answer) for answer in await asyncio.gather(*map(one, calls))]

    async def commit_part(
        self,
        reservation_id: str,
        location: str,
        skus: Iterable[str],
        now: int,
        force: bool,
        owner: str = "",
        lines: str = "",
    ) -> PartReply:
        """owner: the principal whose held units this part stops counting (see budget);
        lines: '' for any part, else the part's lines as read (encode_part_lines): a part
        holding others answers MOVED (commit.lua)."""
        keys = KeyList(
            Keys.part(location, reservation_id), Keys.due(location), Keys.channel_holds(location)
        )
        triples = self._line_keys(keys, location, skus)
        force_arg = "1" if force else "0"
        args = [reservation_id, now, self.retention_ms, force_arg, lines, len(triples) // 3]
        then = _unbudget(owner, reservation_id)
        args += [*triples, Keys.changes(location)]
        return part_reply(await self.call("commit", keys.keys, args, then))

    async def release_part(
        self,
        reservation_id: str,
        location: str,
        skus: Iterable[str],
        mode: ReleaseMode,
        owner: str = "",
        fp: str = "",
        lines: str = "",
    ) -> PartReply:
        """fp: let go only a part of these lines (its fingerprint); '' for any. lines: as in
        commit_part."""
        keys = KeyList(
            Keys.part(location, reservation_id),
            Keys.due(location),
            Keys.capacity(location),
            Keys.channel_holds(location),
        )
        triples = self._line_keys(keys, location, skus)
        args = [reservation_id, self.retention_ms, mode, fp, lines, len(triples) // 3, *triples]
        args.append(Keys.changes(location))
        then = _unbudget(owner, reservation_id)
        return part_reply(await self.call("release", keys.keys, args, then))

    async def extend_part(
        self, reservation_id: str, location: str, now: int, expires_at: int, pin: bool
    ) -> PartReply:
        """Moves a part's expiry; once it has moved, the location's wake-up follows it (an
        earlier expiry must wake the sweep earlier) and the directory is kept at least as
        long (PEXPIRE GT), in a second round trip, so that a refused extend writes nothing."""
        keys = [Keys.part(location, reservation_id), Keys.due(location)]
        args = [reservation_id, now, expires_at, "pin" if pin else "set"]
        answer = part_reply(await self.call("extend", keys, args))
        if answer.reply is Reply.HELD:
            directory_ttl = answer.expires_at - now + self.retention_ms

            def build(pipe: Any) -> None:
                pipe.execute_command(*_wake_at(location, answer.expires_at))
                pipe.pexpire(Keys.directory(reservation_id), directory_ttl, gt=True)

            await self.pipeline(build)
        return answer

    async def parts(self, reservation_id: str, locations: Iterable[str]) -> list[PartState]:
        locs = list(locations)

        def build(pipe: Any) -> None:
            for location in locs:
                pipe.hmget(Keys.part(location, reservation_id), PART_STATE_FIELDS)

        results = await self.pipeline(build)
        return [part_state(loc, fields) for loc, fields in zip(locs, results, strict=True)]

    # -- expiry -----------------------------------------------------------------------

    # The sweep does not read every location's expiry index on every pass: the wake-up index
    # says which locations may have a hold due. Each hold, and each extend, is followed in
    # the same batch by ZADD LT of its location at its expiry; the sweeper, after expiring
    # what was due at a location, takes the location off (disarm: only if no hold lowered
    # its time meanwhile), reads its earliest remaining expiry, and puts it back at that
    # time (ZADD LT). On one Redis a hold's ZADD runs after its script, which closes every
    # race with the sweeper; on a cluster, or after a client died between the two, the
    # sweeper's scan of every location every `full_scan` seconds (sweeper.py) is the net.

    async def woken(self, now: int, limit: int) -> dict[str, int]:
        """Locations whose wake-up time has come, with that time (every shard, one trip)."""
        return dict((await self._due_in(WAKES, now, limit))[:limit])

    async def wake_at(self, location: str) -> int | None:
        """When the sweep is next to look at a location (None: not until a hold is made)."""
        score = await self.command(lambda p: p.zscore(Keys.wake(location), location))
        return None if score is None else int(score)

    async def rearm(self, woken: dict[str, int | None]) -> None:
        """After a sweep of these locations: each goes back on the wake-up index at its
        earliest remaining expiry, if it has one. None: not taken off first (a full scan)."""
        seen: dict[str, list[Any]] = {}
        for loc, at in woken.items():
            if at is not None:
                seen.setdefault(Keys.wake(loc), []).extend((loc, at))
        await asyncio.gather(*(self.call("disarm", [key], args) for key, args in seen.items()))
        locations = list(woken)

        def build(pipe: Any) -> None:
            for location in locations:
                pipe.zrange(Keys.due(location), 0, 0, withscores=True)

        earliest = [
            (location, int(first[0][1]))
            for location, first in zip(locations, await self.pipeline(build), strict=True)
            if first
        ]
        if earliest:
            await self.pipeline(
                lambda pipe: [
                    pipe.zadd(Keys.wake(location), {location: at}, lt=True)
                    for location, at in earliest
                ]
            )

    async def capacity_used(self, locations: Sequence[str], day: str) -> list[int]:
        """Ship-from-store orders held or picked on `day` at each location: one round trip."""
        if not locations:
            return []

        def build(pipe: Any) -> None:
            for location in locations:
                pipe.hget(Keys.capacity(location), day)

        return [int(v or 0) for v in await self.pipeline(build)]

    async def due(self, locations: Sequence[str], now: int, limit: int) -> dict[str, list[str]]:
        """Reservation ids of HELD parts past their expiry, by location, earliest first:
        one read of each location's expiry index, all in one round trip (one per node)."""
        if not locations:
            return {}

        def build(pipe: Any) -> None:
            for location in locations:
                pipe.zrangebyscore(Keys.due(location), "-inf", now, start=0, num=limit)

        got = await self.pipeline(build)
        return {
            location: [rid.decode() for rid in rids]
            for location, rids in zip(locations, got, strict=True)
            if rids
        }

    async def expire(self, location: str, reservation_ids: Sequence[str], now: int) -> int:
        """Expires those of the parts at one location that are due; answers how many."""

        def build(pipe: Any) -> None:
            for rid in reservation_ids:
                pipe.hget(Keys.part(location, rid), "l")

        lines = await self.pipeline(build)
        skus = {sku for text in lines for sku, _ in part_lines(text)}
        keys = KeyList(
            Keys.due(location),
            Keys.capacity(location),
            Keys.channel_holds(location),
            *(Keys.part(location, rid) for rid in reservation_ids),
        )
        triples = self._line_keys(keys, location, sorted(skus))
        args = [now, self.retention_ms, len(reservation_ids), *reservation_ids, len(skus), *triples]
        args.append(Keys.changes(location))
        return int(await self.call("expire", keys.keys, args))

    async def migrate(self) -> None:
        """Moves the wake-up and sagas indexes of before SHARDS (one key each) into their
        shards, keeping each entry's time; idempotent, a no-op once done."""
        await self._move(OLD_WAKE, Keys.wake, lt=True)
        await self._move(OLD_SAGAS, Keys.sagas, nx=True)

    async def _move(self, old: str, shard_of: Callable[[str], str], **how: bool) -> None:
        got = await self.command(lambda p: p.zrange(old, 0, -1, withscores=True))
        if not got:
            return
        entries = [(member.decode(), int(score)) for member, score in got]
        await self.pipeline(
            lambda pipe: [pipe.zadd(shard_of(m), {m: at}, **how) for m, at in entries]
        )
        await self.command(lambda p: p.delete(old))


def _wake_at(location: str, at: int) -> Command:
    """Makes the sweep look at `location` at `at` at the latest (never later than before)."""
    return ("ZADD", Keys.wake(location), "LT", at, location)


def _unbudget(owner: str, reservation_id: str) -> Command | None:
    """Sent behind a commit or release: the part's units no longer count against its
    owner's held units (a no-op for an owner that has none counted)."""
    return ("HDEL", Keys.held(owner), reservation_id) if owner else None
