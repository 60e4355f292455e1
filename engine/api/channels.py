"""Sales channels' rules, stock bands and per-customer limits from their messages
(StockService.SetChannelRules, SetStockBands, SetCustomerLimits), and bundles (SetBundles),
each checked naming its field."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

from engine.api.convert import TYPES
from engine.domain.bundles import Bundle
from engine.domain.errors import InvalidArgument
from engine.domain.model import LocationType, check_size
from engine.domain.rules import Band, ChannelRule, CustomerLimit
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.usecases.channels import MAX_RULES, BandChange, RuleChange, check_band, check_rule
from engine.usecases.limits import check_limits

T = TypeVar("T")


def _type_of(value: pb.LocationType.ValueType, field: str) -> LocationType | None:
    if not value:
        return None
    if value not in TYPES:
        raise InvalidArgument(field, "must be STORE, DC or DARK_STORE")
    return TYPES[value]


def band_change(msg: pb.StockBand, field: str) -> BandChange:
    kind = _type_of(msg.location_type, f"{field}.location_type")
    band = None if msg.remove else Band(msg.low, msg.out)
    return check_band(BandChange(msg.channel, msg.location_id, kind, msg.sku, band), field)


def rule_change(msg: pb.ChannelRule, field: str) -> RuleChange:
    kind = _type_of(msg.location_type, f"{field}.location_type")
    rule = None
    if not msg.remove:
        share = msg.max_share if msg.HasField("max_share") else None
        rule = ChannelRule(msg.buffer, share)
    return check_rule(RuleChange(msg.channel, msg.location_id, kind, rule), field)


def limit_change(msg: pb.CustomerLimit, field: str) -> tuple[str, CustomerLimit | None]:
    if msg.remove:
        return msg.sku, None
    window = msg.window_seconds
    if not math.isfinite(window) or window <= 0:
        raise InvalidArgument(f"{field}.window_seconds", f"must be above 0, got {window}")
    return msg.sku, CustomerLimit(msg.max_units, round(min(window, 2**40) * 1000))


def limit_changes(msgs: Sequence[pb.CustomerLimit]) -> dict[str, CustomerLimit | None]:
    sized = _sized(msgs, "limits", "limit")
    return check_limits([limit_change(m, f"limits[{i}]") for i, m in enumerate(sized)])


def rule_changes(msgs: Sequence[pb.ChannelRule]) -> list[RuleChange]:
    return [rule_change(m, f"rules[{i}]") for i, m in enumerate(_sized(msgs, "rules", "rule"))]


def band_changes(msgs: Sequence[pb.StockBand]) -> list[BandChange]:
    return [band_change(m, f"bands[{i}]") for i, m in enumerate(_sized(msgs, "bands", "band"))]


def bundle_changes(msgs: Sequence[pb.Bundle]) -> list[tuple[Bundle, bool]]:
    """(bundle, remove) of each message, in order; checked by set_bundles, by field."""
    if not msgs:
        raise InvalidArgument("bundles", "at least one bundle is required")
    check_size(len(msgs), "bundles", MAX_RULES)
    return [(Bundle(m.sku, tuple((c.sku, c.qty) for c in m.components)), m.remove) for m in msgs]


def _sized(msgs: Sequence[T], field: str, what: str) -> Sequence[T]:
    if not msgs:
        raise InvalidArgument(field, f"at least one {what} is required")
    check_size(len(msgs), field, MAX_RULES)
    return msgs
