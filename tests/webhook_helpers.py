"""What the webhook tests share: the platforms' documented payloads, signed in this file as
each platform documents it (hmac + base64 or hex here, not the receiver's functions), and the
receiver served over real HTTP (aiohttp's test server) with the server settings the command
uses."""

from __future__ import annotations

import base64
import calendar
import copy
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from adapters.config import DEFAULT_STREAM, dead_letter_stream
from adapters.webhooks.answers import WebhookMetrics
from adapters.webhooks.receiver import Settings, make_app, server_options
from engine.domain.clock import Clock

DEAD = dead_letter_stream(DEFAULT_STREAM)
SHOPIFY_SECRET = "hush-shopify-client-secret"
SQUARE_KEY = "square-subscription-signature-key"
SQUARE_URL = "https://hooks.example.com/webhooks/square"  # as configured at Square
LIGHTSPEED_SECRET = "lightspeed-app-client-secret"


def utc_ms(year: int, month: int, day: int, hour: int, minute: int, second: int, ms: int) -> int:
    return calendar.timegm((year, month, day, hour, minute, second)) * 1000 + ms


# --- payloads, shaped as the platforms document them ---

# Shopify's webhook reference, topic inventory_levels/update (the REST InventoryLevel resource:
# https://shopify.dev/docs/api/webhooks?reference=toml#list-inventory_levels-update and
# https://shopify.dev/docs/api/admin-rest/latest/resources/inventorylevel), with the
# reference's sample ids and time.
SHOPIFY_LEVEL = {
    "inventory_item_id": 271878346596884015,
    "location_id": 24826418,
    "available": 10,
    "updated_at": "2021-12-31T19:00:00-05:00",
    "admin_graphql_api_id": "gid://shopify/InventoryLevel/24826418?inventory_item_id=271878346596884015",
}
SHOPIFY_LEVEL_AT = utc_ms(2022, 1, 1, 0, 0, 0, 0)  # 19:00 at -05:00 on the 31st
# inventory_levels/connect carries the same InventoryLevel resource:
# https://shopify.dev/docs/api/webhooks?reference=toml#list-inventory_levels-connect
SHOPIFY_CONNECT = dict(SHOPIFY_LEVEL)
# inventory_levels/disconnect, verbatim from
# https://shopify.dev/docs/api/admin-rest/2026-01/resources/webhook#event-topics-inventory-levels-disconnect
SHOPIFY_DISCONNECT = {"inventory_item_id": 271878346596884015, "location_id": 24826418}

# Square's reference example payload of inventory.count.updated, verbatim from
# https://developer.squareup.com/reference/square/webhooks/inventory.count.updated
SQUARE_COUNT_UPDATED: dict[str, Any] = {
    "merchant_id": "6SSW7HV8K2ST5",
    "type": "inventory.count.updated",
    "event_id": "df5f3813-a913-45a1-94e9-fdc3f7d5e3b6",
    "created_at": "2019-10-29T18:38:45.455006797Z",
    "data": {
        "type": "inventory",
        "id": "84e4ac73-d605-4dbd-a9e5-ffff794ddb9d",
        "object": {
            "inventory_counts": [
                {
                    "calculated_at": "2019-10-29T18:38:45.10296Z",
                    "catalog_object_id": "FGQ5JJWT2PYTHF35CKZ2DSKP",
                    "catalog_object_type": "ITEM_VARIATION",
                    "location_id": "YYQR03DGCTXA4",
                    "quantity": "10",
                    "state": "IN_STOCK",
                }
            ]
        },
    },
}
SQUARE_COUNT_AT = utc_ms(2019, 10, 29, 18, 38, 45, 102)


# Lightspeed's (X-Series) example payload of inventory.update, verbatim from
# https://x-series-api.lightspeedhq.com/docs/webhooks_example_payloads
LIGHTSPEED_INVENTORY: dict[str, Any] = {
    "attributed_cost": "15.57",
    "count": 10,
    "id": "180e2ad4-1c18-5517-e110-9f927920a8cf",
    "outlet": {
        "id": "0924dbcd-ef11-11e9-e989-ed89c9e5529a",
        "name": "Shop 1",
        "tax_id": "0924dbcd-ef95-11e9-e989-ecd5a945118e",
        "time_zone": "Pacific/Auckland",
    },
    "outlet_id": "0924dbcd-ef11-11e9-e989-ed89c9e5529a",
    "product": {
        "active": True,
        "attributed_cost": None,
        "base_name": "Post Shave Balm",
        "button_order": 1,
        "categories": [],
        "deleted_at": None,
        "description": "",
        "handle": "postshavebalm",
        "id": "0924dbcd-ef11-11e9-e989-fcc1c199e772",
        "name": "Post Shave Balm",
        "sku": "10107",
        "source": "SHOPIFY",
        "source_id": "17218228994",
        "source_variant_id": "91891821114",
        "supply_price": "4.00",
        "taxes": [
            {
                "outlet_id": "0924dbcd-ef11-11e9-e989-ed89c9e5529a",
                "tax_id": "0924dbcd-ef95-11e9-e989-ecd5a945118e",
            },
            {
                "outlet_id": "0924dbcd-ef11-11e9-e989-eda415b5a980",
                "tax_id": "0924dbcd-ef95-11e9-e989-ecd5a945118e",
            },
            {
                "outlet_id": "0924dbcd-ef95-11e9-e989-ecd5a94d7fa9",
                "tax_id": "0924dbcd-ef95-11e9-e989-ecd5a945118e",
            },
        ],
        "variant_options": [],
        "variant_parent_id": None,
    },
    "product_id": "0924dbcd-ef11-11e9-e989-fcc1c199e772",
    "reorder_point": "0",
    "restock_level": "0",
    "version": 5105100802,
}
LIGHTSPEED_RECORD = "180e2ad4-1c18-5517-e110-9f927920a8cf"
LIGHTSPEED_OUTLET = "0924dbcd-ef11-11e9-e989-ed89c9e5529a"
LIGHTSPEED_PRODUCT = "0924dbcd-ef11-11e9-e989-fcc1c199e772"


def lightspeed_body(payload: object, kind: str = "inventory.update", **fields: str) -> bytes:
    """A delivery as https://x-series-api.lightspeedhq.com/docs/webhooks describes it: a UTF-8
    application/x-www-form-urlencoded body whose `payload` field is the object as JSON, with
    the delivery's `type` and the store's fields beside it; `fields` added or replaced."""
    form = {
        "domain_prefix": "shop1",
        "environment": "prod",
        "payload": payload if isinstance(payload, str) else json.dumps(payload),
        "retailer_id": "0924dbcd-ef95-11e9-e989-ecd5a93e28e2",
        "type": kind,
    }
    form.update(fields)
    return urlencode(form).encode()


def square_payload(*counts: dict[str, str]) -> dict[str, Any]:
    """The reference payload with other inventory counts, in the documented count shape."""
    payload = copy.deepcopy(SQUARE_COUNT_UPDATED)
    payload["data"]["object"]["inventory_counts"] = list(counts)
    return payload


def square_count(**changes: str) -> dict[str, str]:
    count = dict(SQUARE_COUNT_UPDATED["data"]["object"]["inventory_counts"][0])
    count.update(changes)
    return count


# --- signing, as each platform documents it ---


def shopify_signature(body: bytes, secret: str = SHOPIFY_SECRET) -> str:
    # https://shopify.dev/docs/apps/build/webhooks/subscribe/https (verify the webhook):
    # base64 of the HMAC-SHA256 of the raw body, keyed by the app's client secret, sent in
    # X-Shopify-Hmac-Sha256 (https://shopify.dev/docs/apps/build/webhooks/delivery-structure).
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def square_signature(body: bytes, key: str = SQUARE_KEY, url: str = SQUARE_URL) -> str:
    # https://developer.squareup.com/docs/webhooks/step3validate: HMAC-SHA256 keyed by the
    # subscription's signature key, over the notification URL followed by the raw body, base64,
    # sent in x-square-hmacsha256-signature.
    return base64.b64encode(
        hmac.new(key.encode(), url.encode() + body, hashlib.sha256).digest()
    ).decode()


def lightspeed_signature(
    body: bytes, secret: str = LIGHTSPEED_SECRET, *, as_hex: bool = True
) -> str:
    # https://x-series-api.lightspeedhq.com/docs/webhooks (Verification): HMAC-SHA256 of the
    # request body keyed by the app's client_secret, sent as
    # X-Signature: signature=...,algorithm=HMAC-SHA256; the page does not say hex or base64.
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return digest.hex() if as_hex else base64.b64encode(digest).decode()


def lightspeed_headers(body: bytes, signature: str = "") -> dict[str, str]:
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Signature": f"signature={signature or lightspeed_signature(body)},algorithm=HMAC-SHA256",
    }


def shopify_headers(
    topic: str, body: bytes, *, event_id: str = "evt-7f3a", webhook_id: str = "wh-b54557e4"
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": shopify_signature(body),
        "X-Shopify-Shop-Domain": "example.myshopify.com",
        "X-Shopify-API-Version": "2026-01",
    }
    if event_id:
        headers["X-Shopify-Event-Id"] = event_id
    if webhook_id:
        headers["X-Shopify-Webhook-Id"] = webhook_id
    return headers


def square_headers(body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "x-square-hmacsha256-signature": square_signature(body),
        "square-environment": "Production",
    }


def as_body(payload: object) -> bytes:
    return json.dumps(payload).encode()


# --- the receiver under test ---


@asynccontextmanager
async def receiver(
    redis: aioredis.Redis, clock: Clock | None = None, **settings: Any
) -> AsyncIterator[tuple[TestClient[Any, Any], WebhookMetrics]]:
    values: dict[str, Any] = {
        "shopify_secret": SHOPIFY_SECRET,
        "square_signature_key": SQUARE_KEY,
        "square_notification_url": SQUARE_URL,
        "lightspeed_secret": LIGHTSPEED_SECRET,
    }
    values.update(settings)
    chosen, metrics = Settings(**values), WebhookMetrics()
    server = TestServer(make_app(redis, chosen, metrics, clock))
    await server.start_server(**server_options(chosen, metrics))  # as the command serves it
    async with TestClient(server) as client:
        yield client, metrics


async def entries(redis: aioredis.Redis, stream: str = DEFAULT_STREAM) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await redis.xrange(stream)
    ]


def requests(metrics: WebhookMetrics, platform: str, result: str) -> float:
    """Answers of this platform and result, whatever their status."""
    return sum(
        sample.value
        for metric in metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "omnistock_webhook_requests_total"
        and (sample.labels["platform"], sample.labels["result"]) == (platform, result)
    )


def answers(metrics: WebhookMetrics, platform: str, status: int, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "omnistock_webhook_requests_total",
        {"platform": platform, "status": str(status), "result": result},
    )
    return value or 0.0


def events_written(metrics: WebhookMetrics, platform: str) -> float:
    value = metrics.registry.get_sample_value(
        "omnistock_webhook_events_total", {"platform": platform}
    )
    return value or 0.0
