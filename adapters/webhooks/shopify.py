"""Shopify's inventory_levels webhooks as stock events (pure).

    inventory_levels/update, /connect   the level's `available`, at its `updated_at`;
                                        nothing when it is null (the item is not tracked)
    inventory_levels/disconnect         0: the item is no longer stocked there

Event ids stay the same when Shopify retries, so the engine applies a retried delivery once
(I5): X-Shopify-Event-Id (the same across retries, and across the deliveries of duplicate
subscriptions), else X-Shopify-Webhook-Id (one delivery, the same across its retries).
Because Shopify shares one event id across all the deliveries a merchant action produces, the
id is qualified by topic, location and item: shopify:<id>:<action>:<loc>:<item>. Locations and
items keep Shopify's ids; the engine translates them through the source's mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.webhooks.payloads import count, int_id, iso_ms, load_object, signature_matches
from engine.domain.errors import InvalidArgument
from engine.domain.model import StockEvent

SHOPIFY = "shopify"
HMAC = "X-Shopify-Hmac-Sha256"
TOPIC = "X-Shopify-Topic"
EVENT_ID = "X-Shopify-Event-Id"
WEBHOOK_ID = "X-Shopify-Webhook-Id"
TRIGGERED_AT = "X-Shopify-Triggered-At"
PARSED_HEADERS = (TOPIC, EVENT_ID, WEBHOOK_ID, TRIGGERED_AT)  # all `events` reads
TOPICS = frozenset(
    {"inventory_levels/update", "inventory_levels/connect", "inventory_levels/disconnect"}
)


def signature_ok(secret: str, body: bytes, given: str) -> bool:
    """base64(HMAC-SHA256(client secret, raw body)) == X-Shopify-Hmac-Sha256."""
    return signature_matches(secret, body, given)


def delivery_id(headers: Mapping[str, str]) -> str:
    """The one delivery (for the dead-letter entry and the log)."""
    return headers.get(WEBHOOK_ID, "") or headers.get(EVENT_ID, "")


def events(headers: Mapping[str, str], body: bytes, received_ms: int) -> list[StockEvent]:
    """The COUNT an inventory_levels delivery carries; [] for any other topic.
    Payloads: https://shopify.dev/docs/api/webhooks (topics inventory_levels/*)."""
    topic = headers.get(TOPIC, "")
    if topic not in TOPICS:
        return []
    payload = load_object(body)
    delivery = headers.get(EVENT_ID) or headers.get(WEBHOOK_ID)
    if not delivery:
        raise InvalidArgument(WEBHOOK_ID, "missing: a retry could not be recognised")
    location = int_id(payload, "location_id")
    item = int_id(payload, "inventory_item_id")
    action = topic.rsplit("/", 1)[1]
    if action == "disconnect":  # the item is no longer stocked there
        qty, at = 0, _triggered_at(headers, received_ms)
    else:
        available = _available(payload)
        if available is None:  # not tracked: Shopify does not know its stock
            return []
        qty, at = available, _updated_at(payload, headers)
    event_id = f"{SHOPIFY}:{delivery}:{action}:{location}:{item}"
    named = {
        "event_id": EVENT_ID if headers.get(EVENT_ID) else WEBHOOK_ID,
        "location_id": "location_id",
        "sku": "inventory_item_id",
        "qty": "available",
        "source_time": TRIGGERED_AT if action == "disconnect" else "updated_at",
    }
    return [count(event_id, location, item, qty, at, SHOPIFY, named)]


def _available(payload: Mapping[str, Any]) -> int | None:
    """The count; None when the item's inventory is not tracked (Shopify documents
    `available` as null then): that is no count at all, and the row keeps what it has
    (taken as 0, it showed the item out of stock everywhere)."""
    if "available" not in payload:
        raise InvalidArgument("available", "missing")
    value = payload["available"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument("available", f"must be an integer or null, got {value!r}")
    return value


def _updated_at(payload: Mapping[str, Any], headers: Mapping[str, str]) -> int:
    """updated_at is in whole seconds: two updates of one level within a second would tie.
    X-Shopify-Triggered-At (when Shopify fired the webhook, with its fraction: the later
    update fires later) orders them: the time is updated_at plus a fraction of a second
    that grows with how long after updated_at the webhook fired, always under 1,000 ms.
    So updated_at's second orders first, as Shopify guarantees it, and within it the
    trigger time, however late the webhook fired (0.860 s after, then 1.020 s after, was
    once taken as updated_at itself, and the newer update was stale)."""
    at = iso_ms(payload.get("updated_at"), "updated_at")
    given = headers.get(TRIGGERED_AT)
    if not given:
        return at
    after = max(0, iso_ms(given, TRIGGERED_AT) - at)
    return at + after * 1000 // (after + 1000)


def _triggered_at(headers: Mapping[str, str], received_ms: int) -> int:
    given = headers.get(TRIGGERED_AT)
    return iso_ms(given, TRIGGERED_AT) if given else received_ms
