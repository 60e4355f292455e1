"""Bundles and kits (SetBundles): a bundle sku is its components, each so many times. It has
no stock of its own: at a location it is as available as its scarcest component allows,
min over components of floor(available / qty), and holding n of it holds n x qty of each
component, in the same hold as the reservation's other lines there (one script: I10).

A component is never itself a bundle (one level: a kit of kits is written out as the kit of
their components), a bundle lists each component once, at most MAX_COMPONENTS of them.
Pure: the table in, lines and figures out; engine/usecases/bundles.py keeps the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from engine.domain.errors import InvalidArgument
from engine.domain.model import Line, Shortfall, StockRow, check_id, check_qty, check_size

MAX_COMPONENTS = 50


@dataclass(frozen=True, slots=True)
class Bundle:
    sku: str
    components: tuple[tuple[str, int], ...]  # (component sku, units of it in one bundle)


Table = Mapping[str, Bundle]  # bundle sku -> its bundle
Pair = tuple[str, str]  # (location, sku)


def check_bundle(bundle: Bundle, field: str) -> Bundle:
    """One bundle on its own: its sku, each component once, qty >= 1, not itself."""
    check_id(bundle.sku, f"{field}.sku")
    if not bundle.components:
        raise InvalidArgument(f"{field}.components", "at least one component is required")
    check_size(len(bundle.components), f"{field}.components", MAX_COMPONENTS)
    seen: set[str] = set()
    for i, (sku, qty) in enumerate(bundle.components):
        check_id(sku, f"{field}.components[{i}].sku")
        check_qty(qty, f"{field}.components[{i}].qty")
        if sku == bundle.sku:
            raise InvalidArgument(f"{field}.components[{i}].sku", "a bundle cannot hold itself")
        if sku in seen:
            raise InvalidArgument(f"{field}.components[{i}].sku", f"{sku} is listed twice")
        seen.add(sku)
    return Bundle(bundle.sku, tuple(sorted(bundle.components)))


def apply_changes(
    table: Table, changes: Sequence[tuple[Bundle, bool]], field: str
) -> dict[str, Bundle]:
    """The table once `changes` ((bundle, remove) each, checked) are made, all or none:
    each sku once a call, and no component that is a bundle (in the table as it would be)."""
    after = dict(table)
    for i, (bundle, remove) in enumerate(changes):
        if any(b.sku == bundle.sku for b, _ in changes[:i]):
            raise InvalidArgument(f"{field}[{i}].sku", f"{bundle.sku} is given twice")
        if remove:
            after.pop(bundle.sku, None)
        else:
            after[bundle.sku] = bundle
    for i, (bundle, remove) in enumerate(changes):
        if remove:
            continue
        for j, (sku, _) in enumerate(bundle.components):
            if sku in after:
                raise InvalidArgument(
                    f"{field}[{i}].components[{j}].sku", f"{sku} is a bundle; list its components"
                )
        users = sorted(b.sku for b in after.values() if bundle.sku in dict(b.components))
        if users:
            raise InvalidArgument(
                f"{field}[{i}].sku", f"{bundle.sku} is a component of bundle {users[0]}"
            )
    return after


def expand(lines: Iterable[Line], table: Table) -> tuple[Line, ...]:
    """The lines a hold of `lines` takes: each bundle line as its components at its location,
    merged with the other lines of the same row, sorted (as canonical_lines sorts)."""
    merged: dict[tuple[str, str], int] = {}
    for ln in lines:
        bundle = table.get(ln.sku)
        parts = bundle.components if bundle else ((ln.sku, 1),)
        for sku, qty in parts:
            merged[(ln.location, sku)] = merged.get((ln.location, sku), 0) + ln.qty * qty
    return tuple(Line(loc, sku, qty) for (loc, sku), qty in sorted(merged.items()))


def has_bundles(skus: Iterable[str], table: Table) -> bool:
    return bool(table) and any(sku in table for sku in skus)


def expand_pairs(pairs: Sequence[Pair], table: Table) -> tuple[list[Pair], list[int]]:
    """The rows to read for `pairs`: a bundle's components' rows in its place. Also where
    each pair's rows start in that list (a pair's rows end where the next one's start)."""
    flat: list[Pair] = []
    starts: list[int] = []
    for loc, sku in pairs:
        starts.append(len(flat))
        bundle = table.get(sku)
        flat += [(loc, c) for c, _ in bundle.components] if bundle else [(loc, sku)]
    return flat, starts


def fold(
    values: Sequence[int], pairs: Sequence[Pair], starts: Sequence[int], table: Table
) -> list[int]:
    """Each pair's figure from its rows' (expand_pairs): a bundle's is kits_of its components'."""
    out = []
    for (_, sku), start in zip(pairs, starts, strict=True):
        bundle = table.get(sku)
        if bundle is None:
            out.append(values[start])
        else:
            out.append(kits_of(bundle, values[start : start + len(bundle.components)]))
    return out


def kits_of(bundle: Bundle, available: Sequence[int]) -> int:
    """Whole bundles that `available` units of each component (in its order) make."""
    return min(a // qty for (_, qty), a in zip(bundle.components, available, strict=True))


def asked_shortfalls(
    asked: Sequence[Line], short: Sequence[Shortfall], table: Table
) -> tuple[Shortfall, ...]:
    """The shortfalls of the rows held (components) as the lines asked: a line of a plain sku
    that fell short as itself; a bundle line when one of its components fell short, with the
    bundles its short components alone would make (their rows' other lines aside)."""
    by_row = {(s.location, s.sku): s for s in short}
    out = []
    for ln in asked:
        bundle = table.get(ln.sku)
        if bundle is None:
            s = by_row.get((ln.location, ln.sku))
            if s is not None:
                out.append(Shortfall(ln.location, ln.sku, ln.qty, min(s.available, ln.qty)))
            continue
        kits = [
            by_row[(ln.location, c)].available // qty
            for c, qty in bundle.components
            if (ln.location, c) in by_row
        ]
        if kits:
            out.append(Shortfall(ln.location, ln.sku, ln.qty, min(min(kits), ln.qty)))
    return tuple(out)


MAX_HELD_ROWS = 1000  # rows one reservation's bundles may come to


def held_lines(lines: tuple[Line, ...], table: Table) -> tuple[Line, ...]:
    """What a hold of `lines` (canonical) takes: `lines` themselves when none is a bundle,
    else expand's lines (INVALID_ARGUMENT when they come to over MAX_HELD_ROWS rows)."""
    if not has_bundles((ln.sku for ln in lines), table):
        return lines
    held = expand(lines, table)
    if len(held) > MAX_HELD_ROWS:
        raise InvalidArgument(
            "lines", f"its bundles come to {len(held)} rows; at most {MAX_HELD_ROWS}"
        )
    return held


def rows_per(skus: Iterable[str], table: Table) -> int:
    """The rows a read of `skus` at one location reads: a bundle's, its components'."""
    return sum(len(table[sku].components) if sku in table else 1 for sku in skus)


def kit_row(bundle: Bundle, rows: Sequence[StockRow]) -> StockRow:
    """A bundle's level at a location from its components' rows (in its order): on_hand the
    kits their available units make (so available is that too: it holds and keeps back
    nothing of its own), version the sum of theirs (it moves whenever one of them does)."""
    kits = kits_of(bundle, [r.available for r in rows])
    return StockRow(on_hand=kits, version=sum(r.version for r in rows))


def check_disjoint(skus: Sequence[str], table: Table, field: str) -> None:
    """A basket (FindNearby, Allocate) weighs each line's availability alone, so no two of its
    lines may draw on one row: INVALID_ARGUMENT naming the later line of a pair that shares a
    component (a bundle beside one of its components, or two bundles with one in common)."""
    if not has_bundles(skus, table):
        return
    first: dict[str, int] = {}
    for i, sku in enumerate(skus):
        bundle = table.get(sku)
        for part in (c for c, _ in bundle.components) if bundle else (sku,):
            if first.setdefault(part, i) != i:
                raise InvalidArgument(
                    f"{field}[{i}].sku",
                    f"draws on {part} as lines[{first[part]}] does: a basket's lines are "
                    "weighed one by one, so list a bundle's components instead",
                )
