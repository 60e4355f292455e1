"""Square's inventory.count.updated webhook as stock events (pure): a COUNT for each IN_STOCK
count, at its calculated_at.

Square's event_id is the same on retries and one event can carry many counts, so each COUNT's
event id is square:<event_id>:<location>:<catalog object>; the engine applies a retried
delivery once (I5). Locations and items keep Square's ids; the engine translates them through
the source's mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.webhooks.payloads import count, iso_ms, load_object, signature_matches, text, whole
from engine.domain.errors import InvalidArgument
from engine.domain.model import StockEvent, check_id

SQUARE = "square"
SIGNATURE = "x-square-hmacsha256-signature"
TYPE = "inventory.count.updated"


def signature_ok(key: str, notification_url: str, body: bytes, given: str) -> bool:
    """base64(HMAC-SHA256(signature key, notification URL + raw body)) ==
    x-square-hmacsha256-signature."""
    return signature_matches(key, notification_url.encode() + body, given)


def events(payload: Mapping[str, Any]) -> list[StockEvent]:
    """A COUNT for each IN_STOCK count of an inventory.count.updated event; [] for any other
    type. Payload: https://developer.squareup.com/reference/square/webhooks/inventory.count.updated
    """
    kind = text(payload, "type", "")
    if kind != TYPE:
        return []
    event_id = text(payload, "event_id", "")
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    counts = obj.get("inventory_counts") if isinstance(obj, dict) else None
    if not isinstance(counts, list):
        raise InvalidArgument("data.object.inventory_counts", "missing or not a list")
    found = []
    for i, each in enumerate(counts):
        where = f"data.object.inventory_counts[{i}]."
        if not isinstance(each, dict):
            raise InvalidArgument(where.rstrip("."), "must be an object")
        if each.get("state") == "IN_STOCK":  # other states are not on-hand stock
            found.append(_in_stock(event_id, each, where))
    return found


def ids(body: bytes) -> tuple[str, str]:
    """The event_id and type, as far as the body gives them (for the dead-letter entry)."""
    try:
        payload = load_object(body)
    except InvalidArgument:
        return "", ""
    event_id, kind = payload.get("event_id"), payload.get("type")
    return (
        event_id if isinstance(event_id, str) else "",
        kind if isinstance(kind, str) else "",
    )


def _in_stock(event_id: str, each: Mapping[str, Any], where: str) -> StockEvent:
    location = check_id(text(each, "location_id", where), f"{where}location_id")
    sku = check_id(text(each, "catalog_object_id", where), f"{where}catalog_object_id")
    # Square writes quantities as decimal strings ("10", "12.375"); stock is whole units
    qty = whole(text(each, "quantity", where), f"{where}quantity")
    at = iso_ms(each.get("calculated_at"), f"{where}calculated_at")
    named = {
        "event_id": "event_id",
        "location_id": f"{where}location_id",
        "sku": f"{where}catalog_object_id",
        "qty": f"{where}quantity",
        "source_time": f"{where}calculated_at",
    }
    event = f"{SQUARE}:{event_id}:{location}:{sku}"
    return count(event, location, sku, qty, at, SQUARE, named)
