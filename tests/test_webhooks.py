"""The webhook receiver (adapters/webhooks/) over real HTTP (aiohttp's test server) against
the real Redis-compatible server of the session: the platforms' documented payloads, signed as
each platform documents it (webhook_helpers.py, not the receiver's functions), become the
right entries on the ingest stream, durably; anything else is refused, ignored or
dead-lettered, and the answer says which. Guards at the edge: test_webhooks_edge.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from adapters.config import (
    DEAD_BODY,
    DEAD_FROM,
    DEAD_HEADERS,
    DEAD_RECEIVED,
    DEFAULT_STREAM,
    event_of,
)
from adapters.replay import entries_of
from adapters.streams.consumer import Consumer, Options
from adapters.webhooks.command import parse_args, settings_of
from adapters.webhooks.receiver import Settings
from adapters.webhooks.writer import appendonly
from engine.domain.clock import ManualClock
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.store.embedded import EmbeddedRedis
from engine.store.loopback import free_port

from .conftest import ON_BOTH
from .grpc_helpers import Stubs, count, level, location
from .stream_helpers import drain
from .webhook_helpers import (
    DEAD,
    LIGHTSPEED_INVENTORY,
    LIGHTSPEED_OUTLET,
    LIGHTSPEED_PRODUCT,
    LIGHTSPEED_RECORD,
    SHOPIFY_CONNECT,
    SHOPIFY_DISCONNECT,
    SHOPIFY_LEVEL,
    SHOPIFY_LEVEL_AT,
    SQUARE_COUNT_AT,
    SQUARE_COUNT_UPDATED,
    SQUARE_URL,
    as_body,
    entries,
    events_written,
    lightspeed_body,
    lightspeed_headers,
    lightspeed_signature,
    receiver,
    requests,
    shopify_headers,
    shopify_signature,
    square_count,
    square_headers,
    square_payload,
    square_signature,
    utc_ms,
)

# --- documented payloads in, the right entries out ---


@ON_BOTH  # a cluster too: the write goes to the stream's node
async def test_shopify_level_update_becomes_one_count_on_the_stream(
    redis: aioredis.Redis,
) -> None:
    body = as_body(SHOPIFY_LEVEL)
    async with receiver(redis) as (client, metrics):
        resp = await client.post(
            "/webhooks/shopify", data=body, headers=shopify_headers("inventory_levels/update", body)
        )
        assert resp.status == 200
        assert (await resp.json())["result"] == "accepted"
    assert await entries(redis) == [
        {
            "event_id": "shopify:evt-7f3a:update:24826418:271878346596884015",
            "location_id": "24826418",
            "sku": "271878346596884015",
            "kind": "COUNT",
            "qty": "10",
            "source_time": str(SHOPIFY_LEVEL_AT),
            "source": "shopify",
        }
    ]
    # and the streams adapter reads it as the stock event it is
    fields = (await redis.xrange(DEFAULT_STREAM))[0][1]
    event = event_of(fields)
    assert (event.kind, event.qty, event.source) == (pb.EVENT_KIND_COUNT, 10, "shopify")
    assert events_written(metrics, "shopify") == 1
    assert requests(metrics, "shopify", "accepted") == 1


async def test_shopify_updates_within_one_second_are_ordered_by_their_trigger_time(
    redis: aioredis.Redis,
) -> None:
    """updated_at has whole seconds; the trigger time orders two updates in it, however
    late the webhook fired (adapters/webhooks/shopify.py _updated_at)."""
    body = as_body(SHOPIFY_LEVEL)
    async with receiver(redis) as (client, _):
        for triggered in ("2022-01-01T00:00:00.250Z", "2022-01-01T00:00:07.000Z"):
            headers = shopify_headers("inventory_levels/update", body, event_id=triggered)
            headers["X-Shopify-Triggered-At"] = triggered
            assert (
                await client.post("/webhooks/shopify", data=body, headers=headers)
            ).status == 200
    got = [int(e["source_time"]) for e in await entries(redis)]
    assert got == [SHOPIFY_LEVEL_AT + 200, SHOPIFY_LEVEL_AT + 875]  # 250 and 7,000 ms after


async def test_shopify_connect_becomes_a_count_of_its_available(redis: aioredis.Redis) -> None:
    body = as_body(SHOPIFY_CONNECT)
    async with receiver(redis) as (client, _):
        resp = await client.post(
            "/webhooks/shopify",
            data=body,
            headers=shopify_headers("inventory_levels/connect", body),
        )
        assert resp.status == 200
    [entry] = await entries(redis)
    assert entry["event_id"] == "shopify:evt-7f3a:connect:24826418:271878346596884015"
    assert (entry["kind"], entry["qty"], entry["source_time"]) == (
        "COUNT",
        "10",
        str(SHOPIFY_LEVEL_AT),
    )


async def test_shopify_untracked_level_with_null_available_writes_nothing(
    redis: aioredis.Redis,
) -> None:
    """Not tracked is no count: taken as 0, it showed the item out of stock everywhere."""
    body = as_body({**SHOPIFY_LEVEL, "available": None})
    async with receiver(redis) as (client, metrics):
        resp = await client.post(
            "/webhooks/shopify", data=body, headers=shopify_headers("inventory_levels/update", body)
        )
        assert resp.status == 200
    assert await entries(redis) == []
    assert requests(metrics, "shopify", "ignored") == 1


async def test_shopify_disconnect_counts_zero_at_the_trigger_time(redis: aioredis.Redis) -> None:
    body = as_body(SHOPIFY_DISCONNECT)
    headers = shopify_headers("inventory_levels/disconnect", body)
    headers["X-Shopify-Triggered-At"] = "2023-03-29T18:00:27.877041743Z"
    async with receiver(redis) as (client, _):
        resp = await client.post("/webhooks/shopify", data=body, headers=headers)
        assert resp.status == 200
    assert await entries(redis) == [
        {
            "event_id": "shopify:evt-7f3a:disconnect:24826418:271878346596884015",
            "location_id": "24826418",
            "sku": "271878346596884015",
            "kind": "COUNT",
            "qty": "0",
            "source_time": str(utc_ms(2023, 3, 29, 18, 0, 27, 877)),
            "source": "shopify",
        }
    ]


async def test_shopify_disconnect_without_trigger_time_counts_at_receipt(
    redis: aioredis.Redis,
) -> None:
    clock = ManualClock(start_ms=1_767_225_600_123)
    body = as_body(SHOPIFY_DISCONNECT)
    async with receiver(redis, clock) as (client, _):
        resp = await client.post(
            "/webhooks/shopify",
            data=body,
            headers=shopify_headers("inventory_levels/disconnect", body),
        )
        assert resp.status == 200
    [entry] = await entries(redis)
    assert (entry["qty"], entry["source_time"]) == ("0", "1767225600123")


async def test_shopify_without_event_id_keys_on_the_webhook_id(redis: aioredis.Redis) -> None:
    body = as_body(SHOPIFY_LEVEL)
    headers = shopify_headers("inventory_levels/update", body, event_id="")
    async with receiver(redis) as (client, _):
        assert (await client.post("/webhooks/shopify", data=body, headers=headers)).status == 200
    [entry] = await entries(redis)
    assert entry["event_id"] == "shopify:wh-b54557e4:update:24826418:271878346596884015"


async def test_square_documented_count_becomes_one_count_on_the_stream(
    redis: aioredis.Redis,
) -> None:
    body = as_body(SQUARE_COUNT_UPDATED)
    async with receiver(redis) as (client, metrics):
        resp = await client.post("/webhooks/square", data=body, headers=square_headers(body))
        assert resp.status == 200
        assert (await resp.json())["result"] == "accepted"
    assert await entries(redis) == [
        {
            "event_id": "square:df5f3813-a913-45a1-94e9-fdc3f7d5e3b6:YYQR03DGCTXA4:"
            "FGQ5JJWT2PYTHF35CKZ2DSKP",
            "location_id": "YYQR03DGCTXA4",
            "sku": "FGQ5JJWT2PYTHF35CKZ2DSKP",
            "kind": "COUNT",
            "qty": "10",
            "source_time": str(SQUARE_COUNT_AT),
            "source": "square",
        }
    ]
    assert events_written(metrics, "square") == 1


async def test_square_writes_only_in_stock_counts_of_a_state_adjustment(
    redis: aioredis.Redis,
) -> None:
    # A state change arrives as two counts, before and after
    # (https://developer.squareup.com/docs/inventory-api/webhooks, "State adjustments").
    payload = square_payload(
        square_count(state="IN_STOCK", quantity="7"),
        square_count(state="SOLD", quantity="3", catalog_object_id="W62UWFY35CWMYGVWK6TWJDNI"),
    )
    body = as_body(payload)
    async with receiver(redis) as (client, metrics):
        assert (
            await client.post("/webhooks/square", data=body, headers=square_headers(body))
        ).status == 200
    [entry] = await entries(redis)
    assert (entry["sku"], entry["qty"]) == ("FGQ5JJWT2PYTHF35CKZ2DSKP", "7")
    assert events_written(metrics, "square") == 1


async def test_square_with_no_in_stock_count_writes_nothing(redis: aioredis.Redis) -> None:
    body = as_body(square_payload(square_count(state="WASTE", quantity="2")))
    async with receiver(redis) as (client, metrics):
        resp = await client.post("/webhooks/square", data=body, headers=square_headers(body))
        assert (resp.status, (await resp.json())["result"]) == (200, "ignored")
    assert await redis.exists(DEFAULT_STREAM, DEAD) == 0
    assert requests(metrics, "square", "ignored") == 1


async def test_square_whole_decimal_quantity_is_that_many_units(redis: aioredis.Redis) -> None:
    body = as_body(square_payload(square_count(quantity="12.00000")))
    async with receiver(redis) as (client, _):
        assert (
            await client.post("/webhooks/square", data=body, headers=square_headers(body))
        ).status == 200
    [entry] = await entries(redis)
    assert entry["qty"] == "12"


async def test_lightspeed_inventory_update_becomes_one_count_at_receipt_on_the_stream(
    redis: aioredis.Redis,
) -> None:
    clock = ManualClock(start_ms=1_767_225_600_123)
    body = lightspeed_body(LIGHTSPEED_INVENTORY)
    async with receiver(redis, clock) as (client, metrics):
        resp = await client.post(
            "/webhooks/lightspeed", data=body, headers=lightspeed_headers(body)
        )
        assert resp.status == 200
        assert (await resp.json())["result"] == "accepted"
    assert await entries(redis) == [
        {
            "event_id": f"lightspeed:{LIGHTSPEED_RECORD}:5105100802",
            "location_id": LIGHTSPEED_OUTLET,
            "sku": LIGHTSPEED_PRODUCT,
            "kind": "COUNT",
            "qty": "10",
            "source_time": "1767225600123",
            "source": "lightspeed",
        }
    ]
    assert events_written(metrics, "lightspeed") == 1
    assert requests(metrics, "lightspeed", "accepted") == 1


async def test_lightspeed_updates_within_one_second_order_by_arrival(
    redis: aioredis.Redis,
) -> None:
    """The payload has no time (adapters/webhooks/lightspeed.py): the later delivery of the
    record, 150 ms on, is the newer count."""
    clock = ManualClock(start_ms=1_767_225_600_300)
    updates = [
        {**LIGHTSPEED_INVENTORY, "count": 9, "version": 5105100803},
        {**LIGHTSPEED_INVENTORY, "count": 8, "version": 5105100804},
    ]
    async with receiver(redis, clock) as (client, _):
        for update in updates:
            body = lightspeed_body(update)
            resp = await client.post(
                "/webhooks/lightspeed", data=body, headers=lightspeed_headers(body)
            )
            assert resp.status == 200
            clock.advance(150)
    got = [(e["qty"], int(e["source_time"])) for e in await entries(redis)]
    assert got == [("9", 1_767_225_600_300), ("8", 1_767_225_600_450)]


async def test_lightspeed_other_types_are_answered_and_ignored(redis: aioredis.Redis) -> None:
    body = lightspeed_body({"id": LIGHTSPEED_PRODUCT, "version": 5303657190}, "product.update")
    async with receiver(redis) as (client, metrics):
        resp = await client.post(
            "/webhooks/lightspeed", data=body, headers=lightspeed_headers(body)
        )
        assert (resp.status, (await resp.json())["result"]) == (200, "ignored")
    assert await redis.exists(DEFAULT_STREAM, DEAD) == 0
    assert requests(metrics, "lightspeed", "ignored") == 1


# --- the same delivery twice carries the same event id ---


async def test_shopify_retry_carries_the_same_event_id(redis: aioredis.Redis) -> None:
    body = as_body(SHOPIFY_LEVEL)
    headers = shopify_headers("inventory_levels/update", body)
    async with receiver(redis) as (client, _):
        for _ in range(2):
            assert (
                await client.post("/webhooks/shopify", data=body, headers=headers)
            ).status == 200
    first, second = await entries(redis)
    assert first == second
    assert first["event_id"] == "shopify:evt-7f3a:update:24826418:271878346596884015"


async def test_shopify_deliveries_of_one_merchant_action_keep_distinct_event_ids(
    redis: aioredis.Redis,
) -> None:
    # Shopify shares X-Shopify-Event-Id across every delivery of one merchant action
    # (https://shopify.dev/docs/apps/build/webhooks/delivery-structure): two levels changed
    # by one action must stay two events, or the engine would drop the second as a duplicate.
    other = {**SHOPIFY_LEVEL, "inventory_item_id": 39072856, "available": 3}
    async with receiver(redis) as (client, _):
        for payload, webhook_id in ((SHOPIFY_LEVEL, "wh-1"), (other, "wh-2")):
            body = as_body(payload)
            headers = shopify_headers("inventory_levels/update", body, webhook_id=webhook_id)
            assert (
                await client.post("/webhooks/shopify", data=body, headers=headers)
            ).status == 200
    ids = [e["event_id"] for e in await entries(redis)]
    assert ids == [
        "shopify:evt-7f3a:update:24826418:271878346596884015",
        "shopify:evt-7f3a:update:24826418:39072856",
    ]


async def test_square_retry_carries_the_same_event_id(redis: aioredis.Redis) -> None:
    body = as_body(SQUARE_COUNT_UPDATED)
    async with receiver(redis) as (client, _):
        for _ in range(2):
            resp = await client.post("/webhooks/square", data=body, headers=square_headers(body))
            assert resp.status == 200
    first, second = await entries(redis)
    assert first["event_id"] == second["event_id"]
    assert first["event_id"].startswith("square:df5f3813-a913-45a1-94e9-fdc3f7d5e3b6:")


async def test_lightspeed_retry_carries_the_same_event_id(redis: aioredis.Redis) -> None:
    """Lightspeed retries (up to 20 times over 48 h) with the same body: taken twice, it is one
    event id, which the engine applies once."""
    clock = ManualClock()
    body = lightspeed_body(LIGHTSPEED_INVENTORY)
    async with receiver(redis, clock) as (client, _):
        for _ in range(2):
            resp = await client.post(
                "/webhooks/lightspeed", data=body, headers=lightspeed_headers(body)
            )
            assert resp.status == 200
            clock.advance(60_000)
    first, second = await entries(redis)
    assert first["event_id"] == second["event_id"] == f"lightspeed:{LIGHTSPEED_RECORD}:5105100802"


# --- refused: nothing written anywhere ---


def _bad_shopify(body: bytes) -> dict[str, str]:
    headers = shopify_headers("inventory_levels/update", body)
    headers["X-Shopify-Hmac-Sha256"] = shopify_signature(body, secret="not-the-secret")
    return headers


def _unsigned_shopify(body: bytes) -> dict[str, str]:
    headers = shopify_headers("inventory_levels/update", body)
    del headers["X-Shopify-Hmac-Sha256"]
    return headers


def _shopify_signed_for_other_body(body: bytes) -> dict[str, str]:
    return shopify_headers("inventory_levels/update", body + b" ")


def _bad_square(body: bytes) -> dict[str, str]:
    return {"x-square-hmacsha256-signature": square_signature(body, key="not-the-key")}


def _unsigned_square(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json"}


def _square_signed_for_other_url(body: bytes) -> dict[str, str]:
    other = "https://hooks.example.com/webhooks/square/"  # a trailing slash is another URL
    return {"x-square-hmacsha256-signature": square_signature(body, url=other)}


def _bad_lightspeed(body: bytes) -> dict[str, str]:
    return lightspeed_headers(body, lightspeed_signature(body, "not-the-client-secret"))


def _unsigned_lightspeed(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/x-www-form-urlencoded"}


def _lightspeed_signed_for_other_body(body: bytes) -> dict[str, str]:
    return lightspeed_headers(body, lightspeed_signature(body + b"&count=99"))


def _lightspeed_other_algorithm(body: bytes) -> dict[str, str]:
    return {"X-Signature": f"signature={lightspeed_signature(body)},algorithm=HMAC-MD5"}


@pytest.mark.parametrize(
    ("platform", "payload", "headers_of"),
    [
        ("shopify", SHOPIFY_LEVEL, _bad_shopify),
        ("shopify", SHOPIFY_LEVEL, _unsigned_shopify),
        ("shopify", SHOPIFY_LEVEL, _shopify_signed_for_other_body),
        ("square", SQUARE_COUNT_UPDATED, _bad_square),
        ("square", SQUARE_COUNT_UPDATED, _unsigned_square),
        ("square", SQUARE_COUNT_UPDATED, _square_signed_for_other_url),
        ("lightspeed", lightspeed_body(LIGHTSPEED_INVENTORY), _bad_lightspeed),
        ("lightspeed", lightspeed_body(LIGHTSPEED_INVENTORY), _unsigned_lightspeed),
        ("lightspeed", lightspeed_body(LIGHTSPEED_INVENTORY), _lightspeed_signed_for_other_body),
        ("lightspeed", lightspeed_body(LIGHTSPEED_INVENTORY), _lightspeed_other_algorithm),
    ],
    ids=[
        "shopify-wrong-secret",
        "shopify-no-signature",
        "shopify-other-body",
        "square-wrong-key",
        "square-no-signature",
        "square-wrong-url",
        "lightspeed-wrong-secret",
        "lightspeed-no-signature",
        "lightspeed-other-body",
        "lightspeed-other-algorithm",
    ],
)
async def test_bad_signature_is_refused_and_nothing_is_written(
    redis: aioredis.Redis, platform: str, payload: object, headers_of: Any
) -> None:
    body = payload if isinstance(payload, bytes) else as_body(payload)
    async with receiver(redis) as (client, metrics):
        resp = await client.post(f"/webhooks/{platform}", data=body, headers=headers_of(body))
        assert resp.status == 401
    assert await redis.exists(DEFAULT_STREAM, DEAD) == 0
    assert requests(metrics, platform, "bad_signature") == 1
    assert events_written(metrics, platform) == 0


async def test_an_unconfigured_platform_is_not_found(redis: aioredis.Redis) -> None:
    body = as_body(SQUARE_COUNT_UPDATED)
    form = lightspeed_body(LIGHTSPEED_INVENTORY)
    unset = {"square_signature_key": "", "square_notification_url": "", "lightspeed_secret": ""}
    async with receiver(redis, **unset) as (client, metrics):
        resp = await client.post("/webhooks/square", data=body, headers=square_headers(body))
        assert resp.status == 404
        resp = await client.post(
            "/webhooks/lightspeed", data=form, headers=lightspeed_headers(form)
        )
        assert resp.status == 404
    assert await redis.exists(DEFAULT_STREAM, DEAD) == 0
    assert requests(metrics, "lightspeed", "not_configured") == 1


# --- ignored ---


async def test_other_topics_and_types_are_answered_and_ignored(redis: aioredis.Redis) -> None:
    shopify_body = as_body({"id": 788032119674292922, "title": "Example T-Shirt"})
    square_body = as_body(
        {
            "merchant_id": "6SSW7HV8K2ST5",
            "type": "customer.created",
            "event_id": "a1b2c3d4-0000-4000-8000-000000000001",
            "created_at": "2020-05-04T17:35:56Z",
            "data": {"type": "customer", "id": "A0AP2Y3W1PSYM", "object": {}},
        }
    )
    async with receiver(redis) as (client, metrics):
        resp = await client.post(
            "/webhooks/shopify",
            data=shopify_body,
            headers=shopify_headers("products/update", shopify_body),
        )
        assert (resp.status, (await resp.json())["result"]) == (200, "ignored")
        resp = await client.post(
            "/webhooks/square", data=square_body, headers=square_headers(square_body)
        )
        assert (resp.status, (await resp.json())["result"]) == (200, "ignored")
    assert await redis.exists(DEFAULT_STREAM, DEAD) == 0
    assert requests(metrics, "shopify", "ignored") == 1
    assert requests(metrics, "square", "ignored") == 1


# --- signed but not the documented shape: dead-lettered, answered 200 ---


async def test_square_fractional_quantity_is_dead_lettered_with_the_reason(
    redis: aioredis.Redis,
) -> None:
    # Square quantities are decimal strings with up to 5 digits after the point
    # (https://developer.squareup.com/reference/square/objects/InventoryCount; the guide's
    # example has "12.375"): omnistock counts whole units.
    payload = square_payload(square_count(quantity="12.375"))
    body = as_body(payload)
    async with receiver(redis) as (client, metrics):
        resp = await client.post("/webhooks/square", data=body, headers=square_headers(body))
        assert resp.status == 200
        assert (await resp.json())["result"] == "dead_letter"
    assert await redis.exists(DEFAULT_STREAM) == 0
    [dead] = await redis.xrange(DEAD)
    fields = dead[1]
    assert fields[b"dead.from"] == b"square"
    assert fields[b"dead.reason"].startswith(b"data.object.inventory_counts[0].quantity: ")
    assert b"12.375" in fields[b"dead.reason"]
    assert fields[b"dead.id"] == b"df5f3813-a913-45a1-94e9-fdc3f7d5e3b6"
    assert fields[b"dead.body"] == body
    assert requests(metrics, "square", "dead_letter") == 1
    assert events_written(metrics, "square") == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", b"body: not JSON"),
        (as_body([SHOPIFY_LEVEL]), b"body: must be a JSON object"),
        (as_body({k: v for k, v in SHOPIFY_LEVEL.items() if k != "location_id"}), b"location_id: "),
        (as_body({**SHOPIFY_LEVEL, "available": "10"}), b"available: "),
        (as_body({**SHOPIFY_LEVEL, "updated_at": "2021-12-31T19:00:00"}), b"updated_at: "),
        (as_body({**SHOPIFY_LEVEL, "location_id": "store 1"}), b"location_id: may hold only"),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "no-location",
        "available-not-int",
        "no-utc-offset",
        "id-the-engine-refuses",
    ],
)
@ON_BOTH
async def test_signed_shopify_payload_of_another_shape_is_dead_lettered(
    redis: aioredis.Redis, body: bytes, reason: bytes
) -> None:
    async with receiver(redis) as (client, metrics):
        resp = await client.post(
            "/webhooks/shopify", data=body, headers=shopify_headers("inventory_levels/update", body)
        )
        assert resp.status == 200
    assert await redis.exists(DEFAULT_STREAM) == 0
    [(_, fields)] = await redis.xrange(DEAD)
    assert fields[b"dead.reason"].startswith(reason)
    assert (fields[b"dead.from"], fields[b"dead.id"], fields[b"dead.body"]) == (
        b"shopify",
        b"wh-b54557e4",
        body,
    )
    # with the headers its parser reads, for a replay
    assert json.loads(fields[b"dead.headers"])["X-Shopify-Topic"] == "inventory_levels/update"
    assert requests(metrics, "shopify", "dead_letter") == 1


async def test_signed_shopify_delivery_without_any_id_is_dead_lettered(
    redis: aioredis.Redis,
) -> None:
    body = as_body(SHOPIFY_LEVEL)
    headers = shopify_headers("inventory_levels/update", body, event_id="", webhook_id="")
    async with receiver(redis) as (client, _):
        assert (await client.post("/webhooks/shopify", data=body, headers=headers)).status == 200
    assert await redis.exists(DEFAULT_STREAM) == 0
    [(_, fields)] = await redis.xrange(DEAD)
    assert fields[b"dead.reason"].startswith(b"X-Shopify-Webhook-Id: missing")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"type=inventory.update&payload", b"body: not a UTF-8 form"),
        (lightspeed_body("{not json"), b"payload: not JSON"),
        (lightspeed_body({**LIGHTSPEED_INVENTORY, "count": 2.5}), b"payload.count: "),
        (
            lightspeed_body({k: v for k, v in LIGHTSPEED_INVENTORY.items() if k != "version"}),
            b"payload.version: ",
        ),
        (lightspeed_body({**LIGHTSPEED_INVENTORY, "outlet_id": "Shop 1"}), b"payload.outlet_id: "),
    ],
    ids=["not-a-form", "payload-not-json", "count-a-fraction", "no-version", "outlet-refused"],
)
async def test_signed_lightspeed_payload_of_another_shape_is_dead_lettered(
    redis: aioredis.Redis, body: bytes, reason: bytes
) -> None:
    clock = ManualClock(start_ms=1_767_225_600_123)
    async with receiver(redis, clock) as (client, metrics):
        resp = await client.post(
            "/webhooks/lightspeed", data=body, headers=lightspeed_headers(body)
        )
        assert (resp.status, (await resp.json())["result"]) == (200, "dead_letter")
    assert await redis.exists(DEFAULT_STREAM) == 0
    [(_, fields)] = await redis.xrange(DEAD)
    assert fields[b"dead.reason"].startswith(reason)
    assert (fields[b"dead.from"], fields[b"dead.body"]) == (b"lightspeed", body)
    # with the time it was taken: a replay counts it as of then
    assert fields[b"dead.received"] == b"1767225600123"
    assert requests(metrics, "lightspeed", "dead_letter") == 1
    assert events_written(metrics, "lightspeed") == 0


async def test_dead_lettered_lightspeed_delivery_names_its_record(redis: aioredis.Redis) -> None:
    body = lightspeed_body({**LIGHTSPEED_INVENTORY, "count": "lots"})
    async with receiver(redis) as (client, _):
        resp = await client.post(
            "/webhooks/lightspeed", data=body, headers=lightspeed_headers(body)
        )
        assert resp.status == 200
    [(_, fields)] = await redis.xrange(DEAD)
    assert fields[b"dead.id"] == f"{LIGHTSPEED_RECORD}:5105100802".encode()


def test_kept_lightspeed_delivery_replays_as_the_count_it_was_at_its_receipt() -> None:
    """adapters/replay.py parses a kept delivery again, as of when it was taken."""
    letter = {
        DEAD_FROM: b"lightspeed",
        DEAD_BODY: lightspeed_body(LIGHTSPEED_INVENTORY),
        DEAD_HEADERS: b"{}",
        DEAD_RECEIVED: b"1767225600123",
    }
    [entry] = entries_of(letter)
    assert (entry["event_id"], entry["qty"], entry["source_time"]) == (
        f"lightspeed:{LIGHTSPEED_RECORD}:5105100802",
        "10",
        "1767225600123",
    )


@pytest.mark.parametrize(
    ("platform", "payload"),
    [
        ("shopify", {**SHOPIFY_LEVEL, "available": -2}),
        ("square", square_payload(square_count(quantity="-3"))),
        ("lightspeed", lightspeed_body({**LIGHTSPEED_INVENTORY, "count": -4})),
    ],
    ids=["shopify", "square", "lightspeed"],
)
async def test_count_below_zero_is_an_empty_shelf(
    redis: aioredis.Redis, platform: str, payload: object
) -> None:
    body = payload if isinstance(payload, bytes) else as_body(payload)
    headers = {
        "shopify": lambda: shopify_headers("inventory_levels/update", body),
        "square": lambda: square_headers(body),
        "lightspeed": lambda: lightspeed_headers(body),
    }[platform]()
    async with receiver(redis) as (client, _):
        assert (
            await client.post(f"/webhooks/{platform}", data=body, headers=headers)
        ).status == 200
    [entry] = await entries(redis)
    assert (entry["kind"], entry["qty"]) == ("COUNT", "0")


# --- durable before answering ---


class AppendOnlyOff(EmbeddedRedis):
    """The embedded server with its append-only file off: nothing is ever fsynced to an AOF,
    so WAITAOF can never report the local fsync."""

    def config(self) -> list[str]:
        return [*super().config(), "--appendonly", "no"]


@pytest.fixture(scope="module")
def no_aof_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = AppendOnlyOff(tmp_path_factory.mktemp("no-aof"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def no_aof_redis(no_aof_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(no_aof_server.url, socket_timeout=5)
    await client.flushall()
    yield client
    await client.aclose()


async def test_write_the_store_cannot_fsync_is_answered_503(no_aof_redis: aioredis.Redis) -> None:
    assert Settings().wait_aof  # waiting is the default
    body = as_body(SHOPIFY_LEVEL)
    async with receiver(no_aof_redis) as (client, metrics):
        resp = await client.post(
            "/webhooks/shopify", data=body, headers=shopify_headers("inventory_levels/update", body)
        )
        assert resp.status == 503
    assert requests(metrics, "shopify", "unavailable") == 1
    assert events_written(metrics, "shopify") == 0


async def test_the_receiver_knows_whether_its_store_keeps_an_append_only_file(
    redis: aioredis.Redis, no_aof_redis: aioredis.Redis
) -> None:
    """So the command refuses to start where every delivery would be a 503."""
    assert await appendonly(redis) is True
    assert await appendonly(no_aof_redis) is False


async def test_without_wait_aof_the_write_alone_is_enough(no_aof_redis: aioredis.Redis) -> None:
    body = as_body(SHOPIFY_LEVEL)
    async with receiver(no_aof_redis, wait_aof=False) as (client, _):
        resp = await client.post(
            "/webhooks/shopify", data=body, headers=shopify_headers("inventory_levels/update", body)
        )
        assert resp.status == 200
    assert len(await entries(no_aof_redis)) == 1


async def test_redis_away_is_answered_503(redis: aioredis.Redis) -> None:
    away = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1, socket_timeout=1
    )
    body = as_body(SQUARE_COUNT_UPDATED)
    try:
        async with receiver(away) as (client, metrics):
            resp = await client.post("/webhooks/square", data=body, headers=square_headers(body))
            assert resp.status == 503
        assert requests(metrics, "square", "unavailable") == 1
    finally:
        await away.aclose()


async def test_redis_that_never_answers_is_answered_503_within_the_budget(
    redis: aioredis.Redis,
) -> None:
    connections: list[asyncio.StreamWriter] = []

    async def mute(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # accepts, reads nothing, answers nothing

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # no socket timeout: the receiver's write budget alone must end the wait (without it,
    # this test hangs until pytest's timeout fails it)
    silent = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=None)
    body = as_body(SHOPIFY_LEVEL)
    try:
        async with receiver(silent, write_timeout=0.2) as (client, metrics):
            resp = await client.post(
                "/webhooks/shopify",
                data=body,
                headers=shopify_headers("inventory_levels/update", body),
            )
            assert resp.status == 503
        assert requests(metrics, "shopify", "unavailable") == 1
    finally:
        await silent.aclose()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


# --- metrics, health, command line ---


async def test_metrics_count_requests_events_and_time(redis: aioredis.Redis) -> None:
    good = as_body(SQUARE_COUNT_UPDATED)
    two = as_body(square_payload(square_count(), square_count(location_id="L2")))
    async with receiver(redis) as (client, metrics):
        await client.post("/webhooks/square", data=good, headers=square_headers(good))
        await client.post("/webhooks/square", data=two, headers=square_headers(two))
        await client.post("/webhooks/square", data=good, headers=_bad_square(good))
    assert requests(metrics, "square", "accepted") == 2
    assert requests(metrics, "square", "bad_signature") == 1
    assert events_written(metrics, "square") == 3
    assert (
        metrics.registry.get_sample_value("omnistock_webhook_seconds_count", {"platform": "square"})
        == 3
    )
    assert len(await entries(redis)) == 3


async def test_healthz_answers(redis: aioredis.Redis) -> None:
    async with receiver(redis) as (client, _):
        resp = await client.get("/healthz")
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


@pytest.fixture
def no_secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    names = (
        "SHOPIFY_WEBHOOK_SECRET",
        "SQUARE_SIGNATURE_KEY",
        "SQUARE_NOTIFICATION_URL",
        "LIGHTSPEED_CLIENT_SECRET",
    )
    for name in names:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_command_line_takes_secrets_from_the_environment(
    no_secrets_in_env: pytest.MonkeyPatch,
) -> None:
    no_secrets_in_env.setenv("SHOPIFY_WEBHOOK_SECRET", "from-env")
    no_secrets_in_env.setenv("SQUARE_SIGNATURE_KEY", "key-from-env")
    no_secrets_in_env.setenv("SQUARE_NOTIFICATION_URL", SQUARE_URL)
    no_secrets_in_env.setenv("LIGHTSPEED_CLIENT_SECRET", "client-secret-from-env")
    args = parse_args(["--listen", "127.0.0.1:9000", "--no-wait-aof", "--stream", "s"])
    assert settings_of(args) == Settings(
        stream="s",
        shopify_secret="from-env",
        square_signature_key="key-from-env",
        square_notification_url=SQUARE_URL,
        lightspeed_secret="client-secret-from-env",
        wait_aof=False,
    )
    assert (args.listen, args.metrics_port, args.state_dir) == (
        "127.0.0.1:9000",
        9466,
        Path("state"),
    )


def test_command_line_sets_the_guards_at_the_edge(no_secrets_in_env: pytest.MonkeyPatch) -> None:
    assert settings_of(parse_args([])) == Settings()  # the flags' defaults are the settings'
    args = parse_args(
        ["--max-body-bytes", "4096", "--header-timeout-seconds", "3", "--body-timeout-seconds", "4"]
    )
    settings = settings_of(args)
    assert (settings.max_body_bytes, settings.header_timeout, settings.body_timeout) == (
        4096,
        3.0,
        4.0,
    )
    for off in (["--max-body-bytes", "0"], ["--header-timeout-seconds", "0"]):
        with pytest.raises(SystemExit):  # a guard is not turned off by a zero
            parse_args(off)


def test_command_line_takes_secrets_from_files(
    no_secrets_in_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "shopify").write_text("from-file\n")  # as `echo secret > file` leaves it
    (tmp_path / "square").write_text("key-from-file")
    (tmp_path / "lightspeed").write_text("client-secret-from-file\n")
    args = parse_args(
        [
            "--shopify-secret-file",
            str(tmp_path / "shopify"),
            "--square-signature-key-file",
            str(tmp_path / "square"),
            "--square-notification-url",
            SQUARE_URL,
            "--lightspeed-secret-file",
            str(tmp_path / "lightspeed"),
        ]
    )
    settings = settings_of(args)
    assert (
        settings.shopify_secret,
        settings.square_signature_key,
        settings.lightspeed_secret,
    ) == ("from-file", "key-from-file", "client-secret-from-file")


@pytest.mark.parametrize(
    "flags",
    [
        ["--shopify-secret", "hush"],
        ["--square-signature-key", "hush"],
        ["--lightspeed-secret", "h"],
    ],
    ids=["shopify", "square", "lightspeed"],
)
def test_secrets_are_never_taken_as_flag_values(
    no_secrets_in_env: pytest.MonkeyPatch, flags: list[str]
) -> None:
    """A flag's value shows in `ps` to every user of the machine."""
    with pytest.raises(SystemExit):
        parse_args([*flags, "--square-notification-url", SQUARE_URL])


def test_a_secret_given_twice_or_empty_is_refused(
    no_secrets_in_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "secret").write_text("from-file")
    with pytest.raises(SystemExit):
        parse_args(["--shopify-secret-file", str(tmp_path / "empty")])
    with pytest.raises(SystemExit):
        parse_args(["--shopify-secret-file", str(tmp_path / "missing")])
    no_secrets_in_env.setenv("SHOPIFY_WEBHOOK_SECRET", "from-env")
    with pytest.raises(SystemExit):
        parse_args(["--shopify-secret-file", str(tmp_path / "secret")])


def test_settings_never_show_their_secrets() -> None:
    shown = repr(
        Settings(shopify_secret="hush-1", square_signature_key="hush-2", lightspeed_secret="hush-3")
    )
    assert "hush" not in shown


def test_square_key_without_its_notification_url_is_refused(
    no_secrets_in_env: pytest.MonkeyPatch,
) -> None:
    no_secrets_in_env.setenv("SQUARE_SIGNATURE_KEY", "k")
    with pytest.raises(SystemExit):
        parse_args([])


# --- end to end: platform -> receiver -> stream -> Streams adapter -> engine ---


async def test_deliveries_reach_the_stock_once_each_through_the_mapping_and_the_stream(
    redis: aioredis.Redis, channel: grpc.aio.Channel
) -> None:
    """A signed Shopify update, a Square count and a Lightspeed inventory update, each
    delivered twice (a platform retry), and a Shopify update with a bad signature: the
    platforms' ids land on our rows through the sources' mappings, each delivery counted
    once, the forged one not at all."""
    stubs = Stubs(channel)
    now = int(time.time() * 1000)
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[location("store-1")]))
    await stubs.stock.ApplyEvents(
        pb.ApplyEventsRequest(
            events=[count(f"seed-{s}", "store-1", s, 50, now - 3_600_000) for s in ("A", "B", "C")]
        )
    )
    maps = [
        ("shopify", pb.MAPPING_KIND_LOCATION, "24826418", "store-1"),
        ("shopify", pb.MAPPING_KIND_ITEM, "271878346596884015", "A"),
        ("square", pb.MAPPING_KIND_LOCATION, "YYQR03DGCTXA4", "store-1"),
        ("square", pb.MAPPING_KIND_ITEM, "FGQ5JJWT2PYTHF35CKZ2DSKP", "B"),
        ("lightspeed", pb.MAPPING_KIND_LOCATION, LIGHTSPEED_OUTLET, "store-1"),
        ("lightspeed", pb.MAPPING_KIND_ITEM, LIGHTSPEED_PRODUCT, "C"),
    ]
    await stubs.stock.SetMappings(
        pb.SetMappingsRequest(
            mappings=[pb.Mapping(source=s, kind=k, external_id=e, id=i) for s, k, e, i in maps]
        )
    )
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now / 1000 - 600))
    shopify = as_body({**SHOPIFY_LEVEL, "available": 6, "updated_at": iso + "-00:00"})
    forged = as_body({**SHOPIFY_LEVEL, "available": 99, "updated_at": iso + "-00:00"})
    square = as_body(square_payload(square_count(quantity="4", calculated_at=iso + ".5Z")))
    lightspeed = lightspeed_body({**LIGHTSPEED_INVENTORY, "count": 3})
    async with receiver(redis) as (client, _):
        for _ in range(2):
            got = await client.post(
                "/webhooks/shopify",
                data=shopify,
                headers=shopify_headers("inventory_levels/update", shopify),
            )
            assert got.status == 200
            got = await client.post("/webhooks/square", data=square, headers=square_headers(square))
            assert got.status == 200
            got = await client.post(
                "/webhooks/lightspeed", data=lightspeed, headers=lightspeed_headers(lightspeed)
            )
            assert got.status == 200
        headers = shopify_headers("inventory_levels/update", shopify, event_id="evt-forged")
        got = await client.post("/webhooks/shopify", data=forged, headers=headers)
        assert got.status == 401
    options = Options(DEFAULT_STREAM, "omnistock", "e2e", block_ms=10)
    consumer = Consumer(redis, pb_grpc.StockServiceStub(channel), options)
    await consumer.create_group()
    await drain(redis, consumer)
    assert (await level(stubs, "store-1", "A")).on_hand == 6
    assert (await level(stubs, "store-1", "B")).on_hand == 4
    assert (await level(stubs, "store-1", "C")).on_hand == 3
    outcome = consumer.metrics.registry.get_sample_value
    assert outcome("omnistock_streams_events_total", {"outcome": "applied"}) == 3
    assert outcome("omnistock_streams_events_total", {"outcome": "duplicate"}) == 3
    assert await redis.xlen(DEAD) == 0
