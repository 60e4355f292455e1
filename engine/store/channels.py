"""Sales channels' rules, bands, limits and bundles, each in one hash of their own slot
(engine/usecases/channels.py reads them into each process; hold.lua enforces them)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from engine.domain.bundles import Bundle
from engine.domain.errors import FailedPrecondition
from engine.domain.model import StockRow
from engine.domain.rules import Band, ChannelRule, CustomerLimit, Pool, channel_offer
from engine.store.base import Base
from engine.store.codecs import RowNote, parse_note, parse_row
from engine.store.keys import (
    BANDS,
    BUNDLES,
    CHANNEL_RULES,
    CHANNEL_RULES_VERSION,
    LIMITS,
    KeyList,
    Keys,
)
from engine.store.scripts import decoded


def _field(scope: str, channel: str) -> str:
    return f"{scope}\t{channel}"


def _value(rule: ChannelRule) -> str:
    share = "" if rule.max_share is None else repr(rule.max_share)
    return f"{rule.buffer},{share}"


def _rule(value: bytes) -> ChannelRule:
    buffer, share = value.decode().split(",")
    return ChannelRule(int(buffer), float(share) if share else None)


class ChannelStore(Base):
    async def set_channel_rules(self, rules: Mapping[tuple[str, str], ChannelRule | None]) -> int:
        """Sets (or, for None, removes) the rule of each (scope, channel), scope "l:<id>",
        "t:<TYPE>" or "*", all at once; answers the rules' new version."""
        fields = {_field(*k): None if r is None else _value(r) for k, r in rules.items()}
        return await self._set_scoped(CHANNEL_RULES, fields)

    async def set_bands(self, bands: Mapping[tuple[str, str], Band | None]) -> int:
        """Sets (or, for None, removes) the band of each (scope, channel), all at once (scope
        "r\t<loc>\t<sku>", "l:<loc>", "t:<TYPE>" or "*"); answers the rules' new version,
        which bands share."""
        fields = {_field(*k): None if b is None else f"{b.low},{b.out}" for k, b in bands.items()}
        return await self._set_scoped(BANDS, fields)

    async def set_limits(self, limits: Mapping[str, CustomerLimit | None]) -> int:
        """Sets (or, for None, removes) the per-customer limit of each sku, all at once;
        answers the rules' new version, which limits share."""
        fields = {
            sku: None if lim is None else f"{lim.max_units},{lim.window_ms}"
            for sku, lim in limits.items()
        }
        return await self._set_scoped(LIMITS, fields)

    async def limits(self) -> dict[str, CustomerLimit]:
        """Every sku's per-customer limit."""
        raw: dict[bytes, bytes] = await self.command(lambda p: p.hgetall(LIMITS))
        out = {}
        for sku, value in raw.items():
            most, window = value.decode().split(",")
            out[sku.decode()] = CustomerLimit(int(most), int(window))
        return out

    async def set_bundles(self, bundles: Mapping[str, Bundle | None]) -> int:
        """Sets (or, for None, removes) each bundle, all at once; answers the rules' new
        version, which bundles share."""
        fields = {
            sku: None if b is None else "".join(f"{c}\t{q}\n" for c, q in b.components)
            for sku, b in bundles.items()
        }
        return await self._set_scoped(BUNDLES, fields)

    async def bundles(self) -> dict[str, Bundle]:
        """Every bundle, by its sku."""
        raw: dict[bytes, bytes] = await self.command(lambda p: p.hgetall(BUNDLES))
        out = {}
        for sku, value in raw.items():
            rows = (row.split("\t") for row in value.decode().splitlines())
            out[sku.decode()] = Bundle(sku.decode(), tuple((c, int(q)) for c, q in rows))
        return out

    async def _set_scoped(self, key: str, fields: Mapping[str, str | None]) -> int:
        """Sets the fields of `key` (None: removes), and moves the rules' version."""
        return await self.set_versioned(key, fields, CHANNEL_RULES_VERSION)

    async def touch_channel_rules(self) -> int:
        """Moves the rules' version (after a change of pools); answers the new one."""
        return int(await self.command(lambda p: p.incr(CHANNEL_RULES_VERSION)))

    async def bands(self) -> dict[tuple[str, str], Band]:
        """Every band, by (scope, channel)."""
        raw: dict[bytes, bytes] = await self.command(lambda p: p.hgetall(BANDS))
        out = {}
        for field, value in raw.items():
            scope, channel = field.decode().rsplit("\t", 1)
            low, out_at = value.decode().split(",")
            out[(scope, channel)] = Band(int(low), int(out_at))
        return out

    async def channel_rules_version(self) -> int:
        return int(await self.command(lambda p: p.get(CHANNEL_RULES_VERSION)) or 0)

    async def channel_rules(self) -> dict[tuple[str, str], ChannelRule]:
        """Every rule, by (scope, channel)."""
        raw: dict[bytes, bytes] = await self.command(lambda p: p.hgetall(CHANNEL_RULES))
        out = {}
        for field, value in raw.items():
            scope, channel = field.decode().split("\t")
            out[(scope, channel)] = _rule(value)
        return out

    async def channel_rows(
        self, location: str, skus: Sequence[str], channel: str, rule: ChannelRule
    ) -> list[tuple[StockRow, RowNote]]:
        """Rows at one location, each with what `channel`'s share of it under `rule` depends
        on beside it (its pools, what each pool's channel holds, and what `channel` does
        where the rule caps its share), one round trip (read_offers.lua): one instant's."""
        keys = KeyList(Keys.channel_holds(location), Keys.pools(location))
        capped = "1" if rule.share_ppm < 1_000_000 else "0"
        args: list[object] = [channel, capped, len(skus)]
        for sku in skus:
            args += [sku, keys.add(self.keys.stock(location, sku))]
        got = await self.call("read_offers", keys.keys, args)
        return [(parse_row(got[i] or None), parse_note(got[i + 1])) for i in range(0, len(got), 2)]

    async def offers(
        self, channel: str, rules: Mapping[str, ChannelRule], pairs: Sequence[tuple[str, str]]
    ) -> tuple[list[StockRow], list[int]]:
        """The (location, sku) rows, and what `channel` may hold of each under its rule at
        each location (`rules`), as its hold would find it now: one script call a location."""
        skus: dict[str, list[str]] = {}
        for loc, sku in pairs:
            skus.setdefault(loc, []).append(sku)
        got = await asyncio.gather(
            *(self.channel_rows(loc, at, channel, rules[loc]) for loc, at in skus.items())
        )
        read = {}
        for (loc, at), rows in zip(skus.items(), got, strict=True):
            rule = rules[loc]
            for sku, (row, note) in zip(at, rows, strict=True):
                read[(loc, sku)] = (
                    row,
                    channel_offer(row, note.pools or (), note.held, channel, rule),
                )
        return [read[pair][0] for pair in pairs], [read[pair][1] for pair in pairs]

    async def set_pools(
        self, location: str, pools: Sequence[tuple[str, Pool]], check: bool = False
    ) -> int:
        """Sets (units 0: ends) each (sku, pool) at a location, all or none; answers how
        many changed. FailedPrecondition when a pool would keep free more units than its
        row has that no other pool keeps (set_pools.lua). check: only check, set nothing."""
        keys = KeyList(Keys.pools(location), Keys.channel_holds(location))
        args: list[object] = ["check" if check else "set", len(pools)]
        for sku, pool in pools:
            stock = keys.add(self.keys.stock(location, sku))
            args += [sku, pool.channel, pool.units, "1" if pool.fallback else "0", stock]
        args.append(Keys.changes(location))
        got = decoded(await self.call("set_pools", keys.keys, args))
        if got[0] == "OVER":
            _, sku, channel, most = got
            raise FailedPrecondition(
                f"pools: {location}/{sku} has {most} units {channel!r} may keep (what it "
                "holds, and what no other pool keeps free)"
            )
        return int(got[1])
