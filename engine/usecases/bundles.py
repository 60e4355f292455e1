"""Bundles and kits (SetBundles), and reads that answer for a bundle sku.

The bundles are kept with the channels' rules (engine/usecases/channels.py): one hash, read
into each process and followed once a second under the rules' version, so no hold or read
waits on the store for them. A bundle has no stock of its own: its reads are its
components' rows, read in the same call as the other rows asked for (one round trip, from
the read cache where it serves), and folded into kits (engine/domain/bundles.py). A hold of
a bundle holds its components (engine/usecases/reservations.py).

Setting bundles is an operator's step, checked against the table as this process last read
it (refreshed first): two SetBundles racing in two processes are not checked against each
other (a component made a bundle by the other); set bundles through one admin at a time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from engine.domain.bundles import (
    Bundle,
    Pair,
    Table,
    apply_changes,
    check_bundle,
    expand_pairs,
    fold,
    has_bundles,
)
from engine.domain.errors import InvalidArgument
from engine.domain.model import check_id, check_size
from engine.usecases.channels import MAX_RULES, ChannelRules

Change = tuple[Bundle, bool]  # a bundle, and whether to remove the one of its sku


async def set_bundles(channels: ChannelRules, changes: Sequence[Change]) -> int:
    """Sets and removes bundles, all at once, after checking each by field; answers the
    rules' new version. A sku that has stock of its own (units on hand or held at some
    location) cannot become a bundle: its units would no longer be seen."""
    if not changes:
        raise InvalidArgument("bundles", "at least one bundle is required")
    check_size(len(changes), "bundles", MAX_RULES)
    checked: list[Change] = []
    for i, (bundle, remove) in enumerate(changes):
        if remove:
            check_id(bundle.sku, f"bundles[{i}].sku")
            checked.append((bundle, True))
        else:
            checked.append((check_bundle(bundle, f"bundles[{i}]"), False))
    await channels.current()
    apply_changes(channels.bundles, checked, "bundles")
    new = [
        (i, b.sku) for i, (b, rm) in enumerate(checked) if not rm and b.sku not in channels.bundles
    ]
    await _without_stock(channels, new)
    version = await channels.storage.set_bundles({b.sku: None if rm else b for b, rm in checked})
    await channels.current()
    return version


async def _without_stock(channels: ChannelRules, skus: Sequence[tuple[int, str]]) -> None:
    """INVALID_ARGUMENT naming the first of `skus` (index, sku) with stock of its own."""
    if not skus:
        return
    locations = list(await channels.locations.fresh())
    pairs = [(loc, sku) for _, sku in skus for loc in locations]
    for start in range(0, len(pairs), 10_000):
        part = pairs[start : start + 10_000]
        rows = await channels.storage.rows(part)
        for (loc, sku), row in zip(part, rows, strict=True):
            if row.on_hand or row.reserved:
                i = next(i for i, s in skus if s == sku)
                raise InvalidArgument(
                    f"bundles[{i}].sku",
                    f"{sku} has stock of its own at {loc} (on hand or held): a bundle's "
                    "stock is its components'",
                )


async def read_through(
    table: Table, pairs: Sequence[Pair], read: Callable[[Sequence[Pair]], Awaitable[list[int]]]
) -> list[int]:
    """`read` of each pair (available units, or what a channel may hold), a bundle's folded
    from its components' rows, read in the same call. Without a bundle among them: `read`
    of the pairs as they are (nothing more)."""
    if not has_bundles((sku for _, sku in pairs), table):
        return await read(pairs)
    flat, starts = expand_pairs(pairs, table)
    return fold(await read(flat), pairs, starts, table)


def refuse_bundles(skus: Sequence[str], table: Table, field: str, why: str) -> None:
    """INVALID_ARGUMENT naming the first bundle sku of `skus` (field[i]), for the calls that
    do not take one."""
    for i, sku in enumerate(skus):
        if sku in table:
            raise InvalidArgument(f"{field}[{i}]", f"{sku} is a bundle: {why}")
