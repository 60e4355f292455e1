"""The states of a row's units (issue 17): `sellable` (on_hand: the only units that can be
available), `damaged`, `quality_control` and `returned` (back from a customer, awaiting
inspection). Each state's units are a row of their own, with the same ordering rules (I5);
moving units between states (a MOVE event) conserves them (I10).
"""

from __future__ import annotations

import enum

# Between a sku and the state its units are in, in the name of a state's row. No caller's id
# holds it (check_id), so no sku names another's state row, nor a state row a sku's.
STATE_MARK = "#"


class StockState(enum.StrEnum):
    SELLABLE = "sellable"
    DAMAGED = "damaged"
    QUALITY_CONTROL = "quality_control"
    RETURNED = "returned"


# The states kept in rows of their own, in the order StockLevel reports them.
OTHER_STATES = (StockState.DAMAGED, StockState.QUALITY_CONTROL, StockState.RETURNED)


def row_name(sku: str, state: StockState) -> str:
    """The name of the row of a sku's units in a state: the sku itself for sellable units
    (so rows without other states are exactly what they were), else "sku#state"."""
    if state is StockState.SELLABLE:
        return sku
    return f"{sku}{STATE_MARK}{state.value}"


def is_state_row(name: str) -> bool:
    """Whether a row name is a non-sellable state's row (never a sellable row of a sku)."""
    return STATE_MARK in name


def sku_of(name: str) -> str:
    """The sku a row name is of (its own name for a sellable row)."""
    return name.split(STATE_MARK, 1)[0]


def state_of(name: str) -> StockState:
    """The state a row name is of."""
    _, mark, state = name.partition(STATE_MARK)
    return StockState(state) if mark else StockState.SELLABLE
